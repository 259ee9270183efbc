//! Least privilege: each service connects as its own broker user and
//! database role, with exactly the rights docs/security.md prescribes
//! (`memberflow_contract::topology::rights`, granted by
//! `TestEnv::least_privilege`), and the main flows work with them. One
//! service's credentials cannot forge the other's events or read its data.
use std::time::Duration;

use lapin::{
    BasicProperties, Confirmation,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use memberflow_contract::proto::auth::v1 as auth_pb;
use memberflow_contract::topology::{DEAD_LETTER_QUEUE, EXCHANGE, MEMBER_UPDATED, QUEUE, rights};
use memberflow_runtime::{amqp, settings::Environment, startup::Service as _};
use memberflow_tests::{
    apps::{auth_settings, mint_token, spawn_auth, spawn_task, task_settings},
    env::{TestEnv, database_role, pg_base, rabbitmqctl_grants, role_sql},
    eventually,
    fixtures::{create_task, scalar, seed_auth_members, signup},
    system::{NOWHERE, spawn_system},
};
use sqlx::{Connection, PgConnection, PgPool};
use task::ConsistencyMode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A TestEnv whose services run as their own users and roles.
async fn least_privilege_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.least_privilege().await;
    env
}

/// The replica's (version, nickname) of `id`, if it holds the member.
async fn replica_row(task_db: &PgPool, id: Uuid) -> Option<(i64, String)> {
    sqlx::query_as("SELECT version, nickname FROM members WHERE id = $1")
        .bind(id)
        .fetch_optional(task_db)
        .await
        .expect("replica query")
}

async fn wait_replicated(task_db: &PgPool, id: Uuid) -> (i64, String) {
    eventually(&format!("member {id} in the replica"), WAIT, || async {
        replica_row(task_db, id).await
    })
    .await
}

/// Signs `nickname` up through auth: the member id.
async fn sign_up(auth: &mut memberflow_tests::apps::TestAuth, email: &str, nickname: &str) -> Uuid {
    auth.client
        .sign_up(auth_pb::SignUpRequest {
            nickname: nickname.into(),
            ..signup(email)
        })
        .await
        .expect("signup")
        .into_inner()
        .member
        .expect("a member")
        .id
        .parse()
        .expect("a member id")
}

/// Publishes `body` to `exchange` with `routing_key` as the holder of
/// `url`, with confirms: the broker's answer, or the error that closed the
/// channel.
async fn try_publish(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<Confirmation, lapin::Error> {
    let conn = amqp::connect(url, "privilege-test").await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let answer = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await
    }
    .await;
    let _ = conn.close(200, "done".into()).await;
    answer
}

/// Takes one message from `queue` as the holder of `url`.
async fn try_get(url: &str, queue: &str) -> Result<(), lapin::Error> {
    let conn = amqp::connect(url, "privilege-test").await?;
    let channel = conn.create_channel().await?;
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map(drop);
    let _ = conn.close(200, "done".into()).await;
    got
}

/// Whether the broker refused `result` with ACCESS_REFUSED (403).
fn access_refused<T: std::fmt::Debug>(result: &Result<T, lapin::Error>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => format!("{e:?} {e}").contains("ACCESS_REFUSED"),
    }
}

