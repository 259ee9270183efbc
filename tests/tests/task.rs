//! The task service against real PostgreSQL, RabbitMQ and (where it matters)
//! a real auth: consistency modes, idempotent replica, poison, faults.
use memberflow_contract::proto::auth::v1::SignUpRequest;
use memberflow_runtime::startup::Service as _;
use memberflow_tests::fixtures::{create_task_due, scalar, signup};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use memberflow_client::user_not_ready;
use memberflow_contract::proto::task::v1 as pb;
use memberflow_contract::topology::{DEAD_LETTER_QUEUE, QUEUE};
use memberflow_runtime::grpc::violated_fields;
use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher},
    apps::{TestTask, mint_token, spawn_task, task_settings},
    env::TestEnv,
    eventually,
    proxy::TcpProxy,
    system::{NOWHERE, System, spawn_task_alone},
};
use sqlx::PgPool;
use task::{ConsistencyMode, metrics::EventOutcome};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn wait_processed(task: &TestTask, n: u64) {
    eventually(&format!("{n} events processed"), WAIT, || async {
        (task.processed() >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn read_through_creates_on_the_first_try_with_one_call_to_auth() {
    let mut env = TestEnv::new();
    // auth's events are held back, so task must read through.
    let mut system = System::builder(&mut env)
        .mode(ConsistencyMode::ReadThrough)
        .broker_via_proxy()
        .start()
        .await;
    let broker = system.broker().clone();
    broker.cut();
    let (member_id, token) = system
        .auth()
        .member(SignUpRequest {
            region: "Asia/Seoul".into(),
            ..signup("rt@example.com")
        })
        .await;

    let task = system.task();
    // Ten concurrent misses for one member: one GetMember call.
    let retries = Arc::new(Mutex::new(0));
    let mut calls = Vec::new();
    for i in 0..10 {
        let r = retries.clone();
        let mut client = task
            .client(&token)
            .on_retry(Arc::new(move |_| *r.lock().unwrap() += 1));
        calls.push(tokio::spawn(async move {
            client
                .create_task(create_task_due(&format!("t{i}"), "2026-12-01T09:00"))
                .await
        }));
    }
    for c in calls {
        let t = c.await.unwrap().expect("created on the first try");
        assert_eq!(t.member_id, member_id.to_string());
        assert_eq!(t.time_zone, "Asia/Seoul");
    }
    assert_eq!(
        *retries.lock().unwrap(),
        0,
        "no USER_NOT_READY in read_through mode"
    );
    assert_eq!(
        task.read_through.calls(),
        1,
        "concurrent misses share one call"
    );

    let pool = env.pool("task").await;
    assert_eq!(scalar(&pool, "SELECT version FROM members").await, 1);
    let provisioned_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT replicated_at FROM members")
            .fetch_one(&pool)
            .await
            .unwrap();

    // The event arrives later and is a no-op.
    broker.restore();
    wait_processed(task, 1).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM inbox").await, 1);
    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT replicated_at FROM members")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(provisioned_at, after, "the later event changed nothing");
}

#[tokio::test]
async fn not_ready_succeeds_through_the_client_backoff() {
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env).broker_via_proxy().start().await;
    let broker = system.broker().clone();
    broker.cut();
    let (member_id, token) = system
        .auth()
        .member(SignUpRequest {
            region: "Europe/Paris".into(),
            ..signup("nr@example.com")
        })
        .await;
    let task = system.task();

    // The first USER_NOT_READY lets the event through.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let b = broker.clone();
    let mut client = task.client(&token).on_retry(Arc::new(move |r| {
        s.lock().unwrap().push(r.delay);
        b.restore();
    }));
    let req = create_task_due("after backoff", "2026-12-01T09:00");
    let t = client
        .create_task(req.clone())
        .await
        .expect("eventually created");
    assert_eq!(t.member_id, member_id.to_string());
    assert!(
        !seen.lock().unwrap().is_empty(),
        "the client retried USER_NOT_READY"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|d| *d >= Duration::from_millis(5)),
        "RetryInfo honoured (at least consistency.retry_after_min_ms)"
    );
    // Retries reused the request_id: one task.
    let pool = env.pool("task").await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test]
async fn not_ready_answers_unavailable_with_error_info_and_retry_info() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let member_id = Uuid::new_v4();
    let token = mint_token(member_id, chrono::Duration::minutes(5));
    let mut client = task.client(&token).with_deadline(Duration::ZERO);

    let status = client
        .create_task(create_task_due("x", "2026-12-01T09:00"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&member_id.to_string()));
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "USER_NOT_READY");
    assert_eq!(info.domain, "task.v1");
    assert_eq!(info.metadata.get("member_id"), Some(&member_id.to_string()));
    let retry = status.get_details_retry_info().expect("RetryInfo");
    // No replication lag measured yet: the configured minimum.
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(5)));
    assert_eq!(
        scalar(&env.pool("task").await, "SELECT count(*) FROM tasks").await,
        0
    );
}

