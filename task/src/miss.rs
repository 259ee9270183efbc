//! What CreateTask does when the replica may not hold the caller's member at
//! the version the caller has seen: serve it, wait for the consumer to bring
//! it, fetch it from auth, or send the client away with USER_NOT_READY.
//!
//! [`decide`] is the whole policy, a pure function of the mode, what was just
//! seen and the version the caller needs; the loop in `grpc.rs` carries each
//! step out with one read of the replica (or one fetch) per step.
use std::time::Duration;

use crate::settings::ConsistencyMode;

/// The settings the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub mode: ConsistencyMode,
    /// `consistency.wait_ms`: how long `not_ready` waits for the consumer.
    pub wait: Duration,
}

/// What the last step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// One read of the replica: the version it holds (`None`: no row), and
    /// whether the read-your-writes wait has run out.
    Replica {
        version: Option<i64>,
        wait_over: bool,
    },
    /// auth answered GetMember and the member was provisioned at `version`.
    Fetched { version: i64 },
    /// auth does not know the member.
    AuthNotFound,
    /// auth is down, slow or refused the call.
    AuthUnavailable,
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The copy just seen is fresh enough: use it.
    Serve,
    /// Wait, woken by an apply, then read the replica again.
    Wait,
    /// Fetch the member from auth and provision it.
    Fetch,
    /// UNAVAILABLE with USER_NOT_READY and a retry delay.
    NotReady,
    /// NOT_FOUND: the member does not exist.
    NotFound,
}

/// The next step after `seen`, for a caller who has seen the member at
/// `min_version`. Never serves a copy older than that: read_through fetches
/// at once (a fetch takes less than the replication it would wait for);
/// not_ready waits up to `policy.wait`, then answers USER_NOT_READY.
pub fn decide(policy: Policy, min_version: i64, seen: Seen) -> Step {
    let fresh = |version: i64| version >= min_version.max(1);
    match seen {
        Seen::Replica {
            version: Some(v), ..
        } if fresh(v) => Step::Serve,
        Seen::Replica { wait_over, .. } => match policy.mode {
            ConsistencyMode::ReadThrough => Step::Fetch,
            ConsistencyMode::NotReady if !wait_over && !policy.wait.is_zero() => Step::Wait,
            ConsistencyMode::NotReady => Step::NotReady,
        },
        Seen::Fetched { version } if fresh(version) => Step::Serve,
        // auth is the source of truth: older than the caller's version
        // means a token from elsewhere, or auth's replica lagging behind.
        Seen::Fetched { .. } | Seen::AuthUnavailable => Step::NotReady,
        Seen::AuthNotFound => Step::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);
    const READ_THROUGH: Policy = Policy {
        mode: ConsistencyMode::ReadThrough,
        wait: WAIT,
    };
    const NOT_READY: Policy = Policy {
        mode: ConsistencyMode::NotReady,
        wait: WAIT,
    };

    fn replica(version: Option<i64>, wait_over: bool) -> Seen {
        Seen::Replica { version, wait_over }
    }

    #[test]
    fn a_fresh_copy_is_served_in_either_mode() {
        for policy in [READ_THROUGH, NOT_READY] {
            assert_eq!(decide(policy, 3, replica(Some(3), false)), Step::Serve);
            assert_eq!(decide(policy, 3, replica(Some(4), true)), Step::Serve);
            // Version 0 (no token claim) still needs a row.
            assert_eq!(decide(policy, 0, replica(Some(1), false)), Step::Serve);
        }
    }

    #[test]
    fn read_through_fetches_a_missing_or_stale_member_at_once() {
        assert_eq!(decide(READ_THROUGH, 1, replica(None, false)), Step::Fetch);
        assert_eq!(
            decide(READ_THROUGH, 5, replica(Some(4), false)),
            Step::Fetch
        );
    }

    #[test]
    fn not_ready_waits_then_sends_the_client_away() {
        assert_eq!(decide(NOT_READY, 1, replica(None, false)), Step::Wait);
        assert_eq!(decide(NOT_READY, 5, replica(Some(4), false)), Step::Wait);
        assert_eq!(decide(NOT_READY, 5, replica(Some(4), true)), Step::NotReady);
        let no_wait = Policy {
            wait: Duration::ZERO,
            ..NOT_READY
        };
        assert_eq!(decide(no_wait, 1, replica(None, false)), Step::NotReady);
    }

    #[test]
    fn a_fetch_serves_only_what_is_fresh_enough() {
        let p = READ_THROUGH;
        assert_eq!(decide(p, 2, Seen::Fetched { version: 2 }), Step::Serve);
        assert_eq!(decide(p, 3, Seen::Fetched { version: 2 }), Step::NotReady);
        assert_eq!(decide(p, 1, Seen::AuthUnavailable), Step::NotReady);
        assert_eq!(decide(p, 1, Seen::AuthNotFound), Step::NotFound);
    }
}
