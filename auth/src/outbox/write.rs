//! The one way to write an event: [`Outbox`] opens the transaction a change
//! and its event share ([`Outbox::begin`], [`Tx::enqueue`]), or writes a
//! signup in one statement ([`Outbox::sign_up`]). Committing through it wakes
//! the relay, so no caller can forget to; a forgotten wake would cost up to a
//! poll interval of latency, silently.
use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use memberflow_runtime::trace_context;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{EventKind, encode, wake::RelayWake};
use crate::domain::{Member, NewMember};

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

    /// Inserts a new member at version 1 and its `member.created` event in
    /// one statement, so one round trip commits both or neither (a taken
    /// email fails the whole statement), then wakes the relay. Returns the
    /// member and the event id.
    pub async fn sign_up(
        &self,
        new: &NewMember,
        password_hash: &str,
    ) -> sqlx::Result<(Member, Uuid)> {
        let member = Member::signed_up(Uuid::now_v7(), new, Utc::now());
        let event = NewEvent::new(EventKind::Created, &member);
        bind_event(
            sqlx::query_as::<_, (Uuid,)>(sqlx::AssertSqlSafe(SIGN_UP_SQL.as_str()))
                .bind(member.id)
                .bind(member.email.as_str())
                .bind(password_hash)
                .bind(member.nickname.as_str())
                .bind(member.region.as_str())
                .bind(member.version)
                .bind(member.created_at),
            &event,
        )
        .fetch_one(&self.pool)
        .await?;
        self.wake.committed();
        Ok((member, event.event_id))
    }
}

/// A transaction of [`Outbox::begin`]: a `PgConnection` for the change
/// itself, [`Self::enqueue`] for its events, [`Self::commit`] to commit and
/// wake the relay. Dropped without a commit, it rolls back, events and all.
#[derive(Debug)]
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    wake: Arc<RelayWake>,
    enqueued: bool,
}

impl Tx {
    /// Writes the `kind` event for `member` as it is now, in this
    /// transaction. Returns the event id.
    pub async fn enqueue(&mut self, kind: EventKind, member: &Member) -> sqlx::Result<Uuid> {
        self.write(NewEvent::new(kind, member)).await
    }

    /// Writes the MemberSessionEnded event for `ended`, a session of
    /// `member`, in this transaction. Returns the event id.
    pub async fn enqueue_session_ended(
        &mut self,
        member: &Member,
        ended: &crate::sessions::store::Ended,
    ) -> sqlx::Result<Uuid> {
        self.write(NewEvent::session_ended(member, ended)).await
    }

    /// Writes the MemberDeleted event of `tombstone`, in this transaction.
    /// Returns the event id.
    pub async fn enqueue_deleted(
        &mut self,
        tombstone: &crate::repo::Tombstone,
    ) -> sqlx::Result<Uuid> {
        self.write(NewEvent::deleted(tombstone)).await
    }

    /// The one insert every `enqueue*` makes.
    async fn write(&mut self, event: NewEvent) -> sqlx::Result<Uuid> {
        bind_event(
            sqlx::query_as::<_, (Uuid,)>(sqlx::AssertSqlSafe(ENQUEUE_SQL.as_str())),
            &event,
        )
        .fetch_one(&mut *self.tx)
        .await?;
        self.enqueued = true;
        Ok(event.event_id)
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

/// [`Outbox::sign_up`]'s statement: the member, then its event from the row.
static SIGN_UP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let (columns, params) = insert_columns(8);
    format!(
        "WITH member AS (
             INSERT INTO members (id, email, password_hash, nickname, region, version,
                                  created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             RETURNING id)
         INSERT INTO outbox ({columns})
         SELECT {params} FROM member
         RETURNING member_id"
    )
});

/// An outbox row about to be written: the event for a member's new state,
/// encoded, with the trace of the change that caused it.
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
    /// the change that caused it: what every constructor shares.
    fn build(
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

    /// The `kind` event for `member` as it is after the change.
    pub fn new(kind: EventKind, member: &Member) -> Self {
        Self::build(
            kind.routing_key(),
            member.id,
            member.version,
            member.updated_at,
            |id| encode(kind, id, member),
        )
    }

    /// The MemberSessionEnded event for `ended`. It rides at the member's
    /// current version (it makes no new one) and takes its time from the
    /// ending.
    pub fn session_ended(member: &Member, ended: &crate::sessions::store::Ended) -> Self {
        Self::build(
            super::SESSION_ENDED_ROUTING_KEY,
            member.id,
            member.version,
            ended.ended_at,
            |id| super::encode_session_ended(id, ended),
        )
    }

    /// The MemberDeleted event for `tombstone`.
    pub fn deleted(tombstone: &crate::repo::Tombstone) -> Self {
        let t = tombstone;
        Self::build(
            EventKind::Deleted.routing_key(),
            t.id,
            t.version,
            t.deleted_at,
            |id| super::encode_deleted(id, t.id, t.version, t.deleted_at),
        )
    }
}

/// The outbox columns a [`NewEvent`] fills, and its parameters from `$first`
/// on, in the same order: the one definition both writers use. Called once
/// per statement text (the texts are built once, not per RPC).
fn insert_columns(first: usize) -> (&'static str, String) {
    let params: Vec<String> = (first..first + 8).map(|i| format!("${i}")).collect();
    (
        "event_id, routing_key, member_id, version, payload, occurred_at, traceparent, tracestate",
        params.join(", "),
    )
}

/// [`enqueue`]'s statement.
static ENQUEUE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let (columns, params) = insert_columns(1);
    format!("INSERT INTO outbox ({columns}) VALUES ({params}) RETURNING event_id")
});

/// Binds `event` in [`insert_columns`] order.
fn bind_event<'q, O>(
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
