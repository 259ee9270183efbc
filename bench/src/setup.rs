//! How the bench configures the services it starts: the hash costs and relay
//! designs it compares, as `AUTH__*` / `TASK__*` settings.
use memberflow_runtime::db::{DatabaseSettings, ensure_database};
use memberflow_tests::env::TestEnv;
use sqlx::{PgPool, migrate::Migrator};

/// An Argon2id cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HashCost {
    pub(crate) memory_kib: u32,
    pub(crate) iterations: u32,
    pub(crate) parallelism: u32,
}

impl HashCost {
    /// The bench setting: small enough that signup measures the service
    /// (RPC, validation, transaction, relay wake-up), not the hash.
    pub(crate) const BENCH: Self = Self {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// What `config/base.toml` ships with.
    pub(crate) fn production() -> Self {
        let p = auth::settings::PasswordSettings::default();
        Self {
            memory_kib: p.memory_kib,
            iterations: p.iterations,
            parallelism: p.parallelism,
        }
    }

    pub(crate) fn describe(self) -> String {
        format!(
            "Argon2id m={} KiB t={} p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }
}

/// The RSS role of auth processes at the production hash cost.
pub(crate) const PRODUCTION_COST_ROLE: &str = "auth, production hash cost";

/// How auth's outbox relay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayDesign {
    /// The shipped relay: woken on commit and by NOTIFY, batches of 500 with
    /// pipelined confirms.
    Batched,
    /// The design most teams ship: poll every second, one row per publish and
    /// confirm.
    Polling,
}

impl RelayDesign {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Batched => "wake-on-commit relay, batch 500",
            Self::Polling => "polling relay (1 s, batch 1)",
        }
    }
}

/// auth's settings against `env`.
pub(crate) fn auth(
    env: &mut TestEnv,
    cost: HashCost,
    relay: RelayDesign,
) -> Vec<(&'static str, String)> {
    let mut s = vec![
        ("database__url", env.database_url("auth")),
        ("amqp__url", env.amqp_url()),
        ("password__memory_kib", cost.memory_kib.to_string()),
        ("password__iterations", cost.iterations.to_string()),
        ("password__parallelism", cost.parallelism.to_string()),
        // Fail-over is not measured; a second instance may lead soon after.
        ("relay__leader_retry_ms", "100".into()),
    ];
    if relay == RelayDesign::Polling {
        s.extend([
            ("relay__batch_size", "1".into()),
            ("relay__wake_on_commit", "false".into()),
            ("relay__poll_interval_ms", "1000".into()),
        ]);
    }
    s
}

/// auth on its own database with its broker unreachable: the relay sits in
/// back-off, so signups measure auth and PostgreSQL without the relay,
/// RabbitMQ and task sharing the CPUs.
pub(crate) fn auth_alone(env: &mut TestEnv, cost: HashCost) -> Vec<(&'static str, String)> {
    let mut s = auth(env, cost, RelayDesign::Batched);
    for (key, value) in &mut s {
        match *key {
            "database__url" => *value = env.database_url("auth_alone"),
            // Port 1 on loopback: connections are refused at once.
            "amqp__url" => *value = "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            _ => {}
        }
    }
    s
}

/// task's settings against `env`, reading through to `auth_url` if `mode`
/// says so.
pub(crate) fn task(env: &mut TestEnv, mode: &str, auth_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("database__url", env.database_url("task")),
        ("amqp__url", env.amqp_url()),
        ("auth__addr", auth_url.to_owned()),
        ("consistency__mode", mode.to_owned()),
    ]
}

/// `env`'s database for `service`, created and migrated by `migrator`.
pub(crate) async fn migrated(
    env: &mut TestEnv,
    service: &str,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let settings = DatabaseSettings::with_url(&env.database_url(service));
    ensure_database(&settings).await?;
    let db = PgPool::connect_with(settings.connect_options()?).await?;
    migrator.run(&db).await?;
    Ok(db)
}
