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

/// Listens on `channel` until `shutdown`, reconnecting with `backoff`.
/// `on_notify` gets each notification's payload, and `None` after every
/// (re)connect, since notifications may have been missed meanwhile.
pub async fn listen(
    pool: PgPool,
    channel: &str,
    backoff: memberflow_retry::Backoff,
    shutdown: tokio_util::sync::CancellationToken,
    mut on_notify: impl FnMut(Option<&str>),
) {
    let mut retrying = backoff.retrying();
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                retrying.reset();
                on_notify(None);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        n = l.recv() => match n {
                            Ok(n) => on_notify(Some(n.payload())),
                            Err(e) => {
                                tracing::warn!(channel, error.cause_chain = %crate::telemetry::error_chain(&e), "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel, error.cause_chain = %crate::telemetry::error_chain(&e), "cannot LISTEN");
            }
        }
        retrying.wait(&shutdown).await;
    }
}

/// Whether `pool` answers a trivial query within a second (health checks).
pub async fn is_alive(pool: &PgPool) -> bool {
    let ping = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Ok(_))
    )
}

/// Whether a database failure passes by itself, so the work should be
/// retried as it is, or says something about the work (bad data, a bug), so
/// retrying cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Connection trouble, contention, resource limits, a failover: retry.
    Transient,
    /// The statement or its data is wrong: retrying repeats the failure.
    Permanent,
}

/// The one classification of database errors, for both services: the
/// consumer's retry, the relay's and the status an RPC answers.
pub fn classify(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        // A connection cut while it is being set up: with TLS compiled in,
        // sqlx sends an SSLRequest first (sslmode=prefer, the default), and
        // a reset then reads as "unexpected response from SSLRequest".
        // Reconnecting is the cure; the data was never the problem.
        | sqlx::Error::Protocol(_) => Fault::Transient,
        sqlx::Error::Database(d) => d.code().map_or(Fault::Permanent, |c| classify_sqlstate(&c)),
        _ => Fault::Permanent,
    }
}

/// Classifies a PostgreSQL SQLSTATE (see the PostgreSQL manual, appendix A).
pub fn classify_sqlstate(code: &str) -> Fault {
    const TRANSIENT_CLASSES: [&str; 2] = [
        "08", // connection exception
        "53", // insufficient resources: too many connections, disk full, out of memory
    ];
    const TRANSIENT_CODES: [&str; 8] = [
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "55P03", // lock_not_available
        "57014", // query_canceled (statement_timeout, pg_cancel_backend)
        "57P01", // admin_shutdown
        "57P02", // crash_shutdown
        "57P03", // cannot_connect_now
        "25006", // read_only_sql_transaction: a standby, right after a failover
    ];
    if TRANSIENT_CLASSES.iter().any(|c| code.starts_with(c)) || TRANSIENT_CODES.contains(&code) {
        Fault::Transient
    } else {
        Fault::Permanent
    }
}

/// Whether `e` says the database could not be reached at all (no
/// connection could be had or kept: I/O, TLS, a pool timeout, SQLSTATE class
/// 08), as opposed to a fault the database itself reported. The first is
/// this process's link; the second is the database's, which every instance
/// meets alike.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08")),
        _ => false,
    }
}

/// Whether `e` passes by itself (see [`classify`]).
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Fault::Transient
}

/// Rows one prune statement deletes at most, so no prune holds its locks
/// for long.
pub const PRUNE_BATCH: i64 = 10_000;

/// Runs `batch(PRUNE_BATCH)`, one DELETE of at most that many rows that
/// returns how many it removed, until one removes fewer; returns the total.
/// Every background prune (inbox, sessions, ended sessions, erasure
/// records) deletes this way.
pub async fn prune_in_batches<F, Fut>(mut batch: F) -> sqlx::Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = batch(PRUNE_BATCH).await?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Logs what a prune of `what` did: the rows removed at info (nothing when
/// none), a failure at warn. A failed prune is retried at its next run; a
/// late one costs only disk.
pub fn log_prune(what: &str, result: sqlx::Result<u64>) {
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "{what} pruned"),
        Err(e) => tracing::warn!(
            error.cause_chain = %crate::telemetry::error_chain(&e),
            "{what}: prune failed"
        ),
    }
}

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

    #[test]
    fn connection_failures_are_transient() {
        let protocol = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert_eq!(classify(&protocol), Fault::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Fault::Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Fault::Permanent);
    }

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "08000", "08006", "40001", "40P01", "53300", "53100", "53200", "55P03", "57014",
            "57P01", "57P02", "57P03", "25006",
        ] {
            assert_eq!(classify_sqlstate(code), Fault::Transient, "{code}");
        }
        for code in [
            "22001", "22P02", "23505", "23502", "42P01", "42703", "XX000",
        ] {
            assert_eq!(classify_sqlstate(code), Fault::Permanent, "{code}");
        }
    }

    #[test]
    fn only_link_failures_are_unreachable() {
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        assert!(is_unreachable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn transport_errors_are_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
