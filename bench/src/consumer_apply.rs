//! Consumer apply: a queue already holding member events, a tenth of them
//! duplicates of events before them, then task started against it. The rate
//! comes from task's own timestamps: the first inbox write to the last
//! replica write.
use std::time::Duration;

use memberflow_tests::{amqp::queue_depth, env::TestEnv, eventually};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    Lab, broker,
    report::{Figure, Measure},
    service::{Service, ServiceProcess},
    setup,
};

/// New events per duplicate: nine new, one repeat, so a tenth of the
/// deliveries are duplicates.
const NEW_PER_DUPLICATE: usize = 9;

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let one = apply(lab, 1).await?;
    lab.add(
        Figure::new(
            "Consumer apply",
            one.conditions(1),
            Measure::Rate {
                per_sec: one.per_sec,
            },
        )
        .against(
            "raw consume, manual ack each",
            Measure::Rate {
                per_sec: lab.raw_consume,
            },
        )
        .target("≥ 10,000 events/s", one.per_sec >= 10_000.0),
    );
    let two = apply(lab, 2).await?;
    lab.add(
        Figure::new(
            "Consumer apply, 2 task instances on one queue",
            two.conditions(2),
            Measure::Rate {
                per_sec: two.per_sec,
            },
        )
        .against(
            "1 instance, same run",
            Measure::Rate {
                per_sec: one.per_sec,
            },
        ),
    );
    Ok(())
}

/// One apply run's result.
pub(crate) struct Applied {
    pub(crate) per_sec: f64,
    total: usize,
    unique: usize,
    wall: Duration,
}

impl Applied {
    pub(crate) fn conditions(&self, instances: usize) -> String {
        format!(
            "{} queued events ({} duplicates) → {} replica rows, quorum queue, prefetch 256, batches ≤ 256, {instances} task instance(s) on one database; {:.1} s wall incl. start-up",
            self.total,
            self.total - self.unique,
            self.unique,
            self.wall.as_secs_f64()
        )
    }
}

/// [`apply_on`] on fresh databases and the machine's broker.
pub(crate) async fn apply(lab: &mut Lab, instances: usize) -> anyhow::Result<Applied> {
    let mut env = TestEnv::new();
    let (_conn, channel) = broker::confirm_channel(&env.amqp_url()).await?;
    task::consumer::declare_topology(&channel, 10, None).await?;
    let settings = setup::task(&mut env, "not_ready", "http://127.0.0.1:9");
    setup::migrated(&mut env, "task", &task::startup::MIGRATOR).await?;
    apply_on(lab, &mut env, &channel, &settings, instances).await
}

/// Queues `lab.plan.apply_events` events on `channel` (task's topology
/// already declared there), starts `instances` task processes at once with
/// `settings`, and measures the apply rate from task's own timestamps. Rows
/// task's database held before (a seeded replica and inbox) are left out of
/// the count and the timing. The database must exist, migrated.
pub(crate) async fn apply_on(
    lab: &mut Lab,
    env: &mut TestEnv,
    channel: &lapin::Channel,
    settings: &[(&'static str, String)],
    instances: usize,
) -> anyhow::Result<Applied> {
    let total = lab.plan.apply_events;
    let db = env.pool("task").await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM members")
        .fetch_one(&db)
        .await?;
    let events: Vec<Vec<u8>> = (0..total - total / (NEW_PER_DUPLICATE + 1))
        .map(|_| broker::member_created(Uuid::now_v7(), Uuid::now_v7()))
        .collect();
    // Before every ninth new event goes a repeat of the event five places
    // back, so the last delivery is always new and the last replica write
    // marks the end.
    let mut deliveries = Vec::with_capacity(total);
    for (i, body) in events.iter().enumerate() {
        if i % NEW_PER_DUPLICATE == NEW_PER_DUPLICATE - 1 {
            deliveries.push(events[i - 5].clone());
        }
        deliveries.push(body.clone());
    }
    let total = deliveries.len();
    let unique = events.len();
    broker::publish_confirmed(
        channel,
        memberflow_contract::topology::EXCHANGE,
        deliveries
            .into_iter()
            .map(|b| (memberflow_contract::topology::MEMBER_CREATED.to_owned(), b)),
        500,
    )
    .await?;

    let started = Instant::now();
    let since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&db).await?;
    let consumers = futures::future::try_join_all(
        (0..instances).map(|_| ServiceProcess::start(Service::Task, settings)),
    )
    .await?;
    eventually("every event applied", Duration::from_secs(600), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM members")
            .fetch_one(&db)
            .await
            .ok()?;
        ((n - before) as usize == unique).then_some(())
    })
    .await;
    let wall = started.elapsed();
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE received_at >= $1")
        .bind(since)
        .fetch_one(&db)
        .await?;
    anyhow::ensure!(
        inbox as usize == unique,
        "inbox holds {inbox} of {unique} events"
    );
    let applying: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM
                  (SELECT max(replicated_at) FROM members WHERE replicated_at >= $1)
                - (SELECT min(received_at) FROM inbox WHERE received_at >= $1))::float8",
    )
    .bind(since)
    .fetch_one(&db)
    .await?;
    eventually("queue acked empty", Duration::from_secs(30), || async {
        (queue_depth(channel, memberflow_contract::topology::QUEUE).await == 0).then_some(())
    })
    .await;
    let dead = queue_depth(channel, memberflow_contract::topology::DEAD_LETTER_QUEUE).await;
    anyhow::ensure!(dead == 0, "{dead} events dead-lettered");
    for consumer in consumers {
        lab.stop(consumer, "task").await?;
    }
    Ok(Applied {
        per_sec: total as f64 / applying,
        total,
        unique,
        wall,
    })
}
