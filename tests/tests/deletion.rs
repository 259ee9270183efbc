//! Account deletion (DeleteAccount): the member becomes a tombstone in both
//! databases, no live row keeps their email, nickname or task titles, their
//! tokens are refused by both services, and nothing brings them back: not a
//! stale or replayed event, a resync, a reconcile pass nor a read-through.
//! Real auth, task, PostgreSQL and RabbitMQ.
use std::time::{Duration, Instant};

use memberflow_contract::{
    proto::auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    proto::task::v1::ListTasksRequest,
    topology::{DEAD_LETTER_QUEUE, MEMBER_DELETED, MEMBER_UPDATED, QUEUE},
};
use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher, ack_unseen},
    apps::{TestAuth, spawn_task, task_settings},
    env::TestEnv,
    eventually,
    fixtures::{PASSWORD, bearer, create_task, login, signup},
    replica::auth_now,
    system::System,
};
use sqlx::PgPool;
use task::{ConsistencyMode, auth_client::AuthClient, repair::UnknownRows};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// The stated bound: from DeleteAccount's answer to no live row of either
/// database holding the member's email, nickname or a task title. The
/// measured time is printed; on this machine it is a few milliseconds (an
/// outbox relay, a publish and one consumer batch).
const BOUND: Duration = Duration::from_secs(5);

/// One member with personal data to erase.
struct Person {
    email: String,
    nickname: String,
    titles: Vec<String>,
}

impl Person {
    fn new(tag: &str) -> Self {
        Self {
            email: format!("erase-{tag}@example.com"),
            nickname: format!("Nick{tag}"),
            titles: (1..=3).map(|i| format!("secret {tag} title {i}")).collect(),
        }
    }

    fn signup(&self) -> auth_pb::SignUpRequest {
        auth_pb::SignUpRequest {
            nickname: self.nickname.clone(),
            ..signup(&self.email)
        }
    }
}

/// Every live row of either database that still holds a piece of `p`'s
/// personal data, described; empty when none does.
async fn personal_data_left(auth_db: &PgPool, task_db: &PgPool, p: &Person) -> Vec<String> {
    let mut left = Vec::new();
    let count = |pool: &PgPool, sql: &'static str, args: Vec<String>| {
        let pool = pool.clone();
        async move {
            let mut q = sqlx::query_scalar::<_, i64>(sql);
            for a in args {
                q = q.bind(a);
            }
            q.fetch_one(&pool).await.expect(sql)
        }
    };
    let who = vec![p.email.clone(), p.nickname.clone()];
    for (pool, sql) in [
        (
            auth_db,
            "SELECT count(*) FROM members WHERE email = $1 OR nickname = $2",
        ),
        (
            auth_db,
            "SELECT count(*) FROM outbox WHERE position(convert_to($1, 'UTF8') IN payload) > 0
                 OR position(convert_to($2, 'UTF8') IN payload) > 0",
        ),
        (
            auth_db,
            "SELECT count(*) FROM outbox_parked
              WHERE position(convert_to($1, 'UTF8') IN payload) > 0
                 OR position(convert_to($2, 'UTF8') IN payload) > 0",
        ),
        (
            task_db,
            "SELECT count(*) FROM members WHERE nickname = $2 OR nickname = $1",
        ),
    ] {
        let n = count(pool, sql, who.clone()).await;
        if n > 0 {
            left.push(format!("{n} row(s): {sql}"));
        }
    }
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE title = ANY($1)")
        .bind(&p.titles)
        .fetch_one(task_db)
        .await
        .unwrap();
    if tasks > 0 {
        left.push(format!("{tasks} task(s) with the member's titles"));
    }
    left
}

/// A member row as a tombstone check sees it: (version, deleted).
async fn row(pool: &PgPool, id: Uuid) -> Option<(i64, bool)> {
    sqlx::query_as("SELECT version, deleted_at IS NOT NULL FROM members WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn tasks_of(task_db: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE member_id = $1")
        .bind(id)
        .fetch_one(task_db)
        .await
        .unwrap()
}

/// Waits until task holds `id` as a tombstone at `version` with no tasks.
async fn replica_tombstone(task_db: &PgPool, id: Uuid, version: i64, within: Duration) {
    eventually("the tombstone in the replica", within, || async {
        (row(task_db, id).await == Some((version, true)) && tasks_of(task_db, id).await == 0)
            .then_some(())
    })
    .await;
}

