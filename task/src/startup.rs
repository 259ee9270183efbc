//! Builds and runs the task service: gRPC server, database bootstrap and the
//! event consumer, all stopped by one shutdown token.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use memberflow_common::{
    grpc,
    proto::task::v1::task_service_server::TaskServiceServer,
    shutdown::CancellationToken,
    startup::{Gate, Prepared, Started, spawn_health},
    token::TokenKeys,
};

use crate::{
    consumer::{Attachment, Consumer, ConsumerStats},
    grpc::TaskApi,
    inbox,
    metrics::TaskMetrics,
    read_through::ReadThrough,
    reconcile::{self, ReconcileStats},
    resync::AuthSource,
    settings::Settings,
};

/// The fully qualified service name, as reported by the health service.
pub const SERVICE_NAME: &str = "task.v1.TaskService";

/// task's schema (`migrations/task`), public so tools (the admin command, the
/// bench) can prepare a database without starting the service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/task");

/// A bound, not yet running task service.
pub struct Application {
    prepared: Prepared<Settings>,
    stats: Arc<ConsumerStats>,
    reconcile_stats: Arc<ReconcileStats>,
    read_through: ReadThrough,
    source: AuthSource,
}

impl Application {
    /// Audits the settings and binds the listener (port 0 allowed); nothing
    /// talks to PostgreSQL, RabbitMQ or auth until [`Self::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(settings).await?;
        let read_through = ReadThrough::new(&prepared.settings.auth, prepared.pool.clone())?;
        let source = AuthSource::new(&prepared.settings.auth)?;
        Ok(Self {
            prepared,
            stats: Arc::default(),
            reconcile_stats: Arc::default(),
            source,
            read_through,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.prepared.addr
    }

    /// The admin endpoint's address (`/metrics`, `/livez`, `/readyz`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.prepared.metrics_addr
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
            prepared,
            stats,
            reconcile_stats,
            read_through,
            source,
        } = self;
        let Started {
            listener,
            settings,
            pool,
            registry,
            ready,
            health,
            router,
        } = prepared.start(SERVICE_NAME, &shutdown).await;
        let metrics = TaskMetrics::register(&registry);
        let api = TaskApi {
            metrics: metrics.clone(),
            pool: pool.clone(),
            tokens: TokenKeys::new(&settings.token.secret),
            mode: settings.consistency.mode,
            retry_after: Duration::from_millis(settings.consistency.retry_after_ms),
            read_through,
        };
        tracing::info!(mode = ?settings.consistency.mode, "consistency mode");

        let gate = Gate::default();
        let server = grpc::spawn(
            router.add_service(TaskServiceServer::with_interceptor(api, gate.interceptor())),
            listener,
            &shutdown,
        );

        let mut consumer_task = None;
        let mut pruner_task = None;
        let mut reconciler_task = None;
        if gate
            .migrate_then_open(&settings.database, &pool, &MIGRATOR, &shutdown)
            .await
        {
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
                metrics.clone(),
                shutdown.clone(),
            )));
            let consumer = Consumer::new(pool.clone(), settings.amqp.clone(), stats, metrics);
            let attached = consumer.attached();
            consumer_task = Some(tokio::spawn(consumer.run(shutdown.clone())));
            let mut attachment =
                Attachment::new(Duration::from_secs(settings.amqp.detached_grace_secs));
            spawn_health(
                health,
                SERVICE_NAME,
                pool.clone(),
                ready,
                shutdown.clone(),
                move || attachment.healthy(*attached.borrow(), Instant::now()),
            );
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

/// Runs task as a process does: logs and traces per `settings.telemetry`,
/// serves until SIGTERM or Ctrl-C, then flushes the spans still buffered.
/// The `task` binary and the launcher both call this.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    memberflow_common::telemetry::init(
        memberflow_common::telemetry::DEFAULT_FILTER,
        &settings.telemetry,
    );
    let app = Application::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), metrics = %app.metrics_addr(), "task listening");
    let served = app
        .run_until_stopped(memberflow_common::shutdown::on_os_signal())
        .await;
    memberflow_common::telemetry::flush();
    served
}
