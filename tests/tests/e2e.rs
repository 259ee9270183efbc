//! The whole system: real auth and task over real PostgreSQL and RabbitMQ,
//! with faults injected for real (a cut TCP proxy, a killed runtime). Each
//! scenario checks its end state in the databases and the broker.
use memberflow_tests::fixtures::bearer;
use memberflow_tests::replica::replica_stage;
use memberflow_tests::system::spawn_task_alone;
use memberflow_tests::system::{NOWHERE, System};
use memberflow_tests::{
    apps::sign_up_and_log_in,
    fixtures::{scalar, seed_auth_members, signup},
};
use std::{sync::Arc, time::Duration};

use memberflow_client::TaskClient;
use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_contract::topology::{DEAD_LETTER_QUEUE, QUEUE};
use memberflow_runtime::settings::ServiceSettings as _;
use memberflow_runtime::settings::Source;
use memberflow_tests::{
    amqp::RawPublisher,
    apps::{TestTask, auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
    eventually,
    proxy::TcpProxy,
};
use sqlx::PgPool;
use task::ConsistencyMode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
type Row = (Uuid, String, String, i64);

/// Signs up, logs in and creates one task; returns the member id.
async fn user_flow(auth: TestAuthClient, task: &TestTask, i: usize) -> (String, String) {
    let mut auth = auth;
    let (member_id, token) = sign_up_and_log_in(
        &mut auth,
        auth_pb::SignUpRequest {
            nickname: format!("user {i}"),
            region: "America/New_York".into(),
            ..signup(&format!("user{i}@example.com"))
        },
    )
    .await;
    let created = client(task, &token)
        .create_task(memberflow_tests::fixtures::create_task(&format!(
            "task of {i}"
        )))
        .await
        .expect("create task");
    assert_eq!(created.member_id, member_id.to_string());
    (member_id.to_string(), token)
}

type TestAuthClient = memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient<
    tonic::transport::Channel,
>;

fn client(task: &TestTask, token: &str) -> TaskClient {
    task.client(token).with_deadline(Duration::from_secs(45))
}

async fn members(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as("SELECT id, nickname, region, version FROM members ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until task's replica equals auth's members, then returns them.
async fn replica_converges(auth_db: &PgPool, task_db: &PgPool, expected: usize) -> Vec<Row> {
    eventually("the replica to equal auth's members", WAIT, || async {
        let (a, t) = (members(auth_db).await, members(task_db).await);
        (a.len() == expected && a == t).then_some(a)
    })
    .await
}

/// Every member has exactly one task.
async fn one_task_each(task_db: &PgPool, n: i64) {
    assert_eq!(scalar(task_db, "SELECT count(*) FROM tasks").await, n);
    assert_eq!(
        scalar(task_db, "SELECT count(DISTINCT member_id) FROM tasks").await,
        n,
        "duplicate tasks"
    );
}

async fn run_flow_in_mode(mode: &str) {
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    // The mode comes from a config file, exactly as a user would switch it.
    let dir = std::env::temp_dir().join(format!("mf-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in [
        (
            "base.toml",
            format!("[task.consistency]\nmode = \"{mode}\"\n"),
        ),
        ("development.toml", String::new()),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let mut source = Source::dir(&dir);
    source.vars = Some([("TASK__ENVIRONMENT".into(), "development".into())].into());
    let mut settings = task::Settings::load(&source).unwrap();
    let infra = task_settings(
        &mut env,
        settings.consistency.mode,
        &format!("http://{}", auth.app.addr),
    );
    settings.base.server = infra.base.server;
    settings.database = infra.database;
    settings.amqp = infra.amqp;
    settings.auth = infra.auth;
    settings.token = infra.token;
    let task = spawn_task(settings).await;
    std::fs::remove_dir_all(&dir).unwrap();

    let (member_id, token) = user_flow(auth.client.clone(), &task, 0).await;
    let list = client(&task, &token)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
    assert_eq!(list.tasks.len(), 1);
    assert_eq!(list.tasks[0].member_id, member_id);
    assert_eq!(list.tasks[0].time_zone, "America/New_York");
}

#[tokio::test]
async fn user_flow_in_read_through_mode() {
    run_flow_in_mode("read_through").await;
}

#[tokio::test]
async fn user_flow_in_not_ready_mode() {
    run_flow_in_mode("not_ready").await;
}

async fn load(mode: ConsistencyMode) {
    let n = 200;
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task = Arc::new(
        spawn_task(task_settings(
            &mut env,
            mode,
            &format!("http://{}", auth.app.addr),
        ))
        .await,
    );
    let flows: Vec<_> = (0..n)
        .map(|i| {
            let (a, t) = (auth.client.clone(), task.clone());
            tokio::spawn(async move { user_flow(a, &t, i).await })
        })
        .collect();
    for f in flows {
        f.await.unwrap();
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    replica_converges(&auth_db, &task_db, n).await;
    one_task_each(&task_db, n as i64).await;
}

#[tokio::test]
async fn load_200_members_in_read_through_mode() {
    load(ConsistencyMode::ReadThrough).await;
}

#[tokio::test]
async fn load_200_members_in_not_ready_mode() {
    load(ConsistencyMode::NotReady).await;
}

#[tokio::test]
async fn broker_cut_mid_run_loses_and_duplicates_nothing() {
    let n = 100;
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env).broker_via_proxy().start().await;
    let broker = system.broker().clone();
    let auth = system.auths.remove(0);
    let task = Arc::new(system.tasks.remove(0));
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);

    let flows: Vec<_> = (0..n)
        .map(|i| {
            let (a, t) = (auth.client.clone(), task.clone());
            tokio::spawn(async move { user_flow(a, &t, i).await })
        })
        .collect();
    eventually("a third of the signups", WAIT, || async {
        (scalar(&auth_db, "SELECT count(*) FROM members").await >= 30).then_some(())
    })
    .await;
    broker.cut();
    eventually("more signups while cut", WAIT, || async {
        (scalar(&auth_db, "SELECT count(*) FROM members").await >= 70).then_some(())
    })
    .await;
    broker.restore();
    for f in flows {
        f.await.unwrap();
    }
    replica_converges(&auth_db, &task_db, n).await;
    one_task_each(&task_db, n as i64).await;
    assert_eq!(
        scalar(&task_db, "SELECT count(*) FROM inbox").await,
        n as i64,
        "each event applied once"
    );
    assert_eq!(scalar(&auth_db, "SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn auth_killed_after_commit_before_publish_publishes_after_restart() {
    let n = 20;
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let broker = TcpProxy::start(&env.amqp_host()).await;
    let mut a = auth_settings(&mut env);
    a.amqp.url = env.amqp_url_via(&broker.host()).into();
    // SERVING first (its receipt consumer attached, see docs/deletion.md),
    // then the broker goes: signups still commit.
    let auth = spawn_auth(a.clone()).await;
    broker.cut();
    for i in 0..n {
        auth.client
            .clone()
            .sign_up(signup(&format!("k{i}@example.com")))
            .await
            .unwrap();
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    assert_eq!(
        scalar(&auth_db, "SELECT count(*) FROM outbox").await,
        n,
        "committed, not published"
    );
    auth.app.kill().await;

    broker.restore();
    let _restarted = spawn_auth(a).await;
    replica_converges(&auth_db, &task_db, n as usize).await;
    assert_eq!(scalar(&task_db, "SELECT count(*) FROM inbox").await, n);
    assert_eq!(scalar(&auth_db, "SELECT count(*) FROM outbox").await, 0);
    drop(task);
}

#[tokio::test]
async fn task_killed_before_ack_gets_the_events_again_without_duplicates() {
    let n = 20;
    let mut env = TestEnv::new();
    let db = TcpProxy::start(&env.pg_host()).await;
    let mut t = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    t.database = memberflow_runtime::db::DatabaseSettings::with_url(
        &env.database_url("task").replace(&env.pg_host(), &db.host()),
    );
    t.database.acquire_timeout_ms = 500;
    let task = spawn_task(t.clone()).await;
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;

    db.cut();
    for i in 0..n {
        auth.client
            .clone()
            .sign_up(signup(&format!("t{i}@example.com")))
            .await
            .unwrap();
    }
    // The consumer holds every event, unacked, while its database is away.
    eventually("all events delivered, none acked", WAIT, || async {
        (publisher.depth(QUEUE).await == 0).then_some(())
    })
    .await;
    assert_eq!(task.processed(), 0);
    task.app.kill().await;

    db.restore();
    let restarted = spawn_task(t).await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    replica_converges(&auth_db, &task_db, n as usize).await;
    assert_eq!(
        scalar(&task_db, "SELECT count(*) FROM inbox").await,
        n,
        "redelivered, applied once"
    );
    assert_eq!(restarted.processed(), n as u64);
}

#[tokio::test]
async fn two_auth_and_two_task_instances_keep_every_guarantee() {
    let n = 40;
    let mut env = TestEnv::new();
    let auths = [
        spawn_auth(auth_settings(&mut env)).await,
        spawn_auth(auth_settings(&mut env)).await,
    ];
    let tasks = [
        Arc::new(spawn_task(task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE)).await),
        Arc::new(spawn_task(task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE)).await),
    ];
    let flows: Vec<_> = (0..n)
        .map(|i| {
            let (a, b) = (
                auths[i % 2].client.clone(),
                auths[(i + 1) % 2].client.clone(),
            );
            let t = tasks[i % 2].clone();
            tokio::spawn(async move {
                let (_, token) = user_flow(a, &t, i).await;
                // Two profile changes through the other auth instance.
                for v in 2..=3 {
                    let req = bearer(
                        auth_pb::UpdateProfileRequest {
                            nickname: Some(format!("v{v}")),
                            region: None,
                        },
                        &token,
                    );
                    b.clone().update_profile(req).await.unwrap();
                }
            })
        })
        .collect();
    for f in flows {
        f.await.unwrap();
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let rows = replica_converges(&auth_db, &task_db, n).await;
    assert!(
        rows.iter().all(|r| r.3 == 3 && r.1 == "v3"),
        "every member at its newest version"
    );
    one_task_each(&task_db, n as i64).await;
    assert_eq!(
        scalar(&task_db, "SELECT count(*) FROM inbox").await,
        3 * n as i64,
        "each event applied once"
    );
}

#[tokio::test]
async fn poison_published_to_the_exchange_is_dead_lettered_while_events_flow() {
    let n = 10;
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task =
        Arc::new(spawn_task(task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE)).await);
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    for i in 0..n {
        publisher
            .publish("member.created", format!("poison {i}").as_bytes())
            .await;
        user_flow(auth.client.clone(), &task, i).await;
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    replica_converges(&auth_db, &task_db, n).await;
    eventually("poison in the DLQ", WAIT, || async {
        (publisher.depth(DEAD_LETTER_QUEUE).await == n as u32).then_some(())
    })
    .await;
    assert_eq!(publisher.depth(QUEUE).await, 0);
}

#[tokio::test]
async fn profile_updates_racing_their_signup_event_end_at_the_newest_version() {
    let n = 20;
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task = Arc::new(
        spawn_task(task_settings(
            &mut env,
            ConsistencyMode::ReadThrough,
            &format!("http://{}", auth.app.addr),
        ))
        .await,
    );
    let flows: Vec<_> = (0..n)
        .map(|i| {
            let (a, t) = (auth.client.clone(), task.clone());
            tokio::spawn(async move {
                let (_, token) = user_flow(a.clone(), &t, i).await;
                let updates: Vec<_> = (0..3)
                    .map(|u| {
                        let mut a = a.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            let req = bearer(
                                auth_pb::UpdateProfileRequest {
                                    nickname: Some(format!("n{u}")),
                                    region: Some("Europe/Berlin".into()),
                                },
                                &token,
                            );
                            a.update_profile(req).await.unwrap();
                        })
                    })
                    .collect();
                for u in updates {
                    u.await.unwrap();
                }
            })
        })
        .collect();
    for f in flows {
        f.await.unwrap();
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let rows = replica_converges(&auth_db, &task_db, n).await;
    assert!(rows.iter().all(|r| r.3 == 4 && r.2 == "Europe/Berlin"));
}

#[tokio::test]
async fn resync_fills_an_emptied_replica_while_signups_flow() {
    let mut env = TestEnv::new();
    let (auth, _task, source, auth_db, task_db) = replica_stage(&mut env, |_| {}).await;
    seed_auth_members(&auth_db, 10_000).await;

    // 200 signups a second flow through the pipeline during the resync.
    let flowing = tokio_util::sync::CancellationToken::new();
    let signups = {
        let flowing = flowing.clone();
        let mut client = auth.client.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            let mut n = 0usize;
            while !flowing.is_cancelled() {
                every.tick().await;
                client
                    .sign_up(auth_pb::SignUpRequest {
                        email: format!("live{n}@example.com"),
                        password: "correct horse battery".into(),
                        nickname: format!("live {n}"),
                        region: "Europe/Paris".into(),
                    })
                    .await
                    .expect("signup");
                n += 1;
            }
            n
        })
    };
    let mut pages = 0;
    let done = task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {
        pages += 1;
    })
    .await
    .unwrap();
    flowing.cancel();
    let live = signups.await.unwrap();
    assert!(
        live > 0 && done.read >= 10_000,
        "{done:?}, {live} live signups"
    );
    assert!(pages >= 10, "a page at a time");
    assert!(done.total.unwrap() >= 10_000);
    let all = replica_converges(&auth_db, &task_db, 10_000 + live).await;
    assert_eq!(all.len(), 10_000 + live);
    assert_eq!(
        task::resync::checkpoint(&task_db).await.unwrap(),
        None,
        "a finished resync leaves no checkpoint"
    );
}

#[tokio::test]
async fn the_reconciler_repairs_corrupted_rows_and_touches_no_correct_one() {
    let mut env = TestEnv::new();
    let interval = Duration::from_secs(3);
    let (_auth, task, source, auth_db, task_db) = replica_stage(&mut env, |s| {
        s.reconcile.interval_secs = interval.as_secs();
    })
    .await;
    seed_auth_members(&auth_db, 4_000).await;
    task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .unwrap();
    replica_converges(&auth_db, &task_db, 4_000).await;

    // 5%: 100 rows deleted, 100 moved to an older version with wrong data.
    sqlx::raw_sql(
        "DELETE FROM members WHERE id IN (SELECT id FROM members ORDER BY id LIMIT 100);
         UPDATE members SET version = version - 1, nickname = 'corrupt'
          WHERE id IN (SELECT id FROM members WHERE version > 1 ORDER BY id DESC LIMIT 100);",
    )
    .execute(&task_db)
    .await
    .unwrap();
    let untouched: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, replicated_at FROM members WHERE nickname <> 'corrupt' ORDER BY id",
    )
    .fetch_all(&task_db)
    .await
    .unwrap();
    assert_eq!(untouched.len(), 3_800);
    use task::repair::Kind;
    let metrics = task.metrics.clone();
    let repaired = move || {
        metrics.reconcile_repaired(Kind::Missing) + metrics.reconcile_repaired(Kind::Behind)
    };
    let before = repaired();

    eventually("the reconciler's repair", interval * 3, || async {
        (repaired() >= before + 200).then_some(())
    })
    .await;
    assert_eq!(members(&auth_db).await, members(&task_db).await);
    let after: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, replicated_at FROM members WHERE id = ANY($1) ORDER BY id")
            .bind(untouched.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .fetch_all(&task_db)
            .await
            .unwrap();
    assert_eq!(after, untouched, "no correct row was rewritten");
    assert_eq!(repaired(), before + 200, "exactly the corrupted rows");
}

#[tokio::test]
async fn an_interrupted_resync_resumes_from_its_checkpoint() {
    let mut env = TestEnv::new();
    let (_auth, _task, source, auth_db, task_db) = replica_stage(&mut env, |_| {}).await;
    seed_auth_members(&auth_db, 3_000).await;
    // As a run stopped after its first 1,000 members leaves it.
    let stopped_at: Uuid =
        sqlx::query_scalar("SELECT id FROM members ORDER BY id OFFSET 999 LIMIT 1")
            .fetch_one(&auth_db)
            .await
            .unwrap();
    sqlx::query("INSERT INTO resync_checkpoint (name, last_id) VALUES ('full', $1)")
        .bind(stopped_at)
        .execute(&task_db)
        .await
        .unwrap();

    let done = task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .unwrap();
    assert_eq!(done.read, 2_000, "only what came after the checkpoint");
    assert_eq!(
        scalar(&task_db, "SELECT count(*) FROM members").await,
        2_000
    );
    assert_eq!(task::resync::checkpoint(&task_db).await.unwrap(), None);

    // Chosen members only.
    let chosen: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM members ORDER BY id LIMIT 3")
        .fetch_all(&auth_db)
        .await
        .unwrap();
    let done = task::resync::resync(
        &task_db,
        &source,
        task::resync::Scope::Members(chosen.clone()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((done.read, done.changed), (3, 3));
}
