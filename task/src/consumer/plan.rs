//! What a delivery of `member.events` is, from its routing key and body
//! alone: task's half of the consumer's decisions (what to do with a batch
//! is `memberflow_outbox::consumer::plan`'s, shared with auth).
use memberflow_contract::proto::auth::v1 as pb;
use memberflow_contract::time::from_timestamp;
use memberflow_contract::topology::MEMBER_CREATED;
use memberflow_contract::topology::MEMBER_DELETED;
use memberflow_contract::topology::MEMBER_SESSION_ENDED;
use memberflow_contract::topology::MEMBER_SESSIONS_REVOKED;
use memberflow_contract::topology::MEMBER_UPDATED;
pub use memberflow_outbox::consumer::plan::Poison;
use memberflow_outbox::consumer::plan::invalid;
use prost::Message;
use uuid::Uuid;

use crate::domain::Access;
use crate::replica::{MemberEvent, ReplicaEvent, SessionEnded};

/// What one delivery of `member.events` is.
pub type Triage = memberflow_outbox::consumer::plan::Triage<ReplicaEvent>;

/// Longest nickname auth accepts, in characters.
const MAX_NICKNAME_CHARS: usize = 32;
/// Longest region name kept; IANA names are far shorter.
const MAX_REGION_CHARS: usize = 64;

/// Sorts a delivery into [`Triage`]. Unknown protobuf fields are ignored by
/// decoding, which is what lets auth add fields. The region is kept as given:
/// a zone this host's tzdata does not know yet is resolved (or refused) when
/// a task is created, not dropped here.
pub fn triage(routing_key: &str, body: &[u8]) -> Triage {
    match routing_key {
        MEMBER_CREATED | MEMBER_UPDATED => apply_or_poison(decode(body).map(Into::into)),
        MEMBER_SESSIONS_REVOKED => apply_or_poison(decode_revoked(body).map(Into::into)),
        MEMBER_SESSION_ENDED => {
            apply_or_poison(decode_session_ended(body).map(ReplicaEvent::SessionEnded))
        }
        MEMBER_DELETED => apply_or_poison(decode_deleted(body).map(Into::into)),
        other => Triage::Unknown(other.to_owned()),
    }
}

/// A MemberDeleted: the member's tombstone at `version`. It carries no
/// nickname or region, so it skips [`state`]'s checks of them.
fn decode_deleted(body: &[u8]) -> Result<MemberEvent, Poison> {
    let e = pb::MemberDeleted::decode(body).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|_| invalid("event_id", "not a UUID"))?;
    let member_id =
        Uuid::parse_str(&e.member_id).map_err(|_| invalid("member_id", "not a UUID"))?;
    if e.version < 1 {
        return Err(invalid("version", "must be at least 1"));
    }
    let occurred_at = e
        .occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("occurred_at", "missing or out of range"))?;
    Ok(MemberEvent {
        event_id,
        member_id,
        nickname: String::new(),
        region: String::new(),
        version: e.version,
        occurred_at,
        sessions_not_before: None,
        sessions_version: 0,
        deleted: true,
        access: Access::member(),
    })
}

fn apply_or_poison(decoded: Result<ReplicaEvent, Poison>) -> Triage {
    Triage::decoded(decoded)
}

/// Longest `session_hash`: a base64url SHA-256 is 43 characters.
const SESSION_HASH_CHARS: usize = 43;

/// A MemberSessionEnded: which session (by hash) of which member, until
/// when its tokens could be presented.
fn decode_session_ended(body: &[u8]) -> Result<SessionEnded, Poison> {
    let e = pb::MemberSessionEnded::decode(body).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|_| invalid("event_id", "not a UUID"))?;
    let member_id =
        Uuid::parse_str(&e.member_id).map_err(|_| invalid("member_id", "not a UUID"))?;
    if e.session_hash.len() != SESSION_HASH_CHARS
        || !e
            .session_hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid("session_hash", "not a base64url SHA-256"));
    }
    let ended_at = e
        .ended_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("ended_at", "missing or out of range"))?;
    let expires_at = e
        .expires_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("expires_at", "missing or out of range"))?;
    Ok(SessionEnded {
        event_id,
        member_id,
        session_hash: e.session_hash,
        ended_at,
        expires_at,
    })
}

