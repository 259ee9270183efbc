//! What every service's `Application::build` does first, before its own
//! parts: refuse unsafe settings, bind the listener (port 0 allowed, so tests
//! learn the real port from [`Prepared::addr`]) and prepare a database pool
//! that connects on first use, so a service starts, and reports NOT_SERVING,
//! while PostgreSQL is still down.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tonic_health::server::HealthReporter;

use crate::{
    admin_http::Readiness,
    db::{self, DatabaseSettings},
    metrics::{GrpcMetrics, SharedRegistry},
    settings::ServiceSettings,
    telemetry,
    unit::Units,
};

/// How often health re-checks a service's dependencies.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// A service's audited settings, bound listeners, lazy pool and metrics.
#[derive(Debug)]
pub struct Prepared<S> {
    pub listener: TcpListener,
    /// The gRPC address actually bound.
    pub addr: SocketAddr,
    /// The admin HTTP endpoint (`/metrics`, `/livez`, `/readyz`).
    pub metrics_listener: TcpListener,
    pub metrics_addr: SocketAddr,
    pub settings: S,
    pub pool: PgPool,
    /// This instance's metrics; every part registers its own.
    pub registry: SharedRegistry,
    pub grpc_metrics: GrpcMetrics,
    /// What `/readyz` answers: gRPC health's SERVING.
    pub ready: Readiness,
    /// TLS of the gRPC server, read from `server.tls` at build.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl<S: ServiceSettings> Prepared<S> {
    pub async fn new(settings: S) -> anyhow::Result<Self> {
        settings.audit()?;
        let tls = settings.base().server.tls.load(S::SERVICE)?;
        let key = |k: &str| format!("{}.{k}", S::SERVICE);
        let listener = bind(&key("server.addr"), &settings.base().server.addr).await?;
        let addr = listener.local_addr()?;
        let metrics_listener = bind(&key("metrics.addr"), &settings.base().metrics.addr).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        let registry = crate::metrics::registry();
        let pool = settings
            .database()
            .lazy_pool(&db::PoolGuard::register(&registry))?;
        let grpc_metrics = GrpcMetrics::register(&registry);
        Ok(Self {
            listener,
            addr,
            metrics_listener,
            metrics_addr,
            settings,
            pool,
            registry,
            grpc_metrics,
            ready: Readiness::default(),
            tls,
        })
    }
}

/// Binds `addr`; a failure names the address and the config key it came
/// from (`task.metrics.addr`, set as `TASK__METRICS__ADDR`), which the OS
/// error alone does not.
async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {key} {addr}: {e}"))
}

/// A prepared service once its servers exist: the gRPC router (health,
/// reflection and metrics in place, the service's own still to add) and the
/// admin endpoint, already serving.
pub struct Started<S> {
    pub listener: TcpListener,
    pub settings: S,
    pub pool: PgPool,
    /// Runs the service's units of work on that pool; [`run`] drains them
    /// before the pool closes.
    pub units: Units,
    pub registry: SharedRegistry,
    pub ready: Readiness,
    pub health: HealthReporter,
    pub router: tonic::transport::server::Router<crate::grpc::ServerLayers>,
    /// Every task the service spawns (the admin endpoint already; health and
    /// the workers next); [`run`] drains them at shutdown.
    pub tasks: JoinSet<()>,
}

impl<S: ServiceSettings> Prepared<S> {
    /// Builds the gRPC router for `service` and starts the admin endpoint,
    /// which stops with `shutdown`.
    pub async fn start(
        self,
        service: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Started<S>> {
        let limits = &self.settings.base().server.limits;
        let (health, router) =
            crate::grpc::server(service, self.grpc_metrics, limits, self.tls).await?;
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::admin_http::serve(
            self.metrics_listener,
            self.registry.clone(),
            self.ready.clone(),
            shutdown.clone(),
        ));
        let units = Units::new(self.pool.clone(), self.settings.unit_places());
        Ok(Started {
            listener: self.listener,
            settings: self.settings,
            units,
            pool: self.pool,
            registry: self.registry,
            ready: self.ready,
            health,
            router,
            tasks,
        })
    }
}

/// Holds RPCs back until the database is migrated: until then they get
/// UNAVAILABLE rather than failing on a missing table as INTERNAL.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<AtomicBool>,
    environment: crate::secrets::Environment,
    /// The database URL's key, named in a refusal (`auth.database.url`).
    key: String,
}

impl Gate {
    /// A closed gate for a service with `settings`: the environment decides
    /// whether a superuser database role is refused or warned about.
    pub fn for_service<S: ServiceSettings>(settings: &S) -> Self {
        Self {
            open: Arc::default(),
            environment: settings.base().environment,
            key: format!("{}.database.url", S::SERVICE),
        }
    }

