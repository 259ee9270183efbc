//! The admin HTTP endpoint each service serves on `metrics.addr`, for
//! Prometheus and for orchestrators that probe HTTP rather than gRPC:
//!
//! * `GET /metrics`: the instance's registry in Prometheus text format;
//! * `GET /livez`: 200 while the process runs (restart it if this fails);
//! * `GET /readyz`: 200 while gRPC health says SERVING, 503 otherwise (take
//!   it out of the load balancer, do not restart it).
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{SharedRegistry, render};

/// `[metrics]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// Where `/metrics`, `/livez` and `/readyz` are served; port 0 picks a
    /// free port (tests). Each service's default comes from its `load`.
    pub addr: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".into(),
        }
    }
}

/// Whether the service is ready, as its gRPC health says.
pub type Readiness = Arc<AtomicBool>;

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: SharedRegistry,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error.message = %e, "admin endpoint cannot accept");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let registry = registry.clone();
        let ready = ready.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = route(&req, &registry, &ready);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    registry: &SharedRegistry,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        "/livez" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if ready.load(Ordering::Acquire) => text(StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}
