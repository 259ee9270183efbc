//! Typed settings of the task service (`[task]` of `config/*.toml`, then `TASK__*`).
use memberflow_runtime::{
    db::DatabaseSettings,
    settings::{Audited, BaseSettings, ServiceSettings},
};
use secrecy::SecretString;
use serde::Deserialize;

/// Everything task can be configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `environment`, `server`, `metrics`, `telemetry`: what every service has.
    #[serde(flatten)]
    pub base: BaseSettings,
    /// What CreateTask does for a member not replicated yet.
    pub consistency: ConsistencySettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub auth: AuthSettings,
    pub token: TokenSettings,
    pub inbox: InboxSettings,
    pub reconcile: ReconcileSettings,
    /// task's relay, which publishes its erasure receipts.
    pub relay: RelaySettings,
}

impl memberflow_outbox::settings::OutboxSettings for Settings {
    fn relay(&self) -> &memberflow_outbox::settings::RelaySettings {
        &self.relay
    }

    fn amqp(&self) -> &memberflow_outbox::settings::ConsumerSettings {
        &self.amqp
    }

    fn leader_options(&self) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        self.database.direct_connect_options()
    }
}

impl ServiceSettings for Settings {
    const SERVICE: &'static str = "task";
    const PORT: u16 = 50052;

    fn audited(&self) -> Audited<'_> {
        Audited::new(&self.base, &self.database, &self.amqp.url, &self.amqp.urls)
            .secret("auth.service_token", &self.auth.service_token)
    }
}

/// The broker connection and the consumer of `member.events`.
pub type AmqpSettings = memberflow_outbox::settings::ConsumerSettings;

pub use memberflow_outbox::settings::RelaySettings;

/// How task reaches auth for read-through.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// auth's gRPC address, e.g. `http://127.0.0.1:50051`.
    pub addr: String,
    /// Sent as `x-service-token`; must equal auth's `token.service_token`.
    pub service_token: SecretString,
    /// Deadline of one GetMember call.
    pub timeout_ms: u64,
    /// Most GetMember calls in flight at once.
    pub concurrency_limit: usize,
    /// `[task.auth.tls]`: TLS to auth (`https://` addr), and the client
    /// certificate for mutual TLS.
    pub tls: memberflow_runtime::tls::ClientTls,
}

impl AuthSettings {
    /// An endpoint for auth at `addr`, with TLS if configured.
    pub fn endpoint(&self) -> anyhow::Result<tonic::transport::Endpoint> {
        self.tls.endpoint("task.auth.tls", &self.addr)
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:50051".into(),
            service_token: SecretString::default(),
            timeout_ms: 500,
            concurrency_limit: 64,
            tls: Default::default(),
        }
    }
}

/// How task verifies access tokens: locally, with public keys only.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// Public keys trusted without asking auth, as SPKI PEM blocks one after
    /// another. Usually empty: task fetches auth's keys (GetPublicKeys).
    pub public_keys: String,
    /// Seconds between fetches of auth's keys; an unknown key id also
    /// fetches them, at most once a second.
    pub refresh_secs: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            public_keys: String::new(),
            refresh_secs: 300,
        }
    }
}

/// What CreateTask does for a member task has not replicated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyMode {
    /// Fetch the member from auth and provision it on the spot.
    ReadThrough,
    /// Answer UNAVAILABLE / USER_NOT_READY with a retry delay.
    NotReady,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsistencySettings {
    pub mode: ConsistencyMode,
    /// How long a call that needs a newer replica than this instance holds
    /// waits for the consumer to bring it, before the mode applies.
    pub wait_ms: u64,
    /// Bounds of the RetryInfo delay sent with USER_NOT_READY, which is the
    /// recent replication-lag p99 plus a margin.
    pub retry_after_min_ms: u64,
    pub retry_after_max_ms: u64,
}

impl Default for ConsistencySettings {
    fn default() -> Self {
        Self {
            mode: ConsistencyMode::NotReady,
            wait_ms: 50,
            retry_after_min_ms: 5,
            retry_after_max_ms: 1_000,
        }
    }
}

/// How long the inbox remembers applied event ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct InboxSettings {
    /// Ids older than this are forgotten, so the inbox stops growing.
    /// Redeliveries come within minutes, and a replay older than this is still
    /// a no-op: the replica ignores any version it already holds.
    pub retention_secs: u64,
    /// How often to prune.
    pub prune_interval_secs: u64,
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            retention_secs: 7 * 24 * 3600,
            prune_interval_secs: 3600,
        }
    }
}

/// The periodic comparison of the replica with auth.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ReconcileSettings {
    /// Seconds between passes; 0 turns the reconciler off. A pass that finds
    /// nothing reads each replica row once, through the primary key.
    pub interval_secs: u64,
    /// The reconciler's lease: one instance holds it and runs the passes,
    /// renewing it every third of this; if it stops renewing (paused, cut
    /// off), another instance takes over this long after its last renewal.
    pub lease_ms: u64,
    /// What to do with a replica row auth does not have: `report` (the
    /// default) or `remove` (see `repair::UnknownRows`).
    pub unknown_rows: crate::repair::UnknownRows,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval_secs: 600,
            lease_ms: 6_000,
            unknown_rows: crate::repair::UnknownRows::Report,
        }
    }
}
