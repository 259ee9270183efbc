//! What both the runtime and the outbox library know about PostgreSQL
//! failures and sessions: one classification of every database error
//! (transient or permanent, and whether the database was reachable at
//! all), LISTEN with reconnects, the health ping, and batched prunes.
use std::time::Duration;

use sqlx::PgPool;

/// Listens on `channel` until `shutdown`, reconnecting with `backoff`.
/// `on_notify` gets each notification's payload, and `None` after every
/// (re)connect, since notifications may have been missed meanwhile.
pub async fn listen(
    pool: PgPool,
    channel: &str,
    backoff: memberflow_retry::Backoff,
    shutdown: tokio_util::sync::CancellationToken,
    mut on_notify: impl FnMut(Option<&str>),
) {
    let mut retrying = backoff.retrying();
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                retrying.reset();
                on_notify(None);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        n = l.recv() => match n {
                            Ok(n) => on_notify(Some(n.payload())),
                            Err(e) => {
                                tracing::warn!(channel, error.cause_chain = %crate::error_chain(&e), "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel, error.cause_chain = %crate::error_chain(&e), "cannot LISTEN");
            }
        }
        retrying.wait(&shutdown).await;
    }
}

/// Whether `pool` answers a trivial query within a second (health checks).
pub async fn is_alive(pool: &PgPool) -> bool {
    let ping = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Ok(_))
    )
}

/// Whether a database failure passes by itself, so the work should be
/// retried as it is, or says something about the work (bad data, a bug), so
/// retrying cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Connection trouble, contention, resource limits, a failover: retry.
    Transient,
    /// The statement or its data is wrong: retrying repeats the failure.
    Permanent,
}

/// The one classification of database errors, for both services: the
/// consumer's retry, the relay's and the status an RPC answers.
pub fn classify(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        // A connection cut while it is being set up: with TLS compiled in,
        // sqlx sends an SSLRequest first (sslmode=prefer, the default), and
        // a reset then reads as "unexpected response from SSLRequest".
        // Reconnecting is the cure; the data was never the problem.
        | sqlx::Error::Protocol(_) => Fault::Transient,
        sqlx::Error::Database(d) => d.code().map_or(Fault::Permanent, |c| classify_sqlstate(&c)),
        _ => Fault::Permanent,
    }
}

/// Classifies a PostgreSQL SQLSTATE (see the PostgreSQL manual, appendix A).
pub fn classify_sqlstate(code: &str) -> Fault {
    const TRANSIENT_CLASSES: [&str; 2] = [
        "08", // connection exception
        "53", // insufficient resources: too many connections, disk full, out of memory
    ];
    const TRANSIENT_CODES: [&str; 8] = [
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "55P03", // lock_not_available
        "57014", // query_canceled (statement_timeout, pg_cancel_backend)
        "57P01", // admin_shutdown
        "57P02", // crash_shutdown
        "57P03", // cannot_connect_now
        "25006", // read_only_sql_transaction: a standby, right after a failover
    ];
    if TRANSIENT_CLASSES.iter().any(|c| code.starts_with(c)) || TRANSIENT_CODES.contains(&code) {
        Fault::Transient
    } else {
        Fault::Permanent
    }
}

/// Whether `e` says the database could not be reached at all (no
/// connection could be had or kept: I/O, TLS, a pool timeout, SQLSTATE class
/// 08), as opposed to a fault the database itself reported. The first is
/// this process's link; the second is the database's, which every instance
/// meets alike.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08")),
        _ => false,
    }
}

/// Whether `e` passes by itself (see [`classify`]).
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Fault::Transient
}

/// Rows one prune statement deletes at most, so no prune holds its locks
/// for long.
pub const PRUNE_BATCH: i64 = 10_000;

/// Runs `batch(PRUNE_BATCH)`, one DELETE of at most that many rows that
/// returns how many it removed, until one removes fewer; returns the total.
/// Every background prune (inbox, sessions, ended sessions, erasure
/// records) deletes this way.
pub async fn prune_in_batches<F, Fut>(mut batch: F) -> sqlx::Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = batch(PRUNE_BATCH).await?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Logs what a prune of `what` did: the rows removed at info (nothing when
/// none), a failure at warn. A failed prune is retried at its next run; a
/// late one costs only disk.
pub fn log_prune(what: &str, result: sqlx::Result<u64>) {
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "{what} pruned"),
        Err(e) => tracing::warn!(
            error.cause_chain = %crate::error_chain(&e),
            "{what}: prune failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_transient() {
        let protocol = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert_eq!(classify(&protocol), Fault::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Fault::Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Fault::Permanent);
    }

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "08000", "08006", "40001", "40P01", "53300", "53100", "53200", "55P03", "57014",
            "57P01", "57P02", "57P03", "25006",
        ] {
            assert_eq!(classify_sqlstate(code), Fault::Transient, "{code}");
        }
        for code in [
            "22001", "22P02", "23505", "23502", "42P01", "42703", "XX000",
        ] {
            assert_eq!(classify_sqlstate(code), Fault::Permanent, "{code}");
        }
    }

    #[test]
    fn only_link_failures_are_unreachable() {
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        assert!(is_unreachable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn transport_errors_are_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
