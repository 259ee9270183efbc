//! `memberflow-admin` as an operator runs it: the real binary, configured
//! by the repository's config folder plus `TASK__*` / `AUTH__*` variables,
//! against a real system.
use std::{process::Output, time::Duration};

use memberflow_runtime::secrets::DEV_SERVICE_TOKEN;
use memberflow_tests::{
    apps::{auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
};
use task::ConsistencyMode;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

async fn admin(vars: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_memberflow-admin"));
    cmd.arg("--config").arg(CONFIG).args(args);
    cmd.env("AUTH__ENVIRONMENT", "development")
        .env("TASK__ENVIRONMENT", "development");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("admin finished")
        .expect("admin ran")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn resync_dlq_and_outbox_commands_work_and_fail_loudly() {
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let auth_addr = format!("http://{}", auth.app.addr);
    let _task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &auth_addr,
    ))
    .await;
    let auth_db = env.pool("auth").await;
    sqlx::query(
        "INSERT INTO members (id, email, password_hash, nickname, region)
         SELECT gen_random_uuid(), 'seed' || g || '@example.com', 'x', 'seed', 'Asia/Seoul'
           FROM generate_series(1, 50) g",
    )
    .execute(&auth_db)
    .await
    .unwrap();
    let vars = vec![
        ("TASK__DATABASE__URL".to_owned(), env.database_url("task")),
        ("TASK__AMQP__URL".to_owned(), env.amqp_url()),
        ("TASK__AUTH__ADDR".to_owned(), auth_addr),
        (
            "TASK__AUTH__SERVICE_TOKEN".to_owned(),
            DEV_SERVICE_TOKEN.to_owned(),
        ),
        ("AUTH__DATABASE__URL".to_owned(), env.database_url("auth")),
    ];

    let out = admin(&vars, &["resync"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("50 member(s) read from auth, 50 replica row(s) changed"),
        "{}",
        text(&out)
    );
    let again = admin(&vars, &["resync"]).await;
    assert!(
        text(&again).contains("0 replica row(s) changed"),
        "{}",
        text(&again)
    );

    let out = admin(&vars, &["dlq", "list"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 message(s) in task.member-events.dlq"),
        "{}",
        text(&out)
    );

    let out = admin(&vars, &["outbox", "parked"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 parked row(s)"), "{}", text(&out));

    // A dependency that is not there: non-zero, and says which.
    let mut broken = vars.clone();
    broken.push((
        "TASK__AMQP__URL".to_owned(),
        "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
    ));
    let out = admin(&broken, &["dlq", "list"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("RabbitMQ is not reachable"),
        "{}",
        text(&out)
    );
    broken.push((
        "AUTH__DATABASE__URL".to_owned(),
        "postgres://postgres@127.0.0.1:1/auth".to_owned(),
    ));
    let out = admin(&broken, &["outbox", "parked"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("is not reachable"), "{}", text(&out));
}

#[tokio::test]
async fn erasures_lists_the_saga_and_retry_republishes_the_deletion() {
    let mut env = TestEnv::new();
    let mut sys = memberflow_tests::system::System::builder(&mut env)
        .start()
        .await;
    let auth_db = env.pool("auth").await;
    let vars = vec![
        ("AUTH__DATABASE__URL".to_owned(), env.database_url("auth")),
        ("TASK__DATABASE__URL".to_owned(), env.database_url("task")),
    ];
    let (id, token) = sys
        .auth()
        .member(memberflow_tests::fixtures::signup("saga-admin@example.com"))
        .await;
    sys.auth()
        .delete_account(&token, memberflow_tests::fixtures::PASSWORD)
        .await
        .unwrap();
    let complete = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&id.to_string()) && l.ends_with(" state=complete"))
    };
    let listed = memberflow_tests::eventually(
        "the erasure listed complete",
        Duration::from_secs(30),
        || async {
            let out = admin(&vars, &["erasures"]).await;
            complete(&out).then_some(out)
        },
    )
    .await;
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(" task=20"), "{}", text(&listed));
    let pending = admin(&vars, &["erasures", "--pending"]).await;
    assert!(pending.status.success(), "{}", text(&pending));
    assert!(
        text(&pending).contains("0 erasure(s)"),
        "{}",
        text(&pending)
    );

    // A retry republishes MemberDeleted; the erasure stays complete.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&auth_db)
        .await
        .unwrap();
    let id_arg = id.to_string();
    let out = admin(&vars, &["erasures", "retry", "--member", &id_arg]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" retried="), "{}", text(&out));
    // task answers again: a second receipt reaches auth's inbox.
    memberflow_tests::eventually("the retry's receipt", Duration::from_secs(30), || async {
        let now: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&auth_db)
            .await
            .unwrap();
        (now > before).then_some(())
    })
    .await;

    let unknown = admin(
        &vars,
        &[
            "erasures",
            "retry",
            "--member",
            &uuid::Uuid::now_v7().to_string(),
        ],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no erasure on record"),
        "{}",
        text(&unknown)
    );
}

#[tokio::test]
async fn grant_admin_makes_the_first_admin_who_can_then_suspend_at_task() {
    let mut env = TestEnv::new();
    let mut sys = memberflow_tests::system::System::builder(&mut env)
        .start()
        .await;
    let vars = vec![("AUTH__DATABASE__URL".to_owned(), env.database_url("auth"))];
    let (root, old_token) = sys
        .auth()
        .member(memberflow_tests::fixtures::signup("root@example.com"))
        .await;
    let (ann, ann_token) = sys
        .auth()
        .member(memberflow_tests::fixtures::signup("ann@example.com"))
        .await;

    let out = admin(&vars, &["grant-admin", "--email", "Root@Example.com"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{root}\tadmin")),
        "{}",
        text(&out)
    );
    let again = admin(&vars, &["grant-admin", "--email", "root@example.com"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already an active admin"),
        "{}",
        text(&again)
    );
    for (args, says) in [
        (
            ["grant-admin", "--email", "nobody@example.com"],
            "no member has the email",
        ),
        (
            ["grant-admin", "--email", "not an email"],
            "--email must be",
        ),
    ] {
        let out = admin(&vars, &args).await;
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
    }

    // The grant ended root's sessions; logged in again, root is an admin.
    let mut client = sys.auth().client.clone();
    let refused = client
        .list_sessions(memberflow_tests::fixtures::bearer(
            memberflow_contract::proto::auth::v1::ListSessionsRequest {},
            &old_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let token = memberflow_tests::apps::log_in(&mut client, "root@example.com").await;
    client
        .suspend_member(memberflow_tests::fixtures::bearer(
            memberflow_contract::proto::auth::v1::SuspendMemberRequest {
                member_id: ann.to_string(),
                reason: "spam".into(),
            },
            &token,
        ))
        .await
        .unwrap();
    let tasks = sys.task().client(&ann_token);
    memberflow_tests::eventually("task refuses ann", Duration::from_secs(20), || {
        let mut c = tasks.clone();
        async move {
            let r = c
                .list_tasks(memberflow_contract::proto::task::v1::ListTasksRequest::default())
                .await;
            matches!(r, Err(s) if s.code() == tonic::Code::PermissionDenied).then_some(())
        }
    })
    .await;
}
