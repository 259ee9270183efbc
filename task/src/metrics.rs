//! task's own metrics, beside the gRPC ones every service has: what the
//! consumer does with each event, how far behind the replica is, and how
//! often a client had to wait for it.
use memberflow_runtime::metrics::SharedRegistry;

pub use memberflow_outbox::metrics::EventOutcome;
use memberflow_outbox::metrics::{ConsumerMetrics, RelayMetrics};

use crate::repair::{Kind, PerKind};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// How a read-through ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReadThroughResult {
    ok,
    not_found,
    unavailable,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadThroughLabel {
    result: ReadThroughResult,
}

/// The `kind` label of the reconciler's counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: Kind,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.as_str())
    }
}

/// Replication lag buckets, in seconds: 1 ms to 5 minutes.
fn lag_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ]
    .into_iter()
}

/// The metrics of one task instance.
#[derive(Debug, Clone)]
pub struct TaskMetrics {
    /// The consumer of `member.events`.
    pub consumer: ConsumerMetrics,
    /// task's outbox (erasure receipts) and its relay.
    pub relay: RelayMetrics,
    /// `memberflow_replication_lag_seconds`: replicated_at − occurred_at of
    /// each applied event.
    pub replication_lag: Histogram,
    /// `memberflow_user_not_ready_total`.
    pub user_not_ready: Counter,
    read_through: Family<ReadThroughLabel, Counter>,
    /// `memberflow_reconcile_leader`: 1 on the instance holding the
    /// reconciler's lease.
    pub reconcile_leader: Gauge,
    /// `memberflow_reconcile_found_total{kind}`: rows found different from
    /// auth, by `repair::Kind`.
    reconcile_found: Family<KindLabel, Counter>,
    /// `memberflow_reconcile_repaired_total{kind}`: rows set to auth's state
    /// (or removed), by kind.
    reconcile_repaired: Family<KindLabel, Counter>,
}

impl TaskMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let m = Self {
            consumer: ConsumerMetrics::register(registry),
            relay: RelayMetrics::register(registry),
            replication_lag: Histogram::new(lag_buckets()),
            user_not_ready: Counter::default(),
            read_through: Family::default(),
            reconcile_leader: Gauge::default(),
            reconcile_found: Family::default(),
            reconcile_repaired: Family::default(),
        };
        // Every known label value starts at 0, so rates and dashboards see
        // the series before its first event.
        for result in [
            ReadThroughResult::ok,
            ReadThroughResult::not_found,
            ReadThroughResult::unavailable,
        ] {
            let _ = m.read_through.get_or_create(&ReadThroughLabel { result });
        }
        for kind in Kind::ALL {
            let _ = m.reconcile_found.get_or_create(&KindLabel { kind });
            let _ = m.reconcile_repaired.get_or_create(&KindLabel { kind });
        }
        let mut r = registry.lock().expect("metrics registry poisoned");
        r.register(
            "memberflow_replication_lag_seconds",
            "From the change in auth to its replica write, per applied event",
            m.replication_lag.clone(),
        );
        r.register(
            "memberflow_user_not_ready",
            "USER_NOT_READY answers",
            m.user_not_ready.clone(),
        );
        r.register(
            "memberflow_read_through",
            "Read-through fetches from auth, by result",
            m.read_through.clone(),
        );
        r.register(
            "memberflow_reconcile_leader",
            "1 on the instance holding the reconciler's lease",
            m.reconcile_leader.clone(),
        );
        r.register(
            "memberflow_reconcile_found",
            "Replica rows the reconciler found different from auth, by kind",
            m.reconcile_found.clone(),
        );
        r.register(
            "memberflow_reconcile_repaired",
            "Replica rows the reconciler set to auth's state, by kind",
            m.reconcile_repaired.clone(),
        );
        m
    }

    /// Counts one read-through.
    pub fn read_through(&self, result: ReadThroughResult) {
        self.read_through
            .get_or_create(&ReadThroughLabel { result })
            .inc();
    }

    /// Counts what one reconcile pass found and repaired.
    pub fn reconcile(&self, found: &PerKind, repaired: &PerKind) {
        for kind in Kind::ALL {
            let label = KindLabel { kind };
            self.reconcile_found
                .get_or_create(&label)
                .inc_by(found.get(kind));
            self.reconcile_repaired
                .get_or_create(&label)
                .inc_by(repaired.get(kind));
        }
    }

    /// Rows of `kind` the reconciler has found so far (tests, logs).
    pub fn reconcile_found(&self, kind: Kind) -> u64 {
        self.reconcile_found
            .get_or_create(&KindLabel { kind })
            .get()
    }

    /// Rows of `kind` the reconciler has repaired so far (tests, logs).
    pub fn reconcile_repaired(&self, kind: Kind) -> u64 {
        self.reconcile_repaired
            .get_or_create(&KindLabel { kind })
            .get()
    }
}
