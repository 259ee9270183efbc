//! What auth and task truly share: generated proto code, config and telemetry
//! bootstrap, the AMQP topology, the retry policy, access tokens, gRPC service
//! hygiene and the TaskService client with backoff.
pub mod admin_http;
pub mod amqp;
pub mod client;
pub mod consistency;
pub mod db;
pub mod digest;
pub mod error;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod retry;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod token;
pub mod trace_context;
