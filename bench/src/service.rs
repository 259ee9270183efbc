//! The services under measurement run as child processes: the bench binary
//! re-executed as `bench serve auth|task`, configured only through
//! `AUTH__*` / `TASK__*` variables. Separate processes give each service its
//! own address space, so its peak RSS can be read from `/proc`, and keep the
//! bench's own load generation out of the services' runtimes.
use memberflow_runtime::startup::Service as _;
use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::Context as _;
use memberflow_runtime::settings::ServiceSettings as _;
use memberflow_runtime::settings::Source;
use memberflow_runtime::shutdown;
use memberflow_runtime::telemetry;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

/// Which service a child process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Auth,
    Task,
}

impl Service {
    fn arg(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Task => "task",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Self::Auth => "AUTH__",
            Self::Task => "TASK__",
        }
    }

    /// The development secrets, as `(key, value)` without the prefix: the
    /// bench runs its services in `development`. The bench measures
    /// throughput from one address with many clients, so auth's login
    /// throttle is off and its hashing queue holds every client's hash.
    fn bench_env(self) -> Vec<(&'static str, &'static str)> {
        use memberflow_runtime::secrets::{DEV_SERVICE_TOKEN, DEV_SIGNING_KEY};
        match self {
            Self::Auth => vec![
                ("TOKEN__SIGNING_KEY", DEV_SIGNING_KEY),
                ("TOKEN__SERVICE_TOKEN", DEV_SERVICE_TOKEN),
                ("LOGIN_THROTTLE__PER_EMAIL__BURST", "0"),
                ("LOGIN_THROTTLE__PER_PEER__BURST", "0"),
                ("PASSWORD__MAX_QUEUED", "4096"),
            ],
            Self::Task => vec![("AUTH__SERVICE_TOKEN", DEV_SERVICE_TOKEN)],
        }
    }

    fn health_name(self) -> &'static str {
        match self {
            Self::Auth => auth::SERVICE_NAME,
            Self::Task => task::SERVICE_NAME,
        }
    }
}

/// The child side: builds the service from defaults plus the environment,
/// prints its bound address and its metrics address on the first line of
/// stdout (`ADDR METRICS_ADDR`, as the tests' `mf-service` does), and serves until
/// SIGTERM. Logs follow `RUST_LOG`, which the parent sets.
pub(crate) async fn serve(service: &str) -> anyhow::Result<()> {
    telemetry::init_stderr("warn", &Default::default());
    match service {
        "auth" => {
            let app = auth::Application::build(auth::Settings::load(&Source::env_only())?).await?;
            println!("{} {}", app.local_addr(), app.metrics_addr());
            app.run_until_stopped(shutdown::on_os_signal()).await
        }
        "task" => {
            let app = task::Application::build(task::Settings::load(&Source::env_only())?).await?;
            println!("{} {}", app.local_addr(), app.metrics_addr());
            app.run_until_stopped(shutdown::on_os_signal()).await
        }
        other => anyhow::bail!("unknown service {other:?}: expected auth or task"),
    }
}

/// A running service process, SERVING on `addr`.
pub(crate) struct ServiceProcess {
    pub(crate) service: Service,
    pub(crate) addr: SocketAddr,
    /// The admin endpoint: `/metrics`.
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) channel: Channel,
    child: Child,
}

impl ServiceProcess {
    /// Starts `service` with `settings` (keys without the prefix, e.g.
    /// `("relay__batch_size", "1")`) on a port the OS picks, and waits until
    /// it reports SERVING. Inherited `AUTH__*`/`TASK__*` variables are
    /// dropped so runs are reproducible.
    pub(crate) async fn start(
        service: Service,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_logging(service, settings, "warn").await
    }

    /// auth with no broker to reach, ready to take signups: it is not
    /// SERVING (its receipt consumer never attaches, see docs/deletion.md),
    /// so this waits until it answers an RPC (its database migrated).
    pub(crate) async fn start_auth_without_broker(
        settings: &[(&str, String)],
        log: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(Service::Auth, settings, log, false).await
    }

