//! gRPC plumbing both services share: health, reflection, metadata and rich
//! error details.
use std::{convert::Infallible, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    metadata::MetadataMap,
    transport::{
        Server,
        server::{Router, TcpIncoming},
    },
};
use tonic_health::server::HealthReporter;
use tonic_types::StatusExt;
use tower::layer::util::{Identity, Stack};

use crate::{
    error::Failure,
    handshake::HandshakeDeadline,
    limits::{LimitsLayer, ServerLimits},
    metrics::{GrpcMetrics, GrpcMetricsLayer, RecordedBody},
};
use memberflow_contract::{
    proto::FILE_DESCRIPTOR_SET,
    token::{Verified, Verifier},
};

/// The body of every response the metrics layer passes on.
type ResponseBody = RecordedBody<tonic::body::Body>;

/// The layers around every RPC: metrics outermost, then the limits.
pub type ServerLayers = Stack<LimitsLayer, Stack<GrpcMetricsLayer, Identity>>;

/// The server both services run, before their own service is added: a
/// tracing span and the gRPC metrics per RPC, health (NOT_SERVING for `service` until the caller
/// says otherwise) and reflection v1 + v1alpha; TLS when `tls` is given.
pub async fn server(
    service: &str,
    metrics: GrpcMetrics,
    limits: &ServerLimits,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(HealthReporter, Router<ServerLayers>), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_serving(&health, service, false).await;
    let (reflection_v1, reflection_v1alpha) = reflection(service);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.timeout(limits.handshake_timeout()))?;
    }
    let router = builder
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
        .http2_max_header_list_size(limits.hard_header_bytes())
        .trace_fn(|req| {
            let span = tracing::info_span!(
                "grpc",
                otel.name = %req.uri().path().trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                path = %req.uri().path(),
                trace_id = tracing::field::Empty,
            );
            crate::trace_context::continue_trace(
                &span,
                crate::trace_context::from_headers(req.headers()),
            );
            span
        })
        // Metrics outside the limits, so refusals are counted by code too.
        .layer(GrpcMetricsLayer(metrics))
        .layer(LimitsLayer::new(limits))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((health, router))
}

/// Serves `router` on `listener` until `shutdown`, then finishes in-flight
/// RPCs (the supervisor runs it as the worker `grpc-server`).
///
/// Nagle's algorithm is off on every accepted socket. tonic ignores
/// `Server::tcp_nodelay` for a listener passed in, and with Nagle on, a
/// response written in several segments waits for the client's delayed ACK:
/// about 40 ms per successful Login through grpcio (tonic's own client hid it).
///
/// A connection that sends no HTTP/2 preface within `handshake_timeout` is
/// closed (see [`crate::handshake`]).
pub fn serve<L>(
    router: Router<L>,
    listener: TcpListener,
    handshake_timeout: Duration,
    shutdown: &CancellationToken,
) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static
where
    L: tower::Layer<tonic::service::Routes> + Send + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<ResponseBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
{
    use futures::StreamExt as _;
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|io| HandshakeDeadline::new(io, handshake_timeout)));
    router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
}

/// Metadata key carrying the service credential on trusted calls.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// Reflection services for both protocol versions: grpcurl speaks v1, Python's
/// grpcio and older tools still ask for v1alpha. Each port lists only its own
/// service, health and reflection, although every descriptor is compiled in;
/// the types error details name resolve too ([`error_detail_descriptors`]).
fn reflection(
    service: &str,
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        [
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(error_detail_descriptors()),
            |b, name| b.with_service_name(name),
        )
    };
    let v1 = builder()
        .build_v1()
        .expect("descriptors compiled into the binary are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("descriptors compiled into the binary are valid");
    (v1, v1alpha)
}

/// The descriptors of every type an `Any` in a response can name, so that
/// reflection clients (grpcurl) print error details rather than "not
/// recognized": google.rpc's error details (BadRequest, ErrorInfo,
/// RetryInfo, ...) and Status, with the well-known types they import.
/// tonic-types ships them as `error_details.proto` and `status.proto`; they
/// are served under their canonical `google/rpc/` paths, as other servers and
/// clients know them.
pub fn error_detail_descriptors() -> &'static [u8] {
    use prost::Message as _;
    static SET: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut set = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .expect("tonic-types ships a valid descriptor set");
        for file in &mut set.file {
            if let Some(name) = file.name.as_mut()
                && file.package.as_deref() == Some("google.rpc")
                && !name.starts_with("google/rpc/")
            {
                *name = format!("google/rpc/{name}");
            }
        }
        set.encode_to_vec()
    });
    &SET
}

