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
        }
    }

    /// Parsed connect options; the URL is never logged.
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(PgConnectOptions::from_str(self.url.expose_secret())?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
    }

    /// A pool that connects on first use, so a service can start (and report
    /// NOT_SERVING) while the database is still down.
    pub fn lazy_pool(&self) -> Result<PgPool, sqlx::Error> {
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_millis(self.acquire_timeout_ms))
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

/// Creates the target database if it does not exist, through the `postgres`
/// maintenance database. Safe when several instances start at once.
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    let name = settings.database_name()?;
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

/// Creates the database if needed and runs `migrator`, retrying with
/// `backoff` while PostgreSQL is unreachable. Returns `false` if `shutdown`
/// came first. Services report NOT_SERVING until this returns `true`.
pub async fn bootstrap(
    settings: &DatabaseSettings,
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
    backoff: crate::retry::Backoff,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut delays = backoff.delays();
    loop {
        let attempt = async {
            ensure_database(settings).await?;
            migrator.run(pool).await?;
            Ok::<_, anyhow::Error>(())
        };
        match attempt.await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(
                error.cause_chain = ?e,
                "database not ready; retrying"
            ),
        }
        let delay = delays.next().unwrap_or(backoff.max());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Whether `e` means "the database is not reachable right now" (retry later)
/// rather than a problem with the query or the data.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // Class 08: connection exception; 57P0x: shutting down, cannot connect now.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}
