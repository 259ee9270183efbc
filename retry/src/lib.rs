//! One retry policy for every loop that waits on something outside the
//! process: the relay and the consumer waiting on the broker or database, the
//! client waiting for a member to be replicated.
use std::time::Duration;

use serde::Deserialize;
use tokio_retry2::strategy::{ExponentialFactorBackoff, jitter_with_bounds};
use tokio_util::sync::CancellationToken;

/// Exponential backoff with "equal jitter" and a cap.
///
/// Each delay is drawn uniformly from half to all of the exponential bound:
/// clients that failed together do not retry together, no retry is hot (near
/// zero), and no delay exceeds the cap.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(default)]
pub struct Backoff {
    /// Bound of the first delay, in milliseconds.
    pub initial_ms: u64,
    /// Growth factor of the bound per attempt.
    pub factor: f64,
    /// Cap on the bound, in milliseconds.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 50,
            factor: 2.0,
            max_ms: 5_000,
        }
    }
}

impl Backoff {
    /// A policy with the given first delay and cap, doubling per attempt.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial_ms: initial.as_millis() as u64,
            factor: 2.0,
            max_ms: max.as_millis() as u64,
        }
    }

    /// An endless stream of jittered delays; callers bound it by a deadline
    /// or by `take(n)`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + 'static {
        ExponentialFactorBackoff::from_millis(self.initial_ms.max(1), self.factor.max(1.0))
            .max_delay_millis(self.max_ms.max(self.initial_ms))
            .map(jitter_with_bounds(0.5, 1.0))
    }

    /// The upper bound of the delays, useful to size deadlines in tests.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }

    /// A fresh run of retries under this policy.
    pub fn retrying(&self) -> Retrying {
        Retrying {
            policy: *self,
            delays: Box::new(self.delays()),
        }
    }
}

/// One run of retries: each failure waits the next, longer delay, unless
/// shutdown comes first; a success starts the run over ([`Self::reset`]).
/// Every loop that waits on something outside the process uses this.
pub struct Retrying {
    policy: Backoff,
    delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
}

impl std::fmt::Debug for Retrying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrying")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Retrying {
    /// Back to the first, shortest delay.
    pub fn reset(&mut self) {
        self.delays = Box::new(self.policy.delays());
    }

    /// The next delay of the run.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.policy.max())
    }

    /// Sleeps for the next delay; `false` if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        sleep_or_cancel(self.next_delay(), shutdown).await
    }
}

/// Sleeps for `d`; `false` if `shutdown` came first.
pub async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let policy = Backoff {
            initial_ms: 10,
            factor: 2.0,
            max_ms: 100,
        };
        let delays: Vec<_> = policy.delays().take(20).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        // The first delay is within [5, 10] ms; late ones sit near the cap.
        assert!(delays[0] >= Duration::from_millis(5) && delays[0] <= Duration::from_millis(10));
        assert!(delays[19] >= Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_waits_longer_each_time_and_stops_at_shutdown() {
        let mut run = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).retrying();
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        assert!(run.wait(&shutdown).await);
        assert!(run.wait(&shutdown).await);
        assert!(start.elapsed() >= Duration::from_millis(15));
        shutdown.cancel();
        assert!(!run.wait(&shutdown).await, "shutdown ends the wait");
        run.reset();
        assert!(run.next_delay() <= Duration::from_millis(10));
    }
}
