//! Test kit for the memberflow suites: every test gets its own PostgreSQL
//! databases and RabbitMQ vhost ([`env::TestEnv`]), a TCP proxy it can cut
//! ([`proxy::TcpProxy`]), real services bound to port 0 ([`apps`]), assembled
//! into a system ([`system::System::builder`]), the requests and queries every
//! suite builds ([`fixtures`]), and the replica beside auth for the resync and
//! reconciler suites ([`replica`]).
pub mod amqp;
pub mod apps;
pub mod cluster;
pub mod env;
pub mod fixtures;
pub mod http;
pub mod nemesis;
pub mod pgbouncer;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod replica;
pub mod system;

use std::{future::Future, time::Duration};

/// Polls `check` until it yields `Some`, or panics after `timeout` naming
/// `what`. Tests wait with this, never with a guessed sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
