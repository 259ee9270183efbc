//! The transactional outbox: events are written with the change that caused
//! them (through [`write::Outbox`], whose commits wake the relay) and
//! published by the [`relay::Relay`] after commit.
pub mod parked;
pub mod publisher;
pub mod relay;
pub mod settle;
pub mod wake;
pub mod write;

use chrono::{DateTime, Utc};
use memberflow_contract::proto::auth::v1 as pb;
use memberflow_contract::time::timestamp;
use memberflow_contract::token::session_hash;
use memberflow_contract::topology::MEMBER_CREATED;
use memberflow_contract::topology::MEMBER_DELETED;
use memberflow_contract::topology::MEMBER_SESSION_ENDED;
use memberflow_contract::topology::MEMBER_SESSIONS_REVOKED;
use memberflow_contract::topology::MEMBER_UPDATED;
use memberflow_runtime::trace_context;
use prost::Message;
use uuid::Uuid;

use crate::domain::Member;

/// Which event a change emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    /// Logout or ChangePassword ended the member's sessions.
    SessionsRevoked,
    /// DeleteAccount: the member is a tombstone (see [`encode_deleted`]).
    Deleted,
}

impl EventKind {
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Created => MEMBER_CREATED,
            Self::Updated => MEMBER_UPDATED,
            Self::SessionsRevoked => MEMBER_SESSIONS_REVOKED,
            Self::Deleted => MEMBER_DELETED,
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
        EventKind::Deleted => {
            encode_deleted(event_id, member.id, member.version, member.updated_at)
        }
    }
}

/// Encodes the MemberSessionEnded event for `ended`: the session id only
/// as its hash, never the id an access token carries.
pub fn encode_session_ended(event_id: Uuid, ended: &crate::sessions::store::Ended) -> Vec<u8> {
    pb::MemberSessionEnded {
        event_id: event_id.to_string(),
        member_id: ended.member_id.to_string(),
        session_hash: session_hash(ended.id),
        ended_at: Some(timestamp(ended.ended_at)),
        expires_at: Some(timestamp(ended.access_expires_at)),
    }
    .encode_to_vec()
}

/// The routing key of [`encode_session_ended`]'s event.
pub const SESSION_ENDED_ROUTING_KEY: &str = MEMBER_SESSION_ENDED;

/// Encodes a MemberDeleted: the id, the version and the time of the
/// deletion, and no personal data.
pub fn encode_deleted(
    event_id: Uuid,
    member_id: Uuid,
    version: i64,
    deleted_at: DateTime<Utc>,
) -> Vec<u8> {
    pb::MemberDeleted {
        event_id: event_id.to_string(),
        member_id: member_id.to_string(),
        version,
        occurred_at: Some(timestamp(deleted_at)),
    }
    .encode_to_vec()
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
