//! CPU time and context switches of a process and its threads, from
//! `/proc`: what the peer phase charges a relay and the workers phase splits
//! by thread.
use std::collections::BTreeMap;

use anyhow::Context as _;
use tokio::process::Command;

/// The clock ticks `/proc/PID/stat` counts in (USER_HZ, 100 on Linux).
pub(crate) async fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .await
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time in a `stat` file's text (a process's, all its
/// threads; or one thread's), in clock ticks.
fn cpu_ticks(stat: &str) -> anyhow::Result<f64> {
    // Fields after the command name, which may hold spaces: state is field
    // 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a /proc stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("a /proc stat line")?.parse::<f64>()?)
    };
    Ok(ticks(11)? + ticks(12)?)
}

/// User + system CPU time of process `pid` so far, all its threads, in
/// seconds.
pub(crate) fn process_cpu_secs(pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(cpu_ticks(&stat)? / ticks_per_sec)
}

/// What a group of threads (those of one name) has spent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ThreadUse {
    pub(crate) threads: usize,
    pub(crate) cpu_secs: f64,
    /// Voluntary + involuntary context switches: how often the kernel took
    /// them off a CPU (a thread that sleeps and wakes switches once a wake).
    pub(crate) switches: u64,
}

/// Process `pid`'s threads grouped by name (`comm`; tokio's workers are all
/// `tokio-rt-worker`), with what each group has spent so far. A thread that
/// ended between the listing and the read is skipped.
pub(crate) fn threads(pid: u32, ticks_per_sec: f64) -> anyhow::Result<BTreeMap<String, ThreadUse>> {
    let mut groups: BTreeMap<String, ThreadUse> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let (Ok(comm), Ok(stat), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let switches: u64 = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        let group = groups.entry(comm.trim().to_owned()).or_default();
        group.threads += 1;
        group.cpu_secs += cpu_ticks(&stat)? / ticks_per_sec;
        group.switches += switches;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_name_with_spaces() {
        let stat = "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 5 0";
        assert_eq!(cpu_ticks(stat).unwrap(), 280.0);
    }

    #[test]
    fn this_process_has_threads_and_cpu_time() {
        let groups = threads(std::process::id(), 100.0).unwrap();
        assert!(groups.values().map(|g| g.threads).sum::<usize>() >= 1);
        assert!(process_cpu_secs(std::process::id(), 100.0).is_ok());
    }
}
