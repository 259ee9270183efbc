//! Liveness when a process hangs rather than dies (Jepsen's pause: SIGSTOP),
//! and when a link hangs (a blackholed route): the sockets stay open and
//! nothing reports an error, so only leases, heartbeats and timeouts can
//! tell. Each test prints the takeover time it measured.
use std::time::{Duration, Instant};

use auth::outbox::{publisher::Publisher, relay};
use memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient;
use memberflow_contract::topology::{DEAD_LETTER_QUEUE, QUEUE};
use memberflow_runtime::{amqp::Nodes, lease::Elector, shutdown::CancellationToken};
use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher, TestQueue},
    apps::{auth_settings, spawn_task, task_settings},
    env::TestEnv,
    eventually,
    fixtures::{scalar, signup},
    process::ServiceProcess,
    proxy::TcpProxy,
    system::{NOWHERE, System, spawn_task_alone},
};
use sqlx::{Connection, PgPool};
use task::ConsistencyMode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// The shipped defaults these tests measure against.
const LEASE: Duration = Duration::from_millis(6_000);
const LEADER_RETRY: Duration = Duration::from_millis(1_000);
const HEARTBEAT: Duration = Duration::from_secs(5);
const APPLY_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Waits until the replica holds `n` members; returns how long that took
/// from `since`.
async fn replica_reaches(pool: &PgPool, n: i64, since: Instant, bound: Duration) -> Duration {
    eventually(&format!("{n} members in the replica"), bound, || async {
        (scalar(pool, "SELECT count(*) FROM members").await == n).then_some(())
    })
    .await;
    since.elapsed()
}

/// Signs up members `from..to` through `auth`.
async fn sign_up(auth: &ServiceProcess, from: usize, to: usize) {
    let mut client = AuthServiceClient::new(auth.channel.clone());
    for i in from..to {
        client
            .sign_up(signup(&format!("hang{i}@example.com")))
            .await
            .unwrap();
    }
}

/// Which of `a` and `b` reports `metric` = 1: (holder, other).
async fn holder<'a>(
    metric: &str,
    a: &'a ServiceProcess,
    b: &'a ServiceProcess,
) -> (&'a ServiceProcess, &'a ServiceProcess) {
    eventually(&format!("one instance with {metric} = 1"), WAIT, || async {
        match (a.metric(metric).await, b.metric(metric).await) {
            (Some(1.0), Some(0.0)) => Some((a, b)),
            (Some(0.0), Some(1.0)) => Some((b, a)),
            _ => None,
        }
    })
    .await
}

