//! The inbox: the ids of events already applied, written in the same
//! transaction as their effect, so a redelivery changes nothing. Old ids are
//! pruned in the background, so it does not grow without bound: a
//! redelivery comes within minutes, and each handler's state makes a much
//! later replay a no-op anyway (a version guard, a receipt recorded once).
use std::time::Duration;

/// The statement that records the ids `ids_from` selects in the inbox and
/// returns those not there before (the fresh ones): a CTE of the handler's
/// own statement, so the claim and the apply are one round trip in one
/// transaction.
pub fn claim_sql(ids_from: &str) -> String {
    format!("INSERT INTO inbox (event_id) {ids_from} ON CONFLICT DO NOTHING RETURNING event_id")
}

/// One prune batch: `$1` the retention in seconds, `$2` the batch size. Due
/// ids are found through the index on `received_at`, so a pass that finds
/// nothing due costs the same at 10 rows as at 10 million.
pub const PRUNE_SQL: &str = "DELETE FROM inbox WHERE event_id IN (
     SELECT event_id FROM inbox
      WHERE received_at < now() - make_interval(secs => $1)
      LIMIT $2)";

/// Deletes inbox rows received more than `retention` ago; returns how many.
pub async fn prune(pool: &sqlx::PgPool, retention: Duration) -> sqlx::Result<u64> {
    memberflow_infra::pg::prune_in_batches(|limit| async move {
        Ok(sqlx::query(PRUNE_SQL)
            .bind(retention.as_secs_f64())
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected())
    })
    .await
}
