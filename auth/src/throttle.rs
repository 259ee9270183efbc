//! Login throttling: token buckets per account and per peer address, so
//! guessing a password costs time and one client cannot keep the hashing
//! threads busy.
//!
//! Every attempt is charged before its hash runs, right or wrong: a hash is
//! the expensive part, and counting only failures would need the hash first.
//! The hash's place in the queue is taken before the charge, so an attempt
//! refused for the server's own load charges nothing (`password::Hasher::admit`).
//! Over a limit the call gets RESOURCE_EXHAUSTED with RetryInfo saying when
//! the next attempt is allowed.
use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use memberflow_lifecycle::Start;
use memberflow_runtime::error::Failure;
use memberflow_runtime::shutdown::CancellationToken;

use crate::{
    metrics::{AuthMetrics, ThrottleLimit},
    settings::{LoginThrottleSettings, RateLimit},
};

/// How often idle buckets are forgotten, so the key maps do not grow.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The per-account and per-peer buckets of one auth instance.
#[derive(Clone)]
pub struct LoginThrottle {
    account: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    peer: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    metrics: AuthMetrics,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    limit: RateLimit,
) -> Option<Arc<DefaultKeyedRateLimiter<K>>> {
    let burst = NonZeroU32::new(limit.burst)?;
    let quota = Quota::with_period(Duration::from_millis(limit.refill_ms.max(1)))
        .expect("a non-zero period")
        .allow_burst(burst);
    Some(Arc::new(RateLimiter::keyed(quota)))
}

impl LoginThrottle {
    pub fn new(cfg: &LoginThrottleSettings, metrics: AuthMetrics) -> Self {
        Self {
            account: limiter(cfg.per_email),
            peer: limiter(cfg.per_peer),
            metrics,
        }
    }

    /// Charges one attempt for `account` (a normalised email, or
    /// `member:<id>`) from `peer`; refused if either bucket is empty.
    pub fn attempt(&self, account: &str, peer: Option<IpAddr>) -> Result<(), Failure> {
        if let (Some(limiter), Some(ip)) = (&self.peer, peer)
            && let Err(wait) = limiter.check_key(&ip)
        {
            self.metrics.throttled(ThrottleLimit::peer);
            return Err(too_many(
                "from this address",
                wait.wait_time_from(DefaultClock::default().now()),
            ));
        }
        if let Some(limiter) = &self.account
            && let Err(wait) = limiter.check_key(&account.to_owned())
        {
            self.metrics.throttled(ThrottleLimit::email);
            return Err(too_many(
                "for this account",
                wait.wait_time_from(DefaultClock::default().now()),
            ));
        }
        Ok(())
    }

    /// Forgets full buckets every minute until `shutdown`.
    pub async fn prune(self, shutdown: CancellationToken) {
        memberflow_lifecycle::every(PRUNE_EVERY, Start::Now, &shutdown, || async {
            if let Some(l) = &self.account {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &self.peer {
                l.retain_recent();
                l.shrink_to_fit();
            }
        })
        .await;
    }
}

fn too_many(scope: &str, retry_after: Duration) -> Failure {
    Failure::Exhausted {
        message: format!(
            "too many login attempts {scope}; retry in {} ms",
            retry_after.as_millis().max(1)
        ),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(email: u32, peer: u32) -> LoginThrottle {
        let registry = Default::default();
        LoginThrottle::new(
            &LoginThrottleSettings {
                per_email: RateLimit {
                    burst: email,
                    refill_ms: 60_000,
                },
                per_peer: RateLimit {
                    burst: peer,
                    refill_ms: 60_000,
                },
            },
            AuthMetrics::register(&registry),
        )
    }

    #[test]
    fn each_account_and_each_peer_has_its_own_bucket() {
        let t = throttle(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(t.attempt("ann@example.com", Some(a)).is_ok());
        assert!(t.attempt("ann@example.com", Some(a)).is_ok());
        let Err(Failure::Exhausted { retry_after, .. }) = t.attempt("ann@example.com", Some(b))
        else {
            panic!("the third attempt for one account is refused");
        };
        assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
        assert!(
            t.attempt("bob@example.com", Some(a)).is_ok(),
            "another account"
        );
        // Peer a has spent its 3 (ann, ann, bob).
        assert!(
            t.attempt("cy@example.com", Some(a)).is_err(),
            "peer a is out"
        );
        assert!(
            t.attempt("cy@example.com", None).is_ok(),
            "no peer, no peer limit"
        );
        assert_eq!(t.metrics.throttled_count(ThrottleLimit::email), 1);
        assert_eq!(t.metrics.throttled_count(ThrottleLimit::peer), 1);
    }

    #[test]
    fn zero_burst_turns_a_limit_off() {
        let t = throttle(0, 0);
        for _ in 0..100 {
            assert!(
                t.attempt("ann@example.com", Some([127, 0, 0, 1].into()))
                    .is_ok()
            );
        }
    }
}
