//! The one loop of every periodic chore: prunes, gauges, key refreshes,
//! health checks, lease renewals, the reconciler's passes.
//!
//! Why one: tokio's `interval` bursts by default. After a stall (a paused
//! process, a suspended VM, a long GC-like pause of the runtime) it fires
//! every missed tick at once, so a resumed process would prune, refresh or
//! reconcile many times back to back. Here a missed tick is delayed instead:
//! one run on resume, then the period again from there. Whether a chore runs
//! at start or waits one period first is said here too, by [`Start`].
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// When a periodic chore first runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At once, then every period (a prune, a gauge, a health check).
    Now,
    /// One period from now (a reconciler pass, which must not run as every
    /// instance of a rolling deploy starts).
    AfterOnePeriod,
}

/// Ticks every period, missed ticks delayed rather than bursted. For loops
/// that wait on something else too (`select!` on [`Ticks::tick`], which is
/// cancel-safe); a loop that only waits for the period uses [`every`].
#[derive(Debug)]
pub struct Ticks(Interval);

impl Ticks {
    /// Ticks every `period` (at least 1 ms), the first as `start` says.
    pub fn new(period: Duration, start: Start) -> Self {
        let period = period.max(Duration::from_millis(1));
        let first = match start {
            Start::Now => Instant::now(),
            Start::AfterOnePeriod => Instant::now() + period,
        };
        let mut interval = tokio::time::interval_at(first, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self(interval)
    }

    /// The next tick. Cancel-safe: a tick is not lost if this is dropped.
    pub async fn tick(&mut self) {
        self.0.tick().await;
    }

    /// The next tick; `false` if `shutdown` came first.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            _ = self.0.tick() => true,
        }
    }

    /// Starts the period over from now (after work that did what the next
    /// tick would have done).
    pub fn reset(&mut self) {
        self.0.reset();
    }
}

/// Runs `job` every `period`, the first time as `start` says, until
/// `shutdown`. A run that overruns delays the next instead of bunching
/// them; a run in progress when `shutdown` comes is finished.
pub async fn every<Fut: Future<Output = ()>>(
    period: Duration,
    start: Start,
    shutdown: &CancellationToken,
    mut job: impl FnMut() -> Fut,
) {
    let mut ticks = Ticks::new(period, start);
    while ticks.next(shutdown).await {
        job().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    /// Spawns `every` with a counting job; returns the count and the token.
    fn counting(start: Start) -> (Arc<AtomicU32>, CancellationToken) {
        let (runs, shutdown) = (Arc::new(AtomicU32::new(0)), CancellationToken::new());
        let (r, s) = (runs.clone(), shutdown.clone());
        tokio::spawn(async move {
            every(PERIOD, start, &s, || {
                r.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .await;
        });
        (runs, shutdown)
    }

    /// Lets every ready task run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_a_missed_tick_runs_once_not_once_per_period_missed() {
        let (runs, shutdown) = counting(Start::Now);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "runs at start");
        // The process is stopped for ten and a bit periods (SIGSTOP, a
        // suspended VM): the clock jumps and nothing runs meanwhile.
        tokio::time::advance(PERIOD * 10 + Duration::from_secs(7)).await;
        settle().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one run on resume (tokio's default would run ten at once)"
        );
        // And the period starts over from the resume: nothing at the next
        // multiple of the period (3 s on, where skipping would run), one a
        // whole period after the resume.
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "not on the old schedule");
        tokio::time::advance(PERIOD - Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_chore_that_waits_first_does_not_run_at_start() {
        let (runs, shutdown) = counting(Start::AfterOnePeriod);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        tokio::time::advance(PERIOD - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_loop() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut runs = 0;
        every(PERIOD, Start::Now, &shutdown, || {
            runs += 1;
            async {}
        })
        .await;
        assert_eq!(runs, 0, "a cancelled token wins over a ready tick");
    }
}
