//! Trace context on gRPC: an incoming request's `traceparent` continues its
//! trace ([`from_headers`]), and task's calls to auth carry theirs
//! ([`inject_metadata`]). The rest (the carrier the outbox stores and the
//! relay publishes as AMQP headers) is `memberflow_infra::trace_context`,
//! re-exported here.
use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

pub use memberflow_infra::trace_context::*;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The context an incoming request's headers carry.
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Adds the current span's context to outgoing gRPC metadata.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let carrier = current();
    for (key, value) in [
        (TRACEPARENT, carrier.traceparent),
        (TRACESTATE, carrier.tracestate),
    ] {
        if let Some(value) = value.and_then(|v| v.parse().ok()) {
            metadata.insert(key, value);
        }
    }
}
