//! What each background worker costs (issue 35): time spent in its polls
//! and its wake-ups per second, for auth and task at rest and at 500
//! signups/s, with the whole process's CPU beside them and its threads by
//! name.
//!
//! The services count every named worker's polls themselves
//! (`worker_poll_seconds_total` and `worker_wakeups_total`, see
//! `memberflow_lifecycle::Costs`), work a worker hands to a task of its own
//! included (the consumer's apply), and the units of work that RPCs run as
//! `units`. No account holds tonic's connection tasks and the handlers' own
//! code, lapin's I/O threads or the hashing threads: the thread rows show
//! those. Poll time is wall clock, so on a saturated machine it includes
//! preemption and the accounts can add up to more than the process's CPU.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient;
use memberflow_tests::env::TestEnv;
use tokio::time::Instant;

use crate::{
    Lab,
    proc_stat::{self, ThreadUse},
    report::{Figure, Measure},
    service::{ServiceProcess, start_system},
    system::measure_propagation,
};

/// The offered rate under load: the rate whose propagation issue 35 targets.
const RATE: f64 = 500.0;

/// One service's accounts and its process's use at one instant.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// worker → (busy seconds, wake-ups), as its `/metrics` says.
    workers: BTreeMap<String, (f64, f64)>,
    process_cpu_secs: f64,
    threads: BTreeMap<String, ThreadUse>,
    /// The relay's batches: (seconds, count) of `memberflow_relay_batch_seconds`.
    relay_batches: (f64, f64),
}

/// A worker's (or a thread group's) cost over a window, per second: ms of
/// poll time (of CPU for threads and processes) and wake-ups.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PerSec {
    ms: f64,
    wakeups: f64,
}

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let window = lab.plan.propagation;
    let mut env = TestEnv::new();
    let (auth, task) = start_system(&mut env, "not_ready", &[]).await?;
    let signups = AuthServiceClient::new(auth.channel.clone());
    let task_db = env.pool("task").await;
    let ticks = proc_stat::ticks_per_sec().await;
    let services = [("auth", &auth), ("task", &task)];

    // Every connection open and every worker past its start-up.
    measure_propagation(&signups, &task_db, 100.0, Duration::from_secs(1)).await?;

    // At rest: nothing calls either service for the window. Sleeping is the
    // measurement here, not a wait for something to happen.
    let (rest, rest_secs) = {
        let before = sample_all(&services, ticks).await?;
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let after = sample_all(&services, ticks).await?;
        (diff_all(&before, &after), started.elapsed().as_secs_f64())
    };
    // Under load: signups at RATE for the window, until task holds them all.
    let (loaded, loaded_secs, propagation) = {
        let before = sample_all(&services, ticks).await?;
        let started = Instant::now();
        let run = measure_propagation(&signups, &task_db, RATE, window).await?;
        let after = sample_all(&services, ticks).await?;
        (
            diff_all(&before, &after),
            started.elapsed().as_secs_f64(),
            run,
        )
    };
    let conditions = format!(
        "per second: time in its polls (worker_poll_seconds_total, wall clock) · its wake-ups (worker_wakeups_total); \
         at {RATE}/s signups for {}s (achieved {:.0}/s, propagation p50 {:.2} ms) beside {}s at rest, same processes",
        window.as_secs(),
        propagation.achieved,
        propagation.latency.p50_ms,
        window.as_secs()
    );
    for (name, _) in services {
        let (at_rest, under_load) = (&rest[name], &loaded[name]);
        let workers: Vec<&String> = under_load.workers.keys().collect();
        for worker in workers {
            let busy = per_sec(at_rest.workers.get(worker).copied(), rest_secs);
            let load = per_sec(under_load.workers.get(worker).copied(), loaded_secs);
            lab.add(figure(
                format!("Worker cost, {name}: {worker}"),
                &conditions,
                load,
                busy,
            ));
        }
        let process = |s: &Sample, secs: f64| s.process_cpu_secs * 1000.0 / secs;
        let (rest_total, load_total) = (
            process(at_rest, rest_secs),
            process(under_load, loaded_secs),
        );
        lab.add(figure(
            format!("Worker cost, {name}: the whole process"),
            "per second: user + system CPU of the process (/proc/PID/stat), all threads; wake-ups: context switches of all its threads",
            PerSec {
                ms: load_total,
                wakeups: switches(&under_load.threads) / loaded_secs,
            },
            PerSec {
                ms: rest_total,
                wakeups: switches(&at_rest.threads) / rest_secs,
            },
        ));
        // auth's relay carries the signups; task's (erasure receipts) idles.
        let (secs, batches) = under_load.relay_batches;
        if name == "auth" && batches > 0.0 {
            lab.add(Figure::new(
                format!("Relay batch, {name}, mean at {RATE}/s"),
                format!(
                    "memberflow_relay_batch_seconds sum ÷ count over the loaded window (read, publish and confirm, delete): {batches:.0} batches, {:.1} events each",
                    propagation.members.len() as f64 / batches
                ),
                Measure::Mean {
                    ms: secs * 1000.0 / batches,
                },
            ));
        }
        for (thread, load) in &under_load.threads {
            let busy = at_rest.threads.get(thread).copied().unwrap_or_default();
            lab.add(figure(
                format!("Threads, {name}: {thread} ({})", load.threads),
                "per second: user + system CPU of the threads of that name (/proc/PID/task) · their context switches",
                PerSec {
                    ms: load.cpu_secs * 1000.0 / loaded_secs,
                    wakeups: load.switches as f64 / loaded_secs,
                },
                PerSec {
                    ms: busy.cpu_secs * 1000.0 / rest_secs,
                    wakeups: busy.switches as f64 / rest_secs,
                },
            ));
        }
    }
    lab.stop(task, "task").await?;
    lab.stop(auth, "auth").await?;
    Ok(())
}

