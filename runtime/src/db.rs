//! PostgreSQL bootstrap shared by both services: each owns its own database,
//! creates it when missing, then runs its own migrations.
use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{
    ConnectOptions, Connection, PgConnection,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

/// `[database]` settings of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/dbname`; a secret because it may
    /// carry a password.
    pub url: SecretString,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// How long an RPC waits for a pooled connection before failing.
    pub acquire_timeout_ms: u64,
    /// A direct connection to PostgreSQL for what needs a real session
    /// (auth's relay: its session advisory lock and LISTEN), when `url` goes
    /// through a transaction-pooling PgBouncer. Unset: `url` is used.
    pub direct_url: Option<SecretString>,
}

impl Default for DatabaseSettings {
    /// Each service overrides the URL with its own database (see
    /// `settings::Source::load`).
    fn default() -> Self {
        Self::with_url("postgres://postgres@127.0.0.1:5432/postgres")
    }
}

impl DatabaseSettings {
    /// Settings for `url` with the default pool shape.
    pub fn with_url(url: &str) -> Self {
        Self {
            url: SecretString::from(url.to_owned()),
            max_connections: 10,
            acquire_timeout_ms: 3_000,
            direct_url: None,
        }
    }

    /// Parsed connect options; the URL is never logged.
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        parse(&self.url)
    }

    /// The URLs the start-up audit checks, by key below the service's table.
    pub fn audited_urls(&self) -> Vec<(&'static str, &SecretString)> {
        std::iter::once(("database.url", &self.url))
            .chain(self.direct_url.iter().map(|u| ("database.direct_url", u)))
            .collect()
    }

    /// Options for a session of its own: `direct_url` if set, else `url`.
    pub fn direct_connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        match &self.direct_url {
            Some(direct) => parse(direct),
            None => self.connect_options(),
        }
    }

    /// A pool that connects on first use, so a service can start (and report
    /// NOT_SERVING) while the database is still down. `guard` checks every
    /// connection before it is handed out (see [`PoolGuard`]).
    pub fn lazy_pool(&self, guard: &PoolGuard) -> Result<PgPool, sqlx::Error> {
        let guard = guard.clone();
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_millis(self.acquire_timeout_ms))
            // The guard's query replaces sqlx's ping before acquire: the
            // same one round trip, which now also tells the session's state.
            .test_before_acquire(false)
            .before_acquire(move |conn, _| {
                let guard = guard.clone();
                Box::pin(async move { guard.admit(conn).await })
            })
            .connect_lazy_with(self.connect_options()?))
    }

    /// The database name, for logs and bootstrap.
    pub fn database_name(&self) -> Result<String, sqlx::Error> {
        Ok(self
            .connect_options()?
            .get_database()
            .unwrap_or("postgres")
            .to_owned())
    }
}

/// Defence in depth against a leaked transaction: a pooled connection whose
/// session is still inside a transaction is closed, never handed to the
/// next caller. On such a connection the next caller's autocommit statement
/// is acknowledged and not committed (sqlx 0.9.0 left one behind when a
/// BEGIN was cancelled; see `docs/operating.md`). Units of work keep
/// cancels away from database work; this catches what a future bug would
/// leak anyway, and counts it (`db_pool_leaked_transactions_total`; the
/// alert `LeakedTransaction` fires on any).
///
/// The check is one simple query on acquire, `now() <> statement_timestamp()`:
/// in autocommit a statement's transaction starts with it, so the two are
/// equal; inside a transaction block `now()` is when it began. It takes the
/// place of sqlx's own ping before acquire, so it costs no extra round trip.
#[derive(Debug, Clone, Default)]
pub struct PoolGuard {
    caught: prometheus_client::metrics::counter::Counter,
}

impl PoolGuard {
    /// A guard counting into `registry`.
    pub fn register(registry: &crate::metrics::SharedRegistry) -> Self {
        let guard = Self::default();
        registry
            .lock()
            .expect("metrics registry poisoned")
            .register(
                "db_pool_leaked_transactions",
                "Pooled connections closed because their session was still inside a transaction",
                guard.caught.clone(),
            );
        guard
    }

    /// Connections closed so far.
    pub fn caught(&self) -> u64 {
        self.caught.get()
    }

    /// `Ok(true)` if `conn` may be handed out; `Ok(false)` (sqlx closes it)
    /// if its session is inside a transaction; `Err` if it does not answer
    /// (sqlx drops it, as after a failed ping).
    async fn admit(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        use sqlx::Row as _;
        let in_transaction: bool = sqlx::raw_sql(IN_TRANSACTION_SQL)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if in_transaction {
            self.caught.inc();
            tracing::error!(
                "a pooled connection was still inside a transaction; closed it instead of \
                 handing it out (a cancelled unit of work or a missing rollback)"
            );
        }
        Ok(!in_transaction)
    }
}

