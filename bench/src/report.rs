//! The bench's output: one row per figure, each beside its baseline from the
//! same run and the target, printed as a Markdown table (so it can go
//! into the README as is) and written as JSON.
use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::stats::Latency;

/// What a figure measured.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Measure {
    /// Operations (or events) per second.
    Rate {
        per_sec: f64,
    },
    Latency(Latency),
    /// Peak resident set size.
    Memory {
        mb: f64,
    },
    /// One pass of a job: how long it took and how many rows it read.
    Pass {
        secs: f64,
        rows_read: u64,
    },
    /// Events counted (duplicates, losses).
    Count {
        n: u64,
    },
    /// CPU time a process spent per 1,000 events.
    Cpu {
        ms_per_1000: f64,
    },
    /// A mean duration (where only a histogram's sum and count are known).
    Mean {
        ms: f64,
    },
    /// What a worker (or a thread) spent per second: time (a worker's in its
    /// polls, a thread's CPU) and wake-ups.
    Work {
        ms_per_sec: f64,
        wakeups_per_sec: f64,
    },
}

impl Measure {
    fn show(&self) -> String {
        match self {
            Self::Rate { per_sec } => format!("{}/s", thousands(*per_sec)),
            Self::Latency(l) => format!(
                "p50 {} · p99 {} · max {} ms",
                ms(l.p50_ms),
                ms(l.p99_ms),
                ms(l.max_ms)
            ),
            Self::Memory { mb } => format!("{mb:.1} MB"),
            Self::Pass { secs, rows_read } => {
                format!("{secs:.2} s, {} rows read", thousands(*rows_read as f64))
            }
            Self::Count { n } => thousands(*n as f64),
            Self::Cpu { ms_per_1000 } => format!("{} ms CPU", ms(*ms_per_1000)),
            Self::Mean { ms: mean } => format!("mean {} ms", ms(*mean)),
            Self::Work {
                ms_per_sec,
                wakeups_per_sec,
            } => format!(
                "{} ms/s · {} wake-ups/s",
                ms(*ms_per_sec),
                thousands(*wakeups_per_sec)
            ),
        }
    }

    /// This figure relative to `base`: higher is better for rates, so a ratio
    /// above 1 is a gain there and a cost for latencies.
    fn ratio(&self, base: &Measure) -> Option<String> {
        match (self, base) {
            (Self::Rate { per_sec: a }, Self::Rate { per_sec: b }) => Some(times(a / b)),
            (Self::Latency(a), Self::Latency(b)) => Some(format!(
                "p50 {} · p99 {}",
                times(a.p50_ms / b.p50_ms),
                times(a.p99_ms / b.p99_ms)
            )),
            (Self::Pass { secs: a, .. }, Self::Pass { secs: b, .. }) => Some(times(a / b)),
            (Self::Cpu { ms_per_1000: a }, Self::Cpu { ms_per_1000: b }) => Some(times(a / b)),
            (Self::Mean { ms: a }, Self::Mean { ms: b }) => Some(times(a / b)),
            _ => None,
        }
    }
}

/// A reference figure from the same run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Baseline {
    pub(crate) name: String,
    pub(crate) measure: Measure,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) name: String,
    /// Counts, concurrency, mode, hash cost, queue type: what it takes to
    /// reproduce the figure.
    pub(crate) conditions: String,
    pub(crate) measure: Measure,
    pub(crate) baseline: Option<Baseline>,
    /// The target, in words, and whether this run met it.
    pub(crate) target: Option<String>,
    pub(crate) met: Option<bool>,
}

impl Figure {
    pub(crate) fn new(
        name: impl Into<String>,
        conditions: impl Into<String>,
        measure: Measure,
    ) -> Self {
        Self {
            name: name.into(),
            conditions: conditions.into(),
            measure,
            baseline: None,
            target: None,
            met: None,
        }
    }

    pub(crate) fn against(mut self, name: impl Into<String>, measure: Measure) -> Self {
        self.baseline = Some(Baseline {
            name: name.into(),
            measure,
        });
        self
    }

    pub(crate) fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) started_at: String,
    pub(crate) quick: bool,
    pub(crate) machine: String,
    pub(crate) figures: Vec<Figure>,
}

impl Report {
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!(
            "{} run, {}, on {}\n\n| figure | conditions | result | baseline (same run) | ratio | target |\n|---|---|---|---|---|---|\n",
            if self.quick { "Quick" } else { "Full" },
            self.started_at,
            self.machine
        );
        for f in &self.figures {
            let (base, ratio) = match &f.baseline {
                Some(b) => (
                    format!("{}: {}", b.name, b.measure.show()),
                    f.measure.ratio(&b.measure).unwrap_or_default(),
                ),
                None => (String::new(), String::new()),
            };
            let target = match (&f.target, f.met) {
                (Some(t), Some(true)) => format!("{t} ✅"),
                (Some(t), _) => format!("{t} ❌"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {base} | {ratio} | {target} |",
                f.name,
                f.conditions,
                f.measure.show()
            );
        }
        out
    }

    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// A ratio with two significant digits: 0.0029×, 0.55×, 2.4×, 310×.
fn times(r: f64) -> String {
    let decimals = if r >= 10.0 {
        0
    } else {
        (1 - r.log10().floor() as i32).max(0) as usize
    };
    format!("{r:.decimals$}×")
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// 12345.6 → "12,346".
pub(crate) fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    use super::{thousands, times};

    #[test]
    fn ratios_keep_two_digits() {
        assert_eq!(times(0.00294), "0.0029×");
        assert_eq!(times(0.553), "0.55×");
        assert_eq!(times(2.44), "2.4×");
        assert_eq!(times(310.4), "310×");
    }

    #[test]
    fn groups_digits() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
