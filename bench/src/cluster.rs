//! The system on a three-node RabbitMQ cluster (the test kit's), beside the
//! machine's single node in the same run: relay drain into task's quorum
//! queue (replicated on all three nodes, each publish confirmed by a
//! majority), consumer apply from it, and signup → replica propagation at
//! 500 signups/s through auth and task connected to all three nodes.
use memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient;
use memberflow_tests::{cluster::RabbitCluster, env::TestEnv};

use crate::{
    Lab, broker, consumer_apply,
    relay_drain::drain_to,
    report::{Figure, Measure},
    service::start_system,
    setup::{self, HashCost, RelayDesign},
    system::measure_propagation,
};

/// The offered signup rate propagation is measured at.
const RATE: f64 = 500.0;

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let cluster = RabbitCluster::start().await;
    relay(lab, &cluster).await?;
    apply(lab, &cluster).await?;
    propagation(lab, &cluster).await?;
    drop(cluster);
    Ok(())
}

/// A fresh vhost on the cluster and its nodes' URLs, comma-separated as
/// `AUTH__AMQP__URLS` / `TASK__AMQP__URLS` take them.
fn vhost(cluster: &RabbitCluster, purpose: &str) -> (String, String) {
    let vhost = format!("mf-bench-{purpose}-{}", std::process::id());
    cluster.add_vhost(&vhost);
    let urls = cluster.urls(&vhost);
    (urls[0].clone(), urls.join(","))
}

/// A channel on `url` with task's topology declared on `group_size` nodes.
async fn topology(
    url: &str,
    group_size: Option<u32>,
) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let (conn, channel) = broker::confirm_channel(url).await?;
    task::consumer::declare_topology(&channel, 10, group_size).await?;
    Ok((conn, channel))
}

async fn relay(lab: &mut Lab, cluster: &RabbitCluster) -> anyhow::Result<()> {
    let rows = lab.plan.drain_rows;
    let mut env = TestEnv::new();
    let db = setup::migrated(&mut env, "auth", &auth::startup::MIGRATOR).await?;
    let (_single_conn, single) = topology(&env.amqp_url(), None).await?;
    let one_node = drain_to(
        lab,
        &mut env,
        &db,
        &single,
        RelayDesign::Batched,
        rows,
        None,
    )
    .await?;
    let (first, urls) = vhost(cluster, "relay");
    let (_cluster_conn, channel) = topology(&first, Some(3)).await?;
    let three_nodes = drain_to(
        lab,
        &mut env,
        &db,
        &channel,
        RelayDesign::Batched,
        rows,
        Some(&urls),
    )
    .await?;
    lab.add(
        Figure::new(
            "Relay drain, 3-node cluster",
            format!(
                "{rows} committed outbox rows → quorum queue on 3 nodes of one host, \
                 declared from the node the relay connects to first"
            ),
            Measure::Rate {
                per_sec: three_nodes,
            },
        )
        .against(
            "the same drain to the single node, same run",
            Measure::Rate { per_sec: one_node },
        ),
    );
    Ok(())
}

async fn apply(lab: &mut Lab, cluster: &RabbitCluster) -> anyhow::Result<()> {
    let one_node = consumer_apply::apply(lab, 1).await?;
    let mut env = TestEnv::new();
    setup::migrated(&mut env, "task", &task::startup::MIGRATOR).await?;
    let (first, urls) = vhost(cluster, "apply");
    let (_conn, channel) = topology(&first, Some(3)).await?;
    let mut settings = setup::task(&mut env, "not_ready", "http://127.0.0.1:9");
    settings.push(("amqp__urls", urls));
    let three_nodes = consumer_apply::apply_on(lab, &mut env, &channel, &settings, 1).await?;
    lab.add(
        Figure::new(
            "Consumer apply, 3-node cluster",
            format!(
                "{}; the queue's replicas on 3 nodes of one host",
                three_nodes.conditions(1)
            ),
            Measure::Rate {
                per_sec: three_nodes.per_sec,
            },
        )
        .against(
            "the same apply from the single node, same run",
            Measure::Rate {
                per_sec: one_node.per_sec,
            },
        ),
    );
    Ok(())
}

/// Propagation at [`RATE`] with auth and task on `urls` (comma-separated)
/// when given, else on `env`'s single node.
async fn propagate(
    lab: &mut Lab,
    env: &mut TestEnv,
    urls: Option<&str>,
) -> anyhow::Result<crate::stats::Latency> {
    let nodes: Vec<(&'static str, String)> = urls
        .map(|urls| ("amqp__urls", urls.to_owned()))
        .into_iter()
        .collect();
    let (auth, task) = start_system(env, "not_ready", &nodes).await?;
    let signups = AuthServiceClient::new(auth.channel.clone());
    let task_db = env.pool("task").await;
    let latency = measure_propagation(&signups, &task_db, RATE, lab.plan.propagation)
        .await?
        .latency;
    lab.stop(auth, "auth").await?;
    lab.stop(task, "task").await?;
    Ok(latency)
}

async fn propagation(lab: &mut Lab, cluster: &RabbitCluster) -> anyhow::Result<()> {
    let one_node = propagate(lab, &mut TestEnv::new(), None).await?;
    let (_, urls) = vhost(cluster, "propagation");
    let three_nodes = propagate(lab, &mut TestEnv::new(), Some(&urls)).await?;
    lab.add(
        Figure::new(
            format!("Propagation signup → replica, {RATE}/s, 3-node cluster"),
            format!(
                "open loop {:.0} s, {}, {}; auth and task given all 3 nodes, quorum queue on 3 nodes of one host",
                lab.plan.propagation.as_secs_f64(),
                HashCost::BENCH.describe(),
                RelayDesign::Batched.describe(),
            ),
            Measure::Latency(three_nodes),
        )
        .against(
            "the same on the single node, same run",
            Measure::Latency(one_node),
        ),
    );
    Ok(())
}
