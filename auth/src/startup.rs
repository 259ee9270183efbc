//! Builds and runs the auth service: the gRPC server, database bootstrap,
//! the outbox relay and the consumer of erasure receipts, all stopped by one
//! shutdown token.
use chrono::Duration;
use memberflow_contract::{
    proto::auth::v1::auth_service_server::AuthServiceServer,
    token::{PublicKey, Signer, Verifier},
};
use memberflow_runtime::{
    grpc,
    shutdown::CancellationToken,
    startup::{self, Gate, Prepared, Service, spawn_health},
};
use tonic::service::interceptor::InterceptedService;

use memberflow_outbox::consumer::{Consumer, ConsumerStats};

use crate::{
    erasure::{self, receipts::Receipts},
    grpc::AuthApi,
    metrics::AuthMetrics,
    outbox::{SPEC, relay::Relay, wake::RelayWake, write::Outbox},
    password::Hasher,
    settings::Settings,
    throttle::LoginThrottle,
    usecases::Auth,
};

/// The fully qualified service name, as reported by the health service.
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// auth's schema (`migrations/auth`), public so tools such as the bench can
/// prepare a database without starting the service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/auth");

/// A bound, not yet running auth service.
pub struct Application {
    prepared: Prepared<Settings>,
    signer: Signer,
    public_keys: Vec<PublicKey>,
}

/// Runs auth as its process does (see [`startup::serve`]).
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    startup::serve::<Application>(settings).await
}

impl Service for Application {
    type Settings = Settings;

    /// Audits the settings, binds the listener (port 0 allowed) and prepares
    /// a lazy pool; nothing talks to PostgreSQL or RabbitMQ until
    /// [`Self::run_until_stopped`].
    async fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(settings).await?;
        let (signer, public_keys) = prepared.settings.token.keys()?;
        Ok(Self {
            prepared,
            signer,
            public_keys,
        })
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, finishes
    /// in-flight RPCs, lets the relay finish its batch, and returns.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let started = self.prepared.start(SERVICE_NAME, &shutdown).await?;
        let (settings, pool, units) = (started.settings, started.pool, started.units);
        let metrics = AuthMetrics::register(&started.registry);
        let relay_wake = RelayWake::new(settings.relay.wake_on_commit, SPEC.channel);
        let throttle = LoginThrottle::new(&settings.login_throttle, metrics.clone());
        let api = AuthApi {
            auth: Auth {
                pool: pool.clone(),
                hasher: Hasher::new(&settings.password, metrics.clone())?,
                throttle: throttle.clone(),
                signer: self.signer,
                token_ttl: Duration::seconds(settings.token.ttl_secs),
                lifetimes: settings.token.lifetimes(),
                outbox: Outbox::new(pool.clone(), relay_wake.clone()),
                erasure_expected: settings.erasure.expected_services.clone().into(),
            },
            units: units.clone(),
            verifier: Verifier::new(&self.public_keys),
            public_keys: self.public_keys.into(),
            service_token: settings.token.service_token.clone(),
        };
        let gate = Gate::for_service(&settings);
        let server = grpc::spawn(
            started.router.add_service(InterceptedService::new(
                AuthServiceServer::new(api)
                    .max_decoding_message_size(settings.base.server.limits.max_message_bytes),
                gate.interceptor(),
            )),
            started.listener,
            settings.base.server.limits.handshake_timeout(),
            &shutdown,
        );
        let workers = |tasks: &mut tokio::task::JoinSet<()>| {
            let receipts = Consumer::new(
                Receipts::new(pool.clone(), metrics.clone()),
                erasure::receipts::QUEUE_SPEC,
                pool.clone(),
                settings.amqp.clone(),
                std::sync::Arc::new(ConsumerStats::default()),
                metrics.consumer.clone(),
            );
            // SERVING while the database answers and the receipt consumer is
            // attached (or only briefly detached), as task's readiness.
            spawn_health(
                tasks,
                started.health,
                SERVICE_NAME,
                pool.clone(),
                started.ready,
                shutdown.clone(),
                receipts.readiness(),
            );
            tasks.spawn(receipts.run(shutdown.clone()));
            tasks.spawn(erasure::watch(
                pool.clone(),
                settings.erasure.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(throttle.prune(shutdown.clone()));
            tasks.spawn(crate::sessions::store::run_pruner(
                pool.clone(),
                settings.token.lifetimes().idle,
                shutdown.clone(),
            ));
            Relay::new(
                SPEC,
                settings.database.direct_connect_options()?,
                settings.amqp.nodes(),
                settings.relay.clone(),
                relay_wake.clone(),
                metrics.relay,
            )
            .spawn(tasks, pool.clone(), &shutdown);
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
