//! Prometheus metrics: one [`Registry`] per service instance (tests run
//! several instances in one process), the gRPC server metrics every service
//! records through one tower layer, and the names go-grpc-prometheus made
//! the convention, so existing dashboards work:
//! `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`
//! and `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

pub use memberflow_infra::metrics::{SharedRegistry, latency_buckets, registry};

/// Registers `process_start_time_seconds` (as Prometheus's own process
/// collectors name it), set to now. A process that ends on a worker's
/// failure is restarted by its supervisor; a counter bumped just before it
/// exits is never scraped, but a start time that keeps changing is what the
/// alert `InstanceRestarting` watches.
pub fn register_start_time(registry: &SharedRegistry) {
    let started: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64> =
        Default::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    started.set(now.as_secs_f64());
    registry
        .lock()
        .expect("metrics registry poisoned")
        .register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            started,
        );
}

/// Registers `worker_poll_seconds_total{worker}` (time spent inside the
/// polls of each named worker, and the units of work under `units`) and
/// `worker_wakeups_total{worker}` (how often each was polled), read from
/// `costs` at each scrape (see `memberflow_lifecycle::Costs` for why).
pub fn register_worker_costs(registry: &SharedRegistry, costs: memberflow_lifecycle::Costs) {
    registry
        .lock()
        .expect("metrics registry poisoned")
        .register_collector(Box::new(WorkerCosts(costs)));
}

#[derive(Debug)]
struct WorkerCosts(memberflow_lifecycle::Costs);

impl prometheus_client::collector::Collector for WorkerCosts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let spent = self.0.snapshot();
        worker_counter(
            &mut encoder,
            "worker_poll_seconds",
            "Wall-clock time spent inside the polls of each worker (and `units`, the units of work), in seconds",
            &spent,
            |s| s.busy.as_secs_f64(),
        )?;
        worker_counter(
            &mut encoder,
            "worker_wakeups",
            "Times each worker (and `units`) was polled: its wake-ups",
            &spent,
            |s| s.wakeups,
        )
    }
}

/// One counter family, `{name}_total{worker}`, with `value` of each account.
fn worker_counter<N>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    spent: &[memberflow_lifecycle::Spent],
    value: impl Fn(&memberflow_lifecycle::Spent) -> N,
) -> Result<(), std::fmt::Error>
where
    prometheus_client::metrics::counter::ConstCounter<N>: prometheus_client::encoding::EncodeMetric,
{
    use prometheus_client::{
        encoding::EncodeMetric as _,
        metrics::{MetricType, counter::ConstCounter},
    };
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for s in spent {
        ConstCounter::new(value(s)).encode(family.encode_family(&[("worker", s.name)])?)?;
    }
    Ok(())
}

/// The registry in Prometheus text format.
pub fn render(registry: &SharedRegistry) -> String {
    let mut out = String::new();
    let registry = registry.lock().expect("metrics registry poisoned");
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handled {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handling {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// The gRPC server metrics of one service instance.
#[derive(Clone)]
pub struct GrpcMetrics {
    handled: Family<Handled, Counter>,
    handling: Family<Handling, Histogram>,
    /// `grpc_type` of each method path, from the served descriptors.
    kinds: Arc<HashMap<String, &'static str>>,
}

impl std::fmt::Debug for GrpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcMetrics")
    }
}

impl GrpcMetrics {
    /// Registers the two families in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let m = Self {
            handled: Family::default(),
            handling: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            kinds: Arc::new(rpc_kinds()),
        };
        let mut r = registry.lock().expect("metrics registry poisoned");
        r.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            m.handled.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's arrival to its status",
            m.handling.clone(),
        );
        m
    }

    fn record(&self, rpc: &Rpc, code: tonic::Code, seconds: f64) {
        self.handled
            .get_or_create(&Handled {
                grpc_type: rpc.kind,
                grpc_service: rpc.service.clone(),
                grpc_method: rpc.method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
        self.handling
            .get_or_create(&Handling {
                grpc_type: rpc.kind,
                grpc_service: rpc.service.clone(),
                grpc_method: rpc.method.clone(),
            })
            .observe(seconds);
    }
}

/// The `grpc_code` label: the code's name as go-grpc-prometheus writes it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc_type` label of every method either server serves, by path
/// (`/auth.v1.AuthService/ListMembers`), read from the descriptors, so a new
/// streaming RPC is labelled right without a list to keep in step.
fn rpc_kinds() -> HashMap<String, &'static str> {
    use prost::Message as _;
    [
        memberflow_contract::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(|bytes| {
        prost_types::FileDescriptorSet::decode(bytes)
            .expect("descriptors compiled into the binary are valid")
            .file
    })
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let prefix = format!("/{package}.{}/", service.name());
            service.method.into_iter().map(move |m| {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (false, true) => "server_stream",
                    (true, false) => "client_stream",
                    (true, true) => "bidi_stream",
                };
                (format!("{prefix}{}", m.name()), kind)
            })
        })
    })
    .collect()
}

/// One RPC being handled.
struct Rpc {
    kind: &'static str,
    service: String,
    method: String,
    started: Instant,
    metrics: GrpcMetrics,
}

impl Rpc {
    fn from_path(path: &str, metrics: GrpcMetrics) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let kind = metrics.kinds.get(path).copied().unwrap_or("unary");
        Self {
            kind,
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            metrics,
        }
    }

    fn finish(self, code: tonic::Code) {
        self.metrics
            .record(&self, code, self.started.elapsed().as_secs_f64());
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A tower layer recording [`GrpcMetrics`] for every RPC the server handles:
/// the status from the response headers (an immediate error) or trailers
/// (the normal end), the time until then.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer(pub GrpcMetrics);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let rpc = Rpc::from_path(req.uri().path(), self.metrics.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let (parts, body) = res.into_parts();
            let rpc = match status_of(&parts.headers) {
                // Trailers-only: the status is already known.
                Some(code) => {
                    rpc.finish(code);
                    None
                }
                None => Some(rpc),
            };
            Ok(http::Response::from_parts(
                parts,
                RecordedBody {
                    inner: Box::pin(body),
                    rpc,
                },
            ))
        })
    }
}

/// A response body that records its RPC when the trailers carry the status.
pub struct RecordedBody<B> {
    inner: Pin<Box<B>>,
    rpc: Option<Rpc>,
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of)
                    && let Some(rpc) = self.rpc.take()
                {
                    rpc.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(rpc) = self.rpc.take() {
                    rpc.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RecordedBody<B> {
    /// A client that goes away before the end: cancelled.
    fn drop(&mut self) {
        if let Some(rpc) = self.rpc.take() {
            rpc.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rpc_kinds_come_from_the_descriptors() {
        let kinds = super::rpc_kinds();
        assert_eq!(kinds["/auth.v1.AuthService/SignUp"], "unary");
        assert_eq!(kinds["/auth.v1.AuthService/ListMembers"], "server_stream");
        assert_eq!(kinds["/task.v1.TaskService/CreateTask"], "unary");
        assert_eq!(kinds["/grpc.health.v1.Health/Watch"], "server_stream");
        assert_eq!(
            kinds["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"],
            "bidi_stream"
        );
    }
}
