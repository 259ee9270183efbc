//! How a memberflow service runs: the gRPC server and its limits, settings
//! and the start-up audit, the admin endpoint and metrics, telemetry, the
//! PostgreSQL pool and error classes, broker connections, TLS and shutdown.
//! What crosses a process boundary is in `memberflow_contract`, not here.
pub mod admin_http;
pub mod db;
pub mod error;
pub mod grpc;
pub mod handshake;
pub mod limits;
pub mod metrics;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod unit;

/// Shared with the outbox library (`memberflow-infra`), re-exported so the
/// services keep one path.
pub use memberflow_infra::{amqp, deserialize_list, lease};