/// Signs `p` up through `auth` and creates their tasks through `task`:
/// (member id, access token).
async fn member_with_tasks(
    auth: &mut TestAuth,
    task: &memberflow_tests::apps::TestTask,
    p: &Person,
) -> (Uuid, String) {
    let (id, token) = auth.member(p.signup()).await;
    let mut client = task.client(&token);
    for title in &p.titles {
        client
            .create_task(create_task(title))
            .await
            .expect("create");
    }
    (id, token)
}

/// auth, as task's reconciler and resync read it.
fn source(env: &mut TestEnv, auth: &TestAuth) -> AuthClient {
    let settings = task_settings(
        env,
        ConsistencyMode::NotReady,
        &format!("http://{}", auth.app.addr),
    );
    AuthClient::new(&settings.auth).expect("auth client")
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("refused").code()
}

/// The calls a token of a deleted member makes: each service refuses it.
async fn assert_refused(auth: &mut AuthServiceClient<Channel>, task: Channel, token: &str) {
    let update = auth_pb::UpdateProfileRequest {
        nickname: Some("Back".into()),
        region: None,
    };
    assert_eq!(
        code(auth.update_profile(bearer(update, token)).await),
        Code::Unauthenticated
    );
    let again = auth_pb::DeleteAccountRequest {
        password: PASSWORD.into(),
        ..Default::default()
    };
    assert_eq!(
        code(auth.delete_account(bearer(again, token)).await),
        Code::Unauthenticated
    );
    let mut client = memberflow_client::TaskClient::new(task, token)
        .expect("client")
        .with_deadline(Duration::from_secs(2));
    assert_eq!(
        code(client.create_task(create_task("after deletion")).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.list_tasks(ListTasksRequest::default()).await),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn deletion_erases_personal_data_within_the_bound_and_the_email_signs_up_anew() {
    // Arrange: a member with three tasks.
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let p = Person::new("main");
    let task = sys.tasks.remove(0);
    let (id, token) = member_with_tasks(sys.auth(), &task, &p).await;
    assert_eq!(tasks_of(&task_db, id).await, 3);

    // A wrong password is INVALID_ARGUMENT on `password`, and deletes nothing.
    let wrong = sys
        .auth()
        .delete_account(&token, "not the password")
        .await
        .expect_err("a wrong password");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().contains("password"), "{}", wrong.message());
    assert_eq!(row(&auth_db, id).await, Some((1, false)));

    // Act
    let started = Instant::now();
    let consistency = sys
        .auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("delete");
    assert_eq!(consistency, format!("c1.{}.2", id.simple()));

    // Assert: within the bound, no live row holds the personal data.
    eventually("no personal data in any live row", BOUND, || async {
        personal_data_left(&auth_db, &task_db, &p)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eprintln!(
        "DeleteAccount → personal data gone from both databases in {:?}",
        started.elapsed()
    );
    assert_eq!(row(&auth_db, id).await, Some((2, true)));
    replica_tombstone(&task_db, id, 2, WAIT).await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE member_id = $1")
        .bind(id)
        .fetch_one(&auth_db)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "MemberDeleted published, nothing else pending");

    // The old token is refused by both services, and a repeated DeleteAccount
    // changes nothing.
    let mut client = sys.auth().client.clone();
    assert_refused(&mut client, task.channel.clone(), &token).await;
    assert_eq!(row(&auth_db, id).await, Some((2, true)));

    // Login with the old email answers exactly as for an unknown email.
    let old = client.login(login(&p.email, PASSWORD)).await.unwrap_err();
    let unknown = client
        .login(login("never-signed-up@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(
        (old.code(), old.message()),
        (unknown.code(), unknown.message())
    );

    // GetMember: NOT_FOUND; ListMembers: the tombstone, id and version only.
    let source = source(&mut env, sys.auth());
    assert_eq!(source.member(id).await.expect("GetMember"), None);
    let listed = auth_now(&source, &[id]).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_deleted());
    assert_eq!((listed[0].version, listed[0].nickname.as_str()), (2, ""));

    // The same email signs up again: a new member, the old one stays deleted.
    let (again, _) = sys.auth().member(p.signup()).await;
    assert_ne!(again, id);
    assert_eq!(row(&auth_db, id).await, Some((2, true)));
    eventually("the new member in the replica", WAIT, || async {
        (row(&task_db, again).await == Some((1, false))).then_some(())
    })
    .await;
    assert_eq!(row(&task_db, id).await, Some((2, true)));
}

/// auth's members of `id`, as ListMembers answers.
#[tokio::test]
async fn nothing_resurrects_a_deleted_member() {
    // Arrange: a member with tasks, deleted, the tombstone in the replica.
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env)
        .mode(ConsistencyMode::ReadThrough)
        .start()
        .await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let p = Person::new("zombie");
    let task = sys.tasks.remove(0);
    let (id, token) = member_with_tasks(sys.auth(), &task, &p).await;
    sys.auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("delete");
    replica_tombstone(&task_db, id, 2, WAIT).await;
    let source = source(&mut env, sys.auth());
    let unchanged = || async {
        assert_eq!(row(&task_db, id).await, Some((2, true)));
        assert_eq!(tasks_of(&task_db, id).await, 0);
        assert!(personal_data_left(&auth_db, &task_db, &p).await.is_empty());
    };

    // A stale MemberChanged published by hand, at every older version.
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let seen = task.processed();
    for version in [1, 2] {
        publisher
            .member_event(&MemberEventFixture {
                nickname: p.nickname.clone(),
                ..MemberEventFixture::new(id, version, "Asia/Seoul")
            })
            .await;
    }
    eventually("the stale events processed", WAIT, || async {
        (task.processed() >= seen + 2).then_some(())
    })
    .await;
    unchanged().await;

    // A DLQ replay of an older event of the member.
    dead_letter(&publisher, id, 1, &p.nickname).await;
    let seen = task.processed();
    let replayed = task::dlq::replay(&publisher.conn, &[])
        .await
        .expect("replay");
    assert_eq!(replayed.replayed.len(), 1);
    eventually("the replayed event processed", WAIT, || async {
        (task.processed() > seen).then_some(())
    })
    .await;
    unchanged().await;

    // A full resync and a reconcile pass.
    task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .expect("resync");
    unchanged().await;
    task::reconcile::reconcile_once(&task_db, &source, UnknownRows::Remove)
        .await
        .expect("reconcile");
    unchanged().await;

    // A CreateTask with the old token: the tombstone refuses it; and a task
    // that never heard of the member reads through to auth, which answers
    // NOT_FOUND, and provisions nothing.
    let mut client = task.client(&token).with_deadline(Duration::from_secs(2));
    assert_eq!(
        code(client.create_task(create_task("read through")).await),
        Code::Unauthenticated
    );
    sqlx::query("DELETE FROM members WHERE id = $1")
        .bind(id)
        .execute(&task_db)
        .await
        .unwrap();
    client
        .create_task(create_task("read through"))
        .await
        .expect_err("nothing to provision");
    assert_eq!(row(&task_db, id).await, None);
    assert_eq!(tasks_of(&task_db, id).await, 0);
    // The reconciler puts the tombstone back (auth has it, the replica not).
    task::reconcile::reconcile_once(&task_db, &source, UnknownRows::Report)
        .await
        .expect("reconcile");
    unchanged().await;
}

/// Puts a MemberChanged of `member` at `version` straight into task's DLQ, as
/// a dead-lettered event; returns its message id.
async fn dead_letter(
    publisher: &RawPublisher,
    member: Uuid,
    version: i64,
    nickname: &str,
) -> String {
    use prost::Message;
    let body = auth_pb::MemberChanged {
        event_id: Uuid::now_v7().to_string(),
        member_id: member.to_string(),
        nickname: nickname.into(),
        region: "Asia/Seoul".into(),
        version,
        occurred_at: Some(memberflow_contract::time::timestamp(chrono::Utc::now())),
        ..Default::default()
    }
    .encode_to_vec();
    let message_id = Uuid::now_v7().to_string();
    publisher
        .channel
        .basic_publish(
            "".into(),
            DEAD_LETTER_QUEUE.into(),
            lapin::options::BasicPublishOptions::default(),
            &body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_type(MEMBER_UPDATED.into())
                .with_message_id(message_id.as_str().into()),
        )
        .await
        .expect("publish to the DLQ")
        .await
        .expect("confirm");
    message_id
}

#[tokio::test]
async fn dlq_drop_removes_the_members_messages_and_keeps_the_rest_in_order() {
    // Arrange: the DLQ holds another member's message, the deleted member's,
    // then another's.
    let mut env = TestEnv::new();
    let _task =
        memberflow_tests::system::spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let (gone, other) = (Uuid::now_v7(), Uuid::now_v7());
    let first = dead_letter(&publisher, other, 1, "Other").await;
    let dropped = dead_letter(&publisher, gone, 3, "Gone").await;
    let last = dead_letter(&publisher, other, 2, "Other").await;

    // Act
    let report = task::dlq::drop_member(&publisher.conn, gone)
        .await
        .expect("drop");

    // Assert
    assert_eq!((report.dropped, report.kept), (vec![dropped], 2));
    let left: Vec<String> = task::dlq::list(&publisher.conn)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.message_id)
        .collect();
    assert_eq!(left, vec![first, last]);
}

