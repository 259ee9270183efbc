//! Read-your-writes through consistency tokens: a CreateTask right after a
//! write in auth is served from a replica that has it, woken by the apply
//! rather than by retries or polling.
use memberflow_tests::fixtures::bearer;
use memberflow_tests::fixtures::create_task;
use memberflow_tests::system::NOWHERE;
use memberflow_tests::system::spawn_system;
use std::time::{Duration, Instant};

use memberflow_contract::consistency::ConsistencyToken;
use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_runtime::grpc::violated_fields;
use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher},
    apps::{mint_token, spawn_task, task_settings},
    env::TestEnv,
    eventually,
};
use task::ConsistencyMode;
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn create_task_after_a_region_change_uses_the_new_zone_without_retries() {
    let mut env = TestEnv::new();
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let signed_up = auth
        .client
        .sign_up(auth_pb::SignUpRequest {
            email: "mover@example.com".into(),
            password: "correct horse battery".into(),
            nickname: "Mover".into(),
            region: "Asia/Seoul".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!signed_up.consistency_token.is_empty());
    let access = auth
        .client
        .login(auth_pb::LoginRequest {
            email: "mover@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    // No retries allowed: a USER_NOT_READY would fail the call.
    let mut tasks = task
        .client(&access)
        .with_deadline(Duration::ZERO)
        .with_consistency_token(signed_up.consistency_token);
    tasks.create_task(create_task("first")).await.unwrap();

    let zones = [
        "America/New_York",
        "Europe/Paris",
        "Australia/Sydney",
        "Asia/Seoul",
    ];
    for (i, zone) in zones.iter().cycle().take(20).enumerate() {
        let req = bearer(
            auth_pb::UpdateProfileRequest {
                nickname: None,
                region: Some((*zone).to_owned()),
            },
            &access,
        );
        let updated = auth.client.update_profile(req).await.unwrap().into_inner();
        tasks.set_consistency_token(updated.consistency_token);
        let created = tasks
            .create_task(create_task(&format!("after move {i}")))
            .await
            .unwrap();
        assert_eq!(
            &created.time_zone, zone,
            "move {i}: resolved in the new zone"
        );
    }
}

#[tokio::test]
async fn the_wait_is_woken_by_the_apply_and_falls_back_after_wait_ms() {
    let mut env = TestEnv::new();
    let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    settings.consistency.wait_ms = 10_000;
    let task = spawn_task(settings).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;

    let member_id = Uuid::new_v4();
    let token = ConsistencyToken {
        member_id,
        version: 1,
    }
    .encode();
    let mut client = task
        .client(&mint_token(member_id, chrono::Duration::minutes(5)))
        .with_deadline(Duration::ZERO);
    let waiting = tokio::spawn(async move {
        client
            .create_task(pb::CreateTaskRequest {
                consistency_token: token,
                ..create_task("woken")
            })
            .await
    });
    eventually(
        "CreateTask waiting for the replica",
        Duration::from_secs(10),
        || async { (task.freshness.waiting() == 1).then_some(()) },
    )
    .await;
    let published = Instant::now();
    publisher
        .member_event(&MemberEventFixture::new(member_id, 1, "Europe/Paris"))
        .await;
    let created = waiting
        .await
        .unwrap()
        .expect("served once the event applied");
    let woken_after = published.elapsed();
    assert_eq!(created.time_zone, "Europe/Paris");
    assert!(
        woken_after < Duration::from_secs(2),
        "woken by the apply, {woken_after:?} after the event, not at wait_ms (10 s)"
    );
    assert_eq!(task.freshness.waiting(), 0);
}

#[tokio::test]
async fn not_ready_answers_after_the_wait_and_bad_tokens_are_refused() {
    let mut env = TestEnv::new();
    let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    settings.consistency.wait_ms = 200;
    let task = spawn_task(settings).await;
    let member_id = Uuid::new_v4();
    let mut client = task
        .client(&mint_token(member_id, chrono::Duration::minutes(5)))
        .with_deadline(Duration::ZERO);

    let started = Instant::now();
    let token = ConsistencyToken {
        member_id,
        version: 3,
    }
    .encode();
    let err = client
        .create_task(pb::CreateTaskRequest {
            consistency_token: token,
            ..create_task("late")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the fallback comes after the wait"
    );
    assert_eq!(task.metrics.user_not_ready.get(), 1, "counted");

    for bad in [
        "not-a-token".to_owned(),
        ConsistencyToken {
            member_id: Uuid::new_v4(),
            version: 1,
        }
        .encode(),
    ] {
        let err = client
            .create_task(pb::CreateTaskRequest {
                consistency_token: bad.clone(),
                ..create_task("bad")
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&err), ["consistency_token"]);
        let err = client
            .list_tasks(pb::ListTasksRequest {
                consistency_token: bad.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test]
async fn read_through_fetches_the_newer_version_when_the_replica_is_behind() {
    let mut env = TestEnv::new();
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::ReadThrough).await;
    let signed_up = auth
        .client
        .sign_up(auth_pb::SignUpRequest {
            email: "rt@example.com".into(),
            password: "correct horse battery".into(),
            nickname: "Rt".into(),
            region: "Asia/Seoul".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let member_id: Uuid = signed_up.member.unwrap().id.parse().unwrap();
    let pool = env.pool("task").await;
    eventually("replicated", Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM members WHERE id = $1")
            .bind(member_id)
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    // The replica falls behind: auth moves the member to version 2 in its
    // own database, and no event says so.
    let auth_db = env.pool("auth").await;
    sqlx::query("UPDATE members SET region = 'America/New_York', version = 2 WHERE id = $1")
        .bind(member_id)
        .execute(&auth_db)
        .await
        .unwrap();
    let calls = task.read_through.calls();
    let token = ConsistencyToken {
        member_id,
        version: 2,
    }
    .encode();
    let created = task
        .client(&mint_token(member_id, chrono::Duration::minutes(5)))
        .with_deadline(Duration::ZERO)
        .create_task(pb::CreateTaskRequest {
            consistency_token: token,
            ..create_task("fresh")
        })
        .await
        .unwrap();
    assert_eq!(created.time_zone, "America/New_York");
    assert_eq!(task.read_through.calls(), calls + 1);
}
