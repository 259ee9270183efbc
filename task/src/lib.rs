//! The task service: members' tasks on top of an idempotent replica of auth's
//! members. See `startup::Application` for the entry point.
pub mod auth_client;
pub mod consumer;
pub mod dlq;
pub mod domain;
pub mod ended_sessions;
pub mod erasure;
pub mod error;
pub mod freshness;
pub mod grpc;
pub mod inbox;
pub mod keys;
pub mod metrics;
pub mod miss;
pub mod read_through;
pub mod reconcile;
pub mod repair;
pub mod replica;
pub mod repo;
pub mod resync;
pub mod settings;
pub mod startup;
pub mod usecases;

pub use error::Error;
pub use settings::{ConsistencyMode, Settings};
pub use startup::{Application, SERVICE_NAME, serve};
