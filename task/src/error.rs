//! The task service's error type and its one mapping to gRPC status.
use std::{collections::HashMap, time::Duration};

use memberflow_common::{grpc::Violations, telemetry::error_chain};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

/// `google.rpc.ErrorInfo` reason for a member task has not replicated yet.
pub const USER_NOT_READY: &str = "USER_NOT_READY";
/// `google.rpc.ErrorInfo` domain of task's errors.
pub const DOMAIN: &str = "task.v1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidArgument(#[from] Violations),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("member {member_id} is not ready yet; retry after {retry_after:?}")]
    UserNotReady {
        member_id: Uuid,
        retry_after: Duration,
    },
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
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::UserNotReady {
                member_id,
                retry_after,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    USER_NOT_READY,
                    DOMAIN,
                    HashMap::from([("member_id".to_owned(), member_id.to_string())]),
                );
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(
                    Code::Unavailable,
                    format!("member {member_id} is not ready yet"),
                    details,
                )
            }
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
