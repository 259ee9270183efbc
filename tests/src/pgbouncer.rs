//! A real PgBouncer in transaction-pooling mode in front of the test
//! PostgreSQL, as production often has one (Debian package `pgbouncer`).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::eventually;

/// A running PgBouncer; stopped and cleaned up on drop.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl PgBouncer {
    /// Starts one forwarding every database to `upstream` (`host:port`) as
    /// user `postgres`, in `pool_mode = transaction`, with one server
    /// connection per database.
    pub async fn start(upstream: &str) -> Self {
        let (host, pg_port) = upstream.rsplit_once(':').expect("host:port");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("mf-pgbouncer-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={pg_port} user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = any\npool_mode = transaction\n\
                 admin_users = postgres\nmax_client_conn = 200\ndefault_pool_size = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            // PgBouncer will not run as root; it drops to postgres, which
            // must be able to write its log and pid file.
            Command::new("chmod").arg("777").arg(&dir).status().unwrap();
        }
        let binary = ["/usr/sbin/pgbouncer", "pgbouncer"]
            .into_iter()
            .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
            .unwrap();
        let mut cmd = Command::new(binary);
        if root {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pgbouncer runs (apt-get install pgbouncer)");
        eventually(
            "PgBouncer listening",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        Self { child, dir, port }
    }

    /// `host:port` to put in a database URL instead of PostgreSQL's.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
