//! What the pool guard costs (`memberflow_runtime::db::PoolGuard`): one
//! statement through a pool, acquire and release included, with sqlx's own
//! ping before acquire (the services' pool until 2026-12-03) beside the
//! same with the guard's check in its place, in one run, interleaved.
use std::time::Duration;

use memberflow_runtime::db::{DatabaseSettings, PoolGuard, ensure_database};
use memberflow_tests::env::TestEnv;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::time::Instant;

use crate::{
    Lab,
    report::{Figure, Measure},
    stats::rate,
};

/// Runs the comparison at 1 and 8 clients.
pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    let settings = DatabaseSettings::with_url(&env.database_url("auth"));
    ensure_database(&settings).await?;
    let ops = if lab.plan.quick { 1_000 } else { 20_000 };
    let ping = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .connect_with(settings.connect_options()?)
        .await?;
    let guarded = settings.lazy_pool(&PoolGuard::default())?;
    for clients in [1, 8] {
        // Warm both, then two rounds each, interleaved; the mean of each.
        measure(&ping, clients, ops / 10).await?;
        measure(&guarded, clients, ops / 10).await?;
        let (mut with_ping, mut with_guard) = (0.0, 0.0);
        for _ in 0..2 {
            with_ping += measure(&ping, clients, ops).await? / 2.0;
            with_guard += measure(&guarded, clients, ops).await? / 2.0;
        }
        let ratio = with_guard / with_ping;
        lab.add(
            Figure::new(
                format!("Pooled statement with the pool guard, {clients} client(s)"),
                format!(
                    "{ops} × (acquire, SELECT 1, release) per round, 2 rounds interleaved, \
                     pool of {}; the guard's check replaces sqlx's ping before acquire",
                    settings.max_connections
                ),
                Measure::Rate {
                    per_sec: with_guard,
                },
            )
            .against(
                "sqlx's ping before acquire, same run",
                Measure::Rate { per_sec: with_ping },
            )
            .target("≥ 0.95× the ping's rate", ratio >= 0.95),
        );
    }
    ping.close().await;
    guarded.close().await;
    Ok(())
}

/// `ops` statements from `clients` clients at once: statements per second.
async fn measure(pool: &PgPool, clients: usize, ops: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut each = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let n = ops / clients;
        each.spawn(async move {
            for _ in 0..n {
                sqlx::query("SELECT 1").execute(&pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = each.join_next().await {
        done??;
    }
    Ok(rate(ops, started.elapsed().max(Duration::from_micros(1))))
}
