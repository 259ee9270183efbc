//! Inbox retention: the inbox (ids of applied events) is pruned of old ids in
//! the background, so it does not grow without bound; ended sessions whose
//! tokens have expired go in the same pass ([`crate::ended_sessions`]).
use std::time::Duration;

use memberflow_runtime::db::log_prune;
use memberflow_runtime::shutdown::CancellationToken;
use sqlx::PgPool;

use crate::settings::InboxSettings;

/// Rows deleted per statement, so no prune holds locks for long.
const PRUNE_BATCH: i64 = 10_000;

/// One prune batch: `$1` the retention in seconds, `$2` the batch size. Due
/// ids are found through the index on `received_at`, so a pass that finds
/// nothing due costs the same at 10 rows as at 10 million.
pub const PRUNE_SQL: &str = "DELETE FROM inbox WHERE event_id IN (
     SELECT event_id FROM inbox
      WHERE received_at < now() - make_interval(secs => $1)
      LIMIT $2)";

/// Deletes inbox rows received more than `retention` ago; returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(PRUNE_SQL)
            .bind(retention.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Prunes the inbox and the expired ended sessions every
/// `prune_interval_secs` (and once at start) until `shutdown`.
/// Failures are logged and retried at the next interval: a late prune costs
/// only disk space.
pub async fn run_pruner(pool: PgPool, cfg: InboxSettings, shutdown: CancellationToken) {
    let retention = Duration::from_secs(cfg.retention_secs);
    let period = Duration::from_secs(cfg.prune_interval_secs.max(1));
    memberflow_runtime::shutdown::every(period, &shutdown, || async {
        log_prune("inbox", prune(&pool, retention).await);
        log_prune(
            "expired ended sessions",
            crate::ended_sessions::prune(&pool).await,
        );
    })
    .await;
}
