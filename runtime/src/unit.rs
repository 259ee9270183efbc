//! Units of work: each use case's database work runs on a task of its own,
//! so a caller that gives up (its deadline, a closed app, the server's own
//! `server.request_timeout_ms`) stops *waiting* for it, never stops it
//! halfway.
//!
//! Why: a gRPC handler's future is dropped wherever it is when its caller
//! cancels, possibly between a statement and its answer. sqlx 0.9.0 left a
//! session inside a transaction when BEGIN was cut that way, and the pool
//! handed it to the next caller, whose autocommit statement was then
//! acknowledged and never committed. Fixing that one call site (the next
//! such bug would be elsewhere) is auditing; running the work where no
//! caller can drop it is construction. The handler decodes and authorises,
//! hands the use case to [`Units::run`], and encodes what it answers.
//!
//! - A unit starts only once it has a place: at most one per pool
//!   connection runs at once, and callers wait for a place in arrival order
//!   (a fair semaphore). A unit keeps its place while it waits for other
//!   things too (a password hash, auth, an apply): auth takes a hash's place
//!   in the hashing queue before the unit's, so a full queue still refuses
//!   at once. Waiting is the one thing a cancel
//!   stops: a call whose caller has gone before its turn starts nothing,
//!   so callers that give up cannot queue work ahead of those that wait,
//!   and no pool acquire or connect is ever cut halfway.
//! - A unit once started runs to its end; its connection goes back to the
//!   pool when the unit ends, not when the caller leaves. Between its steps
//!   (before a password hash, before its transaction) a use case asks
//!   [`caller_waits`]: a caller gone by then ends the unit there, with
//!   nothing of the next step done. A transaction once begun is never cut.
//! - A unit keeps its call's slot of `server.concurrency_limit` (the
//!   [`CallSlot`] the limits layer attached to the request) until it ends,
//!   so callers that cancel and call again cannot pile up more work than the
//!   limit allows.
//! - Shutdown waits for every unit in flight before the pool closes
//!   ([`Units::drain`]).
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

tokio::task_local! {
    /// Cancelled once the caller of the unit running on this task stops
    /// waiting for it.
    static CALLER: CancellationToken;
}

/// A token cancelled once the caller of the unit running here has stopped
/// waiting; `None` outside a unit. For work handed to other threads (the
/// hashing pool), which checks it before it starts.
pub fn caller() -> Option<CancellationToken> {
    CALLER.try_with(CancellationToken::clone).ok()
}

/// `Err(CallerGone)` if the caller of the unit running here has stopped
/// waiting: a use case asks before each step that costs (a hash, its
/// transaction), so a caller that left starts nothing new. Outside a unit
/// (a tool, a test) the caller always waits.
pub fn caller_waits() -> Result<(), crate::error::Failure> {
    match caller() {
        Some(gone) if gone.is_cancelled() => Err(crate::error::Failure::CallerGone),
        _ => Ok(()),
    }
}

/// A call's slot of the server's concurrency limit, shared between the
/// limits layer (until the response) and the unit the call started (until
/// it ends): the slot is free again only when both are done.
#[derive(Debug, Clone)]
pub struct CallSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl CallSlot {
    pub(crate) fn new(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }

    /// The slot the limits layer gave `request`, if it went through one
    /// (health checks and in-process calls in tests have none).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }
}

/// Runs units of work, owns the pool they use, and closes it only once no
/// unit is left.
#[derive(Debug, Clone)]
pub struct Units {
    pool: PgPool,
    tracker: TaskTracker,
    /// Places for units running at once (see the module's doc).
    places: Arc<Semaphore>,
    /// Where the units' polls are counted (`worker_poll_seconds_total`);
    /// an account of their own, read by no one, until [`Self::accounted`].
    cost: Arc<memberflow_lifecycle::Cost>,
}

impl Units {
    /// Units on `pool`, at most `places` at once (a service's
    /// `ServiceSettings::unit_places`).
    pub fn new(pool: PgPool, places: usize) -> Self {
        Self {
            pool,
            tracker: TaskTracker::new(),
            places: Arc::new(Semaphore::new(places.max(1))),
            cost: Arc::default(),
        }
    }

    /// Units whose polls are counted to `cost`.
    pub fn accounted(mut self, cost: Arc<memberflow_lifecycle::Cost>) -> Self {
        self.cost = cost;
        self
    }