    /// The interceptor to put on the service.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let open = self.open.clone();
        move |req| {
            if open.load(Ordering::Acquire) {
                Ok(req)
            } else {
                Err(Status::unavailable(
                    "starting: the database is not reachable or not migrated yet",
                ))
            }
        }
    }

    /// Creates and migrates the database, retrying while it is unreachable
    /// (see [`db::bootstrap`]), then lets RPCs through. `Ok(false)` if
    /// shutdown came first; `Err` if production refuses the database role.
    pub async fn migrate_then_open(
        &self,
        settings: &DatabaseSettings,
        pool: &PgPool,
        migrator: &sqlx::migrate::Migrator,
        shutdown: &CancellationToken,
    ) -> Result<bool, crate::secrets::Refused> {
        let migrated = db::bootstrap(
            settings,
            pool,
            migrator,
            self.environment,
            &self.key,
            shutdown,
        )
        .await?;
        self.open.store(migrated, Ordering::Release);
        Ok(migrated)
    }
}

/// The shared life of a service once its gRPC server is spawned (behind
/// `gate`): migrate the database, open the gate, let `start_workers` spawn
/// the workers (relay, consumer, pruner, health…) into `tasks`; when the
/// server ends, cancel `shutdown` so everything else ends too, wait for every
/// task to finish its in-flight work (a panic in one is returned), wait for
/// every unit of work in flight (a cancelled call's included), and close
/// the pool.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    gate: Gate,
    database: &DatabaseSettings,
    units: &Units,
    migrator: &sqlx::migrate::Migrator,
    shutdown: CancellationToken,
    mut tasks: JoinSet<()>,
    start_workers: impl FnOnce(&mut JoinSet<()>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let pool = units.pool();
    let started = match gate
        .migrate_then_open(database, pool, migrator, &shutdown)
        .await
    {
        Ok(true) => start_workers(&mut tasks),
        Ok(false) => Ok(()),
        Err(refused) => {
            tracing::error!(error.message = %refused, "refusing to start");
            Err(refused.into())
        }
    };
    if started.is_err() {
        shutdown.cancel();
    }
    let served = server.await;
    shutdown.cancel();
    let mut joined = Ok(());
    while let Some(finished) = tasks.join_next().await {
        joined = joined.and(finished);
    }
    units.drain().await;
    joined?;
    started?;
    served??;
    Ok(())
}

/// Reports `service` SERVING while its database answers and `also()` holds,
/// re-checked every [`HEALTH_EVERY`] until `shutdown`.
pub fn spawn_health(
    tasks: &mut JoinSet<()>,
    health: HealthReporter,
    service: &'static str,
    pool: PgPool,
    ready: Readiness,
    shutdown: CancellationToken,
    mut also: impl FnMut() -> bool + Send + 'static,
) {
    tasks.spawn(crate::grpc::report_health(
        health,
        service,
        HEALTH_EVERY,
        ready,
        shutdown,
        move || {
            let pool = pool.clone();
            let others = also();
            async move { others && db::is_alive(&pool).await }
        },
    ));
}

/// What the process runner needs of a service's `Application`: both
/// services implement it, and [`serve`] runs either.
pub trait Service: Sized + Send {
    type Settings: ServiceSettings + Send;

    /// Audits the settings and binds the listeners (port 0 allowed); nothing
    /// talks to PostgreSQL, RabbitMQ or another service yet.
    fn build(settings: Self::Settings) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The audited settings, listeners and pool [`Self::build`] prepared.
    fn prepared(&self) -> &Prepared<Self::Settings>;

    /// Serves until `shutdown`, then finishes in-flight work and returns.
    fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The gRPC address actually bound.
    fn local_addr(&self) -> SocketAddr {
        self.prepared().addr
    }

    /// The admin endpoint's address (`/metrics`, `/livez`, `/readyz`).
    fn metrics_addr(&self) -> SocketAddr {
        self.prepared().metrics_addr
    }
}

/// A service binary's whole `main`: reads `--config DIR` (see
/// [`crate::settings::ConfigArg`]), loads `S`'s settings and [`serve`]s it.
pub async fn main<S: Service>(about: &'static str) -> anyhow::Result<()> {
    use clap::{Args as _, FromArgMatches as _};
    let command = clap::Command::new(S::Settings::SERVICE)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"));
    let matches = crate::settings::ConfigArg::augment_args(command).get_matches();
    let config = crate::settings::ConfigArg::from_arg_matches(&matches)?;
    serve::<S>(S::Settings::load(&config.source()?)?).await
}

/// Runs service `S` as its process does: sets up logs and traces per
/// `telemetry`, builds it, serves until SIGTERM or Ctrl-C, then flushes the
/// spans still buffered. Both binaries and the launcher call this.
pub async fn serve<S: Service>(settings: S::Settings) -> anyhow::Result<()> {
    telemetry::init(telemetry::DEFAULT_FILTER, &settings.base().telemetry);
    let service = S::Settings::SERVICE;
    let app = S::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), metrics = %app.metrics_addr(), service, "listening");
    let shutdown = CancellationToken::new();
    let run = app.run_until_stopped(shutdown.clone());
    tokio::pin!(run);
    let served = tokio::select! {
        served = &mut run => served,
        () = crate::shutdown::os_signal() => {
            shutdown.cancel();
            run.await
        }
    };
    telemetry::flush();
    served
}
