//! Node loss on a real three-node RabbitMQ cluster: auth → relay → cluster →
//! two task instances, with `amqp.urls` naming every node and task's quorum
//! queue spread over all three.
//!
//! One test walks through the three cases in order on one cluster (starting
//! one takes about 30 s): the node leading `task.member-events` is stopped
//! mid-run; one node stays down while signups go on; two nodes (the
//! majority) are down, so nothing can be confirmed. After each, every member
//! is in the replica at its version, each event was applied once, the outbox
//! is empty and so is the DLQ. Last, the erasure saga's receipts cross a
//! stopped node: the one leading auth's receipt queue.
use memberflow_contract::topology::ERASURE_QUEUE;
use memberflow_tests::apps::log_in;
use memberflow_tests::fixtures::{PASSWORD, scalar};
use memberflow_tests::system::NOWHERE;
use std::time::{Duration, Instant};

use memberflow_contract::proto::auth::v1 as auth_pb;
use memberflow_tests::{
    amqp::queue_depth,
    apps::{TestAuth, auth_settings, spawn_auth, spawn_task, task_settings},
    cluster::RabbitCluster,
    env::TestEnv,
    eventually,
};
use sqlx::PgPool;
use task::ConsistencyMode;
use uuid::Uuid;

const QUEUE: &str = "task.member-events";
const DLQ: &str = "task.member-events.dlq";
const WAIT: Duration = Duration::from_secs(90);