/// See [`PoolGuard`]. The simple protocol, so the statement is its own
/// transaction's first: prepared (extended protocol), `now()` and
/// `statement_timestamp()` differ in autocommit too, and the guard would
/// close every connection (tried: 0.03× the rate).
const IN_TRANSACTION_SQL: &str = "SELECT now() <> statement_timestamp()";

/// Connect options from a URL, with statements logged at TRACE and slow
/// ones (over a second) at WARN.
///
/// TLS follows libpq: `sslmode` in the URL (or `PGSSLMODE`), else `prefer`.
/// One exception: to a loopback host with no `sslmode` given, TLS is off.
/// It protects nothing there, and measured here it cost about 0.5 ms on
/// every RPC (ListTasks p50 1.49 → 0.96 ms without it).
fn parse(url: &SecretString) -> Result<PgConnectOptions, sqlx::Error> {
    let raw = url.expose_secret();
    let options = PgConnectOptions::from_str(raw)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(if tls_pointless(raw, &options) {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        options
    })
}

/// No `sslmode` chosen (URL or `PGSSLMODE`) and the server is on loopback.
fn tls_pointless(url: &str, options: &PgConnectOptions) -> bool {
    let chosen = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !chosen && loopback
}

/// Creates the target database if it does not exist, through the `postgres`
/// maintenance database. Safe when several instances start at once.
///
/// A database that exists is found by connecting to it, so a service whose
/// role may connect only to its own database (production: the database
/// exists, the role has no CREATEDB) never needs the maintenance database.
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    let name = settings.database_name()?;
    // Any failure (3D000 invalid_catalog_name; a pooler's own answer for a
    // missing database) falls through to the maintenance database, which
    // reports what is really wrong.
    if let Ok(conn) = PgConnection::connect_with(&settings.connect_options()?).await {
        return conn.close().await;
    }
    let maintenance = settings.connect_options()?.database("postgres");
    let mut conn = PgConnection::connect_with(&maintenance).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance won the race.
            Err(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "42P04" || c == "23505") => {}
            Err(e) => return Err(e),
        }
    }
    conn.close().await
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database if needed, checks the role (see [`superuser`]:
/// refused in production, a warning in development) and runs `migrator`
/// as that role, so the service's role owns what the migrations create.
/// Retries with the default backoff while PostgreSQL is unreachable.
/// `Ok(false)` if `shutdown` came first. Services report NOT_SERVING until
/// this returns `Ok(true)`. `key` names the URL in a refusal
/// (`auth.database.url`).
pub async fn bootstrap(
    settings: &DatabaseSettings,
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
    environment: crate::secrets::Environment,
    key: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<bool, crate::secrets::Refused> {
    let mut retrying = memberflow_retry::Backoff::default().retrying();
    // Named in the warning, since "connection refused" alone names nothing.
    let address = settings
        .connect_options()
        .map(|o| {
            format!(
                "{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    loop {
        let attempt = async {
            ensure_database(settings).await?;
            if let Some(role) = superuser(pool).await? {
                let problem = format!(
                    "connects as the PostgreSQL superuser {role:?}, which passes every grant and \
                     CONNECT revoke; give the service a role of its own (docs/security.md)"
                );
                if let Err(refused) = crate::secrets::Audit::new(environment)
                    .problem(key, &problem)
                    .finish()
                {
                    return Ok(Err(refused));
                }
            }
            migrator.run(pool).await?;
            Ok::<_, anyhow::Error>(Ok(()))
        };
        match attempt.await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(refused)) => return Err(refused),
            Err(e) => tracing::warn!(
                %address,
                error.cause_chain = ?e,
                "database not ready; retrying"
            ),
        }
        if !retrying.wait(shutdown).await {
            return Ok(false);
        }
    }
}

/// The session's role if it is a PostgreSQL superuser. A superuser passes
/// every privilege check, `CONNECT` revokes included, so one service
/// holding it could read the other's database: production refuses it.
pub async fn superuser(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    let (role, is_superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await?;
    Ok(is_superuser.then_some(role))
}

/// The fault classes, LISTEN, health ping and pruning helpers live in
/// `memberflow-infra` (the outbox library uses them too); re-exported here
/// so that the services keep one path.
pub use memberflow_infra::pg::{
    Fault, PRUNE_BATCH, classify, classify_sqlstate, is_alive, is_transient, is_unreachable,
    listen, log_prune, prune_in_batches,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_off_only_for_loopback_without_a_chosen_sslmode() {
        let pointless = |url: &str| tls_pointless(url, &PgConnectOptions::from_str(url).unwrap());
        if std::env::var_os("PGSSLMODE").is_none() {
            assert!(pointless("postgres://postgres@127.0.0.1:5432/auth"));
            assert!(pointless("postgres://postgres@localhost/auth"));
            assert!(!pointless("postgres://app@db.internal:5432/auth"));
        }
        assert!(!pointless(
            "postgres://postgres@127.0.0.1:5432/auth?sslmode=require"
        ));
    }
}
