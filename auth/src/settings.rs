//! Typed settings of the auth service (`[auth]` of `config/*.toml`, then `AUTH__*`).
use memberflow_contract::token::{PublicKey, Signer};
use memberflow_runtime::{
    db::DatabaseSettings,
    settings::{Audited, BaseSettings, ServiceSettings},
};
use secrecy::SecretString;
use serde::Deserialize;

/// Everything auth can be configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `environment`, `server`, `metrics`, `telemetry`: what every service has.
    #[serde(flatten)]
    pub base: BaseSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub password: PasswordSettings,
    pub token: TokenSettings,
    pub relay: RelaySettings,
    pub login_throttle: LoginThrottleSettings,
    pub erasure: ErasureSettings,
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
    const SERVICE: &'static str = "auth";
    const PORT: u16 = 50051;

    fn audited(&self) -> Audited<'_> {
        Audited::new(&self.base, &self.database, &self.amqp.url, &self.amqp.urls)
            .secret("token.signing_key", &self.token.signing_key)
            .secret("token.service_token", &self.token.service_token)
    }
}

/// auth's broker connection and its consumer of erasure receipts: the keys
/// task's `amqp` has.
pub type AmqpSettings = memberflow_outbox::settings::ConsumerSettings;

pub use memberflow_outbox::settings::RelaySettings;

/// Login (and ChangePassword) attempts allowed, per account and per peer
/// address. Every attempt whose password is checked counts, right or wrong:
/// each costs a password hash; one refused for the server's load counts nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LoginThrottleSettings {
    /// Per email address (ChangePassword: per member).
    pub per_email: RateLimit,
    /// Per client IP address. Behind a proxy every client shares its
    /// address: raise it or set `burst = 0` there.
    pub per_peer: RateLimit,
}

impl Default for LoginThrottleSettings {
    fn default() -> Self {
        Self {
            // 5 at once, then one every 12 s (5 a minute).
            per_email: RateLimit {
                burst: 5,
                refill_ms: 12_000,
            },
            // 100 at once, then 10 a second.
            per_peer: RateLimit {
                burst: 100,
                refill_ms: 100,
            },
        }
    }
}

/// A token bucket: `burst` attempts at once, one more every `refill_ms`.
/// `burst = 0` turns the limit off.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(default)]
pub struct RateLimit {
    pub burst: u32,
    pub refill_ms: u64,
}

/// Argon2id cost. The defaults follow OWASP's minimum (19 MiB, 2 passes).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PasswordSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU. Each takes `memory_kib`
    /// while it runs, so this bounds the memory signups and logins can take,
    /// and more than the CPUs only makes every hash slower.
    pub max_concurrent: usize,
    /// Hashes allowed to wait for a thread; past it, SignUp, Login and
    /// ChangePassword answer RESOURCE_EXHAUSTED at once.
    pub max_queued: usize,
}

impl Default for PasswordSettings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
            max_queued: 64,
        }
    }
}

/// Access tokens: EdDSA (Ed25519) JWTs; see the README's key rotation steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// The Ed25519 private key that signs access tokens, PKCS#8 PEM
    /// (`openssl genpkey -algorithm ed25519`, or `memberflow-admin keygen`).
    /// Only auth holds it: verifiers get public keys.
    pub signing_key: SecretString,
    /// Other public keys auth accepts and publishes through GetPublicKeys, as
    /// SPKI PEM blocks one after another: the previous signing key until its
    /// tokens have expired, or the next one before the switch.
    pub public_keys: String,
    /// Lifetime of an access token.
    pub ttl_secs: i64,
    /// Credential trusted services present in `x-service-token` to call
    /// GetMember, ListMembers and DigestMembers.
    pub service_token: SecretString,
    /// A session (and its refresh tokens) ends this long after its login,
    /// however often it is refreshed.
    pub refresh_lifetime_days: u32,
    /// A session ends when it is not refreshed for this long.
    pub refresh_idle_days: u32,
    /// Within this after a rotation, presenting the rotated refresh token
    /// again answers ABORTED and ends nothing (a client's network retry);
    /// after it, it is reuse and ends the session. 0: always reuse.
    pub refresh_reuse_grace_ms: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            signing_key: SecretString::default(),
            public_keys: String::new(),
            ttl_secs: 900,
            service_token: SecretString::default(),
            refresh_lifetime_days: 30,
            refresh_idle_days: 7,
            refresh_reuse_grace_ms: 0,
        }
    }
}

impl TokenSettings {
    /// The session lifetimes these settings give.
    pub fn lifetimes(&self) -> crate::sessions::Lifetimes {
        crate::sessions::Lifetimes {
            absolute: chrono::Duration::days(i64::from(self.refresh_lifetime_days)),
            idle: chrono::Duration::days(i64::from(self.refresh_idle_days)),
            reuse_grace: chrono::Duration::milliseconds(
                i64::try_from(self.refresh_reuse_grace_ms).unwrap_or(i64::MAX),
            ),
        }
    }

    /// The signer, and every key auth accepts (the signer's first).
    pub fn keys(&self) -> anyhow::Result<(Signer, Vec<PublicKey>)> {
        use secrecy::ExposeSecret;
        let signer = Signer::from_pem(self.signing_key.expose_secret())
            .map_err(|e| anyhow::anyhow!("auth.token.signing_key: {e}"))?;
        let mut keys = vec![signer.public_key().clone()];
        for key in PublicKey::parse_bundle(&self.public_keys)
            .map_err(|e| anyhow::anyhow!("auth.token.public_keys: {e}"))?
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok((signer, keys))
    }
}

/// The erasure saga (docs/deletion.md): who must confirm each deletion, by
/// when, and how long the record is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ErasureSettings {
    /// The services that hold a copy of member data and must each send a
    /// `member.erased` receipt before an erasure is complete. Empty: a
    /// deletion is complete at once. From the environment, comma-separated
    /// (`AUTH__ERASURE__EXPECTED_SERVICES=task,billing`).
    #[serde(deserialize_with = "memberflow_runtime::deserialize_list")]
    pub expected_services: Vec<String>,
    /// An erasure still pending this long after its request is overdue:
    /// `memberflow_erasures_overdue` counts it and `ErasurePending` fires.
    pub deadline_secs: u64,
    /// Completed erasure records (ids and times, no personal data) are kept
    /// this long as the audit trail, then pruned.
    pub record_retention_days: u32,
}

impl Default for ErasureSettings {
    fn default() -> Self {
        Self {
            expected_services: vec![memberflow_contract::topology::TASK_SERVICE.to_owned()],
            deadline_secs: 3_600,
            record_retention_days: 365,
        }
    }
}