#[tokio::test]
async fn deletion_racing_update_profile_wins_whichever_commits_first() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    for i in 0..8 {
        let (id, token) = sys
            .auth()
            .member(signup(&format!("race{i}@example.com")))
            .await;
        let (mut a, mut b) = (sys.auth().client.clone(), sys.auth().client.clone());
        let update = auth_pb::UpdateProfileRequest {
            nickname: Some(format!("Racer{i}")),
            region: None,
        };
        let delete = auth_pb::DeleteAccountRequest {
            password: PASSWORD.into(),
            ..Default::default()
        };
        let (updated, deleted) = tokio::join!(
            a.update_profile(bearer(update, &token)),
            b.delete_account(bearer(delete, &token)),
        );
        deleted.expect("the deletion succeeds");
        if let Err(s) = updated {
            assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        }
        let (version, deleted) = row(&auth_db, id).await.expect("a tombstone");
        assert!(deleted);
        replica_tombstone(&task_db, id, version, WAIT).await;
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM members WHERE nickname LIKE 'Racer%' OR email LIKE 'race%'",
    )
    .fetch_one(&auth_db)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_deletion_while_task_is_down_is_applied_when_it_returns() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let p = Person::new("down");
    let task = sys.tasks.remove(0);
    let (id, token) = member_with_tasks(sys.auth(), &task, &p).await;
    task.app.stop().await.expect("task stops");

    sys.auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("delete");
    let auth_url = format!("http://{}", sys.auth().app.addr);
    let task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &auth_url,
    ))
    .await;

    replica_tombstone(&task_db, id, 2, WAIT).await;
    assert!(personal_data_left(&auth_db, &task_db, &p).await.is_empty());
    let mut client = sys.auth().client.clone();
    assert_refused(&mut client, task.channel.clone(), &token).await;
}

