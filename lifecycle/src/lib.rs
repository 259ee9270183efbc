//! How a memberflow process's background work lives and ends.
//!
//! - [`every`] and [`Ticks`]: the one loop of every periodic chore, missed
//!   ticks delayed rather than bursted after a stall.
//! - [`Workers`]: a service's named workers; the runtime's supervisor
//!   ([`Crew`]) sees the first one that ends, and how ([`WorkerEnded`]).
//! - [`Costs`]: what each worker costs (time in its polls, wake-ups),
//!   and [`spawn`] for work a worker hands to a task of its own.
//!
//! Kept apart from `memberflow-runtime` (the gRPC server, its settings and
//! telemetry) so that a library such as `memberflow-outbox` declares its
//! workers and chores without depending on a server.
mod cost;
mod every;
mod supervise;

pub use cost::{Accounted, Cost, Costs, Spent, spawn};
pub use every::{Start, Ticks, every};
pub use supervise::{Crew, Exit, WorkerEnded, WorkerExit, Workers, panic_message, panic_text};
pub use tokio_util::sync::CancellationToken;