fn decode(body: &[u8]) -> Result<MemberEvent, Poison> {
    let e = pb::MemberChanged::decode(body).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let sessions_not_before = e.sessions_not_before.as_ref().map(from_timestamp);
    if sessions_not_before.is_some_and(|t| t.is_none()) {
        return Err(invalid("sessions_not_before", "out of range"));
    }
    let access = Access::from_wire(e.role, e.suspension).map_err(|(f, why)| invalid(f, why))?;
    state(
        (&e.event_id, &e.member_id, e.nickname, e.region, e.version),
        e.occurred_at.as_ref(),
        sessions_not_before.flatten(),
        e.sessions_version,
        access,
    )
}

/// A MemberSessionsRevoked: the member's state at `version`, whose sessions
/// end at `not_before`.
fn decode_revoked(body: &[u8]) -> Result<MemberEvent, Poison> {
    let e =
        pb::MemberSessionsRevoked::decode(body).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let not_before = e
        .not_before
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("not_before", "missing or out of range"))?;
    let access = Access::from_wire(e.role, e.suspension).map_err(|(f, why)| invalid(f, why))?;
    state(
        (&e.event_id, &e.member_id, e.nickname, e.region, e.version),
        e.occurred_at.as_ref(),
        Some(not_before),
        e.version,
        access,
    )
}

