//! Spawns the real services in-process, bound to port 0, and waits until
//! their health check says SERVING.
use memberflow_runtime::startup::Service as _;
use std::{net::SocketAddr, time::Duration};

use memberflow_contract::proto::auth::v1::auth_service_client::AuthServiceClient;
use memberflow_contract::token::Signer;
use memberflow_retry::Backoff;
use memberflow_runtime::secrets::{DEV_SERVICE_TOKEN, DEV_SIGNING_KEY};
use memberflow_runtime::settings::Environment;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{env::TestEnv, eventually};

/// A quick Argon2 cost for tests; production uses the config default.
pub const TEST_ARGON2_MEMORY_KIB: u32 = 64;

/// Settings for an auth instance in `env`, on a random port.
pub fn auth_settings(env: &mut TestEnv) -> auth::Settings {
    let mut s = auth::Settings {
        ..Default::default()
    };
    s.base.environment = Environment::Development;
    s.token.signing_key = DEV_SIGNING_KEY.into();
    s.token.service_token = DEV_SERVICE_TOKEN.into();
    s.base.server.addr = "127.0.0.1:0".into();
    s.database = memberflow_runtime::db::DatabaseSettings::with_url(&env.database_url("auth"));
    s.amqp.url = env.amqp_url_as("auth").into();
    s.password.memory_kib = TEST_ARGON2_MEMORY_KIB;
    s.password.iterations = 1;
    // Suites log in many times from one address; the throttle's own tests
    // turn it on.
    s.login_throttle.per_email.burst = 0;
    s.login_throttle.per_peer.burst = 0;
    // Load tests fire hundreds of signups at once; the limits suite sets
    // its own bound.
    s.password.max_queued = 1_024;
    s.relay.leader_retry_ms = 100;
    s.relay.confirm_timeout_ms = 2_000;
    s.relay.backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
    s
}

/// A running service on its own runtime and thread, so it can be killed
/// abruptly (every task dropped mid-flight, sockets closed without AMQP or
/// PostgreSQL goodbyes), like a crashed process. Dropping it stops it
/// gracefully.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Runs `app` on a fresh two-worker runtime.
    pub fn start<F, Fut>(addr: SocketAddr, app: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = rt.block_on(async move {
                tokio::select! {
                    r = app(token) => r,
                    _ = killed => Ok(()),
                }
            });
            rt.shutdown_background();
            result
        });
        Self {
            addr,
            shutdown,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Graceful stop: cancels and waits until the service has returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let thread = self.thread.take().expect("running");
        tokio::task::spawn_blocking(move || thread.join().expect("service thread panicked")).await?
    }

    /// Abrupt stop: drops the service's runtime with everything in flight.
    pub async fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        let thread = self.thread.take().expect("running");
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to service")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A running auth service with a typed client.
pub struct TestAuth {
    pub app: Running,
    /// The admin endpoint: `/metrics`, `/livez`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub client: AuthServiceClient<Channel>,
}

impl TestAuth {
    /// Signs `req` up and logs in with its password: (member id, access
    /// token).
    pub async fn member(
        &mut self,
        req: memberflow_contract::proto::auth::v1::SignUpRequest,
    ) -> (uuid::Uuid, String) {
        sign_up_and_log_in(&mut self.client, req).await
    }

    /// UpdateProfile as the holder of `token`; returns the new version.
    pub async fn update_profile(
        &mut self,
        token: &str,
        nickname: Option<&str>,
        region: Option<&str>,
    ) -> i64 {
        let req = crate::fixtures::bearer(
            memberflow_contract::proto::auth::v1::UpdateProfileRequest {
                nickname: nickname.map(str::to_owned),
                region: region.map(str::to_owned),
            },
            token,
        );
        self.client
            .update_profile(req)
            .await
            .expect("update profile")
            .into_inner()
            .member
            .expect("a member")
            .version
    }

    /// DeleteAccount as the holder of `token` with `password`: the
    /// consistency token naming the deletion, or the status.
    pub async fn delete_account(
        &mut self,
        token: &str,
        password: &str,
    ) -> Result<String, tonic::Status> {
        let req = crate::fixtures::bearer(
            memberflow_contract::proto::auth::v1::DeleteAccountRequest {
                password: password.to_owned(),
                ..Default::default()
            },
            token,
        );
        Ok(self
            .client
            .delete_account(req)
            .await?
            .into_inner()
            .consistency_token)
    }
}

/// Signs `req` up through `client` and logs in with its password: (member
/// id, access token).
pub async fn sign_up_and_log_in(
    client: &mut AuthServiceClient<Channel>,
    req: memberflow_contract::proto::auth::v1::SignUpRequest,
) -> (uuid::Uuid, String) {
    let (email, password) = (req.email.clone(), req.password.clone());
    let id = client
        .sign_up(req)
        .await
        .expect("signup")
        .into_inner()
        .member
        .expect("a member")
        .id;
    let token = log_in_with(client, &email, &password).await;
    (id.parse().expect("a member id"), token)
}

