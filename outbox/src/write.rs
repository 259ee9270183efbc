//! The one way to write an event: [`Outbox`] opens the transaction a change
//! and its events share ([`Outbox::begin`], [`Tx::write`]), and
//! [`RowAndEvent`] writes a row of the service's and its event in one
//! statement. Committing through either wakes the relay, so no caller can
//! forget to; a forgotten wake would cost up to a poll interval of latency,
//! silently. The same transaction claims inbox ids ([`Tx::claim`]), so a
//! consumer's apply, its inbox and the events it writes commit together.
//!
//! Every statement is built once per [`Outbox`], for its [`Tables`]; no SQL
//! text of the library's reaches the caller, and the caller's reaches the
//! library only as the row statement of a [`RowAndEvent`].
use std::{
    marker::PhantomData,
    ops::{Deref, DerefMut},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use memberflow_infra::trace_context;
use sqlx::{PgConnection, PgPool, Postgres, Transaction, postgres::PgArguments, query::Query};
use uuid::Uuid;

use crate::{
    OutboxSpec,
    schema::{OrderingKey, Tables},
    wake::RelayWake,
};

/// The outbox columns a [`NewEvent`] fills, in bind order.
const COLUMNS: [&str; 8] = [
    "event_id",
    "routing_key",
    "{key}",
    "version",
    "payload",
    "occurred_at",
    "traceparent",
    "tracestate",
];

/// The statements of one outbox, rendered for its tables.
#[derive(Debug)]
struct Statements {
    /// The outbox columns, the key's named.
    columns: String,
    /// [`Tx::write`].
    write_one: String,
    /// [`Tx::write_all`].
    write_all: String,
    /// [`Tx::claim`].
    claim: String,
    /// [`Tx::forget`]: the outbox's rows of a key, then the parked ones.
    forget: [String; 2],
}

impl Statements {
    fn new(tables: Tables) -> Self {
        let outbox = tables.table("outbox");
        let columns = COLUMNS
            .map(|c| if c == "{key}" { tables.key_column() } else { c })
            .join(", ");
        let params = params(1);
        let key_type = tables.key_type();
        Self {
            write_one: format!(
                "INSERT INTO {outbox} ({columns}) VALUES ({params}) RETURNING event_id"
            ),
            write_all: format!(
                "INSERT INTO {outbox} ({columns})
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::{key_type}[], $4::int8[],
                                      $5::bytea[], $6::timestamptz[], $7::text[], $8::text[])"
            ),
            claim: format!(
                "INSERT INTO {inbox} (event_id) SELECT * FROM UNNEST($1::uuid[])
                 ON CONFLICT DO NOTHING RETURNING event_id",
                inbox = tables.table("inbox")
            ),
            forget: ["outbox", "outbox_parked"].map(|t| {
                format!(
                    "DELETE FROM {} WHERE {} = $1",
                    tables.table(t),
                    tables.key_column()
                )
            }),
            columns,
        }
    }
}

/// `$first, …, $first+7`: a [`NewEvent`]'s parameters.
fn params(first: usize) -> String {
    (first..first + COLUMNS.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes changes with their events, and wakes the relay after each commit
/// that wrote one. `K` is the ordering key's type (see [`OrderingKey`]).
#[derive(Debug)]
pub struct Outbox<K = Uuid> {
    pool: PgPool,
    wake: Arc<RelayWake>,
    statements: Arc<Statements>,
    _key: PhantomData<fn() -> K>,
}

impl<K> Clone for Outbox<K> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            wake: self.wake.clone(),
            statements: self.statements.clone(),
            _key: PhantomData,
        }
    }
}

