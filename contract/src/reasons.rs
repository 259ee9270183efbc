//! The `google.rpc.ErrorInfo` names clients match on. A client library
//! retries exactly the answers carrying [`USER_NOT_READY`] in [`TASK_DOMAIN`].

/// `google.rpc.ErrorInfo` reason for a member task has not replicated yet.
pub const USER_NOT_READY: &str = "USER_NOT_READY";
/// `google.rpc.ErrorInfo` domain of task's errors.
pub const TASK_DOMAIN: &str = "task.v1";
