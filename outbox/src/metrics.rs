//! The relay's and the consumer's metrics, under the same names in every
//! service (each service has its own registry; Prometheus's `job` label
//! tells them apart).
use std::sync::atomic::AtomicU64;

use memberflow_infra::metrics::{SharedRegistry, latency_buckets};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// A gauge holding seconds as a float.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// The metrics of one instance's outbox and relay.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
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
}

impl RelayMetrics {
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
        m
    }
}

/// What became of one consumed event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventOutcome {
    /// It changed the service's state (a newer replica version, a receipt
    /// recorded).
    applied,
    /// Its id was already in the inbox: a redelivery.
    duplicate,
    /// New, but it changed nothing: the state was already as new (an older
    /// version, a receipt for an erasure already complete or unknown).
    stale,
    /// Dead-lettered: undecodable, invalid, or failing alone for good.
    poison,
    /// A kind this version does not know; acked and skipped.
    unknown,
}

impl EventOutcome {
    pub const ALL: [Self; 5] = [
        Self::applied,
        Self::duplicate,
        Self::stale,
        Self::poison,
        Self::unknown,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: EventOutcome,
}

/// The metrics of one instance's consumer.
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    events: Family<OutcomeLabel, Counter>,
    /// `memberflow_dlq_messages`: messages in the consumer's dead-letter
    /// queue.
    pub dlq_messages: Gauge,
    /// `memberflow_consumer_attached`: 1 while the consumer is attached.
    pub attached: Gauge,
    /// `memberflow_consumer_retries_total`: batch retries after a transient
    /// database fault.
    pub retries: Counter,
    /// `memberflow_consumer_given_back_total`: batches given back to the
    /// broker because the database stayed unreachable past
    /// `amqp.apply_timeout_ms` (a hung or cut database link).
    pub given_back: Counter,
}

impl ConsumerMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let m = Self::default();
        // Every outcome starts at 0, so rates and dashboards see the series
        // before its first event.
        for outcome in EventOutcome::ALL {
            let _ = m.events.get_or_create(&OutcomeLabel { outcome });
        }
        let mut r = registry.lock().expect("metrics registry poisoned");
        r.register(
            "memberflow_consumer_events",
            "Consumed events by outcome",
            m.events.clone(),
        );
        r.register(
            "memberflow_dlq_messages",
            "Messages in this service's dead-letter queue",
            m.dlq_messages.clone(),
        );
        r.register(
            "memberflow_consumer_attached",
            "1 while the consumer is attached to its queue",
            m.attached.clone(),
        );
        r.register(
            "memberflow_consumer_retries",
            "Batch retries after a transient database fault",
            m.retries.clone(),
        );
        r.register(
            "memberflow_consumer_given_back",
            "Batches given back to the broker because the database stayed unreachable",
            m.given_back.clone(),
        );
        m
    }

    /// Counts `n` events with `outcome`.
    pub fn events(&self, outcome: EventOutcome, n: u64) {
        if n > 0 {
            self.events
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    /// Events counted with `outcome` so far (tests, logs).
    pub fn event_count(&self, outcome: EventOutcome) -> u64 {
        self.events.get_or_create(&OutcomeLabel { outcome }).get()
    }
}
