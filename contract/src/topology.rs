//! The AMQP names both sides agree on.
//!
//! auth publishes to [`EXCHANGE`]; task binds its own queues to it. Only the
//! exchange, the routing keys and the message properties are shared: each
//! service declares what it owns (auth the exchange, task its queues).

/// Durable topic exchange carrying member events.
pub const EXCHANGE: &str = "member.events";
/// Routing key of a `auth.v1.MemberChanged` at signup (version 1).
pub const MEMBER_CREATED: &str = "member.created";
/// Routing key of a `auth.v1.MemberChanged` after a profile change.
pub const MEMBER_UPDATED: &str = "member.updated";
/// Routing key of a `auth.v1.MemberSessionsRevoked` (Logout, ChangePassword).
pub const MEMBER_SESSIONS_REVOKED: &str = "member.sessions_revoked";
/// Content type of every event body.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// AMQP `delivery_mode` for persistent messages.
pub const PERSISTENT: u8 = 2;

// task's own queues, named here so operators' tools (memberflow-admin, the
// tests) need not depend on task.

/// The queue task consumes, bound to `member.events` with `member.*`.
pub const QUEUE: &str = "task.member-events";
/// Where permanently bad messages go.
pub const DEAD_LETTER_EXCHANGE: &str = "task.member-events.dlx";
/// The dead-letter queue; `memberflow-admin dlq list` shows it.
pub const DEAD_LETTER_QUEUE: &str = "task.member-events.dlq";
/// Header a dead-lettered message carries: why it could not be applied.
pub const REASON_HEADER: &str = "x-memberflow-reason";
