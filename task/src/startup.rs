//! Builds and runs the task service: gRPC server, database bootstrap, the
//! event consumer and the relay of its erasure receipts, all stopped by one
//! shutdown token.
use std::{sync::Arc, time::Duration};

use memberflow_contract::{
    proto::task::v1::task_service_server::TaskServiceServer, token::PublicKey,
};
use memberflow_outbox::{relay::Relay, wake::RelayWake, write::Outbox};
use memberflow_runtime::{
    db, grpc,
    shutdown::CancellationToken,
    startup::{self, Gate, Prepared, Service, spawn_health},
};
use tonic::service::interceptor::InterceptedService;

use crate::{
    auth_client::AuthClient,
    consumer::{Consumer, ConsumerStats, QUEUE_SPEC, Replica},
    erasure,
    freshness::{self, Freshness},
    grpc::TaskApi,
    inbox,
    keys::TrustedKeys,
    metrics::TaskMetrics,
    read_through::ReadThrough,
    reconcile,
    settings::Settings,
    usecases::Tasks,
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
    metrics: TaskMetrics,
    read_through: ReadThrough,
    source: AuthClient,
    freshness: Arc<Freshness>,
    keys: TrustedKeys,
}

/// Runs task as its process does (see [`startup::serve`]).
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    startup::serve::<Application>(settings).await
}

impl Service for Application {
    type Settings = Settings;

    /// Audits the settings and binds the listener (port 0 allowed); nothing
    /// talks to PostgreSQL, RabbitMQ or auth until [`Self::run_until_stopped`].
    async fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(settings).await?;
        let source = AuthClient::new(&prepared.settings.auth)?;
        let read_through = ReadThrough::new(source.clone(), prepared.pool.clone());
        let metrics = TaskMetrics::register(&prepared.registry);
        let configured = PublicKey::parse_bundle(&prepared.settings.token.public_keys)
            .map_err(|e| anyhow::anyhow!("task.token.public_keys: {e}"))?;
        let keys = TrustedKeys::new(configured, source.clone());
        Ok(Self {
            keys,
            prepared,
            stats: Arc::default(),
            metrics,
            source,
            read_through,
            freshness: Arc::default(),
        })
    }

    /// Serves until `shutdown`: stops accepting, finishes in-flight RPCs,
    /// lets the consumer ack its batch and close its channel, then returns.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let started = self.prepared.start(SERVICE_NAME, &shutdown).await?;
        let (settings, pool, units) = (started.settings, started.pool, started.units);
        let metrics = self.metrics;
        let freshness = self.freshness.clone();
        let api = TaskApi {
            tasks: Tasks {
                metrics: metrics.clone(),
                pool: pool.clone(),
                consistency: settings.consistency.clone(),
                freshness: freshness.clone(),
                read_through: self.read_through,
            },
            units: units.clone(),
            keys: self.keys.clone(),
        };
        tracing::info!(mode = ?settings.consistency.mode, "consistency mode");
        let gate = Gate::for_service(&settings);
        let server = grpc::spawn(
            started.router.add_service(InterceptedService::new(
                TaskServiceServer::new(api)
                    .max_decoding_message_size(settings.base.server.limits.max_message_bytes),
                gate.interceptor(),
            )),
            started.listener,
            settings.base.server.limits.handshake_timeout(),
            &shutdown,
        );
        let (stats, source) = (self.stats, self.source);
        let workers = |tasks: &mut tokio::task::JoinSet<()>| {
            let wake = RelayWake::new(settings.relay.wake_on_commit, erasure::SPEC.channel);
            let consumer = Consumer::new(
                Replica::new(
                    Outbox::new(pool.clone(), wake.clone()),
                    metrics.clone(),
                    freshness.clone(),
                ),
                QUEUE_SPEC,
                pool.clone(),
                settings.amqp.clone(),
                stats,
                metrics.consumer.clone(),
            );
            // The relay of task's outbox (erasure receipts), under the same
            // leadership rule as auth's.
            Relay::new(
                erasure::SPEC,
                settings.database.direct_connect_options()?,
                settings.amqp.nodes(),
                settings.relay.clone(),
                wake,
                metrics.relay.clone(),
            )
            .spawn(tasks, pool.clone(), &shutdown);
            // Other instances' applies wake this one's waiters.
            {
                let (pool, backoff, stop) = (pool.clone(), settings.amqp.backoff, shutdown.clone());
                let freshness = freshness.clone();
                tasks.spawn(async move {
                    db::listen(pool, freshness::CHANNEL, backoff, stop, |payload| {
                        freshness.notified(payload)
                    })
                    .await;
                });
            }
            // SERVING while the database answers and the consumer is attached
            // (or only briefly detached).
            spawn_health(
                tasks,
                started.health,
                SERVICE_NAME,
                pool.clone(),
                started.ready,
                shutdown.clone(),
                consumer.readiness(),
            );
            tasks.spawn(self.keys.clone().refresh_every(
                Duration::from_secs(settings.token.refresh_secs),
                shutdown.clone(),
            ));
            tasks.spawn(consumer.run(shutdown.clone()));
            tasks.spawn(inbox::run_pruner(
                pool.clone(),
                settings.inbox.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(reconcile::run(
                pool.clone(),
                reconcile::elector(
                    settings.database.direct_connect_options()?,
                    &settings.reconcile,
                    settings.amqp.backoff,
                ),
                source,
                settings.reconcile.clone(),
                metrics,
                shutdown.clone(),
            ));
            Ok(())
        };
        startup::run(
            server,
            gate,
            &settings.database,
            &units,
            &MIGRATOR,
            shutdown.clone(),
            started.tasks,
            workers,
        )
        .await
    }

    fn prepared(&self) -> &Prepared<Settings> {
        &self.prepared
    }
}

impl Application {
    /// Consumer counters, shared with the running consumer.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// This instance's metrics (the same counters `/metrics` shows).
    pub fn metrics(&self) -> TaskMetrics {
        self.metrics.clone()
    }

    /// Read-your-writes waiters, to observe them.
    pub fn freshness(&self) -> Arc<Freshness> {
        self.freshness.clone()
    }

    /// The read-through client, to observe its calls.
    pub fn read_through(&self) -> ReadThrough {
        self.read_through.clone()
    }
}