#[tokio::test]
async fn read_through_with_auth_unreachable_answers_user_not_ready() {
    let mut env = TestEnv::new();
    let task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::ReadThrough,
        NOWHERE,
    ))
    .await;
    let token = mint_token(Uuid::new_v4(), chrono::Duration::minutes(5));
    let status = task
        .client(&token)
        .with_deadline(Duration::ZERO)
        .create_task(create_task_due("x", "2026-12-01T09:00"))
        .await
        .unwrap_err();
    assert!(user_not_ready(&status).is_some(), "{status:?}");
    assert_eq!(task.read_through.calls(), 1);
}

#[tokio::test]
async fn a_duplicated_event_changes_the_replica_once() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    let event = MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul");

    publisher.member_event(&event).await;
    wait_processed(&task, 1).await;
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT replicated_at FROM members")
            .fetch_one(&pool)
            .await
            .unwrap();
    for _ in 0..4 {
        publisher.member_event(&event).await;
    }
    wait_processed(&task, 5).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM inbox").await, 1);
    let last: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT replicated_at FROM members")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(first, last, "redeliveries did not touch the row");
    assert_eq!(publisher.depth(QUEUE).await, 0);
}

#[tokio::test]
async fn old_inbox_ids_are_pruned_and_a_replay_after_that_is_still_a_no_op() {
    let mut env = TestEnv::new();
    let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    settings.inbox.retention_secs = 3600;
    settings.inbox.prune_interval_secs = 1;
    let task = spawn_task(settings).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    let old = MemberEventFixture::new(Uuid::new_v4(), 2, "Asia/Seoul");
    let recent = MemberEventFixture::new(Uuid::new_v4(), 1, "Europe/Paris");
    publisher.member_event(&old).await;
    publisher.member_event(&recent).await;
    wait_processed(&task, 2).await;
    let applied_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT replicated_at FROM members WHERE id = $1")
            .bind(old.member_id)
            .fetch_one(&pool)
            .await
            .unwrap();

    // Age one id past the retention; the pruner forgets it, keeps the other.
    sqlx::query("UPDATE inbox SET received_at = now() - interval '2 hours' WHERE event_id = $1")
        .bind(old.event_id)
        .execute(&pool)
        .await
        .unwrap();
    eventually("the old inbox id pruned", WAIT, || async {
        (scalar(&pool, "SELECT count(*) FROM inbox").await == 1).then_some(())
    })
    .await;
    let kept: Uuid = sqlx::query_scalar("SELECT event_id FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, recent.event_id);

    // The forgotten event comes back (a late replay): the version check
    // still makes it a no-op.
    publisher.member_event(&old).await;
    wait_processed(&task, 3).await;
    let (version, replicated_at): (i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT version, replicated_at FROM members WHERE id = $1")
            .bind(old.member_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (version, replicated_at),
        (2, applied_at),
        "replay changed nothing"
    );
}

#[tokio::test]
async fn versions_delivered_3_1_2_leave_the_replica_at_3() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let id = Uuid::new_v4();
    for v in [3, 1, 2] {
        publisher
            .member_event(&MemberEventFixture::new(id, v, "Asia/Seoul"))
            .await;
    }
    wait_processed(&task, 3).await;
    let pool = env.pool("task").await;
    let (version, nickname): (i64, String) =
        sqlx::query_as("SELECT version, nickname FROM members")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((version, nickname.as_str()), (3, "nick-v3"));
}

#[tokio::test]
async fn garbage_is_dead_lettered_with_its_reason_and_unknown_kinds_are_skipped() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    publisher
        .publish("member.created", b"\xff\xfe definitely not protobuf")
        .await;
    // A kind a newer auth might add: acked and counted, never dead-lettered.
    // (member.deleted was this example until issue 23 made it known.)
    publisher.publish("member.merged", b"").await;
    // A zone this host's tzdata does not know is kept as given.
    let good = MemberEventFixture::new(Uuid::new_v4(), 1, "Mars/Olympus_Mons");
    publisher.member_event(&good).await;

    wait_processed(&task, 1).await;
    let dead = eventually("1 message in the DLQ", WAIT, || async {
        let dead = task::dlq::list(&publisher.conn).await.expect("list");
        (dead.len() == 1).then_some(dead)
    })
    .await;
    assert_eq!(dead[0].routing_key, "member.created");
    assert!(
        dead[0].reason.contains("not a valid protobuf event"),
        "{:?}",
        dead[0]
    );
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stat(&task.stats.poisoned), 1);
    eventually("the unknown kind is counted", WAIT, || async {
        (task.metrics.consumer.event_count(EventOutcome::unknown) == 1).then_some(())
    })
    .await;
    assert_eq!(publisher.depth(QUEUE).await, 0, "nothing left to requeue");
    let pool = env.pool("task").await;
    let region: String = sqlx::query_scalar("SELECT region FROM members")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(region, "Mars/Olympus_Mons");

    // The task cannot be placed in a zone nobody here knows: a clear
    // FAILED_PRECONDITION, not INTERNAL.
    let token = mint_token(good.member_id, chrono::Duration::minutes(5));
    let err = task
        .client(&token)
        .create_task(memberflow_tests::fixtures::create_task("t"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test]
async fn a_database_cut_during_consumption_loses_no_event() {
    let mut env = TestEnv::new();
    let db_proxy = TcpProxy::start(&env.pg_host()).await;
    let mut s = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    let url = env
        .database_url("task")
        .replace(&env.pg_host(), &db_proxy.host());
    s.database = memberflow_runtime::db::DatabaseSettings::with_url(&url);
    s.database.acquire_timeout_ms = 500;
    let task = spawn_task(s).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;

    db_proxy.cut();
    let events: Vec<_> = (0..50)
        .map(|_| MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul"))
        .collect();
    for e in &events {
        publisher.member_event(e).await;
    }
    // Every event reached the consumer, which holds them unacked.
    eventually("all events delivered to the consumer", WAIT, || async {
        (publisher.depth(QUEUE).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        task.processed(),
        0,
        "nothing can be applied while the database is cut"
    );

    db_proxy.restore();
    wait_processed(&task, 50).await;
    let pool = env.pool("task").await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, 50);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM inbox").await, 50);
    assert_eq!(publisher.depth(DEAD_LETTER_QUEUE).await, 0);
}

/// A task with one replicated member in `region`; returns (task, token, pool).
async fn with_member(env: &mut TestEnv, region: &str) -> (TestTask, String, PgPool) {
    let task = spawn_task(task_settings(env, ConsistencyMode::NotReady, NOWHERE)).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let id = Uuid::new_v4();
    publisher
        .member_event(&MemberEventFixture::new(id, 1, region))
        .await;
    wait_processed(&task, 1).await;
    let pool = env.pool("task").await;
    (task, mint_token(id, chrono::Duration::minutes(5)), pool)
}

#[tokio::test]
async fn create_task_is_idempotent_on_request_id() {
    let mut env = TestEnv::new();
    let (task, token, pool) = with_member(&mut env, "Asia/Seoul").await;
    let mut client = task.client(&token);
    let req = create_task_due("pay rent", "2026-12-01T09:00");
    let first = client.create_task(req.clone()).await.unwrap();
    let again = client
        .create_task(pb::CreateTaskRequest {
            title: "changed".into(),
            ..req
        })
        .await
        .unwrap();
    assert_eq!(first, again, "the retry returns the first task");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM tasks").await, 1);
    // Seoul is UTC+9 all year.
    assert_eq!(
        first.due_at.unwrap().seconds,
        chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .timestamp()
    );
}

#[tokio::test]
async fn due_at_is_right_on_both_sides_of_a_dst_transition() {
    let mut env = TestEnv::new();
    let (task, token, pool) = with_member(&mut env, "America/New_York").await;
    let mut client = task.client(&token);
    let utc = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
    for (local, expected) in [
        ("2026-03-08T01:30", "2026-03-08T06:30:00Z"), // EST, UTC-5
        ("2026-03-08T03:30", "2026-03-08T07:30:00Z"), // EDT, UTC-4
        ("2026-11-01T00:30", "2026-11-01T04:30:00Z"), // EDT
        ("2026-11-01T01:30", "2026-11-01T05:30:00Z"), // ambiguous: the first (EDT)
        ("2026-11-01T02:30", "2026-11-01T07:30:00Z"), // EST
    ] {
        let t = client
            .create_task(create_task_due("dst", local))
            .await
            .unwrap();
        assert_eq!(t.due_at.unwrap().seconds, utc(expected), "{local}");
        assert_eq!(t.time_zone, "America/New_York");
    }
    let gap = client
        .create_task(create_task_due("dst", "2026-03-08T02:30"))
        .await
        .unwrap_err();
    assert_eq!(gap.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&gap), vec!["due_local"]);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM tasks").await, 5);
}

#[tokio::test]
async fn bad_input_and_bad_tokens_are_refused_and_write_nothing() {
    let mut env = TestEnv::new();
    let (task, token, pool) = with_member(&mut env, "Asia/Seoul").await;
    let mut client = task.client(&token);
    let cases = [
        (
            pb::CreateTaskRequest {
                request_id: "nope".into(),
                ..create_task_due("t", "2026-12-01T09:00")
            },
            vec!["request_id"],
        ),
        (create_task_due("", "2026-12-01T09:00"), vec!["title"]),
        (
            create_task_due(&"t".repeat(201), "2026-12-01T09:00"),
            vec!["title"],
        ),
        (create_task_due("t", "2026-12-01 09:00"), vec!["due_local"]),
        (create_task_due("t", "2026-02-30T09:00"), vec!["due_local"]),
        (
            pb::CreateTaskRequest::default(),
            vec!["request_id", "title", "due_local"],
        ),
    ];
    for (req, fields) in cases {
        let err = client.create_task(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert_eq!(violated_fields(&err), fields, "{req:?}");
    }

    let member_id =
        Uuid::parse_str(&scalar_text(&pool, "SELECT id::text FROM members").await).unwrap();
    let forged = {
        let (other, _) = memberflow_contract::token::Signer::generate();
        other.issue(
            member_id,
            0,
            chrono::Utc::now() + chrono::Duration::minutes(5),
        )
    };
    let expired = mint_token(member_id, chrono::Duration::minutes(-5));
    for bad in [forged.as_str(), expired.as_str(), "garbage"] {
        let err = task
            .client(bad)
            .create_task(create_task_due("t", "2026-12-01T09:00"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = task
            .client(bad)
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut anonymous =
        memberflow_contract::proto::task::v1::task_service_client::TaskServiceClient::new(
            task.channel.clone(),
        );
    let err = anonymous
        .create_task(create_task_due("t", "2026-12-01T09:00"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM tasks").await, 0);
}

async fn scalar_text(pool: &PgPool, sql: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn members_see_only_their_own_tasks_newest_first() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    publisher
        .member_event(&MemberEventFixture::new(a, 1, "Asia/Seoul"))
        .await;
    publisher
        .member_event(&MemberEventFixture::new(b, 1, "Asia/Seoul"))
        .await;
    wait_processed(&task, 2).await;
    let mut ca = task.client(&mint_token(a, chrono::Duration::minutes(5)));
    let mut cb = task.client(&mint_token(b, chrono::Duration::minutes(5)));
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            ca.create_task(create_task_due(&format!("a{i}"), "2026-12-01T09:00"))
                .await
                .unwrap(),
        );
    }
    let theirs = cb
        .create_task(create_task_due("b", "2026-12-01T09:00"))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ca
            .list_tasks(pb::ListTasksRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.tasks.into_iter().map(|t| t.title));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["a4", "a3", "a2", "a1", "a0"]);
    assert_eq!(ca.get_task(&created[0].id).await.unwrap(), created[0]);
    assert_eq!(
        ca.get_task(&theirs.id).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Makes every write to task's `members` fail with `sqlstate` until dropped.
async fn inject_fault(pool: &PgPool, sqlstate: &str) {
    let sql = format!(
        "CREATE OR REPLACE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             RAISE EXCEPTION 'injected {sqlstate}' USING ERRCODE = '{sqlstate}'; END $$;
         CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON members
             FOR EACH ROW EXECUTE FUNCTION fault();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn clear_fault(pool: &PgPool) {
    sqlx::raw_sql("DROP TRIGGER fault ON members; DROP FUNCTION fault();")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn transient_database_faults_are_waited_out_and_dead_letter_nothing() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    let retries = || task.metrics.consumer.retries.get();
    let mut sent = 0;
    for sqlstate in ["40001", "40P01", "53300", "55P03", "57014", "25006"] {
        inject_fault(&pool, sqlstate).await;
        let before = retries();
        for _ in 0..5 {
            publisher
                .member_event(&MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul"))
                .await;
        }
        sent += 5;
        // The fault is seen and retried more than the delivery limit allows
        // redeliveries (10) before it ends.
        eventually(&format!("{sqlstate} retried"), WAIT, || async {
            (retries() >= before + 12).then_some(())
        })
        .await;
        assert_eq!(
            scalar(&pool, "SELECT count(*) FROM members").await,
            sent - 5,
            "{sqlstate}: nothing applied while the fault lasts"
        );
        clear_fault(&pool).await;
        wait_processed(&task, sent as u64).await;
    }
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, sent);
    assert_eq!(publisher.depth(DEAD_LETTER_QUEUE).await, 0);
    assert_eq!(publisher.depth(QUEUE).await, 0);
}

#[tokio::test]
async fn a_permanently_failing_event_is_isolated_and_dead_lettered_alone() {
    let mut env = TestEnv::new();
    let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    settings.amqp.batch_max = 50;
    let task = spawn_task(settings).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let pool = env.pool("task").await;
    // A check violation (23514) for one nickname only: a data error.
    sqlx::raw_sql(
        "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             IF NEW.nickname = 'nick-v7' THEN
                 RAISE EXCEPTION 'injected check violation' USING ERRCODE = '23514';
             END IF;
             RETURN NEW; END $$;
         CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON members
             FOR EACH ROW EXECUTE FUNCTION fault();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bad = MemberEventFixture::new(Uuid::new_v4(), 7, "Asia/Seoul");
    for i in 0..20 {
        if i == 10 {
            publisher.member_event(&bad).await;
        }
        publisher
            .member_event(&MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul"))
            .await;
    }
    let dead = eventually("the bad event dead-lettered", WAIT, || async {
        let dead = task::dlq::list(&publisher.conn).await.expect("list");
        (dead.len() == 1).then_some(dead)
    })
    .await;
    assert!(
        dead[0].reason.contains("23514") || dead[0].reason.contains("check violation"),
        "{dead:?}"
    );
    wait_processed(&task, 20).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, 20);

    // Fixed (the trigger dropped), the event replays once; a second replay
    // changes nothing.
    clear_fault(&pool).await;
    let replayed = task::dlq::replay(&publisher.conn, &[]).await.unwrap();
    assert_eq!(replayed.replayed.len(), 1);
    wait_processed(&task, 21).await;
    let version: i64 = sqlx::query_scalar("SELECT version FROM members WHERE id = $1")
        .bind(bad.member_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 7);
    let again = task::dlq::replay(&publisher.conn, &[]).await.unwrap();
    assert!(again.replayed.is_empty());
    assert_eq!(scalar(&pool, "SELECT count(*) FROM inbox").await, 21);
}

#[tokio::test]
async fn health_is_not_serving_while_the_consumer_is_detached_past_its_grace() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut env = TestEnv::new();
    let system = System::builder(&mut env)
        .auth_instances(0)
        .broker_via_proxy()
        .tune_task(|s| s.amqp.detached_grace_secs = 1)
        .start()
        .await;
    let (broker, task) = (system.broker(), system.task());

    broker.cut();
    eventually("NOT_SERVING once detached past the grace", WAIT, || async {
        let s =
            memberflow_tests::apps::health_status(task.channel.clone(), task::SERVICE_NAME).await;
        (s == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    broker.restore();
    memberflow_tests::apps::wait_serving(task.channel.clone(), task::SERVICE_NAME).await;
}

#[tokio::test]
async fn page_size_outside_0_to_100_is_invalid_not_capped() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let mut client = task.client(&mint_token(Uuid::new_v4(), chrono::Duration::minutes(5)));
    for size in [-1, 101, 1000] {
        let err = client
            .list_tasks(pb::ListTasksRequest {
                page_size: size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{size}");
        assert_eq!(violated_fields(&err), ["page_size"]);
    }
    for size in [0, 1, 100] {
        client
            .list_tasks(pb::ListTasksRequest {
                page_size: size,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A second instance on the same host: the error names the address and the
/// config key, not only "Address already in use".
#[tokio::test]
async fn a_taken_address_is_named_with_its_config_key() {
    let mut env = TestEnv::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (key, set) in [
        (
            "task.server.addr",
            (|s, a| s.base.server.addr = a) as fn(&mut task::Settings, String),
        ),
        ("task.metrics.addr", |s, a| s.base.metrics.addr = a),
    ] {
        let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
        set(&mut settings, addr.clone());
        let err = match task::Application::build(settings).await {
            Ok(_) => panic!("{key} = {addr} is taken, yet task started"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with(&format!("cannot bind {key} {addr}: Address already in use")),
            "{err}"
        );
    }
}