/// A service's gRPC health and `/readyz`, as the health loop and the
/// supervisor both set them. Once the service stops, NOT_SERVING is final: a
/// check still in flight cannot write SERVING after it.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service: &'static str,
    readiness: crate::admin_http::Readiness,
    stopped: std::sync::Arc<tokio::sync::Mutex<bool>>,
}

impl Health {
    pub fn new(
        reporter: HealthReporter,
        service: &'static str,
        readiness: crate::admin_http::Readiness,
    ) -> Self {
        Self {
            reporter,
            service,
            readiness,
            stopped: Default::default(),
        }
    }

    /// Says `serving`, unless the service has stopped.
    async fn set(&self, serving: bool) {
        let stopped = self.stopped.lock().await;
        if !*stopped {
            set_serving(&self.reporter, self.service, serving).await;
            self.readiness
                .store(serving, std::sync::atomic::Ordering::Release);
        }
    }

    /// NOT_SERVING, for good.
    pub async fn stop(&self) {
        let mut stopped = self.stopped.lock().await;
        *stopped = true;
        self.readiness
            .store(false, std::sync::atomic::Ordering::Release);
        set_serving(&self.reporter, self.service, false).await;
    }
}

/// Keeps `health` equal to `ready()`, checked every `every`, until
/// `shutdown`; logs each change. Health tells the truth both ways:
/// NOT_SERVING while a dependency is gone, SERVING again once it is back.
pub async fn report_health<F, Fut>(
    health: Health,
    every: std::time::Duration,
    shutdown: CancellationToken,
    mut ready: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let service = health.service;
    let mut last = None;
    let mut verdict = HealthVerdict::default();
    let mut ticks = memberflow_lifecycle::Ticks::new(every, memberflow_lifecycle::Start::Now);
    while ticks.next(&shutdown).await {
        let now = verdict.observe(ready().await);
        if last != Some(now) {
            health.set(now).await;
            if last.is_some() {
                if now {
                    tracing::info!(service, "SERVING again");
                } else {
                    tracing::warn!(service, "NOT_SERVING: a dependency is unavailable");
                }
            }
            last = Some(now);
        }
    }
}

/// Consecutive failed checks before a serving service says NOT_SERVING, so
/// one slow probe on a busy host does not flap it out of a load balancer.
pub const FAILURES_BEFORE_NOT_SERVING: u32 = 3;

/// Turns individual checks into a serving status: SERVING on the first good
/// check, NOT_SERVING after [`FAILURES_BEFORE_NOT_SERVING`] bad ones in a row
/// (at once before the first good one).
#[derive(Debug, Default)]
pub struct HealthVerdict {
    serving: bool,
    failures: u32,
}

impl HealthVerdict {
    /// Records one check; returns whether the service is serving.
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.serving = true;
        } else {
            self.failures += 1;
            if self.failures >= FAILURES_BEFORE_NOT_SERVING {
                self.serving = false;
            }
        }
        self.serving
    }
}

/// Marks `service` and the whole server (`""`) as serving or not.
pub async fn set_serving(reporter: &HealthReporter, service: &str, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
    reporter.set_service_status("", status).await;
}

/// The token from `authorization: Bearer <token>`, if present and well formed.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The member behind `authorization: Bearer <token>` in `metadata`, checked
/// as [`Verifier::verify`] does. Both services authenticate members with this
/// one rule.
pub fn authenticate(verifier: &Verifier, metadata: &MetadataMap) -> Result<Verified, Failure> {
    let token =
        bearer(metadata).ok_or_else(|| Failure::Unauthenticated("missing bearer token".into()))?;
    verifier
        .verify(token)
        .map_err(|e| Failure::Unauthenticated(e.to_string()))
}

/// The field names of a `BadRequest` detail, for tests and clients.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::HealthVerdict;

    #[test]
    fn one_bad_check_does_not_flap_three_do() {
        let mut v = HealthVerdict::default();
        assert!(!v.observe(false), "not serving before the first good check");
        assert!(v.observe(true));
        assert!(v.observe(false));
        assert!(v.observe(false));
        assert!(!v.observe(false), "the third failure in a row");
        assert!(v.observe(true), "back at once");
    }
}
