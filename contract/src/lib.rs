//! The contract between memberflow's services and their clients: what
//! crosses a process boundary, and nothing that does I/O.
//!
//! - [`proto`]: the generated RPC and event messages (and tonic's service
//!   stubs, built without its transport);
//! - [`topology`]: the AMQP exchange, queue and routing-key names;
//! - [`token`]: the access-token claims, the JWK form of a key and the
//!   Ed25519 signing and verifying rule;
//! - [`consistency`]: the consistency token; [`digest`]: the replica digest;
//! - [`reasons`]: the `ErrorInfo` names clients match on;
//! - [`text`]: the exact input rules for free text; [`time`]: timestamps.
//!
//! It depends on no database, broker, HTTP server or telemetry crate, so a
//! third service or a tool that only reads `member.events` can take it alone.
pub mod consistency;
pub mod digest;
pub mod proto;
pub mod reasons;
pub mod text;
pub mod time;
pub mod token;
pub mod topology;
