//! Builds and runs the task service: gRPC server, database bootstrap and the
//! event consumer, all stopped by one shutdown token.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use memberflow_common::{
    db, grpc, proto::task::v1::task_service_server::TaskServiceServer, shutdown::CancellationToken,
    token::TokenKeys,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    consumer::{Consumer, ConsumerStats},
    grpc::TaskApi,
    inbox,
    read_through::ReadThrough,
    reconcile::{self, ReconcileStats},
    resync::AuthSource,
    settings::Settings,
};

/// How often health re-checks the database and the consumer.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The fully qualified service name, as reported by the health service.
pub const SERVICE_NAME: &str = "task.v1.TaskService";

/// task's schema (`migrations/task`), public so tools (the admin command, the
/// bench) can prepare a database without starting the service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/task");

/// A bound, not yet running task service.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    settings: Settings,
    pool: PgPool,
    stats: Arc<ConsumerStats>,
    reconcile_stats: Arc<ReconcileStats>,
    read_through: ReadThrough,
    source: AuthSource,
}

impl Application {
    /// Binds the listener (port 0 allowed); nothing talks to PostgreSQL,
    /// RabbitMQ or auth until [`Self::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.audit()?;
        let listener = TcpListener::bind(&settings.server.addr).await?;
        let addr = listener.local_addr()?;
        let pool = settings.database.lazy_pool()?;
        let read_through = ReadThrough::new(&settings.auth, pool.clone())?;
        let source = AuthSource::new(&settings.auth)?;
        Ok(Self {
            listener,
            addr,
            settings,
            pool,
            stats: Arc::default(),
            reconcile_stats: Arc::default(),
            source,
            read_through,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Consumer counters, shared with the running consumer.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Reconciler counters, shared with the running reconciler.
    pub fn reconcile_stats(&self) -> Arc<ReconcileStats> {
        self.reconcile_stats.clone()
    }

    /// The read-through client, to observe its calls.
    pub fn read_through(&self) -> ReadThrough {
        self.read_through.clone()
    }

    /// Serves until `shutdown`: stops accepting, finishes in-flight RPCs,
    /// lets the consumer ack its batch and close its channel, then returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            settings,
            pool,
            stats,
            reconcile_stats,
            read_through,
            source,
            ..
        } = self;
        let (health, router) = grpc::server(SERVICE_NAME).await;
        let api = TaskApi {
            pool: pool.clone(),
            tokens: TokenKeys::new(&settings.token.secret),
            mode: settings.consistency.mode,
            retry_after: Duration::from_millis(settings.consistency.retry_after_ms),
            read_through,
        };
        tracing::info!(mode = ?settings.consistency.mode, "consistency mode");

        let migrated = Arc::new(AtomicBool::new(false));
        let server = grpc::spawn(
            router.add_service(TaskServiceServer::with_interceptor(
                api,
                grpc::until_ready(migrated.clone()),
            )),
            listener,
            &shutdown,
        );

        let mut consumer_task = None;
        let mut pruner_task = None;
        let mut reconciler_task = None;
        if db::bootstrap(&settings.database, &pool, &MIGRATOR, &shutdown).await {
            migrated.store(true, Ordering::Release);
            pruner_task = Some(tokio::spawn(inbox::run_pruner(
                pool.clone(),
                settings.inbox.clone(),
                shutdown.clone(),
            )));
            reconciler_task = Some(tokio::spawn(reconcile::run(
                pool.clone(),
                source,
                settings.reconcile.clone(),
                reconcile_stats,
                shutdown.clone(),
            )));
            let consumer = Consumer::new(pool.clone(), settings.amqp.clone(), stats);
            let attached = consumer.attached();
            consumer_task = Some(tokio::spawn(consumer.run(shutdown.clone())));
            // SERVING while the database answers and the consumer is attached,
            // or has been detached for less than the grace period (a broker
            // restart should not flap every instance out of a load balancer).
            let grace = Duration::from_secs(settings.amqp.detached_grace_secs);
            let probe = pool.clone();
            let mut detached_since: Option<Instant> = Some(Instant::now());
            let mut ever_attached = false;
            tokio::spawn(grpc::report_health(
                health,
                SERVICE_NAME,
                HEALTH_EVERY,
                shutdown.clone(),
                move || {
                    let probe = probe.clone();
                    let now_attached = *attached.borrow();
                    ever_attached |= now_attached;
                    detached_since = match (now_attached, detached_since) {
                        (true, _) => None,
                        (false, None) => Some(Instant::now()),
                        (false, since) => since,
                    };
                    let consumer_ok =
                        ever_attached && detached_since.is_none_or(|since| since.elapsed() < grace);
                    async move { consumer_ok && db::is_alive(&probe).await }
                },
            ));
        }

        let served = server.await;
        shutdown.cancel();
        if let Some(c) = consumer_task {
            c.await?;
        }
        for t in [pruner_task, reconciler_task].into_iter().flatten() {
            t.await?;
        }
        pool.close().await;
        served??;
        Ok(())
    }
}
