//! Builds and runs the auth service: the gRPC server, database bootstrap and
//! the outbox relay, all stopped by one shutdown token.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::Duration;
use memberflow_common::{
    db, grpc, proto::auth::v1::auth_service_server::AuthServiceServer, shutdown::CancellationToken,
    token::TokenKeys,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};

use crate::{grpc::AuthApi, outbox::relay::Relay, password::Hasher, settings::Settings};

/// How often health re-checks the database.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The fully qualified service name, as reported by the health service.
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// auth's schema (`migrations/auth`), public so tools such as the bench can
/// prepare a database without starting the service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/auth");

/// A bound, not yet running auth service.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    settings: Settings,
    pool: PgPool,
}

impl Application {
    /// Binds the listener (port 0 allowed) and prepares a lazy pool; nothing
    /// talks to PostgreSQL or RabbitMQ until [`Self::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.audit()?;
        let listener = TcpListener::bind(&settings.server.addr).await?;
        let addr = listener.local_addr()?;
        let pool = settings.database.lazy_pool()?;
        Ok(Self {
            listener,
            addr,
            settings,
            pool,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, finishes
    /// in-flight RPCs, lets the relay finish its batch, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            settings,
            pool,
            ..
        } = self;
        let (health, router) = grpc::server(SERVICE_NAME).await;

        let relay_wake = Arc::new(Notify::new());
        let api = AuthApi {
            pool: pool.clone(),
            hasher: Hasher::new(&settings.password)?,
            tokens: TokenKeys::new(&settings.token.secret),
            token_ttl: Duration::seconds(settings.token.ttl_secs),
            service_token: settings.token.service_token.clone(),
            relay_wake: relay_wake.clone(),
        };

        let migrated = Arc::new(AtomicBool::new(false));
        let server = grpc::spawn(
            router.add_service(AuthServiceServer::with_interceptor(
                api,
                grpc::until_ready(migrated.clone()),
            )),
            listener,
            &shutdown,
        );

        let mut relay = None;
        if db::bootstrap(&settings.database, &pool, &MIGRATOR, &shutdown).await {
            migrated.store(true, Ordering::Release);
            let probe = pool.clone();
            tokio::spawn(grpc::report_health(
                health,
                SERVICE_NAME,
                HEALTH_EVERY,
                shutdown.clone(),
                move || {
                    let probe = probe.clone();
                    async move { db::is_alive(&probe).await }
                },
            ));
            let r = Relay::new(
                settings.database.direct_connect_options()?,
                settings.amqp.url.clone(),
                settings.relay.clone(),
                relay_wake,
            );
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
