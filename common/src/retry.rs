//! One retry policy for every loop that waits on something outside the
//! process: the relay and the consumer waiting on the broker or database, the
//! client waiting for a member to be replicated.
use std::time::Duration;

use serde::Deserialize;
use tokio_retry2::strategy::{ExponentialFactorBackoff, jitter};

/// Exponential backoff with full jitter and a cap.
///
/// Full jitter (a uniform draw below the exponential bound) keeps many
/// clients that failed together from retrying together.
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
            .map(jitter)
    }

    /// The upper bound of the delays, useful to size deadlines in tests.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
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
        // The bound doubles: the first delay is at most 10 ms.
        assert!(delays[0] <= Duration::from_millis(10));
    }
}
