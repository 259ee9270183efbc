//! The erasure saga (docs/deletion.md): every DeleteAccount opens an erasure
//! in auth, task answers with a `member.erased` receipt through its own
//! outbox in the transaction that erases the member, and auth completes the
//! erasure exactly once. Real auth, task, PostgreSQL and RabbitMQ; faults
//! are a stopped task, a receipt dead-lettered by a real SQLSTATE then
//! purged, a cut broker link and a killed relay leader.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use auth::erasure::{self, Erasure};
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use memberflow_contract::{proto::auth::v1 as auth_pb, topology::ERASURE_DEAD_LETTER_QUEUE};
use memberflow_outbox::write::Outbox;
use memberflow_tests::{
    apps::{spawn_task, task_settings},
    env::TestEnv,
    eventually,
    fixtures::{PASSWORD, signup},
    process::sum_samples,
    system::System,
};
use sqlx::PgPool;
use task::ConsistencyMode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// The stated bound: from DeleteAccount's answer to the erasure complete in
/// auth. Measured here it is a few milliseconds: two relays, two publishes
/// and two consumer transactions (docs/deletion.md prints the bench's p50
/// and p99).
const BOUND: Duration = Duration::from_secs(5);

/// Signs a member with a recognisable email and nickname up and deletes the
/// account; returns the member id and the personal data it had.
async fn delete_one(sys: &mut System, tag: &str) -> (Uuid, [String; 2]) {
    let email = format!("saga-{tag}@example.com");
    let nickname = format!("Saga{tag}");
    let req = auth_pb::SignUpRequest {
        nickname: nickname.clone(),
        ..signup(&email)
    };
    let (id, token) = sys.auth().member(req).await;
    sys.auth()
        .delete_account(&token, PASSWORD)
        .await
        .expect("DeleteAccount");
    (id, [email, nickname])
}

/// The erasure of `member`, as `memberflow-admin erasures` reads it.
async fn erasure_of(auth_db: &PgPool, member: Uuid) -> Option<Erasure> {
    erasure::find(auth_db, member).await.unwrap()
}

/// Waits for `member`'s erasure to complete; returns it.
async fn completed(auth_db: &PgPool, member: Uuid) -> Erasure {
    eventually("the erasure complete", WAIT, || async {
        erasure_of(auth_db, member)
            .await
            .filter(|e| e.completed_at.is_some())
    })
    .await
}

/// The sum of metric `name` (every label set) on the admin endpoint `addr`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = memberflow_tests::http::get(addr, "/metrics")
        .await
        .expect("metrics");
    sum_samples(&body, name).unwrap_or(0.0)
}

