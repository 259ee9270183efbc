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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tonic_health::server::HealthReporter;

use crate::{
    admin_http::Readiness,
    db::{self, DatabaseSettings},
    metrics::{GrpcMetrics, SharedRegistry},
    settings::ServiceSettings,
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
        let pool = settings.database().lazy_pool()?;
        let registry = crate::metrics::registry();
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
    pub registry: SharedRegistry,
    pub ready: Readiness,
    pub health: HealthReporter,
    pub router: tonic::transport::server::Router<crate::grpc::ServerLayers>,
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
        tokio::spawn(crate::admin_http::serve(
            self.metrics_listener,
            self.registry.clone(),
            self.ready.clone(),
            shutdown.clone(),
        ));
        Ok(Started {
            listener: self.listener,
            settings: self.settings,
            pool: self.pool,
            registry: self.registry,
            ready: self.ready,
            health,
            router,
        })
    }
}

/// Holds RPCs back until the database is migrated: until then they get
/// UNAVAILABLE rather than failing on a missing table as INTERNAL.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// The interceptor to put on the service.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let open = self.0.clone();
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
    /// (see [`db::bootstrap`]), then lets RPCs through. `false` if shutdown
    /// came first.
    pub async fn migrate_then_open(
        &self,
        settings: &DatabaseSettings,
        pool: &PgPool,
        migrator: &sqlx::migrate::Migrator,
        shutdown: &CancellationToken,
    ) -> bool {
        let migrated = db::bootstrap(settings, pool, migrator, shutdown).await;
        self.0.store(migrated, Ordering::Release);
        migrated
    }
}

/// The shared life of a service once its gRPC server is spawned (behind
/// `gate`): migrate the database, open the gate, start the workers
/// `start_workers` returns (relay, consumer, pruner, health…); when the
/// server ends, cancel `shutdown` so everything else ends too, wait for the
/// workers to finish their in-flight work, and close the pool.
pub async fn run(
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    gate: Gate,
    database: &DatabaseSettings,
    pool: PgPool,
    migrator: &sqlx::migrate::Migrator,
    shutdown: CancellationToken,
    start_workers: impl FnOnce() -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>>,
) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    if gate
        .migrate_then_open(database, &pool, migrator, &shutdown)
        .await
    {
        workers = start_workers()?;
    }
    let served = server.await;
    shutdown.cancel();
    for worker in workers {
        worker.await?;
    }
    pool.close().await;
    served??;
    Ok(())
}

/// Reports `service` SERVING while its database answers and `also()` holds,
/// re-checked every [`HEALTH_EVERY`] until `shutdown`.
pub fn spawn_health(
    health: HealthReporter,
    service: &'static str,
    pool: PgPool,
    ready: Readiness,
    shutdown: CancellationToken,
    mut also: impl FnMut() -> bool + Send + 'static,
) {
    tokio::spawn(crate::grpc::report_health(
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

/// Gives a service's `Application` (which keeps its [`Prepared`] in a field
/// named `prepared`) `local_addr()` and `metrics_addr()`, and defines the
/// crate's `pub async fn serve(settings)`: what its binary and the launcher
/// run. `serve` sets up logs and traces per `settings.base.telemetry`, builds
/// the `Application`, serves until SIGTERM or Ctrl-C, then flushes the spans
/// still buffered.
#[macro_export]
macro_rules! service_main {
    ($app:ty, $settings:ty, $name:literal) => {
        impl $app {
            /// The gRPC address actually bound.
            pub fn local_addr(&self) -> std::net::SocketAddr {
                self.prepared.addr
            }

            /// The admin endpoint's address (`/metrics`, `/livez`, `/readyz`).
            pub fn metrics_addr(&self) -> std::net::SocketAddr {
                self.prepared.metrics_addr
            }
        }

        /// Runs this service as its process does (see
        /// `memberflow_common::service_main!`).
        pub async fn serve(settings: $settings) -> anyhow::Result<()> {
            $crate::telemetry::init($crate::telemetry::DEFAULT_FILTER, &settings.base.telemetry);
            let app = <$app>::build(settings).await?;
            tracing::info!(
                addr = %app.local_addr(),
                metrics = %app.metrics_addr(),
                concat!($name, " listening")
            );
            let served = app
                .run_until_stopped($crate::shutdown::on_os_signal())
                .await;
            $crate::telemetry::flush();
            served
        }
    };
}
