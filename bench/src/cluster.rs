//! The relay on a three-node RabbitMQ cluster (the test kit's), beside the
//! single node in the same run: the same backlog drained into task's quorum
//! queue, replicated on all three nodes, each publish confirmed by a
//! majority.
use memberflow_common::db::{DatabaseSettings, ensure_database};
use memberflow_tests::{cluster::RabbitCluster, env::TestEnv};
use sqlx::PgPool;

use crate::{
    Lab, broker,
    relay_drain::drain_to,
    report::{Figure, Measure},
    setup::RelayDesign,
};

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let rows = lab.plan.drain_rows;
    let mut env = TestEnv::new();
    let settings = DatabaseSettings::with_url(&env.database_url("auth"));
    ensure_database(&settings).await?;
    let db = PgPool::connect_with(settings.connect_options()?).await?;
    auth::startup::MIGRATOR.run(&db).await?;

    let (_single_conn, single) = broker::confirm_channel(&env.amqp_url()).await?;
    task::consumer::declare_topology(&single, 10, None).await?;
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

    let cluster = RabbitCluster::start().await;
    let vhost = format!("mf-bench-cluster-{}", std::process::id());
    cluster.add_vhost(&vhost);
    let urls = cluster.urls(&vhost);
    let (_cluster_conn, channel) = broker::confirm_channel(&urls[0]).await?;
    task::consumer::declare_topology(&channel, 10, Some(3)).await?;
    let three_nodes = drain_to(
        lab,
        &mut env,
        &db,
        &channel,
        RelayDesign::Batched,
        rows,
        Some(&urls.join(",")),
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
    drop(cluster);
    Ok(())
}
