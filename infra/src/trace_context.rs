//! W3C Trace Context across the hop, so one trace runs from a SignUp through
//! the outbox and the broker to task's replica write:
//!
//! * a `traceparent` in incoming gRPC metadata continues that trace
//!   ([`from_headers`], in the server's span per RPC);
//! * the outbox row stores the context of the change that wrote it
//!   ([`current`]), in the same transaction;
//! * the relay publishes it as the AMQP headers `traceparent` and
//!   `tracestate`, from its publish span;
//! * the consumer's apply span continues the event's trace, or links to
//!   each trace when a batch holds several;
//! * task→auth calls carry `traceparent` in their metadata
//!   ([`inject_metadata`]).
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header carrying the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// A trace context as text: outbox columns, AMQP headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The context of `span`, as text.
pub fn carrier_of(span: &tracing::Span) -> Carrier {
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// The context of the current span, as text.
pub fn current() -> Carrier {
    carrier_of(&tracing::Span::current())
}

/// The context `carrier` describes (empty when it holds none).
pub fn context_of(carrier: &Carrier) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// Makes `span` continue the trace `parent` carries, if it carries one, and
/// records the trace id in the span's `trace_id` field, so logs show it.
pub fn continue_trace(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}
