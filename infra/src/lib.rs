//! What the server runtime and the outbox library share about PostgreSQL
//! and RabbitMQ, apart from any server: AMQP connections to one node or a
//! cluster ([`amqp`]), the fenced lease that elects one relay or reconciler
//! per database ([`lease`]), one classification of database faults and
//! LISTEN ([`pg`]), W3C trace context as the outbox stores and the relay
//! publishes it ([`trace_context`]), and the metrics registry type
//! ([`metrics`]).
//!
//! Why a crate of its own: `memberflow-outbox` is a library another service
//! could adopt, so it must not pull in the gRPC server, its settings loader
//! and the OTLP exporter (`memberflow-runtime`) to get these.
pub mod amqp;
pub mod lease;
mod list_setting;
pub mod metrics;
pub mod pg;
pub mod trace_context;

pub use list_setting::deserialize_list;

/// Formats an error with its whole cause chain, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}
