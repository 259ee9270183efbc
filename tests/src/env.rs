//! Per-test isolation: unique databases and a unique vhost, removed on drop
//! unless `MEMBERFLOW_NO_CLEANUP` is set; and, for least-privilege tests,
//! unique broker users and database roles ([`TestEnv::least_privilege`]),
//! removed with them.
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
    /// Set by [`Self::least_privilege`]: the services connect as their own
    /// users and roles, created for this test only.
    principals: Option<Principals>,
    /// Roles a test created itself ([`Self::drop_role_at_end`]).
    extra_roles: Vec<String>,
}

/// The broker users and database roles of one least-privilege test. Broker
/// users are cluster-wide (not per vhost) and roles are cluster-wide in
/// PostgreSQL, so both carry the test's id.
struct Principals {
    password: String,
    /// Broker users created so far, deleted on drop.
    users: Vec<String>,
    /// Database roles created so far, dropped after the databases.
    roles: Vec<String>,
}

/// The broker user of `principal` ("auth", "task", "admin") in the test
/// `id`; the docs' and compose's users are `memberflow-<principal>`.
pub fn broker_user(principal: &str, id: &str) -> String {
    format!("memberflow-{principal}-{id}")
}

/// The database role of `service` in the test `id`; the docs' and
/// compose's roles are `memberflow_<service>`.
pub fn database_role(service: &str, id: &str) -> String {
    format!("memberflow_{service}_{id}")
}

/// The `rabbitmqctl` argument lists that give `user` exactly `rights` on
/// `vhost`: the lines docs/security.md prints, run by the tests.
pub fn rabbitmqctl_grants(
    rights: &memberflow_contract::topology::rights::Rights,
    vhost: &str,
    user: &str,
) -> Vec<Vec<String>> {
    let mut lines = vec![
        ["set_permissions", "-p", vhost, user]
            .into_iter()
            .chain([rights.configure, rights.write, rights.read])
            .map(str::to_owned)
            .collect(),
    ];
    for topic in rights.topics {
        lines.push(
            [
                "set_topic_permissions",
                "-p",
                vhost,
                user,
                topic.exchange,
                topic.write,
                topic.read,
            ]
            .map(str::to_owned)
            .to_vec(),
        );
    }
    lines
}

/// The SQL, run as a superuser, that gives `service` a role `role` owning
/// its database `database`, which no one else may connect to: the lines
/// docs/security.md prints, run by the tests. The role has no CREATEDB:
/// the database exists before the service starts.
pub fn role_sql(role: &str, password: &str, database: &str) -> Vec<String> {
    let (r, d) = (
        memberflow_runtime::db::quote_ident(role),
        memberflow_runtime::db::quote_ident(database),
    );
    let password = password.replace('\'', "''");
    vec![
        format!("CREATE ROLE {r} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE"),
        format!("CREATE DATABASE {d} OWNER {r}"),
        format!("REVOKE CONNECT, TEMPORARY ON DATABASE {d} FROM PUBLIC"),
    ]
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
            principals: None,
            extra_roles: Vec::new(),
        }
    }

    /// Least privilege, as docs/security.md prescribes: a broker user per
    /// service and one for the operator (`memberflow-admin`), each with
    /// exactly its `topology::rights` on this vhost only, and a database
    /// role per service owning its database, which `PUBLIC` may not connect
    /// to. From now on [`Self::database_url`] and [`Self::amqp_url_as`]
    /// name them; [`Self::pool`] and [`Self::amqp_url`] stay the
    /// superuser's and guest's, for arranging and asserting.
    ///
    /// This PostgreSQL trusts every local connection, so passwords are not
    /// checked here; the roles' rights and the CONNECT revoke are.
    pub async fn least_privilege(&mut self) {
        let password = Uuid::new_v4().simple().to_string();
        self.principals = Some(Principals {
            password: password.clone(),
            users: Vec::new(),
            roles: Vec::new(),
        });
        for rights in memberflow_contract::topology::rights::ALL {
            let user = broker_user(rights.principal, &self.id);
            rabbitmqctl(&["add_user", &user, &password]);
            self.principals_mut().users.push(user.clone());
            for line in rabbitmqctl_grants(&rights, &self.vhost, &user) {
                rabbitmqctl(&line.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("connect to PostgreSQL as its superuser");
        for service in ["auth", "task"] {
            let role = database_role(service, &self.id);
            let database = self.database_name(service);
            for (i, sql) in role_sql(&role, &password, &database)
                .into_iter()
                .enumerate()
            {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                if i == 0 {
                    self.principals_mut().roles.push(role.clone());
                }
            }
        }
        let _ = admin.close().await;
    }

    /// Drops `role` after this test's databases, for a test that creates
    /// a role by other means (the docs' SQL for an existing deployment).
    pub fn drop_role_at_end(&mut self, role: &str) {
        self.extra_roles.push(role.to_owned());
    }

    fn principals_mut(&mut self) -> &mut Principals {
        self.principals
            .as_mut()
            .expect("least_privilege sets them first")
    }

    /// The database named after this test and `service`, dropped at the end.
    fn database_name(&mut self, service: &str) -> String {
        let name = format!("mf_{service}_{}", self.id);
        if !self.databases.contains(&name) {
            self.databases.push(name.clone());
        }
        name
    }

    /// The URL `service` ("auth", "task") connects with: to a database named
    /// after this test and the service, as its own role after
    /// [`Self::least_privilege`], else as the superuser.
    pub fn database_url(&mut self, service: &str) -> String {
        let name = self.database_name(service);
        match &self.principals {
            Some(p) => format!(
                "postgres://{}:{}@{}/{name}",
                database_role(service, &self.id),
                p.password,
                self.pg_host()
            ),
            None => format!("{}/{name}", pg_base()),
        }
    }

    /// The AMQP URL of this test's vhost as `principal` ("auth", "task",
    /// "admin") after [`Self::least_privilege`], else as guest.
    pub fn amqp_url_as(&self, principal: &str) -> String {
        match &self.principals {
            Some(p) => format!(
                "amqp://{}:{}@{}/{}",
                broker_user(principal, &self.id),
                p.password,
                amqp_host(),
                self.vhost
            ),
            None => self.amqp_url(),
        }
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
    /// It connects as the services do (`memberflow_runtime::db`: no TLS to loopback),
    /// so the bench's baselines and in-process work run on the same terms:
    /// over sqlx's TLS, large statements are slow (a 100,000-member resync
    /// took 2.9 s, not 0.5 s; see the README's Security section).
    /// Always as the superuser, whatever the services connect as.
    pub async fn pool(&mut self, service: &str) -> PgPool {
        let url = format!("{}/{}", pg_base(), self.database_name(service));
        let settings = memberflow_runtime::db::DatabaseSettings::with_url(&url);
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
            if let Some(p) = &self.principals {
                eprintln!("kept broker users {:?} and roles {:?}", p.users, p.roles);
            }
            return;
        }
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let principals = self.principals.take();
        let (users, mut roles) = principals.map(|p| (p.users, p.roles)).unwrap_or_default();
        roles.append(&mut self.extra_roles);
        for user in users {
            // Not asserted: a panic inside a panicking test's drop aborts.
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", &user])
                .output();
        }
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
                // After the databases they own.
                for role in roles {
                    let sql = format!("DROP ROLE IF EXISTS \"{role}\"");
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
