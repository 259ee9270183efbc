//! The task service's error type: its own variants beside the shared
//! [`Failure`], mapped to gRPC status in one place.
use std::{collections::HashMap, time::Duration};

use memberflow_contract::reasons::TASK_DOMAIN;
use memberflow_contract::reasons::USER_NOT_READY;
use memberflow_runtime::error::Failure;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What every service answers alike.
    #[error(transparent)]
    Common(Failure),
    #[error("member {member_id} is not ready yet; retry after {retry_after:?}")]
    UserNotReady {
        member_id: Uuid,
        retry_after: Duration,
    },
    /// The member's region is not a zone this host's tzdata knows (auth may
    /// run newer tzdata); the event was kept, the task cannot be placed.
    #[error("the member's region {0:?} is not a time zone this service knows")]
    UnknownRegion(String),
}

memberflow_runtime::service_error!(Error);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::UserNotReady {
                member_id,
                retry_after,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    USER_NOT_READY,
                    TASK_DOMAIN,
                    HashMap::from([("member_id".to_owned(), member_id.to_string())]),
                );
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(
                    Code::Unavailable,
                    format!("member {member_id} is not ready yet"),
                    details,
                )
            }
            Error::UnknownRegion(_) => Status::failed_precondition(e.to_string()),
            Error::Common(f) => f.into(),
        }
    }
}
