//! Parked outbox rows, for operators (`memberflow-admin outbox …`) and tests:
//! list them, and put them back in the outbox.
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// One parked row, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedRow {
    /// The row's outbox id, which `outbox replay --id` takes.
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    /// The ordering key, as text.
    pub key: String,
    pub version: i64,
    pub attempts: i32,
    pub last_error: String,
    pub parked_at: DateTime<Utc>,
}

/// Every parked row of `spec`'s outbox, oldest first.
pub async fn list(pool: &PgPool, spec: &crate::OutboxSpec) -> sqlx::Result<Vec<ParkedRow>> {
    let t = &spec.tables;
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, event_id, routing_key, {key}::text AS key, version, attempts, last_error,
                parked_at
           FROM {parked} ORDER BY id",
        key = t.key_column(),
        parked = t.table("outbox_parked"),
    )))
    .fetch_all(pool)
    .await
}

/// Moves the rows `ids` (all when empty) back into the outbox, with their
/// attempts reset, together with every other parked row of the same keys,
/// in their original order, and wakes the relay (NOTIFY), which publishes
/// them at once. Returns the rows moved, as they were parked.
pub async fn replay(
    pool: &PgPool,
    spec: &crate::OutboxSpec,
    ids: &[i64],
) -> sqlx::Result<Vec<ParkedRow>> {
    let t = &spec.tables;
    let (key, parked, outbox) = (t.key_column(), t.table("outbox_parked"), t.table("outbox"));
    let mut tx = pool.begin().await?;
    let rows: Vec<ParkedRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, event_id, routing_key, {key}::text AS key, version, attempts, last_error,
                parked_at
           FROM {parked}
          WHERE cardinality($1::int8[]) = 0
             OR {key} IN (SELECT {key} FROM {parked} WHERE id = ANY($1))
          ORDER BY id
            FOR UPDATE"
    )))
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let moving: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query(AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {parked} WHERE id = ANY($1) RETURNING *)
         INSERT INTO {outbox} (event_id, routing_key, {key}, version, payload, occurred_at,
                               traceparent, tracestate)
         SELECT event_id, routing_key, {key}, version, payload, occurred_at,
                traceparent, tracestate
           FROM moved ORDER BY id"
    )))
    .bind(&moving)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // The rows are back for good; a lost wake-up only delays them to the
    // leader's next poll, so it is not the caller's error.
    if let Err(e) = crate::wake::notify(pool, spec.channel).await {
        tracing::warn!(error.cause_chain = %memberflow_infra::error_chain(&e), "replayed, but could not wake the relay; it publishes at its next poll");
    }
    Ok(rows)
}
