//! What one server takes on at once, and for how long: the limits every gRPC
//! server of memberflow applies before a request reaches its handler.
//!
//! Each refusal is a gRPC status the client can act on, never a dropped
//! connection:
//! - request metadata over `server.max_header_bytes` → RESOURCE_EXHAUSTED
//!   (as gRPC's own implementations answer oversized metadata);
//! - more than `server.concurrency_limit` calls in flight → RESOURCE_EXHAUSTED
//!   with RetryInfo, at once: shedding load beats queueing it behind a
//!   deadline the caller will miss anyway. Health checks are exempt, so an
//!   overloaded instance is not also reported dead;
//! - a handler running past `server.request_timeout_ms` → DEADLINE_EXCEEDED
//!   (a shorter `grpc-timeout` from the client applies as well; tonic
//!   enforces that one). The caller stops waiting; a unit of work the call
//!   started still finishes, and keeps the call's slot until then
//!   (`unit::CallSlot`);
//! - a connection that has not sent its HTTP/2 preface within
//!   `server.handshake_timeout_ms` is closed (`handshake`).
//!
//! Message size and HTTP/2 settings are applied where tonic configures them
//! (see `grpc::server`).
use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::error::Failure;

/// `[server]` limits (beside `addr`, see `settings::ServerSettings`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerLimits {
    /// Longest a handler may run before the call answers DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// Calls handled at once; past it, RESOURCE_EXHAUSTED at once.
    pub concurrency_limit: usize,
    /// Largest request message accepted; larger ones are refused before
    /// decoding.
    pub max_message_bytes: usize,
    /// Largest request metadata (HPACK-decoded names + values + 32 bytes per
    /// entry, as HTTP/2 counts it) answered normally.
    pub max_header_bytes: usize,
    /// HTTP/2 PING interval on idle connections, and how long a PING may go
    /// unanswered before the connection is closed: dead peers are noticed.
    pub keepalive_interval_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// How long a new connection may take to send its HTTP/2 preface (and,
    /// with TLS, to finish the TLS handshake) before it is closed.
    pub handshake_timeout_ms: u64,
    /// How long a stopping service may take to drain (in-flight calls,
    /// workers, units of work) before it aborts what is left and exits
    /// anyway, naming what it aborted. Keep it below the supervisor's own
    /// kill timeout (Kubernetes' `terminationGracePeriodSeconds`, 30 s).
    pub shutdown_grace_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            concurrency_limit: 1_024,
            max_message_bytes: 64 * 1024,
            max_header_bytes: 8 * 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            handshake_timeout_ms: 5_000,
            shutdown_grace_ms: 25_000,
        }
    }
}

impl ServerLimits {
    /// See [`Self::handshake_timeout_ms`].
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }

    /// See [`Self::shutdown_grace_ms`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The HTTP/2 header list limit hyper enforces by resetting the stream:
    /// far above `max_header_bytes`, so that what lies between gets a clean
    /// status from [`LimitsLayer`] and only abuse meets the hard limit.
    pub fn hard_header_bytes(&self) -> u32 {
        (self.max_header_bytes.saturating_mul(8)).max(64 * 1024) as u32
    }
}

/// How long a client shed for concurrency should wait before retrying.
const BUSY_RETRY_AFTER: Duration = Duration::from_millis(50);
/// Paths exempt from the concurrency limit.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The tower layer applying [`ServerLimits`].
#[derive(Debug, Clone)]
pub struct LimitsLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
    max_header_bytes: usize,
}

impl LimitsLayer {
    pub fn new(limits: &ServerLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrency_limit.max(1))),
            timeout: Duration::from_millis(limits.request_timeout_ms.max(1)),
            max_header_bytes: limits.max_header_bytes,
        }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

/// See [`LimitsLayer`].
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: LimitsLayer,
}

/// Metadata size as HTTP/2 counts it (RFC 7540 §6.5.2).
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

fn refuse(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for Limited<S>
where
    S: tower::Service<
            http::Request<ReqBody>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let size = header_list_size(req.headers());
        let max = self.limits.max_header_bytes;
        if size > max {
            let status = Status::resource_exhausted(format!(
                "request metadata is {size} bytes; the limit is {max}"
            ));
            return Box::pin(std::future::ready(Ok(refuse(status))));
        }
        let permit = if req.uri().path().starts_with(HEALTH_PREFIX) {
            None
        } else {
            match self.limits.permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let status = Status::from(Failure::Exhausted {
                        message: "the server is handling as many calls as it allows; retry".into(),
                        retry_after: BUSY_RETRY_AFTER,
                    });
                    return Box::pin(std::future::ready(Ok(refuse(status))));
                }
            }
        };
        // The handler's unit of work keeps the slot after a cancel or a
        // timeout ends this future (see `unit`), so the limit counts it.
        let permit = permit.map(crate::unit::CallSlot::new);
        if let Some(slot) = &permit {
            req.extensions_mut().insert(slot.clone());
        }
        let timeout = self.limits.timeout;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = tokio::time::timeout(timeout, fut).await;
            drop(permit);
            match res {
                Ok(r) => r,
                Err(_) => Ok(refuse(Status::deadline_exceeded(format!(
                    "the call took longer than the server's {} ms limit",
                    timeout.as_millis()
                )))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_size_counts_as_http2_does() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(header_list_size(&h), "authorization".len() + 10 + 32);
        assert!(ServerLimits::default().hard_header_bytes() as usize > 8 * 1024);
    }
}
