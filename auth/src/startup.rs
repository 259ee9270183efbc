//! Builds and runs the auth service: the gRPC server, database bootstrap and
//! the outbox relay, all stopped by one shutdown token.

use chrono::Duration;
use memberflow_common::{
    grpc,
    proto::auth::v1::auth_service_server::AuthServiceServer,
    shutdown::CancellationToken,
    startup::{self, Gate, Prepared, spawn_health},
    token::{PublicKey, Signer, Verifier},
};
use tonic::service::interceptor::InterceptedService;

use crate::{
    grpc::AuthApi,
    metrics::AuthMetrics,
    outbox::{
        relay::{Relay, watch_outbox},
        wake::RelayWake,
    },
    password::Hasher,
    settings::Settings,
    throttle::LoginThrottle,
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

impl Application {
    /// Audits the settings, binds the listener (port 0 allowed) and prepares
    /// a lazy pool; nothing talks to PostgreSQL or RabbitMQ until
    /// [`Self::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
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
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let started = self.prepared.start(SERVICE_NAME, &shutdown).await?;
        let (settings, pool) = (started.settings, started.pool);
        let metrics = AuthMetrics::register(&started.registry);
        let relay_wake = RelayWake::new(settings.relay.wake_on_commit);
        let throttle = LoginThrottle::new(&settings.login_throttle, metrics.clone());
        let api = AuthApi {
            pool: pool.clone(),
            hasher: Hasher::new(&settings.password, metrics.clone())?,
            throttle: throttle.clone(),
            verifier: Verifier::new(&self.public_keys),
            public_keys: self.public_keys.into(),
            signer: self.signer,
            token_ttl: Duration::seconds(settings.token.ttl_secs),
            service_token: settings.token.service_token.clone(),
            relay_wake: relay_wake.clone(),
        };
        let gate = Gate::default();
        let server = grpc::spawn(
            started.router.add_service(InterceptedService::new(
                AuthServiceServer::new(api)
                    .max_decoding_message_size(settings.base.server.limits.max_message_bytes),
                gate.interceptor(),
            )),
            started.listener,
            &shutdown,
        );
        let workers = || {
            spawn_health(
                started.health,
                SERVICE_NAME,
                pool.clone(),
                started.ready,
                shutdown.clone(),
                || true,
            );
            let relay = Relay::new(
                settings.database.direct_connect_options()?,
                settings.amqp.nodes(),
                settings.relay.clone(),
                relay_wake.clone(),
                metrics.clone(),
            );
            Ok(vec![
                tokio::spawn(relay_wake.clone().run_notifier(
                    pool.clone(),
                    metrics.relay_wake_failures.clone(),
                    shutdown.clone(),
                )),
                tokio::spawn(throttle.prune(shutdown.clone())),
                tokio::spawn(watch_outbox(pool.clone(), metrics, shutdown.clone())),
                tokio::spawn(relay.run(shutdown.clone())),
            ])
        };
        startup::run(
            server,
            gate,
            &settings.database,
            pool.clone(),
            &MIGRATOR,
            shutdown.clone(),
            workers,
        )
        .await
    }
}

memberflow_common::service_main!(Application, Settings, "auth");
