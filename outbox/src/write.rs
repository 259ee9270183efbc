//! The one way to write an event: [`Outbox`] opens the transaction a change
//! and its events share ([`Outbox::begin`], [`Tx::write`]). Committing
//! through it wakes the relay, so no caller can forget to; a forgotten wake
//! would cost up to a poll interval of latency, silently.
use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, LazyLock},
};

use chrono::{DateTime, Utc};
use memberflow_infra::trace_context;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::wake::RelayWake;

/// Writes changes with their events, and wakes the relay after each commit.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    wake: Arc<RelayWake>,
}

impl Outbox {
    pub fn new(pool: PgPool, wake: Arc<RelayWake>) -> Self {
        Self { pool, wake }
    }

    /// An outbox whose commits wake no relay: for tools and tests that write
    /// without a relay of their own in this process (the leader's poll, or a
    /// NOTIFY they send, publishes the rows).
    pub fn without_wake(pool: PgPool) -> Self {
        Self::new(pool, RelayWake::disabled())
    }

    /// The pool, for reads that write no event.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction for a change and its events.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        Ok(Tx {
            tx: self.pool.begin().await?,
            wake: self.wake.clone(),
            enqueued: false,
        })
    }

    /// Tells the relay that a statement of the caller's own, which wrote
    /// outbox rows through [`insert_columns`] and [`bind_event`], committed.
    pub fn committed(&self) {
        self.wake.committed();
    }
}

/// A transaction of [`Outbox::begin`]: a `PgConnection` for the change
/// itself, [`Self::write`] for its events, [`Self::commit`] to commit and
/// wake the relay. Dropped without a commit, it rolls back, events and all.
#[derive(Debug)]
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    wake: Arc<RelayWake>,
    enqueued: bool,
}

impl Tx {
    /// Writes `event` in this transaction. Returns its event id.
    pub async fn write(&mut self, event: NewEvent) -> sqlx::Result<Uuid> {
        bind_event(
            sqlx::query_as::<_, (Uuid,)>(sqlx::AssertSqlSafe(ENQUEUE_SQL.as_str())),
            &event,
        )
        .fetch_one(&mut *self.tx)
        .await?;
        self.enqueued = true;
        Ok(event.event_id)
    }

    /// Writes those of `events` for which `keep`, a SQL condition over the
    /// candidate row `e` (its columns as [`insert_columns`] names them),
    /// holds, in one statement. Returns how many were written.
    pub async fn write_where(&mut self, events: &[NewEvent], keep: &str) -> sqlx::Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let (columns, _) = insert_columns(1);
        let from_e: Vec<String> = columns.split(", ").map(|c| format!("e.{c}")).collect();
        let sql = format!(
            "INSERT INTO outbox ({columns})
             SELECT {from_e}
               FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::int8[], $5::bytea[],
                           $6::timestamptz[], $7::text[], $8::text[]) AS e({columns})
              WHERE {keep}",
            from_e = from_e.join(", ")
        );
        let written = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.routing_key).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.member_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.version).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.payload.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.traceparent.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| e.tracestate.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        self.enqueued |= written > 0;
        Ok(written)
    }

    /// Commits; wakes the relay if an event was written.
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await?;
        if self.enqueued {
            self.wake.committed();
        }
        Ok(())
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// An outbox row about to be written: an encoded event about a member, with
/// the trace of the change that caused it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub routing_key: &'static str,
    pub member_id: Uuid,
    pub version: i64,
    pub payload: Vec<u8>,
    pub occurred_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl NewEvent {
    /// An event with a fresh id (which `payload` encodes) and the trace of
    /// the change that caused it: what every kind of event shares.
    pub fn build(
        routing_key: &'static str,
        member_id: Uuid,
        version: i64,
        occurred_at: DateTime<Utc>,
        payload: impl FnOnce(Uuid) -> Vec<u8>,
    ) -> Self {
        let event_id = Uuid::now_v7();
        let trace = trace_context::current();
        Self {
            event_id,
            routing_key,
            member_id,
            version,
            payload: payload(event_id),
            occurred_at,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        }
    }
}

/// The outbox columns a [`NewEvent`] fills, and its parameters from `$first`
/// on, in the same order: the one definition every writer uses (a service
/// may write a change and its event in one statement of its own). Called
/// once per statement text, not per write.
pub fn insert_columns(first: usize) -> (&'static str, String) {
    let params: Vec<String> = (first..first + 8).map(|i| format!("${i}")).collect();
    (
        "event_id, routing_key, member_id, version, payload, occurred_at, traceparent, tracestate",
        params.join(", "),
    )
}

/// [`Tx::write`]'s statement.
static ENQUEUE_SQL: LazyLock<String> = LazyLock::new(|| {
    let (columns, params) = insert_columns(1);
    format!("INSERT INTO outbox ({columns}) VALUES ({params}) RETURNING event_id")
});

/// Binds `event` in [`insert_columns`] order.
pub fn bind_event<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    event: &'q NewEvent,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(event.event_id)
        .bind(event.routing_key)
        .bind(event.member_id)
        .bind(event.version)
        .bind(&event.payload)
        .bind(event.occurred_at)
        .bind(event.traceparent.as_deref())
        .bind(event.tracestate.as_deref())
}

/// One row waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub member_id: Uuid,
    pub version: i64,
    pub payload: Vec<u8>,
    pub occurred_at: DateTime<Utc>,
    /// Times this row failed on its own (see [`crate::settle`]).
    pub attempts: i32,
    /// The trace context of the change that wrote it.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl OutboxRow {
    /// The trace this row's event belongs to.
    pub fn trace(&self) -> trace_context::Carrier {
        trace_context::Carrier {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }
}
