//! Parked outbox rows, for operators (`memberflow-admin outbox …`) and tests:
//! list them, and put them back in the outbox.
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// One parked row, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedRow {
    /// The row's outbox id, which `outbox replay --id` takes.
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub member_id: Uuid,
    pub version: i64,
    pub attempts: i32,
    pub last_error: String,
    pub parked_at: DateTime<Utc>,
}

/// Every parked row, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT id, event_id, routing_key, member_id, version, attempts, last_error, parked_at
           FROM outbox_parked ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Moves the rows `ids` (all when empty) back into the outbox, with their
/// attempts reset, together with every other parked row of the same members,
/// in their original order, and wakes the relay (NOTIFY), which publishes
/// them at once. Returns the
/// rows moved, as they were parked.
pub async fn replay(
    pool: &PgPool,
    spec: &crate::OutboxSpec,
    ids: &[i64],
) -> sqlx::Result<Vec<ParkedRow>> {
    let mut tx = pool.begin().await?;
    let rows: Vec<ParkedRow> = sqlx::query_as(
        "SELECT id, event_id, routing_key, member_id, version, attempts, last_error, parked_at
           FROM outbox_parked
          WHERE cardinality($1::int8[]) = 0
             OR member_id IN (SELECT member_id FROM outbox_parked WHERE id = ANY($1))
          ORDER BY id
            FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let moving: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query(
        "WITH moved AS (DELETE FROM outbox_parked WHERE id = ANY($1) RETURNING *)
         INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at,
                             traceparent, tracestate)
         SELECT event_id, routing_key, member_id, version, payload, occurred_at,
                traceparent, tracestate
           FROM moved ORDER BY id",
    )
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
