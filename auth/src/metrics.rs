//! auth's own metrics, beside the gRPC ones every service has: the outbox
//! and relay (`memberflow_outbox`'s), the receipt consumer, the erasure
//! saga, and how many hashes wait.
use memberflow_outbox::metrics::{ConsumerMetrics, RelayMetrics};
use memberflow_runtime::metrics::SharedRegistry;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// Which login limit refused an attempt.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ThrottleLimit {
    /// Attempts for one account (email, or member for ChangePassword).
    email,
    /// Attempts from one peer address.
    peer,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: ThrottleLimit,
}

/// The metrics of one auth instance.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// The outbox and its relay.
    pub relay: RelayMetrics,
    /// The consumer of erasure receipts.
    pub consumer: ConsumerMetrics,
    /// `memberflow_erasures_pending`: erasures waiting for a receipt.
    pub erasures_pending: Gauge,
    /// `memberflow_erasures_overdue`: pending erasures older than
    /// `erasure.deadline_secs` (the `ErasurePending` alert).
    pub erasures_overdue: Gauge,
    /// `memberflow_erasures_completed_total`: erasures every expected
    /// service has confirmed.
    pub erasures_completed: Counter,
    /// `memberflow_erasure_seconds`: from the deletion to its last receipt.
    pub erasure_seconds: Histogram,
    /// `memberflow_password_hash_queue`: hashes waiting for a hashing thread.
    pub password_hash_queue: Gauge,
    /// `memberflow_password_hash_rejected_total`: hashes refused because the
    /// queue was full (RESOURCE_EXHAUSTED).
    pub password_hash_rejected: Counter,
    /// `memberflow_password_hash_abandoned_total`: queued hashes not started
    /// because their caller had gone.
    pub password_hash_abandoned: Counter,
    /// `memberflow_login_throttled_total{limit}`: attempts refused by the
    /// login throttle.
    login_throttled: Family<LimitLabel, Counter>,
}

impl AuthMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let m = Self {
            relay: RelayMetrics::register(registry),
            consumer: ConsumerMetrics::register(registry),
            erasures_pending: Gauge::default(),
            erasures_overdue: Gauge::default(),
            erasures_completed: Counter::default(),
            erasure_seconds: Histogram::new(erasure_buckets()),
            password_hash_queue: Gauge::default(),
            password_hash_rejected: Counter::default(),
            password_hash_abandoned: Counter::default(),
            login_throttled: Family::default(),
        };
        let mut r = registry.lock().expect("metrics registry poisoned");
        r.register(
            "memberflow_erasures_pending",
            "Erasures still waiting for a receipt from an expected service",
            m.erasures_pending.clone(),
        );
        r.register(
            "memberflow_erasures_overdue",
            "Pending erasures older than erasure.deadline_secs",
            m.erasures_overdue.clone(),
        );
        r.register(
            "memberflow_erasures_completed",
            "Erasures confirmed by every expected service",
            m.erasures_completed.clone(),
        );
        r.register(
            "memberflow_erasure_seconds",
            "From an account's deletion to the last receipt of its erasure",
            m.erasure_seconds.clone(),
        );
        r.register(
            "memberflow_password_hash_queue",
            "Password hashes waiting for a hashing thread",
            m.password_hash_queue.clone(),
        );
        r.register(
            "memberflow_password_hash_rejected",
            "Password hashes refused because the hashing queue was full",
            m.password_hash_rejected.clone(),
        );
        r.register(
            "memberflow_password_hash_abandoned",
            "Queued password hashes skipped because their caller had gone",
            m.password_hash_abandoned.clone(),
        );
        r.register(
            "memberflow_login_throttled",
            "Login and ChangePassword attempts refused by the throttle, by limit",
            m.login_throttled.clone(),
        );
        m
    }

    /// Counts one attempt refused by `limit`.
    pub fn throttled(&self, limit: ThrottleLimit) {
        self.login_throttled
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    /// Attempts refused by `limit` so far.
    pub fn throttled_count(&self, limit: ThrottleLimit) -> u64 {
        self.login_throttled
            .get_or_create(&LimitLabel { limit })
            .get()
    }
}

/// Erasure time buckets, in seconds: 1 ms (every replica answered at once)
/// to a day (a replica was down that long).
fn erasure_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
        86400.0,
    ]
    .into_iter()
}
