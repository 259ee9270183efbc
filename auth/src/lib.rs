//! The auth service: signs members up and publishes their events through a
//! transactional outbox. See `startup::Application` for the entry point.
pub mod domain;
pub mod erasure;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod outbox;
pub mod password;
pub mod permissions;
pub mod repo;
pub mod sessions;
pub mod settings;
pub mod startup;
pub mod throttle;
pub mod usecases;

pub use error::Error;
pub use settings::Settings;
pub use startup::{Application, SERVICE_NAME, serve};
