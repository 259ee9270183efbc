//! auth's own metrics, beside the gRPC ones every service has: how full the
//! outbox is, what the relay does, and how many hashes wait.
use std::sync::atomic::AtomicU64;

use memberflow_common::metrics::{SharedRegistry, latency_buckets};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

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
    /// `memberflow_password_hash_queue`: hashes waiting for a hashing thread.
    pub password_hash_queue: Gauge,
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
            password_hash_queue: Gauge::default(),
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
            "memberflow_password_hash_queue",
            "Password hashes waiting for a hashing thread",
            m.password_hash_queue.clone(),
        );
        m
    }
}
