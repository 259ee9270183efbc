//! The transactional outbox: events are written with the change that caused
//! them ([`enqueue`]) and published by the [`relay::Relay`] after commit.
pub mod parked;
pub mod publisher;
pub mod relay;
pub mod settle;
pub mod wake;

use chrono::{DateTime, Utc};
use memberflow_common::{
    amqp::{MEMBER_CREATED, MEMBER_SESSIONS_REVOKED, MEMBER_UPDATED},
    grpc::timestamp,
    proto::auth::v1 as pb,
    trace_context,
};
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::Member;

/// Which event a change emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    /// Logout or ChangePassword ended the member's sessions.
    SessionsRevoked,
}

impl EventKind {
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Created => MEMBER_CREATED,
            Self::Updated => MEMBER_UPDATED,
            Self::SessionsRevoked => MEMBER_SESSIONS_REVOKED,
        }
    }
}

/// Encodes the `kind` event for `member` at its current version. Every kind
/// carries the member's whole replicable state; created and updated share
/// one message, told apart by the routing key.
pub fn encode(kind: EventKind, event_id: Uuid, member: &Member) -> Vec<u8> {
    match kind {
        EventKind::Created | EventKind::Updated => pb::MemberChanged {
            event_id: event_id.to_string(),
            member_id: member.id.to_string(),
            nickname: member.nickname.clone(),
            region: member.region.clone(),
            version: member.version,
            occurred_at: Some(timestamp(member.updated_at)),
            sessions_not_before: member.sessions_not_before.map(timestamp),
            sessions_version: member.sessions_version,
        }
        .encode_to_vec(),
        EventKind::SessionsRevoked => pb::MemberSessionsRevoked {
            event_id: event_id.to_string(),
            member_id: member.id.to_string(),
            not_before: member.sessions_not_before.map(timestamp),
            version: member.version,
            occurred_at: Some(timestamp(member.updated_at)),
            nickname: member.nickname.clone(),
            region: member.region.clone(),
        }
        .encode_to_vec(),
    }
}

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
    /// The `kind` event for `member` as it is after the change.
    pub fn new(kind: EventKind, member: &Member) -> Self {
        let event_id = Uuid::now_v7();
        // The trace of the change rides with its event.
        let trace = trace_context::current();
        Self {
            event_id,
            routing_key: kind.routing_key(),
            member_id: member.id,
            version: member.version,
            payload: encode(kind, event_id, member),
            occurred_at: member.updated_at,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        }
    }
}

/// The outbox columns a [`NewEvent`] fills, and its parameters from `$first`
/// on, in the same order: the one definition both writers use. Called once
/// per statement text (the texts are built once, not per RPC).
pub(crate) fn insert_columns(first: usize) -> (&'static str, String) {
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
pub(crate) fn bind_event<'q, O>(
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

/// Writes the event for `member` into the outbox, inside the caller's
/// transaction. Returns the event id.
pub async fn enqueue(
    conn: &mut PgConnection,
    kind: EventKind,
    member: &Member,
) -> sqlx::Result<Uuid> {
    let event = NewEvent::new(kind, member);
    bind_event(
        sqlx::query_as::<_, (Uuid,)>(sqlx::AssertSqlSafe(ENQUEUE_SQL.as_str())),
        &event,
    )
    .fetch_one(conn)
    .await?;
    Ok(event.event_id)
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
    /// Times this row failed on its own (see [`settle`]).
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