/// Validates the member state every event kind carries.
fn state(
    (event_id, member_id, nickname, region, version): (&str, &str, String, String, i64),
    occurred_at: Option<&prost_types::Timestamp>,
    sessions_not_before: Option<chrono::DateTime<chrono::Utc>>,
    sessions_version: i64,
    access: Access,
) -> Result<MemberEvent, Poison> {
    let event_id = Uuid::parse_str(event_id).map_err(|_| invalid("event_id", "not a UUID"))?;
    let member_id = Uuid::parse_str(member_id).map_err(|_| invalid("member_id", "not a UUID"))?;
    if version < 1 {
        return Err(invalid("version", "must be at least 1"));
    }
    if !(0..=version).contains(&sessions_version) {
        return Err(invalid(
            "sessions_version",
            "must be 0 to the event's version",
        ));
    }
    if nickname.trim().is_empty() || nickname.chars().count() > MAX_NICKNAME_CHARS {
        return Err(invalid("nickname", "must be 1 to 32 characters"));
    }
    if region.trim().is_empty() || region.chars().count() > MAX_REGION_CHARS {
        return Err(invalid("region", "must be 1 to 64 characters"));
    }
    let occurred_at = occurred_at
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("occurred_at", "missing or out of range"))?;
    Ok(MemberEvent {
        event_id,
        member_id,
        nickname,
        region,
        version,
        occurred_at,
        sessions_not_before,
        sessions_version,
        deleted: false,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use memberflow_contract::time::timestamp;

    fn body(f: impl FnOnce(&mut pb::MemberChanged)) -> Vec<u8> {
        let mut e = pb::MemberChanged {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            nickname: "Ann".into(),
            region: "Asia/Seoul".into(),
            version: 1,
            occurred_at: Some(timestamp(chrono::Utc::now())),
            ..Default::default()
        };
        f(&mut e);
        e.encode_to_vec()
    }

    #[test]
    fn valid_events_of_both_kinds_are_applied() {
        for key in [MEMBER_CREATED, MEMBER_UPDATED] {
            assert!(
                matches!(triage(key, &body(|_| {})), Triage::Apply(_)),
                "{key}"
            );
        }
    }

    #[test]
    fn sessions_revoked_carries_the_state_and_its_instant() {
        let now = chrono::Utc::now();
        let revoked = pb::MemberSessionsRevoked {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            not_before: Some(timestamp(now)),
            version: 4,
            occurred_at: Some(timestamp(now)),
            nickname: "Ann".into(),
            region: "Asia/Seoul".into(),
            ..Default::default()
        };
        let Triage::Apply(ReplicaEvent::Member(e)) =
            triage(MEMBER_SESSIONS_REVOKED, &revoked.encode_to_vec())
        else {
            panic!("a valid revocation is applied");
        };
        assert_eq!((e.version, e.sessions_version), (4, 4));
        assert_eq!(e.sessions_not_before, Some(now));
        let missing = pb::MemberSessionsRevoked {
            not_before: None,
            ..revoked
        };
        assert!(matches!(
            triage(MEMBER_SESSIONS_REVOKED, &missing.encode_to_vec()),
            Triage::Poison(_)
        ));
    }

    #[test]
    fn member_deleted_is_a_tombstone_without_personal_data() {
        let e = pb::MemberDeleted {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            version: 4,
            occurred_at: Some(timestamp(chrono::Utc::now())),
        };
        let Triage::Apply(ReplicaEvent::Member(applied)) =
            triage(MEMBER_DELETED, &e.encode_to_vec())
        else {
            panic!("not applied");
        };
        assert!(applied.deleted);
        assert_eq!((applied.version, applied.nickname.as_str()), (4, ""));
        let broken = pb::MemberDeleted {
            version: 0,
            ..e.clone()
        };
        assert!(matches!(
            triage(MEMBER_DELETED, &broken.encode_to_vec()),
            Triage::Poison(_)
        ));
        let timeless = pb::MemberDeleted {
            occurred_at: None,
            ..e
        };
        assert!(matches!(
            triage(MEMBER_DELETED, &timeless.encode_to_vec()),
            Triage::Poison(_)
        ));
    }

    #[test]
    fn session_ended_carries_a_hash_and_an_expiry_never_a_session_id() {
        let now = chrono::Utc::now();
        let hash = memberflow_contract::token::session_hash(Uuid::new_v4());
        let ended = pb::MemberSessionEnded {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            session_hash: hash.clone(),
            ended_at: Some(timestamp(now)),
            expires_at: Some(timestamp(now + chrono::Duration::minutes(15))),
        };
        let Triage::Apply(ReplicaEvent::SessionEnded(e)) =
            triage(MEMBER_SESSION_ENDED, &ended.encode_to_vec())
        else {
            panic!("a valid session end is applied");
        };
        assert_eq!(e.session_hash, hash);
        assert_eq!(e.expires_at, now + chrono::Duration::minutes(15));
        for broken in [
            pb::MemberSessionEnded {
                session_hash: Uuid::new_v4().to_string(),
                ..ended.clone()
            },
            pb::MemberSessionEnded {
                expires_at: None,
                ..ended.clone()
            },
            pb::MemberSessionEnded {
                member_id: "x".into(),
                ..ended.clone()
            },
        ] {
            assert!(matches!(
                triage(MEMBER_SESSION_ENDED, &broken.encode_to_vec()),
                Triage::Poison(_)
            ));
        }
    }

    #[test]
    fn unknown_kinds_are_skipped_not_poison() {
        assert_eq!(
            triage("member.suspended", &body(|_| {})),
            Triage::Unknown("member.suspended".into())
        );
        assert_eq!(
            triage("member.renamed", b"not even protobuf"),
            Triage::Unknown("member.renamed".into())
        );
    }

    #[test]
    fn a_zone_unknown_to_this_tzdata_is_kept_as_given() {
        let Triage::Apply(ReplicaEvent::Member(e)) =
            triage(MEMBER_UPDATED, &body(|e| e.region = "Mars/Olympus".into()))
        else {
            panic!("an unknown zone is not poison");
        };
        assert_eq!(e.region, "Mars/Olympus");
    }

    #[test]
    fn broken_events_are_poison() {
        let cases: [(&str, Vec<u8>); 6] = [
            ("garbage", vec![0xff, 0xff, 0xff]),
            ("event id", body(|e| e.event_id = "x".into())),
            ("member id", body(|e| e.member_id = String::new())),
            ("version", body(|e| e.version = 0)),
            ("nickname", body(|e| e.nickname = " ".into())),
            ("timestamp", body(|e| e.occurred_at = None)),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(triage(MEMBER_CREATED, &bytes), Triage::Poison(_)),
                "{what}"
            );
        }
    }
}
