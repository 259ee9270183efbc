//! The inbox: the ids of events already applied, written in the same
//! transaction as their effect ([`crate::write::Tx::claim`]), so a
//! redelivery changes nothing. Old ids are pruned in the background, so it
//! does not grow without bound: a redelivery comes within minutes, and each
//! handler's state makes a much later replay a no-op anyway (a version
//! guard, a receipt recorded once).
use std::time::Duration;

use crate::Tables;

/// Deletes inbox rows received more than `retention` ago, in batches;
/// returns how many. Due ids are found through the index on `received_at`,
/// so a pass that finds nothing due costs the same at 10 rows as at 10
/// million.
pub async fn prune(pool: &sqlx::PgPool, tables: &Tables, retention: Duration) -> sqlx::Result<u64> {
    let sql = format!(
        "DELETE FROM {inbox} WHERE event_id IN (
             SELECT event_id FROM {inbox}
              WHERE received_at < now() - make_interval(secs => $1)
              LIMIT $2)",
        inbox = tables.table("inbox")
    );
    let sql = sql.as_str();
    memberflow_infra::pg::prune_in_batches(|limit| async move {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(retention.as_secs_f64())
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected())
    })
    .await
}
