//! The failures both services answer the same way, and their one mapping to
//! gRPC status, bad input's field violations included. Each service wraps [`Failure`] in its own error enum, next to
//! the variants only it has (see [`service_error!`]).
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{db, telemetry::error_chain};

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
    /// The caller may not do this (not an admin; a suspended member):
    /// `PERMISSION_DENIED` with `google.rpc.ErrorInfo` `reason` in `domain`.
    #[error("{message}")]
    Denied {
        reason: &'static str,
        domain: &'static str,
        message: String,
    },
    /// The request is valid but the state it meets forbids it (the last
    /// admin): `FAILED_PRECONDITION` with ErrorInfo `reason` in `domain`.
    #[error("{message}")]
    Precondition {
        reason: &'static str,
        domain: &'static str,
        message: String,
    },
    /// The database failed in a way that passes (see [`db::is_transient`]):
    /// the client may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The caller stopped waiting before a step of its unit of work began
    /// (see `unit::caller_waits`): nothing of that step was done. Nobody
    /// reads the answer; it is `CANCELLED` for the logs and metrics.
    #[error("the caller has gone")]
    CallerGone,
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
            Failure::Denied {
                reason,
                domain,
                message,
            } => with_reason(tonic::Code::PermissionDenied, reason, domain, message),
            Failure::Precondition {
                reason,
                domain,
                message,
            } => with_reason(tonic::Code::FailedPrecondition, reason, domain, message),
            Failure::CallerGone => Status::cancelled(e.to_string()),
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

/// A status of `code` with one `google.rpc.ErrorInfo`, which clients match
/// on rather than on the message.
fn with_reason(code: tonic::Code, reason: &str, domain: &str, message: String) -> Status {
    let mut details = tonic_types::ErrorDetails::new();
    details.set_error_info(reason, domain, std::collections::HashMap::new());
    <Status as tonic_types::StatusExt>::with_error_details(code, message, details)
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
        impl From<$crate::error::Violations> for $error {
            fn from(e: $crate::error::Violations) -> Self {
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

/// Collects field violations while validating a request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is invalid because of `description`.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of `result`, if any, and passes its value on.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result.map_err(|e| self.add(field, e.to_string())).ok()
    }

    /// `Ok` when nothing was recorded, else the violations as an error.
    pub fn finish(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<_> = self.0.iter().map(|v| v.field.as_str()).collect();
        write!(f, "invalid {}", fields.join(", "))
    }
}

impl std::error::Error for Violations {}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming every bad field.
impl From<Violations> for Status {
    fn from(v: Violations) -> Self {
        let message = v.to_string();
        Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(v.0),
        )
    }
}
