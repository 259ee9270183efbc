//! Per-test isolation: unique databases and a unique vhost, removed on drop
//! unless `MEMBERFLOW_NO_CLEANUP` is set.
use std::process::Command;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Base URLs of the local services; override with `TEST_PG_URL` and
/// `TEST_AMQP_HOST` (host:port).
pub fn pg_base() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn amqp_host() -> String {
    std::env::var("TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// One test's private slice of PostgreSQL and RabbitMQ.
pub struct TestEnv {
    pub id: String,
    pub vhost: String,
    databases: Vec<String>,
}

impl TestEnv {
    /// Creates the vhost (with permissions for `guest`). Databases are
    /// created by the services themselves, from [`Self::database_url`].
    pub fn new() -> Self {
        memberflow_runtime::telemetry::init_for_tests();
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("mf-test-{id}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        Self {
            id,
            vhost,
            databases: Vec::new(),
        }
    }

    /// A database URL named after this test and `service` ("auth", "task").
    pub fn database_url(&mut self, service: &str) -> String {
        let name = format!("mf_{service}_{}", self.id);
        if !self.databases.contains(&name) {
            self.databases.push(name.clone());
        }
        format!("{}/{name}", pg_base())
    }

    /// The AMQP URL of this test's vhost, optionally through `host` (a proxy).
    pub fn amqp_url_via(&self, host: &str) -> String {
        format!("amqp://guest:guest@{host}/{}", self.vhost)
    }

    /// The AMQP URL of this test's vhost.
    pub fn amqp_url(&self) -> String {
        self.amqp_url_via(&amqp_host())
    }

    /// The broker address tests can put a proxy in front of.
    pub fn amqp_host(&self) -> String {
        amqp_host()
    }

    /// The PostgreSQL address tests can put a proxy in front of.
    pub fn pg_host(&self) -> String {
        pg_base()
            .rsplit('@')
            .next()
            .unwrap_or("127.0.0.1:5432")
            .to_owned()
    }

    /// A pool on one of this test's databases, for asserting end states.
    /// It connects as the services do (`common::db`: no TLS to loopback),
    /// so the bench's baselines and in-process work run on the same terms:
    /// over sqlx's TLS, large statements are slow (a 100,000-member resync
    /// took 2.9 s, not 0.5 s; see the README's Security section).
    pub async fn pool(&mut self, service: &str) -> PgPool {
        let settings =
            memberflow_runtime::db::DatabaseSettings::with_url(&self.database_url(service));
        PgPool::connect_with(settings.connect_options().expect("test database URL"))
            .await
            .expect("connect to test database")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var_os("MEMBERFLOW_NO_CLEANUP").is_some() {
            eprintln!(
                "kept vhost {} and databases {:?}",
                self.vhost, self.databases
            );
            return;
        }
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let databases = std::mem::take(&mut self.databases);
        // Drop runs inside the test's runtime; use a thread with its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(mut conn) = PgConnection::connect(&format!("{}/postgres", pg_base())).await
                else {
                    return;
                };
                for db in databases {
                    let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl must be on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