    /// The pool units (and the service's workers) use.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Waits for a place, then runs `work` on a task of its own, holding
    /// `slot`, and answers what it answers. Dropping the returned future
    /// before the place is given starts nothing; after, it stops the wait,
    /// never `work`. A panic in `work` is an internal error of this call,
    /// not of the process.
    pub async fn run<T, E>(
        &self,
        slot: Option<CallSlot>,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<anyhow::Error> + Send + 'static,
    {
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| anyhow::anyhow!("the service is shutting down"))?;
        let gone = CancellationToken::new();
        // Cancels `gone` if this future is dropped before the unit answers.
        let waiting = gone.clone().drop_guard();
        let work = CALLER
            .scope(gone, async move {
                let answer = work.await;
                drop((slot, place));
                answer
            })
            .in_current_span();
        let unit = self.tracker.spawn(memberflow_lifecycle::Accounted::new(
            self.cost.clone(),
            work,
        ));
        let answered = unit.await;
        waiting.disarm();
        match answered {
            Ok(answer) => answer,
            Err(e) => Err(anyhow::anyhow!("a unit of work did not finish: {e}").into()),
        }
    }

    /// Waits for the units in flight, then closes the pool: what shutdown
    /// does once the server has stopped answering (so no new call comes).
    pub async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn units() -> Units {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        Units::new(pool, 1)
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_stop_its_unit_and_drain_waits_for_it() {
        let units = units();
        let done = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let work = {
            let done = done.clone();
            async move {
                let _ = started_tx.send(());
                let _ = released.await;
                done.store(true, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(())
            }
        };
        // The caller waits until the unit has started, then gives up.
        let call = tokio::spawn({
            let units = units.clone();
            async move { units.run(None, work).await }
        });
        started.await.expect("the unit started");
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(!done.load(Ordering::SeqCst));
        let drained = tokio::spawn({
            let units = units.clone();
            async move { units.drain().await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished(), "drain waits for the unit in flight");
        release.send(()).expect("the unit waits");
        drained.await.expect("drained");
        assert!(done.load(Ordering::SeqCst), "the unit ran to its end");
    }

    #[tokio::test]
    async fn a_unit_keeps_its_call_slot_until_it_ends() {
        let units = units();
        let limit = Arc::new(tokio::sync::Semaphore::new(1));
        let slot = CallSlot::new(limit.clone().try_acquire_owned().expect("a permit"));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let call = tokio::spawn({
            let units = units.clone();
            async move {
                let work = async move {
                    let _ = started_tx.send(());
                    let _ = released.await;
                    Ok::<_, anyhow::Error>(())
                };
                units.run(Some(slot), work).await
            }
        });
        started.await.expect("the unit started");
        call.abort();
        let _ = call.await;
        assert_eq!(
            limit.available_permits(),
            0,
            "the unit still holds the slot"
        );
        release.send(()).expect("the unit waits");
        units.drain().await;
        assert_eq!(limit.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_before_its_place_starts_nothing() {
        let units = units();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let units = units.clone();
            async move {
                let work = async move {
                    let _ = started_tx.send(());
                    let _ = released.await;
                    Ok::<_, anyhow::Error>(())
                };
                units.run(None, work).await
            }
        });
        started.await.expect("the first unit started");
        let ran = Arc::new(AtomicBool::new(false));
        let second = units.run(None, {
            let ran = ran.clone();
            async move {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(())
            }
        });
        // The only place is taken: the second caller waits, then gives up.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(20), second).await;
        assert!(gave_up.is_err());
        release.send(()).expect("the first unit waits");
        first.await.unwrap().unwrap();
        units.drain().await;
        assert!(
            !ran.load(Ordering::SeqCst),
            "a call that left before its turn started nothing"
        );
    }

    #[tokio::test]
    async fn a_unit_sees_its_caller_go_between_steps() {
        let units = units();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let work = async move {
            assert!(caller_waits().is_ok(), "the caller waits at first");
            let _ = started_tx.send(());
            let _ = released.await;
            let _ = seen_tx.send(caller_waits().is_err());
            Ok::<_, anyhow::Error>(())
        };
        let call = tokio::spawn({
            let units = units.clone();
            async move { units.run(None, work).await }
        });
        started.await.expect("the unit started");
        call.abort();
        let _ = call.await;
        release.send(()).expect("the unit waits");
        assert!(seen.await.unwrap(), "the unit saw its caller go");
        assert!(caller_waits().is_ok(), "outside a unit, the caller waits");
    }

    #[tokio::test]
    async fn a_panicking_unit_is_an_error_of_its_call() {
        let units = units();
        let answer: Result<(), anyhow::Error> = units
            .run(None, async { panic!("a bug in a use case") })
            .await;
        assert!(answer.unwrap_err().to_string().contains("did not finish"));
    }
}
