//! Sessions auth ended one by one (MemberSessionEnded): task refuses an
//! access token whose `sid` hashes to an entry. Entries are written by the
//! consumer (`replica::apply`) and pruned here once the session's last
//! access token has expired, so the table holds at most the sessions ended
//! within one access-token lifetime (plus a prune interval).
use memberflow_contract::token::session_hash;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// Whether session `id` has ended, as far as this replica knows: one
/// primary-key read, by the id's hash (the table never holds an id).
pub async fn has_ended<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ended_sessions WHERE session_hash = $1)")
        .bind(session_hash(id))
        .fetch_one(db)
        .await
}

/// Deletes the entries whose sessions' access tokens have all expired
/// (found through the index on `expires_at`); returns how many.
pub async fn prune(pool: &PgPool) -> sqlx::Result<u64> {
    memberflow_runtime::db::prune_in_batches(|limit| async move {
        Ok(sqlx::query(
            "DELETE FROM ended_sessions WHERE session_hash IN (
                 SELECT session_hash FROM ended_sessions WHERE expires_at < now() LIMIT $1)",
        )
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}
