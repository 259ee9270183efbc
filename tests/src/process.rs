//! Services as child processes, for the faults a thread cannot fake: a
//! paused process (SIGSTOP) keeps its TCP sessions open, and its kernel
//! answers keepalives, while nothing in it runs. The child is the tests
//! crate's `mf-service` binary (pass `env!("CARGO_BIN_EXE_mf-service")`,
//! which cargo builds before the suites), running the same `Application`
//! the real binaries do, configured by environment variables only. Killed
//! on drop; its log is printed if the test failed.
use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use memberflow_runtime::secrets::{DEV_SERVICE_TOKEN, DEV_SIGNING_KEY};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::{apps::TEST_ARGON2_MEMORY_KIB, env::TestEnv};

/// Debian's libfaketime (package `faketime`), thread-safe build: preloaded
/// into a service to move its wall clock (see
/// [`ServiceProcess::start_skewed`]).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A running service process, SERVING on `addr`.
pub struct ServiceProcess {
    pub service: &'static str,
    pub addr: SocketAddr,
    /// The admin endpoint: `/metrics`, `/livez`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub channel: Channel,
    child: Child,
    log: PathBuf,
}

/// The variables of an auth instance on `env`, as the in-process suites
/// configure one (`apps::auth_settings`), keys without the `AUTH__` prefix.
pub fn auth_vars(env: &mut TestEnv) -> Vec<(String, String)> {
    vars(&[
        ("TOKEN__SIGNING_KEY", DEV_SIGNING_KEY.to_owned()),
        ("TOKEN__SERVICE_TOKEN", DEV_SERVICE_TOKEN.to_owned()),
        ("DATABASE__URL", env.database_url("auth")),
        ("AMQP__URL", env.amqp_url()),
        ("PASSWORD__MEMORY_KIB", TEST_ARGON2_MEMORY_KIB.to_string()),
        ("PASSWORD__ITERATIONS", "1".into()),
        ("LOGIN_THROTTLE__PER_EMAIL__BURST", "0".into()),
        ("LOGIN_THROTTLE__PER_PEER__BURST", "0".into()),
    ])
}

