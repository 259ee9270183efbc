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

/// Writes the event for `member` into the outbox, inside the caller's
/// transaction. Returns the event id.
pub async fn enqueue(
    conn: &mut PgConnection,
    kind: EventKind,
    member: &Member,
) -> sqlx::Result<Uuid> {
    let event_id = Uuid::now_v7();
    // The trace of the change rides with its event.
    let trace = trace_context::current();
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at,
                             traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event_id)
    .bind(kind.routing_key())
    .bind(member.id)
    .bind(member.version)
    .bind(encode(kind, event_id, member))
    .bind(member.updated_at)
    .bind(trace.traceparent)
    .bind(trace.tracestate)
    .execute(conn)
    .await?;
    Ok(event_id)
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
