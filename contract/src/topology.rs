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
/// Routing key of a `auth.v1.MemberDeleted` (DeleteAccount).
pub const MEMBER_DELETED: &str = "member.deleted";
/// Routing key of a `auth.v1.MemberSessionEnded` (one session: Logout,
/// RevokeSession, a refresh token's reuse).
pub const MEMBER_SESSION_ENDED: &str = "member.session_ended";
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

/// The broker rights of each principal, so that the docs, compose and the
/// tests grant exactly the same thing: least privilege, one user per
/// service and one for the operator (`docs/security.md`, "Least
/// privilege").
pub mod rights {
    /// One user's `rabbitmqctl set_permissions` patterns (configure, write,
    /// read; each a regex matched against an exchange or queue name, the
    /// default exchange being `amq.default`), and its
    /// `set_topic_permissions` on [`super::EXCHANGE`] (write: routing keys
    /// it may publish with; read: binding keys it may bind with), if any.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rights {
        /// A user name suffix: the docs and compose call the users
        /// `memberflow-auth`, `memberflow-task`, `memberflow-admin`.
        pub principal: &'static str,
        pub configure: &'static str,
        pub write: &'static str,
        pub read: &'static str,
        /// (write, read) on `member.events`.
        pub topic: Option<(&'static str, &'static str)>,
    }

    /// auth declares and publishes to `member.events`, with `member.*`
    /// routing keys only; it reads nothing.
    pub const AUTH: Rights = Rights {
        principal: "auth",
        configure: r"^member\.events$",
        write: r"^member\.events$",
        read: "^$",
        topic: Some((r"^member\.", "^$")),
    };

    /// task declares `member.events` (configure, so either side may start
    /// first), declares, binds and consumes its own queues, and publishes
    /// to its own dead-letter exchange; it may not write to `member.events`.
    pub const TASK: Rights = Rights {
        principal: "task",
        configure: r"^(member\.events|task\.member-events(\.dlx|\.dlq)?)$",
        write: r"^task\.member-events(\.dlx|\.dlq)?$",
        read: r"^(member\.events|task\.member-events(\.dlx)?)$",
        topic: Some(("^$", r"^member\.")),
    };

    /// `memberflow-admin dlq list|replay`: reads the DLQ and publishes back
    /// to task's queue through the default exchange; declares nothing.
    pub const ADMIN: Rights = Rights {
        principal: "admin",
        configure: "^$",
        write: r"^amq\.default$",
        read: r"^task\.member-events\.dlq$",
        topic: None,
    };

    /// Every principal, in the order the docs list them.
    pub const ALL: [Rights; 3] = [AUTH, TASK, ADMIN];
}
