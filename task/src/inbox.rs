//! Inbox retention: the inbox (`memberflow_outbox::inbox`) is pruned of old
//! ids in the background, so it does not grow without bound; ended sessions
//! whose tokens have expired go in the same pass ([`crate::ended_sessions`]).
use std::time::Duration;

use memberflow_outbox::inbox::prune;
use memberflow_runtime::db::log_prune;
use memberflow_runtime::shutdown::CancellationToken;
use sqlx::PgPool;

use crate::settings::InboxSettings;

/// Prunes the inbox and the expired ended sessions every
/// `prune_interval_secs` (and once at start) until `shutdown`.
/// Failures are logged and retried at the next interval: a late prune costs
/// only disk space.
pub async fn run_pruner(pool: PgPool, cfg: InboxSettings, shutdown: CancellationToken) {
    let retention = Duration::from_secs(cfg.retention_secs);
    let period = Duration::from_secs(cfg.prune_interval_secs.max(1));
    memberflow_lifecycle::every(
        period,
        memberflow_lifecycle::Start::Now,
        &shutdown,
        || async {
            log_prune(
                "inbox",
                prune(&pool, &crate::erasure::SPEC.tables, retention).await,
            );
            log_prune(
                "expired ended sessions",
                crate::ended_sessions::prune(&pool).await,
            );
        },
    )
    .await;
}
