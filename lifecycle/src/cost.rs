//! What each worker costs: the time spent polling it, and how often it was
//! woken to be polled.
//!
//! Why: on two cores every microsecond a background worker spends is one
//! the hot path (a signup's commit, the relay, the consumer's apply) does
//! not get, and a worker that wakes more often than its job needs costs
//! even at rest. A process's CPU time says only that it is busy; this says
//! which worker. Every named worker is accounted ([`crate::Crew`] wraps
//! each), work a worker hands to a task of its own is accounted to it
//! ([`spawn`]), and the runtime's units of work under their own name. The
//! runtime exports the totals as `worker_poll_seconds_total{worker}` and
//! `worker_wakeups_total{worker}`; `bench --only workers` turns them into a
//! per-worker table at rest and under load.
//!
//! The time is the wall clock inside each poll, as tokio-metrics counts it:
//! on an idle machine that is the worker's CPU time; on a saturated one it
//! also holds the time its thread was preempted mid-poll, so read it beside
//! the process's CPU time. A thread's CPU clock would be exact, but it is a
//! system call on Linux (no vDSO), twice per poll on the hot path.
//!
//! What it costs itself, per poll: two reads of the monotonic clock (vDSO,
//! tens of nanoseconds), two relaxed atomic adds, and an `Arc` clone and
//! drop for the thread-local. A poll that panics is not counted. An `Accounted` inside another on the same task
//! would count its polls to both: wrap a task once (the crew and the units
//! do; [`spawn`] wraps only the new task).
use std::{
    cell::RefCell,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

thread_local! {
    /// The account of the task being polled on this thread, if any.
    static CURRENT: RefCell<Option<Arc<Cost>>> = const { RefCell::new(None) };
}

/// One account: polls and the time spent in them.
#[derive(Debug, Default)]
pub struct Cost {
    polls: AtomicU64,
    busy_nanos: AtomicU64,
}

impl Cost {
    fn record(&self, busy: Duration) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// What one account has spent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub name: &'static str,
    /// Times polled: each one a wake-up (or the first poll).
    pub wakeups: u64,
    /// Wall-clock time spent inside those polls, on whichever thread ran
    /// them.
    pub busy: Duration,
}

/// An account under its name.
type Named = (&'static str, Arc<Cost>);

/// A process's accounts, by name; cheap to clone (one shared list).
#[derive(Debug, Default, Clone)]
pub struct Costs(Arc<Mutex<Vec<Named>>>);

impl Costs {
    /// The account named `name`, opened on first use.
    pub fn of(&self, name: &'static str) -> Arc<Cost> {
        let mut accounts = self.0.lock().expect("cost accounts poisoned");
        if let Some((_, cost)) = accounts.iter().find(|(n, _)| *n == name) {
            return cost.clone();
        }
        let cost = Arc::new(Cost::default());
        accounts.push((name, cost.clone()));
        cost
    }

    /// Every account's totals, in the order opened.
    pub fn snapshot(&self) -> Vec<Spent> {
        let accounts = self.0.lock().expect("cost accounts poisoned");
        accounts
            .iter()
            .map(|(name, cost)| Spent {
                name,
                wakeups: cost.polls.load(Ordering::Relaxed),
                busy: Duration::from_nanos(cost.busy_nanos.load(Ordering::Relaxed)),
            })
            .collect()
    }
}

/// `inner`, with every poll counted to `cost`.
pub struct Accounted<F> {
    cost: Arc<Cost>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Accounted<F> {
    pub fn new(cost: Arc<Cost>, inner: F) -> Self {
        Self {
            cost,
            inner: Box::pin(inner),
        }
    }
}

/// Puts the previous account back when a poll ends, a panicking one too.
struct Restore(Option<Arc<Cost>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

impl<F: Future> Future for Accounted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _restore = Restore(CURRENT.with(|current| current.replace(Some(this.cost.clone()))));
        let started = Instant::now();
        let polled = this.inner.as_mut().poll(cx);
        this.cost.record(started.elapsed());
        polled
    }
}

/// Spawns `work` on the runtime, accounted to the worker polling the
/// caller (work a worker hands off, such as the consumer's apply, is the
/// worker's cost); unaccounted when called from anywhere else.
pub fn spawn<F>(work: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.with(|current| current.borrow().clone()) {
        Some(cost) => tokio::spawn(Accounted::new(cost, work)),
        None => tokio::spawn(work),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polls_are_counted_and_handed_off_work_is_the_spawners() {
        let costs = Costs::default();
        let worker = Accounted::new(costs.of("worker"), async {
            tokio::task::yield_now().await;
            // Handed off: counted to "worker" too.
            spawn(async { tokio::task::yield_now().await })
                .await
                .expect("child ran");
        });
        tokio::spawn(worker).await.expect("worker ran");
        // Outside any worker: not counted anywhere.
        spawn(async {}).await.expect("ran");

        let spent = costs.snapshot();
        assert_eq!(spent.len(), 1);
        assert_eq!(spent[0].name, "worker");
        // The worker: first poll, after the yield, after the child ended
        // (at least 3); the child: first poll and after its yield (2).
        assert!(spent[0].wakeups >= 5, "{spent:?}");
        assert!(spent[0].busy > Duration::ZERO);
        assert!(Arc::ptr_eq(&costs.of("worker"), &costs.of("worker")));
    }

    #[test]
    fn a_panicking_poll_puts_the_previous_account_back() {
        let costs = Costs::default();
        let mut panics = Accounted::new(costs.of("panics"), async { panic!("boom") });
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut panics).poll(&mut cx);
        }));
        assert!(caught.is_err());
        assert!(CURRENT.with(|current| current.borrow().is_none()));
    }
}
