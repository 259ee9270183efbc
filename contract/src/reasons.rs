//! The `google.rpc.ErrorInfo` names clients match on. A client library
//! retries exactly the answers carrying [`USER_NOT_READY`] in [`TASK_DOMAIN`].

/// `google.rpc.ErrorInfo` reason for a member task has not replicated yet.
pub const USER_NOT_READY: &str = "USER_NOT_READY";
/// `google.rpc.ErrorInfo` domain of task's errors.
pub const TASK_DOMAIN: &str = "task.v1";
/// `google.rpc.ErrorInfo` domain of auth's errors.
pub const AUTH_DOMAIN: &str = "auth.v1";
/// `google.rpc.ErrorInfo` reason (PERMISSION_DENIED) for a suspended member:
/// auth refuses their Login, task every call, decided from its replica.
pub const MEMBER_SUSPENDED: &str = "MEMBER_SUSPENDED";
/// `google.rpc.ErrorInfo` reason (PERMISSION_DENIED) for a caller who is not
/// an admin calling what only admins may.
pub const NOT_ADMIN: &str = "NOT_ADMIN";
/// `google.rpc.ErrorInfo` reason (FAILED_PRECONDITION) for a role change or
/// suspension that would leave no active admin.
pub const LAST_ADMIN: &str = "LAST_ADMIN";
