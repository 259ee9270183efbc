//! auth is the source of truth: a replica row ahead of auth (a forged event,
//! a restore of auth's database) or at auth's version with other content is
//! set to auth's state, by compare-and-set so that an event applied in
//! between is never undone. Real auth, task, PostgreSQL and RabbitMQ.
use std::time::{Duration, Instant};

use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher},
    apps::{auth_settings, log_in, spawn_auth},
    env::TestEnv,
    eventually,
    fixtures::{seed_auth_members, signup},
    replica::{auth_now, members, replica_stage},
};
use sqlx::PgPool;
use task::{
    metrics::EventOutcome,
    repair::{self, Kind, UnknownRows},
    replica,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// The reconciler's interval in these tests.
const INTERVAL: Duration = Duration::from_secs(2);
/// What a pass itself may take on a loaded two-core machine, beside the
/// interval it waits for.
const PASS_SLACK: Duration = Duration::from_secs(3);

/// Waits until the replica holds exactly auth's members; returns how long
/// that took.
async fn replica_equals_auth(auth_db: &PgPool, task_db: &PgPool, within: Duration) -> Duration {
    let started = Instant::now();
    eventually("the replica to equal auth", within, || async {
        let (a, t) = (members(auth_db).await, members(task_db).await);
        (!a.is_empty() && a == t).then_some(())
    })
    .await;
    started.elapsed()
}

/// The replica's (nickname, version) of `id`.
async fn replica_row(task_db: &PgPool, id: Uuid) -> Option<(String, i64)> {
    sqlx::query_as("SELECT nickname, version FROM members WHERE id = $1")
        .bind(id)
        .fetch_optional(task_db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_forged_far_ahead_event_is_undone_within_one_interval_and_the_next_update_applies() {
    // Arrange: one member, replicated.
    let mut env = TestEnv::new();
    let (mut auth, task, _source, auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = INTERVAL.as_secs()).await;
    let (id, token) = auth.member(signup("forged@example.com")).await;
    replica_equals_auth(&auth_db, &task_db, WAIT).await;

    // Act: anyone with write access to member.events publishes version 1000.
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    publisher
        .member_event(&MemberEventFixture {
            nickname: "Forged".into(),
            ..MemberEventFixture::new(id, 1000, "Asia/Seoul")
        })
        .await;
    // Seen in the replica, or already found by a pass that ran in between.
    let found = task.metrics.reconcile_found(Kind::Ahead);
    eventually("the forged event in the replica", WAIT, || async {
        let forged = replica_row(&task_db, id).await == Some(("Forged".into(), 1000));
        (forged || task.metrics.reconcile_found(Kind::Ahead) > found).then_some(())
    })
    .await;

    // Assert: within one interval (and a pass), the replica is auth's again.
    let took = replica_equals_auth(&auth_db, &task_db, INTERVAL + PASS_SLACK).await;
    eprintln!("forged row set back to auth's state within {took:?}");
    // A pass counts what it found and repaired when it ends, a moment after
    // the repair it made is visible.
    eventually("the pass to count the row ahead", PASS_SLACK, || async {
        (task.metrics.reconcile_found(Kind::Ahead) >= 1
            && task.metrics.reconcile_repaired(Kind::Ahead) >= 1)
            .then_some(())
    })
    .await;

    // The member's next real update is applied by the consumer, not refused.
    let applied = task.metrics.consumer.event_count(EventOutcome::applied);
    let version = auth.update_profile(&token, Some("Later"), None).await;
    assert_eq!(version, 2);
    eventually("the real update in the replica", WAIT, || async {
        (replica_row(&task_db, id).await? == ("Later".into(), 2)).then_some(())
    })
    .await;
    assert!(
        task.metrics.consumer.event_count(EventOutcome::applied) > applied,
        "the consumer applied the update"
    );
    replica_equals_auth(&auth_db, &task_db, WAIT).await;
}

#[tokio::test]
async fn a_restore_of_auth_then_updates_that_reuse_versions_converge_within_one_interval() {
    // Arrange: two members, replicated; a dump of auth's database; then two
    // updates each, which the restore will lose.
    let mut env = TestEnv::new();
    let (mut auth, task, _source, _auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = INTERVAL.as_secs()).await;
    let mut tokens = Vec::new();
    for email in ["r1@example.com", "r2@example.com"] {
        tokens.push(auth.member(signup(email)).await.1);
    }
    let auth_db = env.pool("auth").await;
    replica_equals_auth(&auth_db, &task_db, WAIT).await;
    let url = env.database_url("auth");
    let dump = std::env::temp_dir().join(format!("mf-auth-{}.dump", env.id));
    run(
        "pg_dump",
        &["-Fc", "-d", &url, "-f", dump.to_str().unwrap()],
    );
    for token in &tokens {
        auth.update_profile(token, Some("R2"), None).await;
        auth.update_profile(token, Some("R3"), None).await;
    }
    replica_equals_auth(&auth_db, &task_db, WAIT).await;

    // Act: stop auth, restore its database from the dump, start it again on
    // the same address; then two new updates each reuse versions 2 and 3.
    let addr = auth.app.addr;
    auth.app.stop().await.unwrap();
    auth_db.close().await;
    run(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--no-owner",
            "-d",
            &url,
            dump.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&dump).ok();
    let mut settings = auth_settings(&mut env);
    settings.base.server.addr = addr.to_string();
    let mut auth = spawn_auth(settings).await;
    let auth_db = env.pool("auth").await;
    let mut versions = Vec::new();
    for email in ["r1@example.com", "r2@example.com"] {
        let token = log_in(&mut auth.client, email).await;
        auth.update_profile(&token, Some("After2"), None).await;
        versions.push(auth.update_profile(&token, Some("After3"), None).await);
    }
    assert_eq!(versions, vec![3, 3], "the restored auth reuses versions");

    // Assert: within one interval (and a pass), the replica is auth's.
    let took = replica_equals_auth(&auth_db, &task_db, INTERVAL + PASS_SLACK).await;
    eprintln!("replica converged on the restored auth within {took:?}");
    let rows = members(&task_db).await;
    assert!(rows.iter().all(|r| r.1 == "After3" && r.3 == 3), "{rows:?}");
    assert!(
        task.metrics.reconcile_repaired(Kind::Ahead)
            + task.metrics.reconcile_repaired(Kind::Conflict)
            >= 1,
        "the replica was ahead of or in conflict with the restored auth"
    );
}

#[tokio::test]
async fn an_event_applied_between_the_read_and_the_write_is_not_undone() {
    // Arrange: the reconciler off; one member whose replica row is ahead.
    let mut env = TestEnv::new();
    let (mut auth, _task, source, auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = 0).await;
    let (id, _) = auth.member(signup("cas@example.com")).await;
    replica_equals_auth(&auth_db, &task_db, WAIT).await;
    sqlx::query("UPDATE members SET version = 1000, nickname = 'Forged' WHERE id = $1")
        .bind(id)
        .execute(&task_db)
        .await
        .unwrap();

    // The repair's read: the replica first, then auth; it plans to set the
    // row back to auth's version 1.
    let observed = replica::observe_ids(&task_db, &[id]).await.unwrap();
    let plan = repair::decide(&auth_now(&source, &[id]).await, &observed);
    assert_eq!(plan.overwrite.len(), 1);
    assert_eq!(plan.overwrite[0].kind, Kind::Ahead);

    // Act: an event is applied between the read and the write.
    let event = replica::MemberEvent {
        event_id: Uuid::now_v7(),
        member_id: id,
        nickname: "Newer".into(),
        region: "Asia/Seoul".into(),
        version: 1001,
        occurred_at: chrono::Utc::now(),
        sessions_not_before: None,
        sessions_version: 0,
        deleted: false,
        access: task::domain::Access::member(),
    };
    let outbox =
        memberflow_outbox::write::Outbox::without_wake(task_db.clone(), &task::erasure::SPEC);
    replica::apply(&outbox, &[event.into()]).await.unwrap();
    let done = repair::overwrite(&task_db, &plan.overwrite).await.unwrap();

    // Assert: the write found the row changed and left it alone.
    assert_eq!(done.total(), 0);
    assert_eq!(
        replica_row(&task_db, id).await,
        Some(("Newer".into(), 1001))
    );

    // Even a row put back to exactly what was observed (version and content)
    // has a new replicated_at, so the stale plan still does not match.
    sqlx::query("UPDATE members SET version = 1000, nickname = 'Forged' WHERE id = $1")
        .bind(id)
        .execute(&task_db)
        .await
        .unwrap();
    assert_eq!(
        repair::overwrite(&task_db, &plan.overwrite)
            .await
            .unwrap()
            .total(),
        0
    );

    // A fresh read repairs it.
    let observed = replica::observe_ids(&task_db, &[id]).await.unwrap();
    let plan = repair::decide(&auth_now(&source, &[id]).await, &observed);
    let done = repair::overwrite(&task_db, &plan.overwrite).await.unwrap();
    assert_eq!(done.get(Kind::Ahead), 1);
    assert_eq!(members(&task_db).await, members(&auth_db).await);
}

#[tokio::test]
async fn resync_over_a_replica_that_is_ahead_brings_it_to_auths_state() {
    // Arrange: 300 members, replicated; then 10 rows ahead, 10 in conflict
    // (same version, other content) and 10 lost.
    let mut env = TestEnv::new();
    let (_auth, _task, source, auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = 0).await;
    seed_auth_members(&auth_db, 300).await;
    task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .unwrap();
    replica_equals_auth(&auth_db, &task_db, WAIT).await;
    sqlx::raw_sql(
        "UPDATE members SET version = version + 5, nickname = 'ahead'
          WHERE id IN (SELECT id FROM members ORDER BY id LIMIT 10);
         UPDATE members SET region = 'Europe/Oslo', sessions_version = 7,
                            sessions_not_before = now()
          WHERE id IN (SELECT id FROM members ORDER BY id DESC LIMIT 10);
         DELETE FROM members WHERE id IN (SELECT id FROM members ORDER BY id OFFSET 100 LIMIT 10);",
    )
    .execute(&task_db)
    .await
    .unwrap();

    // Act
    let done = task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (
            done.repaired.get(Kind::Ahead),
            done.repaired.get(Kind::Conflict),
            done.repaired.get(Kind::Missing),
            done.changed
        ),
        (10, 10, 10, 30),
        "{done:?}"
    );
    assert_eq!(members(&task_db).await, members(&auth_db).await);
}

#[tokio::test]
async fn the_digest_sees_content_at_the_same_version_and_both_sides_hash_alike() {
    // Arrange: 300 members, some with ended sessions, replicated.
    let mut env = TestEnv::new();
    let (_auth, _task, source, auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = 0).await;
    seed_auth_members(&auth_db, 300).await;
    sqlx::query(
        "UPDATE members SET sessions_not_before = now(), sessions_version = version
          WHERE id IN (SELECT id FROM members ORDER BY id LIMIT 100)",
    )
    .execute(&auth_db)
    .await
    .unwrap();
    task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {})
        .await
        .unwrap();
    let pass = task::reconcile::reconcile_once(&task_db, &source, UnknownRows::Report)
        .await
        .unwrap();
    assert_eq!(pass.found.total(), 0, "equal rows hash alike: {pass:?}");

    // Act: content changes at the same version: nickname, region, session
    // state (set and cleared).
    sqlx::raw_sql(
        "UPDATE members SET nickname = 'other'
          WHERE id IN (SELECT id FROM members ORDER BY id OFFSET 150 LIMIT 3);
         UPDATE members SET region = 'Europe/Oslo'
          WHERE id IN (SELECT id FROM members ORDER BY id OFFSET 200 LIMIT 3);
         UPDATE members SET sessions_not_before = NULL
          WHERE id IN (SELECT id FROM members ORDER BY id LIMIT 2);
         UPDATE members SET sessions_not_before = now(), sessions_version = 9
          WHERE id IN (SELECT id FROM members ORDER BY id DESC LIMIT 2);",
    )
    .execute(&task_db)
    .await
    .unwrap();
    let pass = task::reconcile::reconcile_once(&task_db, &source, UnknownRows::Report)
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (
            pass.found.get(Kind::Conflict),
            pass.repaired.get(Kind::Conflict)
        ),
        (10, 10),
        "{pass:?}"
    );
    assert_eq!(pass.found.total(), 10);
    assert_eq!(members(&task_db).await, members(&auth_db).await);
}