    /// [`Self::start`] with the child's log filter, e.g. `error` for a
    /// process whose warnings are expected.
    pub(crate) async fn start_logging(
        service: Service,
        settings: &[(&str, String)],
        log: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(service, settings, log, true).await
    }

    /// Starts `service`; waits until it is SERVING, or with `serving`
    /// false until its RPCs answer.
    async fn spawn(
        service: Service,
        settings: &[(&str, String)],
        log: &str,
        serving: bool,
    ) -> anyhow::Result<Self> {
        let prefix = service.env_prefix();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", service.arg()]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(prefix) {
                cmd.env_remove(key);
            }
        }
        cmd.env(format!("{prefix}SERVER__ADDR"), "127.0.0.1:0")
            .env(format!("{prefix}METRICS__ADDR"), "127.0.0.1:0")
            .env(format!("{prefix}ENVIRONMENT"), "development")
            .env("RUST_LOG", log);
        for (key, value) in service.bench_env() {
            cmd.env(format!("{prefix}{key}"), value);
        }
        for (key, value) in settings {
            cmd.env(format!("{prefix}{}", key.to_uppercase()), value);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .with_context(|| format!("{} did not start in 30 s", service.arg()))??
            .with_context(|| format!("{} exited before listening", service.arg()))?;
        let (addr, metrics_addr) = first
            .trim()
            .split_once(' ')
            .and_then(|(a, m)| Some((a.parse::<SocketAddr>().ok()?, m.parse::<SocketAddr>().ok()?)))
            .with_context(|| {
                format!("{} printed {first:?}, not its two addresses", service.arg())
            })?;
        let name = service.arg();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        if serving {
            memberflow_tests::apps::wait_serving(channel.clone(), service.health_name()).await;
        } else {
            let auth =
                memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient::new(
                    channel.clone(),
                );
            memberflow_tests::eventually("auth answering", Duration::from_secs(30), || {
                let mut auth = auth.clone();
                async move {
                    auth.get_public_keys(
                        memberflow_contract::proto::auth::v1::GetPublicKeysRequest {},
                    )
                    .await
                    .ok()
                    .map(|_| ())
                }
            })
            .await;
        }
        Ok(Self {
            service,
            addr,
            metrics_addr,
            channel,
            child,
        })
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Peak resident set size so far (`VmHWM`), in MB (10⁶ bytes).
    pub(crate) fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024.0 / 1e6)
    }

    /// Stops gracefully (SIGTERM, as an orchestrator would) and returns the
    /// peak RSS seen just before.
    pub(crate) async fn stop(mut self) -> anyhow::Result<f64> {
        let peak = self.peak_rss_mib().unwrap_or(f64::NAN);
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("service did not stop within 30 s of SIGTERM")??;
        anyhow::ensure!(
            status.success(),
            "{} exited with {status}",
            self.service.arg()
        );
        Ok(peak)
    }
}

/// auth (bench hash cost, the shipped relay) and then task in consistency
/// `mode`, reading through to that auth, both on `env`'s databases and
/// broker; `extra` settings go to both (e.g. `amqp__urls`).
pub(crate) async fn start_system(
    env: &mut memberflow_tests::env::TestEnv,
    mode: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(ServiceProcess, ServiceProcess)> {
    use crate::setup::{self, HashCost, RelayDesign};
    let mut auth_settings = setup::auth(env, HashCost::BENCH, RelayDesign::Batched);
    auth_settings.extend_from_slice(extra);
    let auth = ServiceProcess::start(Service::Auth, &auth_settings).await?;
    let mut task_settings = setup::task(env, mode, &auth.url());
    task_settings.extend_from_slice(extra);
    let task = ServiceProcess::start(Service::Task, &task_settings).await?;
    Ok((auth, task))
}
