//! auth's own metrics, beside the gRPC ones every service has: how full the
//! outbox is, what the relay does, and how many hashes wait.
use std::sync::atomic::AtomicU64;

use memberflow_runtime::metrics::{SharedRegistry, latency_buckets};
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

/// A gauge holding seconds as a float.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// The metrics of one auth instance.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// `memberflow_outbox_pending`: rows waiting to be published.
    pub outbox_pending: Gauge,
    /// `memberflow_outbox_oldest_age_seconds`: how long the oldest has waited.
    pub outbox_oldest_age: SecondsGauge,
    /// `memberflow_outbox_parked`: rows the relay parked.
    pub outbox_parked: Gauge,
    /// `memberflow_relay_published_total`.
    pub relay_published: Counter,
    /// `memberflow_relay_publish_failures_total`: rows the broker did not
    /// confirm, plus batches lost to broker errors.
    pub relay_publish_failures: Counter,
    /// `memberflow_relay_batch_seconds`: one batch, read to settled.
    pub relay_batch: Histogram,
    /// `memberflow_relay_leader`: 1 while this instance's relay leads.
    pub relay_leader: Gauge,
    /// `memberflow_relay_wake_failures_total`: NOTIFYs to another
    /// instance's relay that failed (it publishes at its next poll).
    pub relay_wake_failures: Counter,
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
            outbox_pending: Gauge::default(),
            outbox_oldest_age: SecondsGauge::default(),
            outbox_parked: Gauge::default(),
            relay_published: Counter::default(),
            relay_publish_failures: Counter::default(),
            relay_batch: Histogram::new(latency_buckets()),
            relay_leader: Gauge::default(),
            relay_wake_failures: Counter::default(),
            password_hash_queue: Gauge::default(),
            password_hash_rejected: Counter::default(),
            password_hash_abandoned: Counter::default(),
            login_throttled: Family::default(),
        };
        let mut r = registry.lock().expect("metrics registry poisoned");
        r.register(
            "memberflow_outbox_pending",
            "Outbox rows waiting to be published",
            m.outbox_pending.clone(),
        );
        r.register(
            "memberflow_outbox_oldest_age_seconds",
            "Age of the oldest outbox row",
            m.outbox_oldest_age.clone(),
        );
        r.register(
            "memberflow_outbox_parked",
            "Outbox rows parked after failing on their own",
            m.outbox_parked.clone(),
        );
        r.register(
            "memberflow_relay_published",
            "Outbox rows published and confirmed",
            m.relay_published.clone(),
        );
        r.register(
            "memberflow_relay_publish_failures",
            "Rows the broker did not confirm, and batches lost to broker errors",
            m.relay_publish_failures.clone(),
        );
        r.register(
            "memberflow_relay_batch_seconds",
            "Time to publish and settle one outbox batch",
            m.relay_batch.clone(),
        );
        r.register(
            "memberflow_relay_leader",
            "1 while this instance's relay is the leader",
            m.relay_leader.clone(),
        );
        r.register(
            "memberflow_relay_wake_failures",
            "NOTIFYs to the relay leader in another instance that failed; it publishes at its next poll",
            m.relay_wake_failures.clone(),
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
