//! A service's life, the same for every service: what `build` does first
//! ([`Prepared`]: refuse unsafe settings, bind the listeners, port 0
//! allowed, and prepare a pool that connects on first use, so a service
//! starts, and reports NOT_SERVING, while PostgreSQL is still down), then
//! what [`run`] does with the parts a [`Service`] declares: gate, migrate,
//! supervise the named workers, report health, drain.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use memberflow_lifecycle::{Costs, Crew, Exit, Workers};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

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
        crate::metrics::register_start_time(&registry);
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
    pub fn interceptor(&self) -> GateInterceptor {
        GateInterceptor {
            open: self.open.clone(),
        }
    }

    /// Creates the database and applies `migrators` in order, retrying
    /// while it is unreachable (see [`db::bootstrap`]), then lets RPCs
    /// through. `Ok(false)` if shutdown came first; `Err` if production
    /// refuses the database role.
    pub async fn migrate_then_open(
        &self,
        settings: &DatabaseSettings,
        pool: &PgPool,
        migrators: &[&sqlx::migrate::Migrator],
        shutdown: &CancellationToken,
    ) -> Result<bool, crate::secrets::Refused> {
        for migrator in migrators {
            let migrated = db::bootstrap(
                settings,
                pool,
                migrator,
                self.environment,
                &self.key,
                shutdown,
            )
            .await?;
            if !migrated {
                return Ok(false);
            }
        }
        self.open.store(true, Ordering::Release);
        Ok(true)
    }
}

/// Answers UNAVAILABLE until the [`Gate`] it came from opens.
#[derive(Debug, Clone)]
pub struct GateInterceptor {
    open: Arc<AtomicBool>,
}

impl tonic::service::Interceptor for GateInterceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.open.load(Ordering::Acquire) {
            Ok(req)
        } else {
            Err(Status::unavailable(
                "starting: the database is not reachable or not migrated yet",
            ))
        }
    }
}

/// What the runtime has built for a service when the service declares its
/// own parts ([`Service::declare`]).
pub struct Parts<S> {
    pub settings: S,
    pub pool: PgPool,
    /// Runs the service's units of work on that pool; drained before the
    /// pool closes.
    pub units: Units,
    /// This instance's metrics; every part registers its own.
    pub registry: SharedRegistry,
    /// Cancelled when the service stops, for whatever reason; every worker
    /// ends when it is.
    pub shutdown: CancellationToken,
    /// The gRPC router with health, reflection and metrics in place; the
    /// service adds its own service, behind [`Self::gate`].
    pub router: tonic::transport::server::Router<crate::grpc::ServerLayers>,
    /// Holds the service's RPCs back (UNAVAILABLE) until its database is
    /// migrated, rather than failing on a missing table as INTERNAL.
    pub gate: GateInterceptor,
}

/// What a service is, once its parts exist: its gRPC router (its own
/// service added), its named workers, and what its readiness needs beyond
/// the database.
pub struct Declared {
    pub router: tonic::transport::server::Router<crate::grpc::ServerLayers>,
    /// Started once the database is migrated.
    pub workers: Workers,
    /// SERVING needs this to hold too (a consumer attached, say).
    pub ready: Box<dyn FnMut() -> bool + Send>,
}

