//! The auth service's error type: its own variants beside the shared
//! [`Failure`], mapped to gRPC status in one place.
use memberflow_runtime::error::Failure;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What every service answers alike.
    #[error(transparent)]
    Common(Failure),
    #[error("a member with this email already exists")]
    EmailTaken,
    #[error("invalid email or password")]
    BadCredentials,
    /// The password changed between reading and writing it.
    #[error("the password was changed concurrently; try again")]
    ConcurrentChange,
    /// A refresh token presented again within `token.refresh_reuse_grace_ms`
    /// of its rotation: a client's retry, which ends nothing.
    #[error("this refresh token was rotated a moment ago; use the tokens that rotation answered")]
    RefreshRetried,
}

memberflow_runtime::service_error!(Error);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::EmailTaken => Status::already_exists(e.to_string()),
            Error::BadCredentials => Status::unauthenticated(e.to_string()),
            Error::ConcurrentChange | Error::RefreshRetried => Status::aborted(e.to_string()),
            Error::Common(f) => f.into(),
        }
    }
}