/// Logs in as `email` with the fixtures' password: the access token.
pub async fn log_in(client: &mut AuthServiceClient<Channel>, email: &str) -> String {
    log_in_with(client, email, crate::fixtures::PASSWORD).await
}

/// Logs in as `email` with the fixtures' password from a device that says
/// `device` in its `user-agent`: the whole answer (access and refresh
/// tokens, session id).
pub async fn log_in_on(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    device: &str,
) -> memberflow_contract::proto::auth::v1::LoginResponse {
    let mut req = tonic::Request::new(crate::fixtures::login(email, crate::fixtures::PASSWORD));
    req.metadata_mut()
        .insert("user-agent", device.parse().expect("an ASCII device name"));
    client.login(req).await.expect("login").into_inner()
}

async fn log_in_with(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> String {
    client
        .login(crate::fixtures::login(email, password))
        .await
        .expect("login")
        .into_inner()
        .access_token
}

/// Starts auth and waits until it reports SERVING.
pub async fn spawn_auth(settings: auth::Settings) -> TestAuth {
    let app = auth::Application::build(settings)
        .await
        .expect("build auth");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let app = Running::start(addr, move |token| app.run_until_stopped(token));
    let channel = app.channel().await;
    wait_serving(channel.clone(), auth::SERVICE_NAME).await;
    TestAuth {
        app,
        metrics_addr,
        client: AuthServiceClient::new(channel),
    }
}

/// Polls the health service until `service` is SERVING.
pub async fn wait_serving(channel: Channel, service: &str) {
    let health = HealthClient::new(channel);
    eventually("service SERVING", Duration::from_secs(30), || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
}

/// The health status of `service`, as an enum value.
pub async fn health_status(channel: Channel, service: &str) -> Option<ServingStatus> {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?
        .into_inner()
        .status;
    ServingStatus::try_from(status).ok()
}

/// Settings for a task instance in `env`, on a random port, in `mode`, reading
/// through to `auth_addr` (e.g. `http://127.0.0.1:50051`).
pub fn task_settings(
    env: &mut TestEnv,
    mode: task::ConsistencyMode,
    auth_addr: &str,
) -> task::Settings {
    let mut s = task::Settings {
        ..Default::default()
    };
    s.base.environment = Environment::Development;
    // Configured, so task verifies test tokens even where no auth runs.
    s.token.public_keys = dev_signer().public_key().to_pem();
    s.auth.service_token = DEV_SERVICE_TOKEN.into();
    s.base.server.addr = "127.0.0.1:0".into();
    s.database = memberflow_runtime::db::DatabaseSettings::with_url(&env.database_url("task"));
    s.amqp.url = env.amqp_url_as("task").into();
    s.amqp.backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
    s.auth.addr = auth_addr.to_owned();
    s.consistency.mode = mode;
    s.relay.leader_retry_ms = 100;
    s.relay.confirm_timeout_ms = 2_000;
    s.relay.backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
    s
}

/// A running task service with handles to observe it.
pub struct TestTask {
    pub app: Running,
    /// The admin endpoint: `/metrics`, `/livez`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub channel: Channel,
    pub stats: std::sync::Arc<task::consumer::ConsumerStats>,
    /// The instance's metrics, as `/metrics` shows them.
    pub metrics: task::metrics::TaskMetrics,
    pub read_through: task::read_through::ReadThrough,
    pub freshness: std::sync::Arc<task::freshness::Freshness>,
}

impl TestTask {
    /// A client library instance acting for the holder of `token`.
    pub fn client(&self, token: &str) -> memberflow_client::TaskClient {
        memberflow_client::TaskClient::new(self.channel.clone(), token).expect("client")
    }

    /// Events the consumer has processed so far.
    pub fn processed(&self) -> u64 {
        self.stats
            .processed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Starts task and waits until it reports SERVING (database migrated and
/// consumer attached).
pub async fn spawn_task(settings: task::Settings) -> TestTask {
    let app = task::Application::build(settings)
        .await
        .expect("build task");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let stats = app.stats();
    let metrics = app.metrics();
    let read_through = app.read_through();
    let freshness = app.freshness();
    let app = Running::start(addr, move |token| app.run_until_stopped(token));
    let channel = app.channel().await;
    wait_serving(channel.clone(), task::SERVICE_NAME).await;
    TestTask {
        app,
        metrics_addr,
        channel,
        stats,
        metrics,
        read_through,
        freshness,
    }
}

/// The development signing key the test services use.
pub fn dev_signer() -> Signer {
    Signer::from_pem(DEV_SIGNING_KEY).expect("the development key parses")
}

/// Signs a token the way auth does, with the development key the test
/// services use.
pub fn mint_token(member_id: uuid::Uuid, ttl: chrono::Duration) -> String {
    dev_signer().issue(member_id, 0, chrono::Utc::now() + ttl)
}