/// The life of a service, the same for every one: serve the admin endpoint
/// and gRPC (RPCs held at the gate), migrate, open the gate, start the
/// workers and report health; then wait for the first of: `shutdown`, or a
/// worker (the gRPC server included) that ends. A worker that ends while
/// the service runs is a failure: logged with its name and cause, and the
/// service stops as on SIGTERM. Stopping, whatever the cause: health says
/// NOT_SERVING for good, then the servers stop taking calls and every
/// worker and unit of work in flight finishes, within
/// `server.shutdown_grace_ms`; past it, what is left is aborted and named.
/// The error returned names the worker, so `main` exits non-zero and the
/// process supervisor restarts the process; nothing is restarted
/// in-process (see `memberflow_lifecycle::Workers`).
///
/// `extra` workers run beside the service's own (an embedder's, or a
/// test's).
pub async fn run<S: Service>(
    app: S,
    shutdown: CancellationToken,
    extra: Workers,
) -> anyhow::Result<()> {
    let (prepared, own) = app.into_parts();
    let Prepared {
        listener,
        metrics_listener,
        settings,
        pool,
        registry,
        grpc_metrics,
        ready: readiness,
        tls,
        ..
    } = prepared;
    let limits = settings.base().server.limits.clone();
    let database = settings.database().clone();
    let gate = Gate::for_service(&settings);
    let (reporter, router) = crate::grpc::server(S::NAME, grpc_metrics, &limits, tls).await?;
    let health = crate::grpc::Health::new(reporter, S::NAME, readiness.clone());
    // What each worker and the units cost (worker_poll_seconds_total).
    let costs = Costs::default();
    crate::metrics::register_worker_costs(&registry, costs.clone());
    let units = Units::new(pool.clone(), settings.unit_places()).accounted(costs.of("units"));
    let Declared {
        router,
        mut workers,
        ready: mut also,
    } = S::declare(
        own,
        Parts {
            settings,
            pool: pool.clone(),
            units: units.clone(),
            registry: registry.clone(),
            shutdown: shutdown.clone(),
            router,
            gate: gate.interceptor(),
        },
    )?;
    workers.append(extra);
    let check = pool.clone();
    workers.add(
        "health",
        crate::grpc::report_health(health.clone(), HEALTH_EVERY, shutdown.clone(), move || {
            let (pool, others) = (check.clone(), also());
            async move { others && db::is_alive(&pool).await }
        }),
    );

    // The servers stop taking calls only once health has said NOT_SERVING.
    let serving = CancellationToken::new();
    let mut crew = Crew::new(costs);
    let mut servers = Workers::default();
    servers
        .add(
            "admin-http",
            crate::admin_http::serve(metrics_listener, registry, readiness, serving.clone()),
        )
        .add(
            "grpc-server",
            crate::grpc::serve(router, listener, limits.handshake_timeout(), &serving),
        );
    crew.start(servers);

    let migrators = S::migrators();
    let mut failure: Option<anyhow::Error> = None;
    let mut ended_early = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        opened = gate.migrate_then_open(&database, &pool, &migrators, &shutdown) => match opened {
            Ok(true) => crew.start(workers),
            Ok(false) => {}
            Err(refused) => {
                tracing::error!(error.message = %refused, "refusing to start");
                failure = Some(refused.into());
            }
        },
        Some(ended) = crew.next_end() => ended_early = Some(ended),
    }
    if failure.is_none() && ended_early.is_none() {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            Some(ended) = crew.next_end() => ended_early = Some(ended),
        }
    }
    // Health first: balancers stop routing here before anything else is done.
    health.stop().await;
    if let Some(ended) = ended_early {
        failure = Some(worker_failed(ended));
    }
    serving.cancel();
    shutdown.cancel();
    let grace = limits.shutdown_grace();
    let drained = tokio::time::timeout(grace, async {
        while let Some(ended) = crew.next_end().await {
            if !matches!(ended.exit, Exit::Returned) {
                tracing::error!(error.message = %ended, "a worker failed while the service stopped");
                failure.get_or_insert(ended.into());
            }
        }
        units.drain().await;
    })
    .await;
    if drained.is_err() {
        let left = crew.running();
        tracing::error!(
            ?left,
            grace_ms = grace.as_millis() as u64,
            "the drain outlasted server.shutdown_grace_ms; aborting what is left"
        );
        crew.abort_all();
        failure.get_or_insert(anyhow::anyhow!(
            "the drain outlasted server.shutdown_grace_ms ({} ms); aborted {left:?}",
            grace.as_millis()
        ));
    }
    failure.map_or(Ok(()), Err)
}

/// A worker that ended while the service ran: logged with its name and
/// cause, as the reason the service stops.
fn worker_failed(ended: memberflow_lifecycle::WorkerEnded) -> anyhow::Error {
    tracing::error!(
        error.message = %ended,
        "stopping the service: a worker ended while it ran (the process exits non-zero)"
    );
    ended.into()
}

/// A service, declared once: its name, its schemas, how it is built, and
/// its own parts (gRPC service, workers, readiness). [`run`] does the rest,
/// the same for every service; [`serve`] runs one as its process does.
pub trait Service: Sized + Send + 'static {
    type Settings: ServiceSettings + Send + Sync + 'static;
    /// What [`Self::build`] made beside the [`Prepared`] parts (keys,
    /// clients, shared state), handed to [`Self::declare`].
    type Own: Send + 'static;

    /// The fully qualified gRPC service name, as health reports it.
    const NAME: &'static str;

    /// The schemas, applied in order before RPCs are let through and the
    /// workers start (the service's own; a library's beside it).
    fn migrators() -> Vec<&'static sqlx::migrate::Migrator>;

    /// Audits the settings and binds the listeners (port 0 allowed); nothing
    /// talks to PostgreSQL, RabbitMQ or another service yet.
    fn build(settings: Self::Settings) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The audited settings, listeners and pool [`Self::build`] prepared.
    fn prepared(&self) -> &Prepared<Self::Settings>;

    /// Splits the service into what the runtime runs and what it declares.
    fn into_parts(self) -> (Prepared<Self::Settings>, Self::Own);

    /// Its gRPC service (behind `parts.gate`), named workers and readiness.
    /// Nothing here talks to anything yet: the workers start once the
    /// database is migrated.
    fn declare(own: Self::Own, parts: Parts<Self::Settings>) -> anyhow::Result<Declared>;

    /// Serves until `shutdown` (or until a worker ends), then finishes
    /// in-flight work and returns; see [`run`].
    fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        run(self, shutdown, Workers::default())
    }

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