fn figure(name: String, conditions: &str, load: PerSec, rest: PerSec) -> Figure {
    Figure::new(
        name,
        conditions,
        Measure::Work {
            ms_per_sec: load.ms,
            wakeups_per_sec: load.wakeups,
        },
    )
    .against(
        "at rest, same run",
        Measure::Work {
            ms_per_sec: rest.ms,
            wakeups_per_sec: rest.wakeups,
        },
    )
}

fn per_sec(spent: Option<(f64, f64)>, secs: f64) -> PerSec {
    let (busy, wakeups) = spent.unwrap_or_default();
    PerSec {
        ms: busy * 1000.0 / secs,
        wakeups: wakeups / secs,
    }
}

fn switches(threads: &BTreeMap<String, ThreadUse>) -> f64 {
    threads.values().map(|t| t.switches as f64).sum()
}

async fn sample_all(
    services: &[(&'static str, &ServiceProcess)],
    ticks: f64,
) -> anyhow::Result<BTreeMap<&'static str, Sample>> {
    let mut all = BTreeMap::new();
    for (name, process) in services {
        all.insert(*name, sample(process, ticks).await?);
    }
    Ok(all)
}

async fn sample(process: &ServiceProcess, ticks: f64) -> anyhow::Result<Sample> {
    let pid = process.pid().context("the service exited")?;
    let (status, page) = memberflow_tests::http::get(process.metrics_addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let sum = |name| memberflow_tests::process::sum_samples(&page, name).unwrap_or(0.0);
    let relay_batches = (
        sum("memberflow_relay_batch_seconds_sum"),
        sum("memberflow_relay_batch_seconds_count"),
    );
    Ok(Sample {
        workers: parse_accounts(&page),
        process_cpu_secs: proc_stat::process_cpu_secs(pid, ticks)?,
        threads: proc_stat::threads(pid, ticks)?,
        relay_batches,
    })
}

/// `after` less `before`, per service.
fn diff_all(
    before: &BTreeMap<&'static str, Sample>,
    after: &BTreeMap<&'static str, Sample>,
) -> BTreeMap<&'static str, Sample> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).cloned().unwrap_or_default();
            let workers = a
                .workers
                .iter()
                .map(|(w, (busy, wakeups))| {
                    let (b_busy, b_wakeups) = b.workers.get(w).copied().unwrap_or_default();
                    (w.clone(), (busy - b_busy, wakeups - b_wakeups))
                })
                .collect();
            let threads = a
                .threads
                .iter()
                .map(|(t, u)| {
                    let was = b.threads.get(t).copied().unwrap_or_default();
                    let used = ThreadUse {
                        threads: u.threads,
                        cpu_secs: u.cpu_secs - was.cpu_secs,
                        switches: u.switches.saturating_sub(was.switches),
                    };
                    (t.clone(), used)
                })
                .collect();
            let sample = Sample {
                workers,
                process_cpu_secs: a.process_cpu_secs - b.process_cpu_secs,
                threads,
                relay_batches: (
                    a.relay_batches.0 - b.relay_batches.0,
                    a.relay_batches.1 - b.relay_batches.1,
                ),
            };
            (*name, sample)
        })
        .collect()
}

/// The two worker counters of a Prometheus text page, by worker.
fn parse_accounts(page: &str) -> BTreeMap<String, (f64, f64)> {
    let mut accounts: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in page.lines() {
        let (slot, rest) = if let Some(rest) = line.strip_prefix("worker_poll_seconds_total{") {
            (0, rest)
        } else if let Some(rest) = line.strip_prefix("worker_wakeups_total{") {
            (1, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(worker) = labels
            .strip_prefix("worker=\"")
            .and_then(|w| w.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = accounts.entry(worker.to_owned()).or_default();
        if slot == 0 {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    accounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_counters_by_worker_and_nothing_else() {
        let page = "# HELP worker_poll_seconds CPU\n# TYPE worker_poll_seconds counter\n\
                    worker_poll_seconds_total{worker=\"relay\"} 0.25\n\
                    worker_poll_seconds_total{worker=\"units\"} 1.5\n\
                    worker_wakeups_total{worker=\"relay\"} 40\n\
                    grpc_server_handled_total{grpc_code=\"OK\"} 7\n";
        let accounts = parse_accounts(page);
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts["relay"], (0.25, 40.0));
        assert_eq!(accounts["units"], (1.5, 0.0));
    }
}
