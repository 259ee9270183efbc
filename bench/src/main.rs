//! The memberflow benchmark: `cargo run --release -p bench [-- --quick]`.
//!
//! It starts auth and task as child processes against the local PostgreSQL
//! and RabbitMQ, each phase on fresh databases and a fresh vhost (removed
//! afterwards), drives them through their public APIs, and prints every
//! figure beside a baseline measured in the same run: the bare SQL
//! transaction, raw lapin publishing and consuming, and the common polling
//! relay. The table is Markdown; the same figures go to a JSON file.
mod at_scale;
mod broker;
mod charts;
mod clients;
mod cluster;
mod consumer_apply;
mod deletion;
mod floor;
mod load;
mod peer;
mod pool_guard;
mod proc_stat;
mod relay_drain;
mod replica_repair;
mod report;
mod service;
mod setup;
mod signup;
mod stats;
mod suspension;
mod system;
mod workers;

use std::{path::PathBuf, time::Duration};

use report::{Figure, Measure, Report};
use service::ServiceProcess;

/// How much of everything a run does.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// (clients, signups) at the bench hash cost.
    signups: Vec<(usize, usize)>,
    /// (clients, signups) at the production hash cost.
    prod_signups: Vec<(usize, usize)>,
    /// Offered signup rates for propagation, and how long each runs.
    rates: Vec<f64>,
    propagation: Duration,
    drain_rows: usize,
    polling_drain_rows: usize,
    /// Committed events each outbox of the peer phase drains.
    peer_drain: usize,
    /// Calls of each RPC per client in the client comparison.
    client_calls: usize,
    apply_events: usize,
    /// Members a resync copies.
    resync_members: i64,
    /// Replica sizes a no-difference reconcile pass is timed on.
    reconcile_members: Vec<i64>,
    hits: usize,
    misses: usize,
    not_ready: usize,
    /// UpdateProfile → CreateTask pairs for read-your-writes.
    zone_moves: usize,
    /// The at-scale phase's data size.
    scale: at_scale::Scale,
}

impl Plan {
    fn full() -> Self {
        Self {
            quick: false,
            signups: vec![(1, 2_000), (8, 5_000), (32, 5_000)],
            prod_signups: vec![(1, 50), (8, 200), (32, 200)],
            rates: vec![200.0, 500.0],
            propagation: Duration::from_secs(10),
            drain_rows: 100_000,
            polling_drain_rows: 10_000,
            peer_drain: 20_000,
            client_calls: 300,
            apply_events: 100_000,
            resync_members: 100_000,
            reconcile_members: vec![100_000, 1_000_000],
            hits: 2_000,
            misses: 1_000,
            not_ready: 300,
            zone_moves: 1_000,
            scale: at_scale::Scale {
                members: 1_000_000,
                inbox: 10_000_000,
                tasks: 5_000,
                list_calls: 300,
            },
        }
    }

    /// Every phase at a smoke-test size: under a minute.
    fn quick() -> Self {
        Self {
            quick: true,
            signups: vec![(1, 200), (8, 400), (32, 400)],
            prod_signups: vec![(1, 5), (8, 16), (32, 32)],
            rates: vec![200.0, 500.0],
            propagation: Duration::from_secs(2),
            drain_rows: 10_000,
            polling_drain_rows: 1_000,
            peer_drain: 2_000,
            client_calls: 30,
            apply_events: 10_000,
            resync_members: 10_000,
            reconcile_members: vec![10_000],
            hits: 200,
            misses: 100,
            not_ready: 30,
            zone_moves: 100,
            scale: at_scale::Scale {
                members: 20_000,
                inbox: 200_000,
                tasks: 5_000,
                list_calls: 30,
            },
        }
    }
}

/// What the phases share: the plan, the figures so far, and the peak RSS of
/// every service process they stopped.
pub(crate) struct Lab {
    plan: Plan,
    figures: Vec<Figure>,
    /// (role, peak) per stopped process; roles group the RSS figures.
    peak_rss: Vec<(String, f64)>,
    /// Raw consume rate, measured by the relay phase, the consumer's baseline.
    raw_consume: f64,
    /// Samples for the pictures.
    charts: charts::Charts,
}

impl Lab {
    fn add(&mut self, figure: Figure) {
        eprintln!("measured: {} — {:?}", figure.name, figure.measure);
        self.figures.push(figure);
    }

    /// Stops `process`, keeping its peak RSS under `role` (e.g. "task").
    async fn stop(&mut self, process: ServiceProcess, role: &str) -> anyhow::Result<()> {
        let peak = process.stop().await?;
        self.peak_rss.push((role.to_owned(), peak));
        Ok(())
    }

