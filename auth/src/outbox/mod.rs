//! auth's transactional outbox: member events are written with the change
//! that caused them (through [`write::Outbox`], whose commits wake the
//! relay) and published to `member.events` by the [`relay::Relay`] after
//! commit. The machinery is `memberflow_outbox`, shared with task; what is
//! auth's own is here: which events, how they are encoded, and where they go
//! ([`SPEC`]).
pub mod write;

pub use memberflow_outbox::{OutboxSpec, Tables, parked, publisher, relay, settle, wake};

use chrono::{DateTime, Utc};
use memberflow_contract::proto::auth::v1 as pb;
use memberflow_contract::time::timestamp;
use memberflow_contract::token::session_hash;
use memberflow_contract::topology::MEMBER_CREATED;
use memberflow_contract::topology::MEMBER_DELETED;
use memberflow_contract::topology::MEMBER_SESSION_ENDED;
use memberflow_contract::topology::MEMBER_SESSIONS_REVOKED;
use memberflow_contract::topology::MEMBER_UPDATED;
use memberflow_contract::topology::{EXCHANGE, TASK_SERVICE};
use prost::Message;
use uuid::Uuid;

use crate::domain::Member;

/// Where auth's outbox lives (its database's `search_path`, ordered by
/// member: the layout its tables had before the library owned them), where
/// its relay publishes, and the channel that wakes it.
pub const SPEC: OutboxSpec = OutboxSpec {
    tables: Tables::new::<Uuid>("member_id"),
    key_header: "member_id",
    exchange: EXCHANGE,
    channel: "auth_outbox",
    connection_name: "auth.outbox-relay",
    consumers: TASK_SERVICE,
};

/// Which event a change emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    /// Logout or ChangePassword ended the member's sessions. (A permission
    /// change ends them too, but is an Updated: the member changed.)
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
            role: member.role.clone(),
            suspension: suspension(member),
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
            role: member.role.clone(),
            suspension: suspension(member),
        }
        .encode_to_vec(),
        EventKind::Deleted => {
            encode_deleted(event_id, member.id, member.version, member.updated_at)
        }
    }
}

/// The member's suspension as every message carrying the member has it.
pub fn suspension(member: &Member) -> Option<pb::Suspension> {
    pb_suspension(member.suspended_at, member.suspended_reason.as_deref())
}

/// A suspension on the wire: set only while suspended.
pub fn pb_suspension(at: Option<DateTime<Utc>>, reason: Option<&str>) -> Option<pb::Suspension> {
    at.map(|since| pb::Suspension {
        reason: reason.unwrap_or_default().to_owned(),
        since: Some(timestamp(since)),
    })
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
