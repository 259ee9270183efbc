//! Relay drain: a backlog of committed outbox rows, then the time until the
//! relay has published all of them and had them confirmed (it deletes a row
//! only after its confirm). Compared with raw lapin publishing the same
//! bodies along the same route (exchange `member.events` → task's quorum
//! queue), and with the common polling relay. Raw consumption with manual
//! acks is measured here too, on the messages the raw publish queued.
use std::time::Duration;

use memberflow_runtime::db::{DatabaseSettings, ensure_database};
use memberflow_tests::env::TestEnv;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    Lab, broker,
    report::{Figure, Measure},
    service::{Service, ServiceProcess},
    setup::{self, HashCost, RelayDesign},
    stats::rate,
};

/// Unconfirmed publishes the raw baseline allows: the relay's batch size.
const RAW_WINDOW: usize = 500;
/// Prefetch of the raw consumer: task's default.
const RAW_PREFETCH: u16 = 256;

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let plan = lab.plan.clone();
    let mut env = TestEnv::new();
    let settings = DatabaseSettings::with_url(&env.database_url("auth"));
    ensure_database(&settings).await?;
    let db = PgPool::connect_with(settings.connect_options()?).await?;
    auth::startup::MIGRATOR.run(&db).await?;
    let (_conn, channel) = broker::confirm_channel(&env.amqp_url()).await?;
    task::consumer::declare_topology(&channel, 10, None).await?;

    let ours = drain(
        lab,
        &mut env,
        &db,
        &channel,
        RelayDesign::Batched,
        plan.drain_rows,
    )
    .await?;

    purge(&channel).await?;
    let bodies = (0..plan.drain_rows).map(|_| {
        (
            memberflow_contract::topology::MEMBER_CREATED.to_owned(),
            broker::member_created(Uuid::now_v7(), Uuid::now_v7()),
        )
    });
    let published = broker::publish_confirmed(
        &channel,
        memberflow_contract::topology::EXCHANGE,
        bodies,
        RAW_WINDOW,
    )
    .await?;
    let raw_publish = rate(plan.drain_rows, published);
    let consumed = broker::consume_acked(
        &channel,
        memberflow_contract::topology::QUEUE,
        plan.drain_rows,
        RAW_PREFETCH,
    )
    .await?;
    lab.raw_consume = rate(plan.drain_rows, consumed);

    let polling = drain(
        lab,
        &mut env,
        &db,
        &channel,
        RelayDesign::Polling,
        plan.polling_drain_rows,
    )
    .await?;

    let conditions = |rows: usize, design: RelayDesign| {
        format!(
            "{rows} committed outbox rows → quorum queue, {}",
            design.describe()
        )
    };
    lab.add(
        Figure::new(
            "Relay drain",
            conditions(plan.drain_rows, RelayDesign::Batched),
            Measure::Rate { per_sec: ours },
        )
        .against(
            format!("raw lapin, same route, {RAW_WINDOW} confirms in flight"),
            Measure::Rate {
                per_sec: raw_publish,
            },
        )
        .target("≥ 0.60× raw confirm rate", ours >= 0.6 * raw_publish),
    );
    lab.add(
        Figure::new(
            "Relay drain, common design",
            conditions(plan.polling_drain_rows, RelayDesign::Polling),
            Measure::Rate { per_sec: polling },
        )
        .against("wake-on-commit relay", Measure::Rate { per_sec: ours }),
    );
    lab.add(Figure::new(
        "Raw consume, manual ack each",
        format!(
            "{} messages from task's quorum queue, prefetch {RAW_PREFETCH}",
            plan.drain_rows
        ),
        Measure::Rate {
            per_sec: lab.raw_consume,
        },
    ));
    Ok(())
}

/// Commits `rows` outbox rows, starts auth with `design`, and returns the
/// rate at which the outbox emptied.
async fn drain(
    lab: &mut Lab,
    env: &mut TestEnv,
    db: &PgPool,
    channel: &lapin::Channel,
    design: RelayDesign,
    rows: usize,
) -> anyhow::Result<f64> {
    drain_to(lab, env, db, channel, design, rows, None).await
}

/// [`drain`], publishing to the cluster nodes `urls` (comma-separated) when
/// given instead of `env`'s broker; `channel` must be on that broker.
pub(crate) async fn drain_to(
    lab: &mut Lab,
    env: &mut TestEnv,
    db: &PgPool,
    channel: &lapin::Channel,
    design: RelayDesign,
    rows: usize,
    urls: Option<&str>,
) -> anyhow::Result<f64> {
    purge(channel).await?;
    let payload = broker::member_created(Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at)
         SELECT gen_random_uuid(), $1, gen_random_uuid(), 1, $2, now()
           FROM generate_series(1, $3)",
    )
    .bind(memberflow_contract::topology::MEMBER_CREATED)
    .bind(&payload)
    .bind(rows as i64)
    .execute(db)
    .await?;
    let first: i64 = sqlx::query_scalar("SELECT min(id) FROM outbox")
        .fetch_one(db)
        .await?;
    let watch = tokio::spawn(watch_drain(db.clone(), first, rows as i64));
    let mut settings = setup::auth(env, HashCost::BENCH, design);
    if let Some(urls) = urls {
        settings.push(("amqp__urls", urls.to_owned()));
    }
    let relay = ServiceProcess::start(Service::Auth, &settings).await?;
    let per_sec = watch.await??;
    let delivered =
        memberflow_tests::amqp::queue_depth(channel, memberflow_contract::topology::QUEUE).await;
    anyhow::ensure!(
        delivered as usize == rows,
        "{delivered} of {rows} outbox rows reached the queue"
    );
    lab.stop(relay, "auth").await?;
    Ok(per_sec)
}

/// Watches the outbox empty and returns its drain rate. The relay deletes
/// the confirmed prefix in id order, so the lowest id left tells how many rows
/// are still to go. Timing starts at the first confirmed batch, which leaves
/// process start-up out.
async fn watch_drain(db: PgPool, first: i64, rows: i64) -> anyhow::Result<f64> {
    let mut started: Option<(Instant, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let lowest: Option<i64> = sqlx::query_scalar("SELECT min(id) FROM outbox")
            .fetch_one(&db)
            .await?;
        let now = Instant::now();
        match (lowest, started) {
            (None, Some((t0, left))) => return Ok(rate(left as usize, now - t0)),
            (None, None) => anyhow::bail!("the outbox emptied between two observations"),
            (Some(low), None) if low > first => started = Some((now, rows - (low - first))),
            _ => {}
        }
        anyhow::ensure!(
            now < deadline,
            "the relay did not drain {rows} rows in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn purge(channel: &lapin::Channel) -> anyhow::Result<()> {
    channel
        .queue_purge(
            memberflow_contract::topology::QUEUE.into(),
            Default::default(),
        )
        .await?;
    Ok(())
}