/// The sample of `series` (a name with its labels, as exposed) at `addr`.
async fn sample(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = memberflow_tests::http::get(addr, "/metrics")
        .await
        .expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn delete_account_completes_the_erasure_with_receipt_times_and_no_personal_data() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let auth_db = env.pool("auth").await;
    let metrics = sys.auth().metrics_addr;

    let asked = Instant::now();
    let (id, personal) = delete_one(&mut sys, "one").await;
    let done = completed(&auth_db, id).await;
    let took = asked.elapsed();
    eprintln!("erasure: DeleteAccount to complete in {took:?}");
    assert!(took < BOUND, "took {took:?}");

    // The record: requested, task's receipt time, complete.
    let [(service, received)] = done.receipts.as_slice() else {
        panic!("one expected service: {done:?}")
    };
    assert_eq!(service, "task");
    let received = received.expect("task's receipt time");
    assert!(done.requested_at <= received && received <= done.completed_at.unwrap());
    let line = done.line(chrono::Utc::now(), Duration::from_secs(3_600));
    assert!(line.starts_with(&format!("{id} requested=")), "{line}");
    assert!(line.ends_with(" state=complete"), "{line}");
    // No personal data anywhere in it.
    for piece in &personal {
        let held: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM erasures e WHERE strpos(e::text, $1) > 0)
                  + (SELECT count(*) FROM erasure_receipts r WHERE strpos(r::text, $1) > 0)",
        )
        .bind(piece)
        .fetch_one(&auth_db)
        .await
        .unwrap();
        assert_eq!(held, 0, "the saga record holds {piece}");
    }

    // The metrics: completed once, timed once, nothing pending.
    assert_eq!(
        metric(metrics, "memberflow_erasures_completed_total").await,
        1.0
    );
    assert_eq!(
        metric(metrics, "memberflow_erasure_seconds_count").await,
        1.0
    );
    eventually("the pending gauge at 0", WAIT, || async {
        (metric(metrics, "memberflow_erasures_pending").await == 0.0).then_some(())
    })
    .await;
    // task's outbox drained: every receipt was confirmed by the broker.
    let task_db = env.pool("task").await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&task_db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn task_down_during_the_deletion_leaves_it_pending_and_visible_until_task_returns() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let auth_db = env.pool("auth").await;
    let metrics = sys.auth().metrics_addr;
    let auth_addr = format!("http://{}", sys.auth().app.addr);
    sys.tasks.remove(0).app.stop().await.unwrap();

    let (id, _) = delete_one(&mut sys, "down").await;
    // Pending, and visible: in `erasures --pending` and in the gauge.
    let pending = erasure::list(&auth_db, true).await.unwrap();
    assert!(pending.iter().any(|e| e.member_id == id), "{pending:?}");
    eventually("the pending gauge at 1", WAIT, || async {
        (metric(metrics, "memberflow_erasures_pending").await == 1.0).then_some(())
    })
    .await;
    let line = erasure_of(&auth_db, id)
        .await
        .unwrap()
        .line(chrono::Utc::now(), Duration::from_secs(3_600));
    assert!(line.ends_with(" task=pending state=pending"), "{line}");
    // Past its deadline it counts as overdue (what `ErasurePending` fires on).
    sqlx::query("UPDATE erasures SET requested_at = requested_at - interval '2 hours'")
        .execute(&auth_db)
        .await
        .unwrap();
    eventually("the overdue gauge at 1", WAIT, || async {
        (metric(metrics, "memberflow_erasures_overdue").await == 1.0).then_some(())
    })
    .await;

    // task returns: the deletion waited in its queue; the erasure completes.
    let _task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &auth_addr,
    ))
    .await;
    completed(&auth_db, id).await;
    eventually("nothing pending or overdue", WAIT, || async {
        (metric(metrics, "memberflow_erasures_pending").await == 0.0
            && metric(metrics, "memberflow_erasures_overdue").await == 0.0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_lost_receipt_is_completed_by_erasures_retry() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let auth_db = env.pool("auth").await;
    let metrics = sys.auth().metrics_addr;
    // auth cannot record the receipt (a permanent SQLSTATE), so it is
    // dead-lettered; the test then purges the DLQ: the receipt is lost.
    sqlx::raw_sql(
        "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           RAISE EXCEPTION 'injected' USING ERRCODE = '23514'; END $$;
         CREATE TRIGGER fault BEFORE INSERT ON erasure_receipts
           FOR EACH ROW EXECUTE FUNCTION fault();",
    )
    .execute(&auth_db)
    .await
    .unwrap();

    let (id, _) = delete_one(&mut sys, "lost").await;
    eventually("the receipt dead-lettered", WAIT, || async {
        (sample(
            metrics,
            "memberflow_consumer_events_total{outcome=\"poison\"}",
        )
        .await
            == 1.0)
            .then_some(())
    })
    .await;
    let conn = memberflow_runtime::amqp::connect(&env.amqp_url(), "erasure-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dlq = channel
        .queue_declare(
            ERASURE_DEAD_LETTER_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(dlq.message_count(), 1, "the receipt is in auth's DLQ");
    channel
        .queue_purge(
            ERASURE_DEAD_LETTER_QUEUE.into(),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER fault ON erasure_receipts; DROP FUNCTION fault();")
        .execute(&auth_db)
        .await
        .unwrap();
    assert!(
        erasure_of(&auth_db, id)
            .await
            .unwrap()
            .completed_at
            .is_none(),
        "still pending: the receipt is gone"
    );

    // The operator's repair: republish the deletion; task, already holding
    // the tombstone, answers again.
    let outbox = Outbox::without_wake(auth_db.clone(), &auth::outbox::SPEC);
    let retried = erasure::retry(&outbox, id)
        .await
        .unwrap()
        .expect("on record");
    assert!(retried.retried_at.is_some());
    memberflow_outbox::wake::notify(&auth_db, auth::outbox::SPEC.channel)
        .await
        .unwrap();
    let done = completed(&auth_db, id).await;
    assert!(done.receipts[0].1.is_some());
    assert_eq!(
        erasure::retry(&outbox, Uuid::now_v7()).await.unwrap(),
        None,
        "no erasure on record for an unknown member"
    );
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn two_auth_and_two_task_instances_record_each_receipt_once_and_complete_once() {
    const N: usize = 20;
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).instances(2).start().await;
    let auth_db = env.pool("auth").await;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(delete_one(&mut sys, &format!("pair{i}")).await.0);
    }
    for &id in &ids {
        completed(&auth_db, id).await;
    }
    let addrs: Vec<SocketAddr> = sys.auths.iter().map(|a| a.metrics_addr).collect();
    let total = |name: &'static str| {
        let addrs = addrs.clone();
        async move {
            let mut sum = 0.0;
            for a in addrs {
                sum += metric(a, name).await;
            }
            sum
        }
    };
    assert_eq!(total("memberflow_erasures_completed_total").await, N as f64);
    assert_eq!(total("memberflow_erasure_seconds_count").await, N as f64);

    // Every deletion again (as `erasures retry` does): both task instances
    // answer with new receipts, which change nothing.
    let outbox = Outbox::without_wake(auth_db.clone(), &auth::outbox::SPEC);
    for &id in &ids {
        erasure::retry(&outbox, id)
            .await
            .unwrap()
            .expect("on record");
    }
    memberflow_outbox::wake::notify(&auth_db, auth::outbox::SPEC.channel)
        .await
        .unwrap();
    eventually("the second receipts acked as stale", WAIT, || async {
        let mut stale = 0.0;
        for &a in &addrs {
            stale += sample(a, "memberflow_consumer_events_total{outcome=\"stale\"}").await;
        }
        (stale >= N as f64).then_some(())
    })
    .await;
    let receipts: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure_receipts")
        .fetch_one(&auth_db)
        .await
        .unwrap();
    assert_eq!(receipts, N as i64, "one receipt per erasure");
    assert_eq!(total("memberflow_erasures_completed_total").await, N as f64);
}

#[tokio::test]
async fn the_receipt_path_survives_a_cut_broker_link_and_a_killed_relay_leader() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env)
        .broker_via_proxy()
        .task_instances(2)
        .tune_task(|s| s.relay.lease_ms = 1_000)
        .start()
        .await;
    let auth_db = env.pool("auth").await;

    // A cut link: the deletion is committed in auth, its receipt waits.
    sys.broker().cut();
    let (cut, _) = delete_one(&mut sys, "cut").await;
    assert!(
        erasure_of(&auth_db, cut)
            .await
            .unwrap()
            .completed_at
            .is_none()
    );
    sys.broker().restore();
    completed(&auth_db, cut).await;

    // task's relay leader killed (no goodbye: its lease lapses); the other
    // instance takes the lease and publishes the next receipt.
    let leader = eventually("a task relay leader", WAIT, || async {
        sys.tasks
            .iter()
            .position(|t| t.metrics.relay.relay_leader.get() == 1)
    })
    .await;
    sys.tasks.remove(leader).app.kill().await;
    let (after, _) = delete_one(&mut sys, "killed").await;
    completed(&auth_db, after).await;
    assert_eq!(sys.tasks[0].metrics.relay.relay_leader.get(), 1);
}
