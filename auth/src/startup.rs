//! The auth service, described once: its schema, its gRPC service and its
//! workers (the outbox relay, the consumer of erasure receipts, the erasure
//! watch, the pruners). `memberflow_runtime::startup::run` runs it.
use chrono::Duration;
use memberflow_contract::{
    proto::auth::v1::auth_service_server::AuthServiceServer,
    token::{PublicKey, Signer, Verifier},
};
use memberflow_lifecycle::Workers;
use memberflow_runtime::startup::{self, Declared, Parts, Prepared, Service};
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

/// The outbox library's tables in auth's database ([`SPEC`]'s), applied
/// after [`MIGRATOR`].
pub static OUTBOX_MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| SPEC.tables.migrator());

/// A bound, not yet running auth service.
pub struct Application {
    prepared: Prepared<Settings>,
    keys: Keys,
}

/// The token keys [`Application::build`] read (see [`Service::Own`]).
pub struct Keys {
    signer: Signer,
    public_keys: Vec<PublicKey>,
}

/// Runs auth as its process does (see [`startup::serve`]).
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    startup::serve::<Application>(settings).await
}

impl Service for Application {
    type Settings = Settings;
    type Own = Keys;
    const NAME: &'static str = SERVICE_NAME;

    fn migrators() -> Vec<&'static sqlx::migrate::Migrator> {
        vec![&MIGRATOR, &OUTBOX_MIGRATOR]
    }

    /// Audits the settings, binds the listener (port 0 allowed) and prepares
    /// a lazy pool; nothing talks to PostgreSQL or RabbitMQ yet.
    async fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(settings).await?;
        let (signer, public_keys) = prepared.settings.token.keys()?;
        Ok(Self {
            prepared,
            keys: Keys {
                signer,
                public_keys,
            },
        })
    }

    fn prepared(&self) -> &Prepared<Settings> {
        &self.prepared
    }

    fn into_parts(self) -> (Prepared<Settings>, Keys) {
        (self.prepared, self.keys)
    }

    /// AuthService; the relay of auth's outbox, the consumer of erasure
    /// receipts, the erasure watch and the pruners.
    fn declare(keys: Keys, parts: Parts<Settings>) -> anyhow::Result<Declared> {
        let Parts {
            settings,
            pool,
            units,
            registry,
            shutdown,
            router,
            gate,
        } = parts;
        let metrics = AuthMetrics::register(&registry);
        let relay_wake = RelayWake::new(settings.relay.wake_on_commit, SPEC.channel);
        let outbox = Outbox::new(pool.clone(), relay_wake.clone(), &SPEC);
        let throttle = LoginThrottle::new(&settings.login_throttle, metrics.clone());
        let api = AuthApi {
            auth: Auth {
                pool: pool.clone(),
                hasher: Hasher::new(&settings.password, metrics.clone())?,
                throttle: throttle.clone(),
                signer: keys.signer,
                token_ttl: Duration::seconds(settings.token.ttl_secs),
                lifetimes: settings.token.lifetimes(),
                outbox: outbox.clone(),
                erasure_expected: settings.erasure.expected_services.clone().into(),
            },
            units,
            verifier: Verifier::new(&keys.public_keys),
            public_keys: keys.public_keys.into(),
            service_token: settings.token.service_token.clone(),
        };
        let router = router.add_service(InterceptedService::new(
            AuthServiceServer::new(api)
                .max_decoding_message_size(settings.base.server.limits.max_message_bytes),
            gate,
        ));
        let receipts = Consumer::for_service(
            Receipts::new(outbox.clone(), metrics.clone()),
            erasure::receipts::QUEUE_SPEC,
            pool.clone(),
            &settings,
            std::sync::Arc::new(ConsumerStats::default()),
            metrics.consumer.clone(),
        );
        // SERVING while the database answers and the receipt consumer is
        // attached (or only briefly detached), as task's readiness.
        let ready = Box::new(receipts.readiness());
        let mut workers = Workers::default();
        workers
            .add("receipt-consumer", receipts.run(shutdown.clone()))
            .add(
                "erasure-watch",
                erasure::watch(
                    pool.clone(),
                    settings.erasure.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ),
            )
            .add("throttle-pruner", throttle.prune(shutdown.clone()))
            .add(
                "session-pruner",
                crate::sessions::store::run_pruner(
                    pool.clone(),
                    settings.token.lifetimes().idle,
                    shutdown.clone(),
                ),
            )
            .extend(
                Relay::for_service(SPEC, &settings, relay_wake, metrics.relay)?
                    .workers(pool, &shutdown),
            );
        Ok(Declared {
            router,
            workers,
            ready,
        })
    }
}
