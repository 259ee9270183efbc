//! The floor under signup → replica propagation: the same four steps with
//! nothing around them, each message's chain on its own, at the same offered
//! rate: the bare signup statement's commit, one raw lapin publish confirmed
//! by a quorum queue, a raw consume, and the bare apply statement (task's
//! own, one event per statement). No gRPC, no relay loop or wake-up, no
//! consumer batching: what is left is what propagation cannot beat.
//!
//! Chains run in parallel (each publish is its own task in the open loop,
//! each delivery's apply and ack its own task here), so the floor stays one
//! chain's latency at any offered rate. Run in sequence, as it once was, a
//! chain of about 2 ms has no slack at 500/s and queues: its p50 once
//! reached 198 ms, which made the system look 0.06× its floor. The run
//! still flags a floor that rose with the rate (`system.rs`).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_runtime::{
    amqp,
    db::{DatabaseSettings, ensure_database},
};
use memberflow_tests::{env::TestEnv, eventually};
use sqlx::{PgPool, postgres::PgPoolOptions};
use task::consumer::plan::{Triage, triage};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{broker, load::open_loop, signup, stats::Latency};

/// The floor's queue, in the run's own vhost.
const QUEUE: &str = "bench.floor";

/// Runs the bare chain at `per_sec` for `duration`: each operation commits
/// one signup statement on `signups` (auth's schema), publishes its event to
/// a quorum queue and waits for the confirm; a raw consumer applies each
/// event with task's apply statement on a database of task's schema, then
/// acks. Returns the time from before the commit to after the apply, per
/// message.
pub(crate) async fn propagation(
    env: &mut TestEnv,
    signups: &PgPool,
    per_sec: f64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let replica = memberflow_outbox::write::Outbox::without_wake(
        replica_database(env).await?,
        &task::erasure::SPEC,
    );
    let (_publisher_conn, publish) = broker::confirm_channel(&env.amqp_url()).await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    publish
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;

    // Each message's start, and each message's time to applied.
    let started: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let applied: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let consumer_conn = amqp::connect(&env.amqp_url(), "bench-floor-consumer").await?;
    let consume = consumer_conn.create_channel().await?;
    let mut deliveries = consume
        .basic_consume(
            QUEUE.into(),
            "bench-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = {
        let (started, applied, replica) = (started.clone(), applied.clone(), replica.clone());
        tokio::spawn(async move {
            let mut chains = tokio::task::JoinSet::new();
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                let Triage::Apply(event) = triage("member.created", &delivery.data) else {
                    anyhow::bail!("the floor published an event task cannot apply");
                };
                let (started, applied, replica) =
                    (started.clone(), applied.clone(), replica.clone());
                chains.spawn(async move {
                    task::replica::apply(&replica, std::slice::from_ref(&event)).await?;
                    let start = started
                        .lock()
                        .expect("poisoned")
                        .get(&event.event_id())
                        .copied();
                    if let Some(start) = start {
                        applied.lock().expect("poisoned").push(start.elapsed());
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                    anyhow::Ok(())
                });
                // Reap finished chains as they end, so a failure shows.
                while let Some(done) = chains.try_join_next() {
                    done??;
                }
            }
            anyhow::Ok(())
        })
    };

    let tag = format!("floor{per_sec}-{}", Uuid::new_v4().simple());
    let (signups, started_by) = (signups.clone(), started.clone());
    let run = open_loop(per_sec, duration, move |i| {
        let (signups, publish, started) = (signups.clone(), publish.clone(), started_by.clone());
        let req = signup::request(&tag, i);
        async move {
            let event_id = Uuid::now_v7();
            started
                .lock()
                .expect("poisoned")
                .insert(event_id, Instant::now());
            let member_id = signup::raw_transaction(signups, req).await?;
            let confirm = publish
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &broker::member_created(event_id, member_id),
                    BasicProperties::default()
                        .with_delivery_mode(memberflow_contract::topology::PERSISTENT),
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "the broker did not confirm: {confirm:?}");
            Ok(())
        }
    })
    .await?;
    let n = run.values.len();
    eventually(
        "the floor's events applied",
        Duration::from_secs(60),
        || {
            let applied = applied.clone();
            async move { (applied.lock().expect("poisoned").len() >= n).then_some(()) }
        },
    )
    .await;
    consumer.abort();
    let _ = consumer_conn.close(200, "bench done".into()).await;
    let times = applied.lock().expect("poisoned").clone();
    Ok(Latency::of(&times))
}

/// A database with task's schema for the bare apply statement.
async fn replica_database(env: &mut TestEnv) -> anyhow::Result<PgPool> {
    let settings = DatabaseSettings::with_url(&env.database_url("floor_replica"));
    ensure_database(&settings).await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(settings.connect_options()?)
        .await?;
    task::startup::MIGRATOR.run(&pool).await?;
    Ok(pool)
}