async fn members(db: &PgPool) -> Vec<(Uuid, i64)> {
    sqlx::query_as("SELECT id, version FROM members ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

/// Signs `from..to` up, four at a time; returns each id with the instant
/// its signup returned.
async fn sign_up(auth: &TestAuth, from: usize, to: usize) -> Vec<(Uuid, Instant)> {
    use futures::StreamExt;
    futures::stream::iter(from..to)
        .map(|i| {
            let mut client = auth.client.clone();
            async move {
                let id = client
                    .sign_up(auth_pb::SignUpRequest {
                        email: format!("c{i}@example.com"),
                        password: "correct horse battery".into(),
                        nickname: format!("c{i}"),
                        region: "Asia/Seoul".into(),
                    })
                    .await
                    .expect("signup commits whatever the broker does")
                    .into_inner()
                    .member
                    .unwrap()
                    .id;
                (id.parse().unwrap(), Instant::now())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await
}

/// `memberflow_relay_publish_failures_total` of `auth`.
async fn relay_failures(auth: &TestAuth) -> f64 {
    let (_, body) = memberflow_tests::http::get(auth.metrics_addr, "/metrics")
        .await
        .unwrap();
    body.lines()
        .find_map(|l| {
            l.strip_prefix("memberflow_relay_publish_failures_total")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Every guarantee at once: replica = auth, each event applied once, outbox
/// and DLQ empty.
async fn converged(auth_db: &PgPool, task_db: &PgPool, dlq_url: &str, events: i64) {
    eventually("the replica equals auth", WAIT, || async {
        (members(task_db).await == members(auth_db).await).then_some(())
    })
    .await;
    assert_eq!(scalar(task_db, "SELECT count(*) FROM inbox").await, events);
    eventually("the outbox is empty", WAIT, || async {
        (scalar(auth_db, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    let conn = memberflow_runtime::amqp::connect(dlq_url, "test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    assert_eq!(queue_depth(&channel, DLQ).await, 0, "nothing dead-lettered");
    let _ = conn.close(0, "done".into()).await;
}

#[tokio::test]
async fn a_three_node_cluster_survives_losing_its_leader_a_minority_and_a_majority() {
    let cluster = RabbitCluster::start().await;
    let vhost = format!("mf-cluster-{}", &Uuid::new_v4().simple().to_string()[..8]);
    cluster.add_vhost(&vhost);
    let urls = cluster.urls(&vhost);
    let mut env = TestEnv::new();
    let mut a = auth_settings(&mut env);
    a.amqp.urls = urls.iter().map(|u| u.as_str().into()).collect();
    let mut auth = spawn_auth(a).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut t = task_settings(&mut env, ConsistencyMode::NotReady, NOWHERE);
        t.amqp.urls = urls.iter().map(|u| u.as_str().into()).collect();
        tasks.push(spawn_task(t).await);
    }
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let members_in = |n: &str| {
        let out =
            memberflow_tests::cluster::ctl(n, &["list_queues", "-p", &vhost, "name", "members"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    eventually("the quorum queue spans three nodes", WAIT, || {
        let listing = members_in(&cluster.nodes()[0].name);
        async move { (listing.matches("@localhost").count() >= 3).then_some(()) }
    })
    .await;

    // 1. Leader loss, mid-run: 200 members, the leader stopped after 100.
    let leader = eventually("a leader", WAIT, || {
        let l = cluster.leader(&vhost, QUEUE);
        async move { l }
    })
    .await;
    sign_up(&auth, 0, 100).await;
    cluster.stop_app(&leader);
    let stopped = Instant::now();
    let after = sign_up(&auth, 100, 200).await;
    let (first_after, _) = after.iter().min_by_key(|(_, t)| *t).copied().unwrap();
    eventually(
        "a signup made after the stop is replicated",
        WAIT,
        || async {
            members(&task_db)
                .await
                .iter()
                .any(|(id, _)| *id == first_after)
                .then_some(())
        },
    )
    .await;
    let stall = stopped.elapsed();
    let survivor = cluster
        .nodes()
        .iter()
        .find(|n| n.name != leader)
        .unwrap()
        .clone();
    let survivor_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{vhost}",
        survivor.amqp_port
    );
    converged(&auth_db, &task_db, &survivor_url, 200).await;
    eprintln!("leader {leader} stopped: propagation resumed after {stall:?}");
    let new_leader = cluster.leader(&vhost, QUEUE).unwrap();
    assert_ne!(new_leader, leader, "another node leads");
    cluster.start_app(&leader).await;

    // 2. A minority down for longer: two nodes keep accepting; it catches up.
    let down = cluster.nodes()[2].name.clone();
    cluster.stop_app(&down);
    sign_up(&auth, 200, 260).await;
    let up_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{vhost}",
        cluster.nodes()[0].amqp_port
    );
    converged(&auth_db, &task_db, &up_url, 260).await;
    cluster.start_app(&down).await;
    eventually("the returning node is a queue member again", WAIT, || {
        let out = memberflow_tests::cluster::ctl(
            &cluster.nodes()[0].name,
            &["list_queues", "-p", &vhost, "name", "online"],
        );
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        let down = down.clone();
        async move {
            listing
                .lines()
                .any(|l| {
                    l.starts_with(QUEUE)
                        && l.contains(&down)
                        && l.matches("@localhost").count() >= 3
                })
                .then_some(())
        }
    })
    .await;

    // 3. Majority lost: nothing is confirmed, the outbox keeps the rows, and
    // they are published once a majority is back.
    let (n2, n3) = (
        cluster.nodes()[1].name.clone(),
        cluster.nodes()[2].name.clone(),
    );
    cluster.stop_app(&n2);
    cluster.stop_app(&n3);
    let replicated = members(&task_db).await.len();
    sign_up(&auth, 260, 280).await;
    // The relay tries, gets no confirm from a minority, and keeps the rows:
    // wait until it has counted unconfirmed publishes after the outage began.
    let failures_before = relay_failures(&auth).await;
    eventually("the relay counts unconfirmed publishes", WAIT, || async {
        (relay_failures(&auth).await > failures_before).then_some(())
    })
    .await;
    assert_eq!(scalar(&auth_db, "SELECT count(*) FROM outbox").await, 20);
    assert_eq!(members(&task_db).await.len(), replicated);
    cluster.start_app(&n2).await;
    cluster.start_app(&n3).await;
    converged(&auth_db, &task_db, &up_url, 280).await;

    // 4. The erasure saga's receipts survive what member events survive:
    // the node leading auth's receipt queue is stopped, ten accounts are
    // deleted, and every erasure completes.
    let receipts_leader = eventually("a leader of auth's receipt queue", WAIT, || {
        let l = cluster.leader(&vhost, ERASURE_QUEUE);
        async move { l }
    })
    .await;
    cluster.stop_app(&receipts_leader);
    for i in 0..10 {
        let token = log_in(&mut auth.client, &format!("c{i}@example.com")).await;
        auth.delete_account(&token, PASSWORD)
            .await
            .expect("DeleteAccount commits whatever the broker does");
    }
    eventually("ten erasures complete", WAIT, || async {
        (scalar(
            &auth_db,
            "SELECT count(*) FROM erasures WHERE completed_at IS NOT NULL",
        )
        .await
            == 10)
            .then_some(())
    })
    .await;
    cluster.start_app(&receipts_leader).await;
    drop(tasks);
}
