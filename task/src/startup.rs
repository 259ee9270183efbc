//! The task service, described once: its schema, its gRPC service and its
//! workers (the event consumer, the relay of its erasure receipts, the
//! reconciler, the pruner, the key refresh).
//! `memberflow_runtime::startup::run` runs it.
use std::{sync::Arc, time::Duration};

use memberflow_contract::{
    proto::task::v1::task_service_server::TaskServiceServer, token::PublicKey,
};
use memberflow_lifecycle::Workers;
use memberflow_outbox::{relay::Relay, wake::RelayWake, write::Outbox};
use memberflow_runtime::{
    db,
    startup::{self, Declared, Parts, Prepared, Service},
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

/// The outbox library's tables in task's database (`erasure::SPEC`'s),
/// applied after [`MIGRATOR`].
pub static OUTBOX_MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| crate::erasure::SPEC.tables.migrator());

/// A bound, not yet running task service.
pub struct Application {
    prepared: Prepared<Settings>,
    own: Own,
}

/// What [`Application::build`] made beside the prepared parts, shared with
/// the running service (see [`Service::Own`]).
pub struct Own {
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
    type Own = Own;
    const NAME: &'static str = SERVICE_NAME;

    fn migrators() -> Vec<&'static sqlx::migrate::Migrator> {
        vec![&MIGRATOR, &OUTBOX_MIGRATOR]
    }

    /// Audits the settings and binds the listener (port 0 allowed); nothing
    /// talks to PostgreSQL, RabbitMQ or auth yet.
    async fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(settings).await?;
        let source = AuthClient::new(&prepared.settings.auth)?;
        let read_through = ReadThrough::new(source.clone(), prepared.pool.clone());
        let metrics = TaskMetrics::register(&prepared.registry);
        let configured = PublicKey::parse_bundle(&prepared.settings.token.public_keys)
            .map_err(|e| anyhow::anyhow!("task.token.public_keys: {e}"))?;
        let keys = TrustedKeys::new(configured, source.clone());
        Ok(Self {
            prepared,
            own: Own {
                keys,
                stats: Arc::default(),
                metrics,
                source,
                read_through,
                freshness: Arc::default(),
            },
        })
    }

    fn prepared(&self) -> &Prepared<Settings> {
        &self.prepared
    }

    fn into_parts(self) -> (Prepared<Settings>, Own) {
        (self.prepared, self.own)
    }

    /// TaskService; the event consumer, the relay of task's erasure
    /// receipts, the LISTEN for other instances' applies, the key refresh,
    /// the inbox pruner and the reconciler.
    fn declare(own: Own, parts: Parts<Settings>) -> anyhow::Result<Declared> {
        let Parts {
            settings,
            pool,
            units,
            shutdown,
            router,
            gate,
            ..
        } = parts;
        let Own {
            stats,
            metrics,
            read_through,
            source,
            freshness,
            keys,
        } = own;
        let api = TaskApi {
            tasks: Tasks {
                metrics: metrics.clone(),
                pool: pool.clone(),
                consistency: settings.consistency.clone(),
                freshness: freshness.clone(),
                read_through,
            },
            units,
            keys: keys.clone(),
        };
        tracing::info!(mode = ?settings.consistency.mode, "consistency mode");
        let router = router.add_service(InterceptedService::new(
            TaskServiceServer::new(api)
                .max_decoding_message_size(settings.base.server.limits.max_message_bytes),
            gate,
        ));
        let wake = RelayWake::new(settings.relay.wake_on_commit, erasure::SPEC.channel);
        let replica = Replica::new(
            Outbox::new(pool.clone(), wake.clone(), &erasure::SPEC),
            metrics.clone(),
            freshness.clone(),
        );
        let consumer = Consumer::for_service(
            replica,
            QUEUE_SPEC,
            pool.clone(),
            &settings,
            stats,
            metrics.consumer.clone(),
        );
        // SERVING while the database answers and the consumer is attached
        // (or only briefly detached).
        let ready = Box::new(consumer.readiness());
        let mut workers = Workers::default();
        workers
            .add("consumer", consumer.run(shutdown.clone()))
            // Other instances' applies wake this one's waiters.
            .add(
                "freshness-listener",
                db::listen(
                    pool.clone(),
                    freshness::CHANNEL,
                    settings.amqp.backoff,
                    shutdown.clone(),
                    move |payload| freshness.notified(payload),
                ),
            )
            .add(
                "key-refresh",
                keys.refresh_every(
                    Duration::from_secs(settings.token.refresh_secs),
                    shutdown.clone(),
                ),
            )
            .add(
                "inbox-pruner",
                inbox::run_pruner(pool.clone(), settings.inbox.clone(), shutdown.clone()),
            )
            .add(
                "reconciler",
                reconcile::run(
                    pool.clone(),
                    reconcile::elector(
                        settings.database.direct_connect_options()?,
                        &settings.reconcile,
                        settings.amqp.backoff,
                    ),
                    source,
                    settings.reconcile.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ),
            )
            // The relay of task's outbox (erasure receipts), under the same
            // leadership rule as auth's.
            .extend(
                Relay::for_service(erasure::SPEC, &settings, wake, metrics.relay)?
                    .workers(pool, &shutdown),
            );
        Ok(Declared {
            router,
            workers,
            ready,
        })
    }
}

impl Application {
    /// Consumer counters, shared with the running consumer.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.own.stats.clone()
    }

    /// This instance's metrics (the same counters `/metrics` shows).
    pub fn metrics(&self) -> TaskMetrics {
        self.own.metrics.clone()
    }

    /// Read-your-writes waiters, to observe them.
    pub fn freshness(&self) -> Arc<Freshness> {
        self.own.freshness.clone()
    }

    /// The read-through client, to observe its calls.
    pub fn read_through(&self) -> ReadThrough {
        self.own.read_through.clone()
    }
}
