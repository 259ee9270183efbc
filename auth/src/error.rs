//! The auth service's error type and its one mapping to gRPC status.
use memberflow_common::{grpc::Violations, telemetry::error_chain};
use tonic::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidArgument(#[from] Violations),
    #[error("a member with this email already exists")]
    EmailTaken,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("member {0} not found")]
    MemberNotFound(Uuid),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if memberflow_common::db::is_unavailable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Unexpected(e.into())
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(v) => v.into(),
            Error::EmailTaken => Status::already_exists(e.to_string()),
            Error::BadCredentials => Status::unauthenticated(e.to_string()),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::MemberNotFound(_) => Status::not_found(e.to_string()),
            Error::Unavailable(ref source) => {
                tracing::warn!(error.cause_chain = %error_chain(source), "database unavailable");
                Status::unavailable(e.to_string())
            }
            Error::Unexpected(ref source) => {
                tracing::error!(error.cause_chain = ?source, error.message = %source, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
