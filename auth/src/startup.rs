//! Builds and runs the auth service: the gRPC server, database bootstrap and
//! the outbox relay, all stopped by one shutdown token.
use std::{net::SocketAddr, sync::Arc};

use chrono::Duration;
use memberflow_common::{
    grpc,
    proto::auth::v1::auth_service_server::AuthServiceServer,
    shutdown::CancellationToken,
    startup::{Gate, Prepared, Started, spawn_health},
    token::TokenKeys,
};
use tokio::sync::Notify;

use crate::{
    grpc::AuthApi,
    metrics::AuthMetrics,
    outbox::relay::{Relay, watch_outbox},
    password::Hasher,
    settings::Settings,
};

/// The fully qualified service name, as reported by the health service.
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// auth's schema (`migrations/auth`), public so tools such as the bench can
/// prepare a database without starting the service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/auth");

/// A bound, not yet running auth service.
pub struct Application {
    prepared: Prepared<Settings>,
}

impl Application {
    /// Audits the settings, binds the listener (port 0 allowed) and prepares
    /// a lazy pool; nothing talks to PostgreSQL or RabbitMQ until
    /// [`Self::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Ok(Self {
            prepared: Prepared::new(settings).await?,
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

    /// Serves until `shutdown` is cancelled, then stops accepting, finishes
    /// in-flight RPCs, lets the relay finish its batch, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Started {
            listener,
            settings,
            pool,
            registry,
            ready,
            health,
            router,
        } = self.prepared.start(SERVICE_NAME, &shutdown).await;
        let metrics = AuthMetrics::register(&registry);

        let relay_wake = Arc::new(Notify::new());
        let api = AuthApi {
            pool: pool.clone(),
            hasher: Hasher::new(&settings.password, metrics.password_hash_queue.clone())?,
            tokens: TokenKeys::new(&settings.token.secret),
            token_ttl: Duration::seconds(settings.token.ttl_secs),
            service_token: settings.token.service_token.clone(),
            relay_wake: relay_wake.clone(),
        };

        let gate = Gate::default();
        let server = grpc::spawn(
            router.add_service(AuthServiceServer::with_interceptor(api, gate.interceptor())),
            listener,
            &shutdown,
        );

        let mut relay = None;
        if gate
            .migrate_then_open(&settings.database, &pool, &MIGRATOR, &shutdown)
            .await
        {
            spawn_health(
                health,
                SERVICE_NAME,
                pool.clone(),
                ready,
                shutdown.clone(),
                || true,
            );
            let r = Relay::new(
                settings.database.direct_connect_options()?,
                settings.amqp.url.clone(),
                settings.relay.clone(),
                relay_wake,
                metrics.clone(),
            );
            tokio::spawn(watch_outbox(pool.clone(), metrics, shutdown.clone()));
            relay = Some(tokio::spawn(r.run(shutdown.clone())));
        }

        let served = server.await;
        // Whatever ended the server ends everything else too.
        shutdown.cancel();
        if let Some(relay) = relay {
            relay.await?;
        }
        pool.close().await;
        served??;
        Ok(())
    }
}

/// Runs auth as a process does: logs and traces per `settings.telemetry`,
/// serves until SIGTERM or Ctrl-C, then flushes the spans still buffered.
/// The `auth` binary and the launcher both call this.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    memberflow_common::telemetry::init(
        memberflow_common::telemetry::DEFAULT_FILTER,
        &settings.telemetry,
    );
    let app = Application::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), metrics = %app.metrics_addr(), "auth listening");
    let served = app
        .run_until_stopped(memberflow_common::shutdown::on_os_signal())
        .await;
    memberflow_common::telemetry::flush();
    served
}