#[tokio::test]
async fn a_deletion_an_old_task_skipped_is_repaired_by_the_reconciler() {
    // Arrange: task is down when the member is deleted, and an old task
    // acks member.deleted unseen (as a task before issue 23 does).
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let p = Person::new("skipped");
    let task = sys.tasks.remove(0);
    let (id, token) = member_with_tasks(sys.auth(), &task, &p).await;
    task.app.stop().await.expect("task stops");
    sys.auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("delete");
    let url = env.amqp_url();
    let skipped = eventually("member.deleted skipped", WAIT, || {
        let url = url.clone();
        async move {
            let keys = ack_unseen(&url, QUEUE).await;
            keys.iter().any(|k| k == MEMBER_DELETED).then_some(keys)
        }
    })
    .await;
    assert!(skipped.iter().any(|k| k == MEMBER_DELETED));

    // Act: a new task, reconciling every 2 s.
    let auth_url = format!("http://{}", sys.auth().app.addr);
    let mut settings = task_settings(&mut env, ConsistencyMode::NotReady, &auth_url);
    settings.reconcile.interval_secs = 2;
    let task = spawn_task(settings).await;

    // Assert: the reconciler applies auth's tombstone and deletes the tasks.
    replica_tombstone(&task_db, id, 2, WAIT).await;
    assert!(personal_data_left(&auth_db, &task_db, &p).await.is_empty());
    // Counted when the pass ends, a moment after its repair is visible.
    eventually("the pass to count the repair", WAIT, || async {
        (task.metrics.reconcile_repaired(task::repair::Kind::Behind) >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_two_auth_and_two_task_instances_nothing_of_the_member_remains() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).instances(2).start().await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let p = Person::new("pair");
    let (id, token) = sys.auths[0].member(p.signup()).await;
    let mut client = sys.tasks[1].client(&token);
    for title in &p.titles {
        client
            .create_task(create_task(title))
            .await
            .expect("create");
    }

    let started = Instant::now();
    sys.auths[1]
        .delete_account(&token, PASSWORD)
        .await
        .expect("delete");
    eventually("no personal data in any live row", BOUND, || async {
        personal_data_left(&auth_db, &task_db, &p)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eprintln!("two instances each: gone in {:?}", started.elapsed());
    replica_tombstone(&task_db, id, 2, WAIT).await;
    for (a, t) in [(0, 1), (1, 0)] {
        let mut auth = sys.auths[a].client.clone();
        assert_refused(&mut auth, sys.tasks[t].channel.clone(), &token).await;
    }
}

#[tokio::test]
async fn logs_at_the_default_level_carry_no_email_nickname_or_title() {
    // The services as processes, logging at `info` (their default) to files.
    let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into());
    let mut env = TestEnv::new();
    let sys = System::builder(&mut env).processes().start().await;
    let task_db = env.pool("task").await;
    let p = Person::new("quiet");
    let mut auth = AuthServiceClient::new(sys.auth_processes[0].channel.clone());
    let (id, token) = memberflow_tests::apps::sign_up_and_log_in(&mut auth, p.signup()).await;
    let mut client =
        memberflow_client::TaskClient::new(sys.task_processes[0].channel.clone(), &token)
            .expect("client");
    for title in &p.titles {
        client
            .create_task(create_task(title))
            .await
            .expect("create");
    }
    // A wrong password first: a failure path logs too.
    let wrong = auth_pb::DeleteAccountRequest {
        password: "not the password".into(),
        ..Default::default()
    };
    auth.delete_account(bearer(wrong, &token))
        .await
        .expect_err("wrong password");
    let delete = auth_pb::DeleteAccountRequest {
        password: PASSWORD.into(),
        ..Default::default()
    };
    auth.delete_account(bearer(delete, &token))
        .await
        .expect("delete");
    replica_tombstone(&task_db, id, 2, WAIT).await;

    if level != "info" {
        eprintln!("TEST_LOG={level}: the check is for the default level, info; skipped");
        return;
    }
    for process in sys.auth_processes.iter().chain(&sys.task_processes) {
        let log = process.log_text();
        // It did log (start-up at least), so the check reads real output.
        assert!(!log.is_empty(), "{} logged nothing", process.service);
        for secret in [&p.email, &p.nickname].into_iter().chain(&p.titles) {
            assert!(
                !log.contains(secret.as_str()),
                "{} logged {secret:?}:\n{log}",
                process.service
            );
        }
    }
}

#[tokio::test]
async fn wrong_passwords_are_throttled_like_login() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env)
        .tune_auth(|s| {
            s.login_throttle.per_email.burst = 3;
            s.login_throttle.per_email.refill_ms = 60_000;
        })
        .start()
        .await;
    let auth_db = env.pool("auth").await;
    let (id, token) = sys.auth().member(signup("guess@example.com")).await;
    for _ in 0..3 {
        let err = sys
            .auth()
            .delete_account(&token, "a wrong guess")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    // The fourth attempt waits, even with the right password.
    let err = sys
        .auth()
        .delete_account(&token, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(row(&auth_db, id).await, Some((1, false)));
}

/// A CreateTask whose replica read saw the member live, but whose insert
/// comes after the tombstone, creates nothing and says so (`None`, which
/// CreateTask answers UNAUTHENTICATED), rather than failing on a missing row.
#[tokio::test]
async fn a_create_task_that_loses_the_race_to_the_tombstone_creates_nothing() {
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env).start().await;
    let p = Person::new("race");
    let (id, token) = member_with_tasks(&mut system.auths[0], &system.tasks[0], &p).await;
    let task_db = env.pool("task").await;
    let version = row(&task_db, id).await.expect("replicated").0;
    system
        .auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("deleted");
    replica_tombstone(&task_db, id, version + 1, WAIT).await;

    // The insert of a call that read the member live just before.
    let new = task::domain::NewTask {
        request_id: Uuid::new_v4(),
        title: task::domain::Title::parse("too late").unwrap(),
        due_local: task::domain::DueLocal::parse("2026-12-24T18:00").unwrap(),
    };
    let created =
        task::repo::create_idempotent(&task_db, id, &new, chrono::Utc::now(), "Asia/Seoul")
            .await
            .expect("no database error");
    assert_eq!(created, None);
    assert_eq!(tasks_of(&task_db, id).await, 0);
}

/// Deleting an account ends its sessions for good: a refresh token from
/// before it refreshes nothing, and no session row (nor the device's
/// user agent) is left.
#[tokio::test]
async fn a_refresh_token_from_before_the_deletion_refreshes_nothing() {
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env).start().await;
    let p = Person::new("refresh");
    let (id, token) = system.auth().member(p.signup()).await;
    let device =
        memberflow_tests::apps::log_in_on(&mut system.auth().client, &p.email, "phone/1.0").await;
    system
        .auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("deleted");

    let refreshed = system
        .auth()
        .client
        .refresh(auth_pb::RefreshRequest {
            refresh_token: device.refresh_token,
        })
        .await;
    assert_eq!(code(refreshed), Code::Unauthenticated);
    let auth_db = env.pool("auth").await;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE member_id = $1")
        .bind(id)
        .fetch_one(&auth_db)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}
