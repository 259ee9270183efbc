//! The transactional outbox and the idempotent consumer, once, for every
//! service that publishes or consumes events: auth publishes member events
//! and consumes erasure receipts; task consumes member events and publishes
//! receipts (docs/deletion.md, "The erasure saga").
//!
//! * [`write`]: the one way to write an event, in the transaction of the
//!   change that caused it; committing wakes the relay.
//! * [`relay`]: publishes committed rows with publisher confirms, one leader
//!   per database under a fenced lease; [`settle`] decides each row's fate,
//!   [`parked`] holds the rows it gave up on.
//! * [`consumer`]: applies deliveries through a [`consumer::Handler`], acks
//!   after commit, retries, isolates, dead-letters and gives batches back
//!   by the rules of [`consumer::plan`]; [`inbox`] makes applying idempotent.
//!
//! A service configures each part with its own names ([`OutboxSpec`],
//! [`consumer::QueueSpec`]); the tables (`outbox`, `outbox_parked`,
//! `leases`, `inbox`) live in each service's own database, in the schema
//! and with the ordering key it names ([`schema::Tables`]), created (or
//! adopted) by the library's own migrations ([`schema::Tables::migrator`]).
//!
//! `outbox/examples/orders.rs` is a whole service on this API alone: one
//! table, one event type, a `bigint` key in a schema of its own.
//!
//! **Logs.** lapin logs every message the broker returns (an unroutable
//! event, on every retry) at WARN with its whole body, and has no switch for
//! it; an event's body is personal data. A service using this crate must
//! hold the target `lapin::returned_messages` to ERROR on every layer, with
//! a filter `RUST_LOG` cannot lift, as `memberflow_runtime::telemetry` does
//! (`LAPIN_RETURNS`); the relay reports returns itself, without bodies.
pub mod consumer;
pub mod inbox;
pub mod metrics;
pub mod parked;
pub mod publisher;
pub mod relay;
pub mod schema;
pub mod settings;
pub mod settle;
pub mod wake;
pub mod write;

pub use schema::{OrderingKey, Tables};

/// What the relay and the consumer are built from that is shared with the
/// rest of a service: AMQP connections and nodes, the fenced lease, the
/// metrics registry, trace context over AMQP.
pub use memberflow_infra as infra;
/// The one shutdown signal every loop here takes.
pub use memberflow_lifecycle::CancellationToken;

/// Where one service's outbox lives and publishes, and how its relay is
/// woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSpec {
    /// Its tables: their schema and ordering key.
    pub tables: Tables,
    /// The AMQP header that carries each event's ordering key (as text), so
    /// a consumer can tell keys apart without decoding the body.
    pub key_header: &'static str,
    /// The durable topic exchange the relay publishes to (and declares).
    pub exchange: &'static str,
    /// The LISTEN/NOTIFY channel that wakes the relay leader in another
    /// instance of the service.
    pub channel: &'static str,
    /// The relay's AMQP connection name, as the broker's UI shows it.
    pub connection_name: &'static str,
    /// Who should have bound a queue to [`Self::exchange`]: what the relay
    /// names when nothing it publishes is routable.
    pub consumers: &'static str,
}