/// A `MemberChanged` for `member_id` at `version`, as a forger would send.
fn forged_event(member_id: Uuid, version: i64) -> Vec<u8> {
    use prost::Message;
    auth_pb::MemberChanged {
        event_id: Uuid::now_v7().to_string(),
        member_id: member_id.to_string(),
        nickname: "forged".into(),
        region: "Europe/Paris".into(),
        version,
        occurred_at: Some(memberflow_contract::time::timestamp(chrono::Utc::now())),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn task_credentials_cannot_forge_a_member_event_and_the_replica_is_untouched() {
    // Arrange: the system on its own users; Ann replicated at version 1.
    let mut env = least_privilege_env().await;
    let (mut auth, _task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let task_db = env.pool("task").await;
    let ann = sign_up(&mut auth, "ann@example.com", "Ann").await;
    assert_eq!(wait_replicated(&task_db, ann).await, (1, "Ann".to_owned()));

    // Act: task's credentials publish a newer version of Ann, to the
    // exchange and, past it, straight to task's queue.
    let as_task = env.amqp_url_as("task");
    let to_exchange = try_publish(&as_task, EXCHANGE, MEMBER_UPDATED, &forged_event(ann, 99)).await;
    let to_queue = try_publish(&as_task, "", QUEUE, &forged_event(ann, 98)).await;

    // Assert: both refused; a later signup goes through the same queue, and
    // Ann is still at version 1 once it has arrived.
    assert!(access_refused(&to_exchange), "{to_exchange:?}");
    assert!(access_refused(&to_queue), "{to_queue:?}");
    let bob = sign_up(&mut auth, "bob@example.com", "Bob").await;
    wait_replicated(&task_db, bob).await;
    assert_eq!(
        replica_row(&task_db, ann).await,
        Some((1, "Ann".to_owned()))
    );
}

#[tokio::test]
async fn each_broker_user_holds_only_its_own_rights() {
    let mut env = least_privilege_env().await;
    let (_auth, _task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let body = forged_event(Uuid::new_v4(), 1);
    let (as_auth, as_admin) = (env.amqp_url_as("auth"), env.amqp_url_as("admin"));

    // auth may not read task's queues, nor publish outside `member.*`
    // (topic permissions), nor write to the DLX.
    assert!(access_refused(&try_get(&as_auth, QUEUE).await));
    assert!(access_refused(&try_get(&as_auth, DEAD_LETTER_QUEUE).await));
    let off_topic = try_publish(&as_auth, EXCHANGE, "task.anything", &body).await;
    assert!(access_refused(&off_topic), "{off_topic:?}");
    let allowed = try_publish(&as_auth, EXCHANGE, "member.nobody", &body).await;
    assert!(matches!(allowed, Ok(Confirmation::Ack(_))), "{allowed:?}");

    // task binds and consumes, but reads nothing from the DLQ; counting it
    // (a passive declare, the `memberflow_dlq_messages` gauge) needs no right.
    let as_task = env.amqp_url_as("task");
    assert!(access_refused(&try_get(&as_task, DEAD_LETTER_QUEUE).await));
    let conn = amqp::connect(&as_task, "privilege-test").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    memberflow_tests::amqp::queue_depth(&channel, DEAD_LETTER_QUEUE).await;
    let _ = conn.close(200, "done".into()).await;

    // The operator may read the DLQ and publish through the default
    // exchange only: not to `member.events`, not from task's main queue.
    assert!(access_refused(
        &try_publish(&as_admin, EXCHANGE, MEMBER_UPDATED, &body).await
    ));
    assert!(access_refused(&try_get(&as_admin, QUEUE).await));
    try_get(&as_admin, DEAD_LETTER_QUEUE)
        .await
        .expect("the operator reads the DLQ");
}

#[tokio::test]
async fn one_services_role_cannot_connect_to_the_others_database() {
    let mut env = least_privilege_env().await;
    let (_auth, _task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let (auth_url, task_url) = (env.database_url("auth"), env.database_url("task"));
    let auth_db_name = auth_url.rsplit('/').next().unwrap().to_owned();
    let task_db_name = task_url.rsplit('/').next().unwrap().to_owned();

    for (url, own, other) in [
        (&task_url, &task_db_name, &auth_db_name),
        (&auth_url, &auth_db_name, &task_db_name),
    ] {
        let foreign = url.replace(&format!("/{own}"), &format!("/{other}"));
        let err = PgConnection::connect(&foreign)
            .await
            .expect_err("CONNECT is revoked from PUBLIC");
        let code = err.as_database_error().and_then(|d| d.code());
        assert_eq!(code.as_deref(), Some("42501"), "{err}");
    }

    // Each role ran its own migrations, so it owns its tables; neither may
    // create databases or is a superuser.
    for service in ["auth", "task"] {
        let pool = env.pool(service).await;
        let role = database_role(service, &env.id);
        let owner: String = sqlx::query_scalar(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'members'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(owner, role);
        let sql = format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{role}' \
             AND NOT rolsuper AND NOT rolcreatedb AND NOT rolcreaterole"
        );
        assert_eq!(scalar(&pool, &sql).await, 1, "{role}");
    }
}

#[tokio::test]
async fn read_through_works_with_per_service_credentials() {
    // Arrange: a member auth holds but never announced (no event).
    let mut env = least_privilege_env().await;
    let (_auth, task) = spawn_system(&mut env, ConsistencyMode::ReadThrough).await;
    let auth_db = env.pool("auth").await;
    seed_auth_members(&auth_db, 1).await;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM members")
        .fetch_one(&auth_db)
        .await
        .unwrap();

    // Act: no retries allowed, so it must read through on the first call.
    let created = task
        .client(&mint_token(id, chrono::Duration::minutes(5)))
        .with_deadline(Duration::ZERO)
        .create_task(create_task("read through"))
        .await;

    // Assert
    assert!(created.is_ok(), "{created:?}");
    assert_eq!(task.read_through.calls(), 1);
    let task_db = env.pool("task").await;
    assert!(replica_row(&task_db, id).await.is_some());
}

#[tokio::test]
async fn the_operator_replays_the_dlq_with_its_own_user() {
    // Arrange: task's database refuses one nickname (a check violation), so
    // that member's event is dead-lettered by task's user.
    let mut env = least_privilege_env().await;
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let task_db = env.pool("task").await;
    sqlx::raw_sql(
        "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             IF NEW.nickname = 'Poison' THEN
                 RAISE EXCEPTION 'injected check violation' USING ERRCODE = '23514';
             END IF;
             RETURN NEW; END $$;
         CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON members
             FOR EACH ROW EXECUTE FUNCTION fault();",
    )
    .execute(&task_db)
    .await
    .unwrap();
    let poison = sign_up(&mut auth, "poison@example.com", "Poison").await;
    let admin = amqp::connect(&env.amqp_url_as("admin"), "memberflow-admin")
        .await
        .expect("the operator's user connects");
    let dead = eventually("the event dead-lettered", WAIT, || async {
        let dead = task::dlq::list(&admin).await.expect("list as the operator");
        (dead.len() == 1).then_some(dead)
    })
    .await;
    assert_eq!(dead[0].member_id, poison.to_string());

    // Act: the fault fixed, the operator replays.
    sqlx::raw_sql("DROP TRIGGER fault ON members; DROP FUNCTION fault();")
        .execute(&task_db)
        .await
        .unwrap();
    let replayed = task::dlq::replay(&admin, &[])
        .await
        .expect("replay as the operator");

    // Assert
    assert_eq!(replayed.replayed.len(), 1);
    assert_eq!(wait_replicated(&task_db, poison).await.1, "Poison");
    assert!(task::dlq::list(&admin).await.unwrap().is_empty());
    assert!(
        task.stats
            .poisoned
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let _ = admin.close(200, "done".into()).await;
}

#[tokio::test]
async fn resync_runs_as_tasks_role() {
    // Arrange: members auth holds but never announced.
    let mut env = least_privilege_env().await;
    let (auth, _task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let auth_db = env.pool("auth").await;
    seed_auth_members(&auth_db, 500).await;
    let settings = task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &format!("http://{}", auth.app.addr),
    );
    let source = task::auth_client::AuthClient::new(&settings.auth).unwrap();
    let as_task = PgPool::connect_with(settings.database.connect_options().unwrap())
        .await
        .expect("task's role connects to its database");

    // Act
    let done = task::resync::resync(&as_task, &source, task::resync::Scope::All, |_| {})
        .await
        .expect("resync as task's role");

    // Assert
    assert_eq!(done.read, 500);
    let task_db = env.pool("task").await;
    assert_eq!(scalar(&task_db, "SELECT count(*) FROM members").await, 500);
}

#[tokio::test]
async fn production_refuses_a_superuser_database_role_and_runs_with_its_own() {
    let service_token = "a-production-service-token-of-40-bytes!!";
    let production = |env: &mut TestEnv| {
        let mut s = task_settings(env, ConsistencyMode::NotReady, NOWHERE);
        s.base.environment = Environment::Production;
        s.auth.service_token = service_token.into();
        s
    };

    // As the superuser (an env without roles of its own): refused, naming
    // the key, before any migration.
    let mut env = TestEnv::new();
    let app = task::Application::build(production(&mut env))
        .await
        .expect("the settings pass the static audit");
    let stopped = tokio::time::timeout(
        WAIT,
        app.run_until_stopped(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("refused promptly");
    let refused = stopped
        .expect_err("a superuser role is refused")
        .to_string();
    assert!(
        refused.contains("task.database.url") && refused.contains("superuser"),
        "{refused}"
    );
    let task_db = env.pool("task").await;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('public.members') IS NOT NULL")
        .fetch_one(&task_db)
        .await
        .unwrap();
    assert!(!migrated, "nothing was created as the superuser");

    // With its own role, the same production settings start.
    let mut env = least_privilege_env().await;
    let _task = spawn_task(production(&mut env)).await;
}

#[tokio::test]
async fn the_docs_print_the_grants_the_tests_run() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    let shell = |arg: &str| {
        if arg.contains(['^', '$', '\\', '|', '(']) {
            format!("'{arg}'")
        } else {
            arg.to_owned()
        }
    };
    for r in rights::ALL {
        let user = format!("memberflow-{}", r.principal);
        for line in rabbitmqctl_grants(&r, "/", &user) {
            let line = std::iter::once("rabbitmqctl".to_owned())
                .chain(line.iter().map(|a| shell(a)))
                .collect::<Vec<_>>()
                .join(" ");
            assert!(docs.contains(&line), "docs/security.md lacks: {line}");
        }
    }
    // Compose's PostgreSQL runs the same SQL at its first start, the
    // password from a psql variable.
    let init_roles = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/postgres/init-roles.sh"
    ))
    .unwrap();
    for service in ["auth", "task"] {
        for sql in role_sql(&format!("memberflow_{service}"), "…", service) {
            assert!(docs.contains(&sql), "docs/security.md lacks: {sql}");
            let compose = sql.replace("'…'", &format!(":'{service}_password'"));
            assert!(
                init_roles.contains(&compose),
                "init-roles.sh lacks: {compose}"
            );
        }
    }
    // Compose grants the same rights through the management API: each
    // user's JSON, exactly.
    let init = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rabbitmq/init-users.sh"
    ))
    .unwrap();
    let json = |s: &str| s.replace('\\', "\\\\");
    for r in rights::ALL {
        let user = format!("memberflow-{}", r.principal);
        let permissions = format!(
            "permissions/%2F/{user} \\\n  '{{\"configure\":\"{}\",\"write\":\"{}\",\"read\":\"{}\"}}'",
            json(r.configure),
            json(r.write),
            json(r.read)
        );
        assert!(
            init.contains(&permissions),
            "init-users.sh lacks {permissions}"
        );
        for t in r.topics {
            let topic = format!(
                "topic-permissions/%2F/{user} \\\n  '{{\"exchange\":\"{}\",\"write\":\"{}\",\"read\":\"{}\"}}'",
                t.exchange,
                json(t.write),
                json(t.read)
            );
            assert!(init.contains(&topic), "init-users.sh lacks {topic}");
        }
        if r.topics.is_empty() {
            assert!(!init.contains(&format!("topic-permissions/%2F/{user} ")));
        }
    }
}

#[tokio::test]
async fn an_existing_deployment_moves_to_a_role_of_its_own_with_the_docs_sql() {
    // Arrange: auth migrated and serving as the superuser, as deployments
    // did before; then stopped.
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    sign_up(&mut auth, "before@example.com", "Before").await;
    auth.app.stop().await.unwrap();
    let database = env
        .database_url("auth")
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let role = database_role("auth", &env.id);
    env.drop_role_at_end(&role);

    // Act: the role, then docs/security.md's SQL for an existing deployment,
    // with this test's names.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    let start = docs
        .find("ALTER DATABASE auth OWNER TO memberflow_auth;")
        .expect("the docs hand an existing database over");
    let block = &docs[start..start + docs[start..].find("```").unwrap()];
    let sql = block
        .replace("memberflow_auth", &role)
        .replace("DATABASE auth ", &format!("DATABASE \"{database}\" "));
    let (on_server, in_database) = sql.split_once("\\connect auth\n").unwrap();
    let mut server = PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .unwrap();
    let create_role = role_sql(&role, "pw", &database).remove(0);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{create_role};{on_server}")))
        .execute(&mut server)
        .await
        .unwrap();
    let auth_db = env.pool("auth").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(in_database.to_owned()))
        .execute(&auth_db)
        .await
        .unwrap();

    // Assert: auth starts as the role (its migrations table read and
    // checked), signs up, and the superuser owns nothing left in public.
    let mut settings = auth_settings(&mut env);
    settings.database = memberflow_runtime::db::DatabaseSettings::with_url(&format!(
        "postgres://{role}:pw@{}/{database}",
        env.pg_host()
    ));
    let mut auth = spawn_auth(settings).await;
    sign_up(&mut auth, "after@example.com", "After").await;
    let foreign = format!(
        "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> '{role}')
              + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> '{role}')"
    );
    assert_eq!(scalar(&auth_db, &foreign).await, 0);
    assert_eq!(scalar(&auth_db, "SELECT count(*) FROM members").await, 2);
}