    /// One figure per role: the highest peak among its processes. At the
    /// bench hash cost (64 KiB) a process's peak is its base footprint,
    /// target ≤ 30 MB; at the production cost the README's formula, base +
    /// password.max_concurrent (one per CPU) × memory_kib, is the bound.
    fn add_rss(&mut self) {
        let mut roles: Vec<String> = Vec::new();
        for (role, _) in &self.peak_rss {
            if !roles.contains(role) {
                roles.push(role.clone());
            }
        }
        let peak_of = |role: &str| {
            self.peak_rss
                .iter()
                .filter(|(r, _)| r == role)
                .map(|(_, p)| *p)
                .fold(0.0, f64::max)
        };
        let base = peak_of("auth");
        let figures: Vec<Figure> = roles
            .iter()
            .map(|role| {
                let count = self.peak_rss.iter().filter(|(r, _)| r == role).count();
                let max = peak_of(role);
                let figure = Figure::new(
                    format!("Peak RSS, {role}"),
                    format!(
                        "highest VmHWM of {count} such process(es) in this run, read before SIGTERM"
                    ),
                    Measure::Memory { mb: max },
                );
                if role == setup::PRODUCTION_COST_ROLE {
                    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let hashes =
                        cpus as f64 * setup::HashCost::production().memory_kib as f64 * 1024.0
                            / 1e6;
                    let bound = base + hashes;
                    figure.target(
                        format!("≤ base + {cpus} × memory_kib = {bound:.1} MB"),
                        max <= bound,
                    )
                } else {
                    figure.target("≤ 30 MB", max <= 30.0)
                }
            })
            .collect();
        for figure in figures {
            self.add(figure);
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--quick] [--out FILE.json] [--only system|workers|guard|relay|consumer|replica|clients|scale|cluster|peer]\n       bench serve auth|task\n       bench peer-relay ours|oxide"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return service::serve(args.get(1).map_or("", String::as_str)).await;
    }
    if args.first().map(String::as_str) == Some("peer-relay") {
        return peer::relay_child(args.get(1).map_or("", String::as_str)).await;
    }
    let mut plan = Plan::full();
    let mut out = PathBuf::from("target/bench.json");
    let mut only: Option<String> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => plan = Plan::quick(),
            "--out" => out = rest.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--only" => only = Some(rest.next().cloned().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; figures worth reporting come from --release");
    }

    let started_at = chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string();
    let machine = machine().await;
    let mut lab = Lab {
        plan: plan.clone(),
        figures: Vec::new(),
        peak_rss: Vec::new(),
        raw_consume: f64::NAN,
        charts: charts::Charts::default(),
    };
    let wanted = |phase: &str| only.as_deref().is_none_or(|o| o == phase);
    if wanted("clients") {
        clients::ensure_python().await?;
    }
    if wanted("system") {
        system::run(&mut lab).await?;
    }
    if wanted("workers") {
        workers::run(&mut lab).await?;
    }
    if wanted("guard") {
        pool_guard::run(&mut lab).await?;
    }
    if wanted("relay") || wanted("consumer") {
        // The consumer's baseline, raw consumption, is measured here.
        relay_drain::run(&mut lab).await?;
    }
    if wanted("consumer") {
        consumer_apply::run(&mut lab).await?;
    }
    if wanted("replica") {
        replica_repair::run(&mut lab).await?;
    }
    if wanted("clients") {
        clients::run(&mut lab).await?;
    }
    if wanted("scale") {
        at_scale::run(&mut lab).await?;
    }
    // Starts a three-node cluster (about 30 s, 500 MB), so not in --quick.
    if only.as_deref() == Some("cluster") || (only.is_none() && !plan.quick) {
        cluster::run(&mut lab).await?;
    }
    // Two outboxes side by side, about a minute: not in --quick (CI).
    if only.as_deref() == Some("peer") || (only.is_none() && !plan.quick) {
        peer::run(&mut lab).await?;
    }
    lab.add_rss();

    let report = Report {
        started_at,
        quick: plan.quick,
        machine,
        figures: lab.figures,
    };
    println!("{}", report.markdown());
    report.write_json(&out)?;
    eprintln!("wrote {}", out.display());
    for chart in lab.charts.write(&out)? {
        eprintln!("wrote {}", chart.display());
    }
    Ok(())
}

/// CPU count and model, memory, and the server versions, for the report.
async fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let pg = postgres_version().await.unwrap_or_else(|| "?".into());
    let rabbit = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into());
    format!("{cores} × {model}, {mem_gib:.0} GiB, PostgreSQL {pg}, RabbitMQ {rabbit}, loopback")
}

async fn postgres_version() -> Option<String> {
    let url = format!("{}/postgres", memberflow_tests::env::pg_base());
    let pool = sqlx::PgPool::connect(&url).await.ok()?;
    sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .ok()
}