#[tokio::test]
async fn rows_auth_does_not_have_are_reported_or_removed_unless_they_have_tasks() {
    // Arrange: one real member; two replica rows auth never had, one of
    // which has a task.
    let mut env = TestEnv::new();
    let (mut auth, _task, source, auth_db, task_db) =
        replica_stage(&mut env, |s| s.reconcile.interval_secs = 0).await;
    auth.member(signup("real@example.com")).await;
    replica_equals_auth(&auth_db, &task_db, WAIT).await;
    let (bare, with_task) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO members (id, nickname, region, version, occurred_at)
         SELECT unnest($1::uuid[]), 'stray', 'Asia/Seoul', 4, now()",
    )
    .bind([bare, with_task])
    .execute(&task_db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tasks (id, member_id, request_id, title, due_at, time_zone)
         VALUES ($1, $2, $3, 'kept', now(), 'Asia/Seoul')",
    )
    .bind(Uuid::now_v7())
    .bind(with_task)
    .bind(Uuid::now_v7())
    .execute(&task_db)
    .await
    .unwrap();

    // Act and assert: `report` (the default) touches nothing.
    let pass = task::reconcile::reconcile_once(&task_db, &source, UnknownRows::default())
        .await
        .unwrap();
    assert_eq!(pass.found.get(Kind::Unknown), 2);
    assert_eq!(pass.repaired.total(), 0);
    assert_eq!(members(&task_db).await.len(), 3);

    // `remove` deletes the row with no tasks and keeps the other.
    let pass = task::reconcile::reconcile_once(&task_db, &source, UnknownRows::Remove)
        .await
        .unwrap();
    assert_eq!(pass.found.get(Kind::Unknown), 2);
    assert_eq!(pass.repaired.get(Kind::Unknown), 1);
    assert_eq!(replica_row(&task_db, bare).await, None);
    assert_eq!(
        replica_row(&task_db, with_task).await,
        Some(("stray".into(), 4))
    );
}

/// Runs a PostgreSQL client tool, failing the test if it fails.
fn run(tool: &str, args: &[&str]) {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be on PATH: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
