//! How a memberflow service runs: the gRPC server and its limits, settings
//! and the start-up audit, the admin endpoint and metrics, telemetry, the
//! PostgreSQL pool and error classes, broker connections, TLS and shutdown.
//! What crosses a process boundary is in `memberflow_contract`, not here.
pub mod admin_http;
pub mod amqp;
pub mod db;
pub mod error;
pub mod grpc;
pub mod handshake;
pub mod lease;
pub mod limits;
pub mod list_setting;
pub mod metrics;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod unit;