async fn metric_becomes(p: &ServiceProcess, metric: &str, value: f64) {
    eventually(
        &format!("{} {metric} = {value}", p.service),
        WAIT,
        || async { (p.metric(metric).await == Some(value)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_paused_relay_leader_loses_its_lease_and_a_standby_publishes() {
    // Arrange: two auth processes, a replica, and a queue that sees every
    // publish.
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let system = System::builder(&mut env)
        .auth_instances(2)
        .auth_processes()
        .start()
        .await;
    let replica = env.pool("task").await;
    let [a, b] = &system.auth_processes[..] else {
        unreachable!("two auth processes")
    };
    let (leader, standby) = holder("memberflow_relay_leader", a, b).await;
    sign_up(standby, 0, 1).await;
    replica_reaches(&replica, 1, Instant::now(), WAIT).await;
    let batches = leader.metric("memberflow_relay_batch_seconds_count").await;

    // Act: pause the leader, sign up through the standby.
    leader.pause();
    let paused = Instant::now();
    sign_up(standby, 1, 21).await;
    let took = replica_reaches(&replica, 21, paused, LEASE + LEADER_RETRY + WAIT).await;
    eprintln!("relay takeover: a paused leader's standby published within {took:?}");

    // Assert: within the lease plus the retry, plus propagation.
    assert!(
        took <= LEASE + LEADER_RETRY + Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(standby.metric("memberflow_relay_leader").await, Some(1.0));
    leader.resume();
    metric_becomes(leader, "memberflow_relay_leader", 0.0).await;
    sign_up(leader, 21, 31).await;
    sign_up(standby, 31, 41).await;
    replica_reaches(&replica, 41, Instant::now(), WAIT).await;
    assert_eq!(
        leader.metric("memberflow_relay_batch_seconds_count").await,
        batches,
        "the resumed ex-leader started no batch"
    );
    let auth_db = env.pool("auth").await;
    assert_eq!(
        scalar(&auth_db, "SELECT count(*) FROM outbox_parked").await,
        0
    );
    assert_eq!(scalar(&auth_db, "SELECT count(*) FROM outbox").await, 0);
    let seen = observer.take(41, WAIT).await;
    let ids: std::collections::HashSet<_> = seen
        .iter()
        .map(|m| m.delivery.properties.message_id().clone())
        .collect();
    assert_eq!(ids.len(), 41, "every event once");
    assert_eq!(observer.depth().await, 0, "and no event twice");
}

/// A relay whose lease was taken while its publish was in flight may finish
/// that publish, but its writes are fenced: it deletes, blames and parks
/// nothing, and it starts no new batch.
#[tokio::test]
async fn a_deposed_relay_writes_nothing_and_starts_no_batch() {
    // Arrange: auth's schema (no service runs), three rows in the outbox, a
    // relay term for "A".
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let settings = auth_settings(&mut env);
    let shutdown = CancellationToken::new();
    let schema = settings
        .database
        .lazy_pool(&memberflow_runtime::db::PoolGuard::default())
        .unwrap();
    assert!(
        memberflow_runtime::db::bootstrap(
            &settings.database,
            &schema,
            &auth::startup::MIGRATOR,
            settings.base.environment,
            "auth.database.url",
            &shutdown
        )
        .await
        .expect("development warns, never refuses")
    );
    let db = env.pool("auth").await;
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at)
             VALUES ($1, 'member.created', $2, 1, '\\x', now())",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .execute(&db)
        .await
        .unwrap();
    }
    let options = settings.database.connect_options().unwrap();
    let elector = |ttl| {
        Elector::new(
            options.clone(),
            relay::LEASE,
            ttl,
            LEADER_RETRY,
            Default::default(),
        )
    };
    let a = elector(Duration::from_secs(60))
        .try_acquire(&shutdown)
        .await
        .unwrap()
        .expect("A takes the free lease");
    let broker = TcpProxy::start(&env.amqp_host()).await;
    let publisher = Publisher::connect(
        &Nodes::new(&env.amqp_url_via(&broker.host()).into(), &[]),
        &auth::outbox::SPEC,
    )
    .await
    .unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut cfg = settings.relay.clone();
    cfg.confirm_timeout_ms = 20_000;
    let sql = relay::RelaySql::new(&auth::outbox::SPEC.tables);

    // Act: A reads and publishes, but its confirms are held in a blackhole;
    // meanwhile its lease is taken over ("B"); then the confirms arrive.
    broker.blackhole();
    let step = tokio::spawn(async move {
        let outcome = relay::relay_once(&mut conn, &sql, &publisher, &cfg, &a).await;
        (outcome.unwrap(), conn, publisher, cfg, a, sql)
    });
    eventually("A has read its batch", WAIT, || async {
        let q: String = sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&db)
            .await
            .unwrap();
        q.contains("FROM outbox o").then_some(())
    })
    .await;
    sqlx::query("UPDATE leases SET expires_at = now() WHERE name = 'relay'")
        .execute(&db)
        .await
        .unwrap();
    let b = elector(Duration::from_secs(60))
        .try_acquire(&shutdown)
        .await
        .unwrap()
        .expect("B takes the expired lease");
    broker.restore();
    let (outcome, mut conn, publisher, cfg, a, sql) = step.await.unwrap();

    // Assert: the in-flight publish went out; nothing was written.
    assert_eq!(outcome, relay::Outcome::Deposed);
    assert!(b.epoch() > a.epoch());
    observer.take(3, WAIT).await;
    assert_eq!(scalar(&db, "SELECT count(*) FROM outbox").await, 3);
    assert_eq!(
        scalar(&db, "SELECT coalesce(sum(attempts), 0) FROM outbox").await,
        0
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM outbox_parked").await, 0);
    // A next step reads nothing under the old epoch (a fenced read), and
    // publishes nothing.
    let again = relay::relay_once(&mut conn, &sql, &publisher, &cfg, &a)
        .await
        .unwrap();
    assert_eq!(again, relay::Outcome::Empty);
    // And once A knows its term ended, it does not even read.
    a.end();
    let known = relay::relay_once(&mut conn, &sql, &publisher, &cfg, &a)
        .await
        .unwrap();
    assert_eq!(known, relay::Outcome::Deposed);
    assert_eq!(observer.depth().await, 0, "no publish after the first");
}

#[tokio::test]
async fn a_paused_consumer_gives_its_messages_back_within_the_heartbeat_bound() {
    let mut env = TestEnv::new();
    let system = System::builder(&mut env)
        .auth_instances(0)
        .task_instances(2)
        .task_processes()
        .start()
        .await;
    let [a, b] = &system.task_processes[..] else {
        unreachable!("two task processes")
    };
    let replica = env.pool("task").await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let event = || MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul");
    publisher.member_event(&event()).await;
    replica_reaches(&replica, 1, Instant::now(), WAIT).await;

    // Act: pause one instance while events flow; the broker keeps
    // delivering to it (its socket is open) until heartbeats say otherwise.
    a.pause();
    let paused = Instant::now();
    for _ in 0..200 {
        publisher.member_event(&event()).await;
    }
    let took = replica_reaches(&replica, 201, paused, 3 * HEARTBEAT + WAIT).await;
    eprintln!("consumer takeover: a paused instance's messages applied elsewhere within {took:?}");

    // Assert: within three heartbeat intervals, plus propagation.
    assert!(
        took <= 3 * HEARTBEAT + Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(
        b.metric("memberflow_consumer_events_total").await >= Some(100.0),
        "the other instance applied the paused one's share"
    );
    a.resume();
    metric_becomes(a, "memberflow_consumer_attached", 1.0).await;
    assert_eq!(publisher.depth(DEAD_LETTER_QUEUE).await, 0);
    assert_eq!(scalar(&replica, "SELECT count(*) FROM inbox").await, 201);
}

#[tokio::test]
async fn a_blackholed_database_link_gives_the_batch_back() {
    // Arrange: instance A reaches its database through a proxy, B directly.
    let mut env = TestEnv::new();
    let proxy = TcpProxy::start(&env.pg_host()).await;
    let mut via_proxy = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
    let url = env
        .database_url("task")
        .replace(&env.pg_host(), &proxy.host());
    via_proxy.database = memberflow_runtime::db::DatabaseSettings::with_url(&url);
    let a = spawn_task(via_proxy).await;
    let b = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let replica = env.pool("task").await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let event = || MemberEventFixture::new(Uuid::new_v4(), 1, "Asia/Seoul");
    for _ in 0..10 {
        publisher.member_event(&event()).await;
    }
    replica_reaches(&replica, 10, Instant::now(), WAIT).await;

    // Act: A's database link goes silent while events flow; its broker
    // heartbeats still do.
    proxy.blackhole();
    let cut = Instant::now();
    for _ in 0..200 {
        publisher.member_event(&event()).await;
    }
    let took = replica_reaches(&replica, 210, cut, APPLY_TIMEOUT + WAIT).await;
    eprintln!(
        "blackholed database link: every event applied within {took:?} (A gave back {} batches)",
        a.metrics.consumer.given_back.get()
    );

    // Assert: within the apply bound plus a redelivery.
    assert!(
        took <= APPLY_TIMEOUT + Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(
        a.metrics.consumer.given_back.get() >= 1,
        "A gave its batch back"
    );
    assert!(b.processed() >= 200, "B applied A's share");
    proxy.restore();
    eventually("A attached again", WAIT, || async {
        (a.metrics.consumer.attached.get() == 1).then_some(())
    })
    .await;
    publisher.member_event(&event()).await;
    replica_reaches(&replica, 211, Instant::now(), WAIT).await;
    assert_eq!(publisher.depth(DEAD_LETTER_QUEUE).await, 0);
    assert_eq!(publisher.depth(QUEUE).await, 0);
}

#[tokio::test]
async fn a_paused_reconciler_hands_its_lease_over() {
    // Arrange: auth with three members, two task processes reconciling
    // every second.
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env)
        .task_instances(2)
        .task_processes()
        .task_var("RECONCILE__INTERVAL_SECS", "1")
        .start()
        .await;
    let replica = env.pool("task").await;
    for i in 0..3 {
        system
            .auth()
            .client
            .sign_up(signup(&format!("r{i}@example.com")))
            .await
            .unwrap();
    }
    replica_reaches(&replica, 3, Instant::now(), WAIT).await;
    let [a, b] = &system.task_processes[..] else {
        unreachable!("two task processes")
    };
    let (reconciler, other) = holder("memberflow_reconcile_leader", a, b).await;

    // Act: pause the lease holder, then lose a replica row.
    reconciler.pause();
    let paused = Instant::now();
    sqlx::query("DELETE FROM members WHERE id = (SELECT id FROM members LIMIT 1)")
        .execute(&replica)
        .await
        .unwrap();
    let interval = Duration::from_secs(1);
    let took = replica_reaches(&replica, 3, paused, LEASE + 2 * interval + WAIT).await;
    eprintln!("reconciler takeover: the other instance repaired the replica within {took:?}");

    // Assert: within the lease, the standby's retry and one interval.
    assert!(
        took <= LEASE + Duration::from_secs(1) + interval + Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(other.metric("memberflow_reconcile_leader").await, Some(1.0));
    // Counted when the pass ends, a moment after its repair is visible.
    eventually("the pass to count the repair", WAIT, || async {
        (other.metric("memberflow_reconcile_repaired_total").await >= Some(1.0)).then_some(())
    })
    .await;
    reconciler.resume();
    metric_becomes(reconciler, "memberflow_reconcile_leader", 0.0).await;
}