/// The variables of a task instance on `env` reading through to
/// `auth_addr`, keys without the `TASK__` prefix.
pub fn task_vars(env: &mut TestEnv, auth_addr: &str) -> Vec<(String, String)> {
    vars(&[
        ("AUTH__SERVICE_TOKEN", DEV_SERVICE_TOKEN.to_owned()),
        ("AUTH__ADDR", auth_addr.to_owned()),
        (
            "TOKEN__PUBLIC_KEYS",
            crate::apps::dev_signer().public_key().to_pem(),
        ),
        ("DATABASE__URL", env.database_url("task")),
        ("AMQP__URL", env.amqp_url()),
    ])
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The tests crate's `mf-service` binary, which cargo builds before it runs
/// the suites: beside the directory of the running test binary
/// (`target/<profile>/deps/`).
pub fn service_exe() -> String {
    let me = std::env::current_exe().expect("the test binary's path");
    let dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let exe = dir.join("mf-service");
    assert!(
        exe.exists(),
        "{exe:?} is missing: run the suites with cargo test -p memberflow-tests"
    );
    exe.to_string_lossy().into_owned()
}

impl ServiceProcess {
    /// Starts `service` ("auth" or "task") from the `mf-service` binary at
    /// `exe` with `vars` (keys without the prefix; later keys win), on ports
    /// the OS picks, in `development`, and waits until it is SERVING.
    /// Inherited `AUTH__*` / `TASK__*` variables are dropped.
    pub async fn start(exe: &str, service: &'static str, vars: &[(String, String)]) -> Self {
        Self::start_skewed(exe, service, vars, None).await
    }

    /// [`Self::start`], with the process's wall clock moved `skew_secs`
    /// seconds (forward if positive) by Debian's libfaketime (preloaded, as
    /// `faketime` does): what it reads from `SystemTime` moves, its monotonic
    /// clock (`Instant`, tokio's timers) does not, nor does PostgreSQL's
    /// `now()`. `None` starts it as [`Self::start`] does.
    pub async fn start_skewed(
        exe: &str,
        service: &'static str,
        vars: &[(String, String)],
        skew_secs: Option<i64>,
    ) -> Self {
        Self::try_start_skewed(exe, service, vars, skew_secs)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start_skewed`], with an error rather than a panic when the
    /// process exits before it listens: a restart on a fixed address can
    /// find the port taken for a moment (as a client socket's ephemeral
    /// port), and the caller may try again.
    pub async fn try_start_skewed(
        exe: &str,
        service: &'static str,
        vars: &[(String, String)],
        skew_secs: Option<i64>,
    ) -> Result<Self, String> {
        Self::launch(exe, service, vars, skew_secs, &[]).await
    }

    /// [`Self::start`], with `env` set as is (not prefixed): the test
    /// binary's own switches, such as `MF_TEST_WORKER`.
    pub async fn start_with_env(
        exe: &str,
        service: &'static str,
        vars: &[(String, String)],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(exe, service, vars, None, env)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn launch(
        exe: &str,
        service: &'static str,
        vars: &[(String, String)],
        skew_secs: Option<i64>,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let prefix = format!("{}__", service.to_ascii_uppercase());
        let log = std::env::temp_dir().join(format!(
            "mf-{service}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = Command::new(exe);
        if let Some(secs) = skew_secs {
            assert!(
                std::path::Path::new(LIBFAKETIME).exists(),
                "{LIBFAKETIME} is missing: install Debian's faketime (scripts/install-tools tests)"
            );
            // What `faketime -m -f '+Ns' CMD` sets, without its wrapper
            // process: the wrapper forks, so killing it would orphan the
            // service, which keeps its port.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", format!("{secs:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.arg(service);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(&prefix) {
                cmd.env_remove(key);
            }
        }
        cmd.env(format!("{prefix}SERVER__ADDR"), "127.0.0.1:0")
            .env(format!("{prefix}METRICS__ADDR"), "127.0.0.1:0")
            .env(format!("{prefix}ENVIRONMENT"), "development")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (key, value) in vars {
            cmd.env(format!("{prefix}{key}"), value);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("child log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{service} did not start within 30 s; see {log:?}"))
            .expect("child stdout");
        let Some(first) = first else {
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            let why = why.lines().find(|l| l.starts_with("Error:")).unwrap_or("");
            return Err(format!(
                "{service} exited before listening ({why}); see {log:?}"
            ));
        };
        let (addr, metrics_addr) = first
            .split_once(' ')
            .and_then(|(a, m)| Some((a.parse().ok()?, m.parse().ok()?)))
            .unwrap_or_else(|| panic!("{service} printed {first:?}, not its addresses"));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the child");
        let health = match service {
            "auth" => auth::SERVICE_NAME,
            _ => task::SERVICE_NAME,
        };
        crate::apps::wait_serving(channel.clone(), health).await;
        Ok(Self {
            service,
            addr,
            metrics_addr,
            channel,
            child,
            log,
        })
    }

    /// Kills the process (SIGKILL) and waits until it has exited, so that
    /// its ports are free for a restart at once.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Everything the process has logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://addr`, for task's `auth.addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Pauses the process (SIGSTOP): nothing in it runs, its sockets stay
    /// open, and its kernel still answers TCP.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the child"))
    }

    /// Sends the process signal `name` (`USR1`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the child runs");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// The sum of the samples of metric `name` (every label set), or `None`
    /// when the endpoint does not answer within a second (a paused process)
    /// or has no such metric.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let get = crate::http::get(self.metrics_addr, "/metrics");
        let (_, body) = tokio::time::timeout(Duration::from_secs(1), get)
            .await
            .ok()?
            .ok()?;
        sum_samples(&body, name)
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition.
pub fn sum_samples(body: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse().ok())?
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- last lines of {} ({:?}) ---", self.service, self.log);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_summed_over_label_sets_by_exact_name() {
        let body =
            "# TYPE a counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3\na_total_other 9\nb 1\n";
        assert_eq!(super::sum_samples(body, "a_total"), Some(5.0));
        assert_eq!(super::sum_samples(body, "b"), Some(1.0));
        assert_eq!(super::sum_samples(body, "c"), None);
    }
}
