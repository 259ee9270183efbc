//! The relay's and the consumer's settings, the same keys in every service
//! (`[auth.relay]`, `[task.relay]`; `[auth.amqp]`, `[task.amqp]`).
use memberflow_infra::amqp;
use memberflow_retry::Backoff;
use serde::Deserialize;

/// How the outbox relay publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RelaySettings {
    /// Rows per batch; their confirms are pipelined. 1 gives the common
    /// one-confirm-at-a-time design (for benchmarks).
    pub batch_size: i64,
    /// How long one batch may take, publishes and confirms together; past
    /// it the relay reconnects and republishes what was not confirmed.
    pub confirm_timeout_ms: u64,
    /// Fallback poll; the normal path is woken in-process and by NOTIFY.
    pub poll_interval_ms: u64,
    /// Wake on commit and on LISTEN/NOTIFY. Off gives a pure polling relay.
    pub wake_on_commit: bool,
    /// How often a non-leader instance tries to take over the relay.
    pub leader_retry_ms: u64,
    /// The leader's lease: it renews every third of this; a leader that
    /// stops renewing (paused, cut off from the database) loses leadership
    /// this long after its last renewal, and a standby takes over within
    /// `leader_retry_ms` more.
    pub lease_ms: u64,
    /// Times a row may come back unroutable while the rows around it are
    /// routed before it is parked in `outbox_parked`.
    pub park_after_attempts: i32,
    /// `statement_timeout` (and idle-in-transaction timeout) of the leader's
    /// session; a relay step that takes longer than a few of these makes the
    /// leader step down.
    pub statement_timeout_ms: u64,
    /// Backoff after a failed publish or a lost connection.
    pub backoff: Backoff,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            confirm_timeout_ms: 5_000,
            poll_interval_ms: 5_000,
            wake_on_commit: true,
            leader_retry_ms: 1_000,
            lease_ms: 6_000,
            park_after_attempts: 5,
            statement_timeout_ms: 10_000,
            backoff: Backoff::default(),
        }
    }
}

/// The broker connection and the consumer of a service's queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsumerSettings {
    /// `url`, `urls`, `heartbeat_secs`: what every service has.
    #[serde(flatten)]
    pub broker: amqp::BrokerSettings,
    /// `x-quorum-initial-group-size` of the service's quorum queues: how
    /// many nodes hold a replica. 0: 3 when `urls` names several nodes, else
    /// the broker's default. Only read when the queues are first declared.
    pub quorum_initial_group_size: u32,
    /// Unacknowledged deliveries the broker may push at once.
    pub prefetch: u16,
    /// Most events applied in one transaction when a backlog exists.
    pub batch_max: usize,
    /// Deliveries after which a message that keeps failing is dead-lettered
    /// (the quorum queue's `x-delivery-limit`).
    pub delivery_limit: i64,
    /// Backoff while the database or broker is unreachable.
    pub backoff: Backoff,
    /// How long the consumer may be detached from the broker before health
    /// says NOT_SERVING.
    pub detached_grace_secs: u64,
    /// How long a batch may find the database unreachable (no connection,
    /// or no answer: each apply is bounded by this too, since a blackholed
    /// link never answers). Past it the consumer gives its unacknowledged
    /// messages back to the broker, so another instance applies them, and
    /// reattaches once the database answers again.
    pub apply_timeout_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            broker: amqp::BrokerSettings::default(),
            quorum_initial_group_size: 0,
            prefetch: 256,
            batch_max: 256,
            delivery_limit: 10,
            backoff: Backoff::default(),
            detached_grace_secs: 10,
            apply_timeout_ms: 5_000,
        }
    }
}

/// `settings.amqp.url` and the rest read as the shared keys they are.
impl std::ops::Deref for ConsumerSettings {
    type Target = amqp::BrokerSettings;
    fn deref(&self) -> &Self::Target {
        &self.broker
    }
}

impl std::ops::DerefMut for ConsumerSettings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.broker
    }
}

impl ConsumerSettings {
    /// The replica count to declare quorum queues with, if any.
    pub fn quorum_group_size(&self) -> Option<u32> {
        match (self.quorum_initial_group_size, self.urls.len()) {
            (0, n) if n > 1 => Some(3),
            (0, _) => None,
            (size, _) => Some(size),
        }
    }
}

/// What the relay and the consumer read from a service's settings, so
/// that each service builds both with one call ([`crate::relay::Relay::for_service`],
/// [`crate::consumer::Consumer::for_service`]) and implements this once.
pub trait OutboxSettings {
    /// `relay.*`.
    fn relay(&self) -> &RelaySettings;
    /// `amqp.*`: the broker's nodes and the consumer's settings.
    fn amqp(&self) -> &ConsumerSettings;
    /// A session straight to the service's database (never through a
    /// pooler): the relay leader's lease and its LISTEN need one.
    fn leader_options(&self) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error>;
}
