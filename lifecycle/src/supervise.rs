//! Named workers and the supervisor that watches them.
//!
//! Why: a service's background work (the relay, the consumer, the pruners,
//! health) used to run in a `JoinSet` joined only at shutdown, so a relay
//! that panicked left the service answering SERVING while nothing was
//! published. Here every worker has a name and returns a `Result`, and the
//! service's run loop waits on the first one to end: one that ends while the
//! service should be running is a failure of the whole process (see
//! `memberflow_runtime::startup::run`), which drains, exits non-zero and is restarted by its
//! supervisor (systemd, Kubernetes), with the worker's name and cause in the
//! log. Nothing is restarted in-process: a worker that died of a bug would
//! only die again, and a restarted process starts from a known state.
use std::{collections::HashMap, fmt};

use futures::{FutureExt as _, future::BoxFuture};
use tokio::task::{Id, JoinError, JoinSet};

use crate::cost::{Accounted, Costs};

/// How a worker ends: `()` for a loop that only stops at shutdown, or a
/// `Result` whose error is why it could not go on.
pub trait WorkerExit: Send + 'static {
    fn into_result(self) -> anyhow::Result<()>;
}

impl WorkerExit for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<E: Into<anyhow::Error> + Send + 'static> WorkerExit for Result<(), E> {
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

/// A service's workers, each under a name, not yet started.
#[derive(Default)]
pub struct Workers {
    list: Vec<(&'static str, BoxFuture<'static, anyhow::Result<()>>)>,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Workers {
    /// Adds `work` under `name`. It should run until the service's shutdown
    /// token is cancelled: ending sooner, however, stops the service.
    pub fn add<F>(&mut self, name: &'static str, work: F) -> &mut Self
    where
        F: Future + Send + 'static,
        F::Output: WorkerExit,
    {
        self.list
            .push((name, work.map(WorkerExit::into_result).boxed()));
        self
    }

    /// Adds every worker of `more` (a library's, such as the relay's).
    pub fn extend<F>(&mut self, more: impl IntoIterator<Item = (&'static str, F)>) -> &mut Self
    where
        F: Future + Send + 'static,
        F::Output: WorkerExit,
    {
        for (name, work) in more {
            self.add(name, work);
        }
        self
    }

    /// Adds every worker of `other`.
    pub fn append(&mut self, other: Workers) -> &mut Self {
        self.list.extend(other.list);
        self
    }

    /// The names, in the order added.
    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|(name, _)| *name).collect()
    }
}

/// Why a worker ended.
#[derive(Debug)]
pub enum Exit {
    /// It returned `Ok` on its own.
    Returned,
    /// It returned this error.
    Failed(anyhow::Error),
    /// It panicked with this message.
    Panicked(String),
}

/// A worker that ended while the service was running: the error the
/// service's run returns, so `main` exits non-zero naming it.
#[derive(Debug, thiserror::Error)]
#[error("worker {name:?} {exit}")]
pub struct WorkerEnded {
    pub name: &'static str,
    pub exit: Exit,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Returned => f.write_str("returned while the service was running"),
            Self::Failed(e) => write!(f, "failed: {e:#}"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
        }
    }
}

/// The running workers, as the supervisor sees them.
#[derive(Default)]
pub struct Crew {
    running: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    costs: Costs,
}

impl Crew {
    /// A crew whose workers' costs go into `costs`, under their names.
    pub fn new(costs: Costs) -> Self {
        Self {
            costs,
            ..Self::default()
        }
    }

    /// Spawns every worker of `workers`, each accounted under its name.
    pub fn start(&mut self, workers: Workers) {
        for (name, work) in workers.list {
            let handle = self
                .running
                .spawn(Accounted::new(self.costs.of(name), work));
            self.names.insert(handle.id(), name);
        }
    }

    /// The next worker to end, with how; `None` once none is left. Cancel
    /// safe (`JoinSet::join_next_with_id` is).
    pub async fn next_end(&mut self) -> Option<WorkerEnded> {
        let joined = self.running.join_next_with_id().await?;
        let (id, exit) = match joined {
            Ok((id, Ok(()))) => (id, Exit::Returned),
            Ok((id, Err(e))) => (id, Exit::Failed(e)),
            Err(e) => (e.id(), panic_exit(e)),
        };
        let name = self.names.remove(&id).unwrap_or("unnamed");
        Some(WorkerEnded { name, exit })
    }

    /// Whether no worker is left.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The workers still running, by name.
    pub fn running(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.names.values().copied().collect();
        names.sort_unstable();
        names
    }

    /// Aborts every worker still running (a drain that ran out of time);
    /// they end at their next `.await`.
    pub fn abort_all(&mut self) {
        self.running.abort_all();
    }
}

/// How a task that ended with `e` ended: a panic and its message, or a
/// cancellation (only as the runtime shuts down).
fn panic_exit(e: JoinError) -> Exit {
    if e.is_panic() {
        Exit::Panicked(panic_message(e))
    } else {
        Exit::Failed(e.into())
    }
}

/// What a task that panicked said: the message if it was a string (as
/// `panic!` and `expect` make), else that it had none; for a task cancelled
/// instead, that it was.
pub fn panic_message(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => panic_text(payload.as_ref()),
        Err(cancelled) => cancelled.to_string(),
    }
}

/// A panic payload's message (as `catch_unwind` and a `JoinError` give it).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_way_of_ending_is_named_and_told_apart() {
        let mut workers = Workers::default();
        workers
            .add("returns", async {})
            .add("fails", async {
                Err::<(), _>(anyhow::anyhow!("no broker"))
            })
            .add("panics", async {
                if true {
                    panic!("index out of bounds");
                }
            });
        assert_eq!(workers.names(), ["returns", "fails", "panics"]);
        let mut crew = Crew::default();
        crew.start(workers);
        let mut ended = Vec::new();
        while let Some(end) = crew.next_end().await {
            ended.push(end.to_string());
        }
        ended.sort();
        assert_eq!(
            ended,
            [
                r#"worker "fails" failed: no broker"#,
                r#"worker "panics" panicked: index out of bounds"#,
                r#"worker "returns" returned while the service was running"#,
            ]
        );
        assert!(crew.is_empty());
    }
}
