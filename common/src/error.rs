//! The failures both services answer the same way, and their one mapping to
//! gRPC status. Each service wraps [`Failure`] in its own error enum, next to
//! the variants only it has (see [`service_error!`]).
use tonic::Status;

use crate::{db, grpc::Violations, telemetry::error_chain};

/// `google.rpc.ErrorInfo` reason for a member task has not replicated yet.
pub const USER_NOT_READY: &str = "USER_NOT_READY";
/// `google.rpc.ErrorInfo` domain of task's errors.
pub const TASK_DOMAIN: &str = "task.v1";

/// A failure any RPC of either service can meet.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    InvalidArgument(#[from] Violations),
    #[error("{0}")]
    Unauthenticated(String),
    /// What was not found, e.g. `member 0193…`.
    #[error("{0} not found")]
    NotFound(String),
    /// A limit was reached (login throttling, a full hashing queue, too many
    /// calls at once): `RESOURCE_EXHAUSTED` with `RetryInfo`.
    #[error("{message}")]
    Exhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    /// The database failed in a way that passes (see [`db::is_transient`]):
    /// the client may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if db::is_transient(&e) {
            Self::Unavailable(e)
        } else {
            Self::Unexpected(e.into())
        }
    }
}

impl From<Failure> for Status {
    fn from(e: Failure) -> Self {
        match e {
            Failure::InvalidArgument(v) => v.into(),
            Failure::Unauthenticated(msg) => Status::unauthenticated(msg),
            Failure::NotFound(_) => Status::not_found(e.to_string()),
            Failure::Exhausted {
                message,
                retry_after,
            } => {
                let mut details = tonic_types::ErrorDetails::new();
                details.set_retry_info(Some(retry_after));
                <Status as tonic_types::StatusExt>::with_error_details(
                    tonic::Code::ResourceExhausted,
                    message,
                    details,
                )
            }
            Failure::Unavailable(ref source) => {
                tracing::warn!(error.cause_chain = %error_chain(source), "database unavailable");
                Status::unavailable(e.to_string())
            }
            Failure::Unexpected(ref source) => {
                tracing::error!(error.cause_chain = ?source, error.message = %source, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Gives a service's error enum, which has a `Common(Failure)` variant, the
/// conversions `?` needs from sqlx, validation and anyhow errors.
#[macro_export]
macro_rules! service_error {
    ($error:ty) => {
        impl From<$crate::error::Failure> for $error {
            fn from(e: $crate::error::Failure) -> Self {
                Self::Common(e)
            }
        }
        impl From<::sqlx::Error> for $error {
            fn from(e: ::sqlx::Error) -> Self {
                Self::Common(e.into())
            }
        }
        impl From<$crate::grpc::Violations> for $error {
            fn from(e: $crate::grpc::Violations) -> Self {
                Self::Common(e.into())
            }
        }
        impl From<::anyhow::Error> for $error {
            fn from(e: ::anyhow::Error) -> Self {
                Self::Common(e.into())
            }
        }
    };
}
