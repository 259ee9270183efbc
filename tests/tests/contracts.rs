//! The event contract between auth and task, in both directions (see
//! docs/contracts.md): today's task applies what a newer auth may send, an
//! event with fields it does not know, and the oldest event bytes auth ever
//! published (frozen in tests/fixtures/events/).
use memberflow_tests::system::spawn_task_alone;
use std::time::Duration;

use memberflow_contract::proto::auth::v1 as pb;
use memberflow_contract::time::timestamp;
use memberflow_contract::topology::MEMBER_CREATED;
use memberflow_contract::topology::MEMBER_SESSION_ENDED;
use memberflow_contract::topology::MEMBER_SESSIONS_REVOKED;
use memberflow_contract::topology::MEMBER_UPDATED;
use memberflow_contract::topology::QUEUE;
use memberflow_tests::{amqp::RawPublisher, apps::TestTask, env::TestEnv, eventually};
use prost::Message;
use sqlx::PgPool;
use task::{
    ConsistencyMode,
    consumer::plan::{Triage, triage},
    replica::{MemberEvent, ReplicaEvent},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Fields a newer auth might add to an event, one of each wire type
/// (length-delimited, varint, 64- and 32-bit). Protobuf concatenation is a
/// merge, so an event's bytes followed by these are exactly what that auth
/// would publish. (Tags 9 and 10 were these until roles took them in
/// 2026-12: the tags here are ones no event uses yet.)
#[derive(Clone, PartialEq, prost::Message)]
struct AddedByNewerAuth {
    #[prost(string, tag = "20")]
    locale: String,
    #[prost(int64, tag = "21")]
    plan_version: i64,
    #[prost(fixed64, tag = "22")]
    checksum: u64,
    #[prost(float, tag = "23")]
    score: f32,
    #[prost(bytes = "vec", tag = "1000")]
    extension: Vec<u8>,
}

fn newer(event: &impl Message) -> Vec<u8> {
    let mut body = event.encode_to_vec();
    AddedByNewerAuth {
        locale: "ko-KR".into(),
        plan_version: 3,
        checksum: u64::MAX,
        score: 0.5,
        extension: vec![0x0a, 0x02, b'h', b'i'],
    }
    .encode(&mut body)
    .expect("a Vec grows");
    body
}

fn applied(routing_key: &str, body: &[u8]) -> MemberEvent {
    match triage(routing_key, body) {
        Triage::Apply(ReplicaEvent::Member(e)) => e,
        other => panic!("{routing_key}: not applied: {other:?}"),
    }
}

async fn replica_row(pool: &PgPool, member: Uuid) -> Option<(i64, String, String)> {
    sqlx::query_as("SELECT version, nickname, region FROM members WHERE id = $1")
        .bind(member)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Waits until the replica holds `member` at `version`, then checks that
/// nothing was dead-lettered or left behind.
async fn assert_replicated(
    pool: &PgPool,
    task: &TestTask,
    member: Uuid,
    expected: (i64, &str, &str),
) {
    let row = eventually("the event applied", WAIT, || async {
        replica_row(pool, member)
            .await
            .filter(|(v, _, _)| *v == expected.0)
    })
    .await;
    assert_eq!((row.0, row.1.as_str(), row.2.as_str()), expected);
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stat(&task.stats.poisoned), 0, "nothing dead-lettered");
}

#[tokio::test]
async fn task_applies_events_from_a_newer_auth_with_fields_it_does_not_know() {
    // Arrange: today's events, and the same with fields 9-12 and 1000 added.
    let member = Uuid::now_v7();
    let now = chrono::Utc::now();
    let changed = pb::MemberChanged {
        event_id: Uuid::now_v7().to_string(),
        member_id: member.to_string(),
        nickname: "Ann".into(),
        region: "Asia/Seoul".into(),
        version: 1,
        occurred_at: Some(timestamp(now)),
        ..Default::default()
    };
    let revoked = pb::MemberSessionsRevoked {
        event_id: Uuid::now_v7().to_string(),
        member_id: member.to_string(),
        not_before: Some(timestamp(now)),
        version: 2,
        occurred_at: Some(timestamp(now)),
        nickname: "Ann".into(),
        region: "Europe/Berlin".into(),
        ..Default::default()
    };

    // Act + Assert, decoding alone: the extra fields change nothing.
    for (key, plain, extended) in [
        (MEMBER_CREATED, changed.encode_to_vec(), newer(&changed)),
        (
            MEMBER_SESSIONS_REVOKED,
            revoked.encode_to_vec(),
            newer(&revoked),
        ),
    ] {
        assert_ne!(plain, extended);
        assert_eq!(applied(key, &extended), applied(key, &plain), "{key}");
    }

    let ended = pb::MemberSessionEnded {
        event_id: Uuid::now_v7().to_string(),
        member_id: member.to_string(),
        session_hash: memberflow_contract::token::session_hash(Uuid::new_v4()),
        ended_at: Some(timestamp(now)),
        expires_at: Some(timestamp(now)),
    };
    let plain = triage(MEMBER_SESSION_ENDED, &ended.encode_to_vec());
    assert!(matches!(
        plain,
        Triage::Apply(ReplicaEvent::SessionEnded(_))
    ));
    assert_eq!(triage(MEMBER_SESSION_ENDED, &newer(&ended)), plain);

    // Act + Assert, through the broker into the replica.
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    publisher.publish(MEMBER_CREATED, &newer(&changed)).await;
    assert_replicated(&pool, &task, member, (1, "Ann", "Asia/Seoul")).await;
    publisher
        .publish(MEMBER_SESSIONS_REVOKED, &newer(&revoked))
        .await;
    assert_replicated(&pool, &task, member, (2, "Ann", "Europe/Berlin")).await;
    assert_eq!(publisher.depth(QUEUE).await, 0);
}

#[tokio::test]
async fn task_applies_the_oldest_event_bytes_auth_ever_published() {
    // Arrange: MemberCreated and MemberUpdated as the first auth encoded
    // them (fields 1-6; see tests/fixtures/events/README.md).
    let created = include_bytes!("../fixtures/events/member.created.v1.bin");
    let updated = include_bytes!("../fixtures/events/member.updated.v1.bin");
    let member: Uuid = "0192f5a0-3c1e-7b2a-9d4e-1a2b3c4d5e00".parse().unwrap();

    // Act + Assert, decoding alone.
    let first = applied(MEMBER_CREATED, created);
    assert_eq!(
        first,
        MemberEvent {
            event_id: "0192f5a0-3c1e-7b2a-9d4e-1a2b3c4d5e01".parse().unwrap(),
            member_id: member,
            nickname: "Ann".into(),
            region: "Asia/Seoul".into(),
            version: 1,
            occurred_at: chrono::DateTime::from_timestamp(1_730_000_000, 123_456_000).unwrap(),
            sessions_not_before: None,
            sessions_version: 0,
            deleted: false,
            access: task::domain::Access::member(),
        }
    );
    let second = applied(MEMBER_UPDATED, updated);
    assert_eq!(
        (
            second.version,
            second.nickname.as_str(),
            second.region.as_str()
        ),
        (2, "Ann Lee", "Europe/Berlin")
    );

    // Act + Assert, through the broker into the replica.
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    publisher.publish(MEMBER_CREATED, created).await;
    assert_replicated(&pool, &task, member, (1, "Ann", "Asia/Seoul")).await;
    publisher.publish(MEMBER_UPDATED, updated).await;
    assert_replicated(&pool, &task, member, (2, "Ann Lee", "Europe/Berlin")).await;
}

/// MemberChanged as a task from before roles decodes it: fields 1-8, the
/// generated code of that version, so the test runs the old binary's
/// decoder over a new event.
#[derive(Clone, PartialEq, prost::Message)]
struct MemberChangedBeforeRoles {
    #[prost(string, tag = "1")]
    event_id: String,
    #[prost(string, tag = "2")]
    member_id: String,
    #[prost(string, tag = "3")]
    nickname: String,
    #[prost(string, tag = "4")]
    region: String,
    #[prost(int64, tag = "5")]
    version: i64,
    #[prost(message, optional, tag = "6")]
    occurred_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    sessions_not_before: Option<prost_types::Timestamp>,
    #[prost(int64, tag = "8")]
    sessions_version: i64,
}

#[tokio::test]
async fn roles_and_suspension_reach_a_new_task_and_an_old_task_ignores_them() {
    // Arrange: a suspension as a new auth publishes it, of an admin, and
    // an event with a role no task knows yet.
    let member = Uuid::now_v7();
    let now = chrono::Utc::now();
    let suspended = pb::MemberChanged {
        event_id: Uuid::now_v7().to_string(),
        member_id: member.to_string(),
        nickname: "Ann".into(),
        region: "Asia/Seoul".into(),
        version: 3,
        occurred_at: Some(timestamp(now)),
        sessions_not_before: Some(timestamp(now)),
        sessions_version: 3,
        role: "admin".into(),
        suspension: Some(pb::Suspension {
            reason: "compromised account".into(),
            since: Some(timestamp(now)),
        }),
    };
    let unknown_role = pb::MemberChanged {
        event_id: Uuid::now_v7().to_string(),
        version: 4,
        role: "auditor".into(),
        suspension: None,
        ..suspended.clone()
    };

    // Act + Assert: a task from before roles decodes the same event, and
    // reads the member as it always did.
    let old = MemberChangedBeforeRoles::decode(suspended.encode_to_vec().as_slice())
        .expect("an old task decodes a new event");
    assert_eq!(
        (old.version, old.nickname.as_str(), old.sessions_version),
        (3, "Ann", 3)
    );
    // Today's task keeps the suspension and the role.
    let e = applied(MEMBER_UPDATED, &suspended.encode_to_vec());
    assert_eq!(e.access.role, "admin");
    assert!(e.access.is_suspended() && !e.access.is_admin());
    assert_eq!(
        e.access.suspended_reason.as_deref(),
        Some("compromised account")
    );
    // A role it does not know is kept as it came, and grants nothing.
    let e = applied(MEMBER_UPDATED, &unknown_role.encode_to_vec());
    assert_eq!(e.access.role, "auditor");
    assert!(!e.access.is_admin() && !e.access.is_suspended());

    // Act + Assert, through the broker into the replica.
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    publisher
        .publish(MEMBER_UPDATED, &suspended.encode_to_vec())
        .await;
    assert_replicated(&pool, &task, member, (3, "Ann", "Asia/Seoul")).await;
    let access: (String, bool, Option<String>) = sqlx::query_as(
        "SELECT role, suspended_at IS NOT NULL, suspended_reason FROM members WHERE id = $1",
    )
    .bind(member)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        access,
        ("admin".into(), true, Some("compromised account".into()))
    );
    publisher
        .publish(MEMBER_UPDATED, &unknown_role.encode_to_vec())
        .await;
    assert_replicated(&pool, &task, member, (4, "Ann", "Asia/Seoul")).await;
    let role: String = sqlx::query_scalar("SELECT role FROM members WHERE id = $1")
        .bind(member)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(role, "auditor");
}