impl<K: OrderingKey> Outbox<K> {
    /// The outbox of `spec` on `pool`, whose commits wake the relay through
    /// `wake`.
    ///
    /// # Panics
    /// When `K` is not the type of `spec`'s key column: a programming error,
    /// caught at start-up.
    pub fn new(pool: PgPool, wake: Arc<RelayWake>, spec: &OutboxSpec) -> Self {
        assert_eq!(
            K::SQL_TYPE,
            spec.tables.key_type(),
            "the outbox's key type must be its key column's"
        );
        Self {
            pool,
            wake,
            statements: Arc::new(Statements::new(spec.tables)),
            _key: PhantomData,
        }
    }

    /// An outbox whose commits wake no relay: for tools and tests that write
    /// without a relay of their own in this process (the leader's poll, or a
    /// NOTIFY they send, publishes the rows).
    pub fn without_wake(pool: PgPool, spec: &OutboxSpec) -> Self {
        Self::new(pool, RelayWake::disabled(), spec)
    }

    /// The pool, for reads that write no event.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction for a change and its events.
    pub async fn begin(&self) -> sqlx::Result<Tx<K>> {
        Ok(Tx {
            tx: self.pool.begin().await?,
            outbox: self.clone(),
            enqueued: false,
        })
    }
}

/// A transaction of [`Outbox::begin`]: a `PgConnection` for the change
/// itself, [`Self::write`] for its events, [`Self::claim`] for inbox ids,
/// [`Self::commit`] to commit and wake the relay. Dropped without a commit,
/// it rolls back, events and all.
#[derive(Debug)]
pub struct Tx<K = Uuid> {
    tx: Transaction<'static, Postgres>,
    outbox: Outbox<K>,
    enqueued: bool,
}

impl<K: OrderingKey> Tx<K> {
    /// Writes `event` in this transaction. Returns its event id.
    pub async fn write(&mut self, event: NewEvent<K>) -> sqlx::Result<Uuid> {
        let statements = self.outbox.statements.clone();
        event
            .bind(sqlx::query(sqlx::AssertSqlSafe(
                statements.write_one.as_str(),
            )))
            .execute(&mut *self.tx)
            .await?;
        self.enqueued = true;
        Ok(event.event_id)
    }

    /// Writes `events` in this transaction, in one statement, in their
    /// order. Returns how many were written.
    pub async fn write_all(&mut self, events: &[NewEvent<K>]) -> sqlx::Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let statements = self.outbox.statements.clone();
        let written = sqlx::query(sqlx::AssertSqlSafe(statements.write_all.as_str()))
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.routing_key).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.key.clone()).collect::<Vec<_>>())
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

    /// Records `event_ids` in the inbox, in this transaction, and returns
    /// those not there before (the fresh ones), each once: apply only
    /// those, one event per id (a batch may hold two copies of one event,
    /// a republish after a lost confirm), and a redelivery changes nothing.
    pub async fn claim(&mut self, event_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let statements = self.outbox.statements.clone();
        sqlx::query_scalar(sqlx::AssertSqlSafe(statements.claim.as_str()))
            .bind(event_ids)
            .fetch_all(&mut *self.tx)
            .await
    }

    /// Deletes every event of `key` not yet published, pending or parked,
    /// in this transaction: for a change that makes them moot and must not
    /// let them out (an erasure: their bodies hold what it erases).
    /// Returns how many were deleted.
    pub async fn forget(&mut self, key: &K) -> sqlx::Result<u64> {
        let statements = self.outbox.statements.clone();
        let mut deleted = 0;
        for sql in &statements.forget {
            deleted += sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(key.clone())
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// Commits; wakes the relay if an event was written.
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await?;
        if self.enqueued {
            self.outbox.wake.committed();
        }
        Ok(())
    }
}

impl<K> Deref for Tx<K> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl<K> DerefMut for Tx<K> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// One statement that inserts a row of the service's own and the event
/// about it, so one round trip commits both or neither (auth's SignUp:
/// the member and its `member.created`).
///
/// The service gives its row statement, an `INSERT … RETURNING` with
/// parameters `$1…$n`; the event's parameters follow. The event is written
/// only if the row statement returned a row (an `ON CONFLICT DO NOTHING`
/// that did nothing writes no event). Built once, executed many times.
#[derive(Debug)]
pub struct RowAndEvent<K = Uuid> {
    sql: String,
    _key: PhantomData<fn() -> K>,
}

impl<K: OrderingKey> RowAndEvent<K> {
    /// The statement for `spec`'s tables around `row`, an `INSERT …
    /// RETURNING …` (any columns) whose parameters are `$1` to
    /// `$row_params`.
    ///
    /// # Panics
    /// When `K` is not the type of `spec`'s key column (as [`Outbox::new`]).
    pub fn new(spec: &OutboxSpec, row: &str, row_params: usize) -> Self {
        assert_eq!(
            K::SQL_TYPE,
            spec.tables.key_type(),
            "the key type must be its column's"
        );
        let statements = Statements::new(spec.tables);
        Self {
            sql: format!(
                "WITH row AS ({row})
                 INSERT INTO {outbox} ({columns})
                 SELECT {params} FROM row LIMIT 1",
                outbox = spec.tables.table("outbox"),
                columns = statements.columns,
                params = params(row_params + 1),
            ),
            _key: PhantomData,
        }
    }

    /// Runs the statement as a transaction of its own: `bind_row` binds the
    /// row's parameters in order, then `event`'s follow. Wakes the relay
    /// when it wrote the event; returns whether it did.
    pub async fn execute<'q>(
        &'q self,
        outbox: &Outbox<K>,
        bind_row: impl FnOnce(Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>,
        event: &'q NewEvent<K>,
    ) -> sqlx::Result<bool> {
        let query = bind_row(sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str())));
        let written = event
            .bind(query)
            .execute(&outbox.pool)
            .await?
            .rows_affected()
            > 0;
        if written {
            outbox.wake.committed();
        }
        Ok(written)
    }
}

/// An outbox row about to be written: an encoded event, the key that orders
/// it, and the trace of the change that caused it.
#[derive(Debug, Clone)]
pub struct NewEvent<K = Uuid> {
    pub event_id: Uuid,
    pub routing_key: &'static str,
    /// The ordering key: events of one key are published in commit order.
    pub key: K,
    pub version: i64,
    pub payload: Vec<u8>,
    pub occurred_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl<K: OrderingKey> NewEvent<K> {
    /// An event with a fresh id (which `payload` encodes) and the trace of
    /// the change that caused it: what every kind of event shares.
    pub fn build(
        routing_key: &'static str,
        key: K,
        version: i64,
        occurred_at: DateTime<Utc>,
        payload: impl FnOnce(Uuid) -> Vec<u8>,
    ) -> Self {
        let event_id = Uuid::now_v7();
        let trace = trace_context::current();
        Self {
            event_id,
            routing_key,
            key,
            version,
            payload: payload(event_id),
            occurred_at,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        }
    }

    /// Binds this event's parameters, in [`COLUMNS`] order.
    fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(self.event_id)
            .bind(self.routing_key)
            .bind(self.key.clone())
            .bind(self.version)
            .bind(&self.payload)
            .bind(self.occurred_at)
            .bind(self.traceparent.as_deref())
            .bind(self.tracestate.as_deref())
    }
}

/// One row waiting to be published, as the relay reads it: the key as
/// text, whatever its type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    /// The ordering key, as text (`key::text`).
    pub key: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: Tables = Tables::new::<i64>("order_id").in_schema("shop");

    #[test]
    fn statements_name_the_key_column_and_the_schema() {
        let s = Statements::new(ORDERS);
        assert!(
            s.write_one
                .starts_with("INSERT INTO shop.outbox (event_id, routing_key, order_id, version")
        );
        assert!(s.write_all.contains("$3::bigint[]"));
        assert!(s.claim.starts_with("INSERT INTO shop.inbox (event_id)"));
    }

    #[test]
    fn event_parameters_follow_the_row_statement() {
        assert_eq!(params(8), "$8, $9, $10, $11, $12, $13, $14, $15");
    }
}
