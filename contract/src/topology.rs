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

// The erasure saga's way back: each replica publishes a receipt through its
// own outbox, auth consumes them (docs/deletion.md).

/// Durable topic exchange carrying erasure receipts (`task.v1.MemberErased`).
pub const ERASURE_EXCHANGE: &str = "member.erasures";
/// Routing key of a `task.v1.MemberErased`.
pub const MEMBER_ERASED: &str = "member.erased";
/// auth's quorum queue of receipts, bound to [`ERASURE_EXCHANGE`] with
/// [`MEMBER_ERASED`].
pub const ERASURE_QUEUE: &str = "auth.member-erasures";
/// Where auth dead-letters a receipt it can never record.
pub const ERASURE_DEAD_LETTER_EXCHANGE: &str = "auth.member-erasures.dlx";
/// auth's receipt dead-letter queue.
pub const ERASURE_DEAD_LETTER_QUEUE: &str = "auth.member-erasures.dlq";
/// The name task signs its receipts with, and auth's default
/// `erasure.expected_services`.
pub const TASK_SERVICE: &str = "task";

/// The broker rights of each principal, so that the docs, compose and the
/// tests grant exactly the same thing: least privilege, one user per
/// service and one for the operator (`docs/security.md`, "Least
/// privilege").
pub mod rights {
    /// One user's `rabbitmqctl set_permissions` patterns (configure, write,
    /// read; each a regex matched against an exchange or queue name, the
    /// default exchange being `amq.default`), and its
    /// `set_topic_permissions` per topic exchange (write: routing keys it
    /// may publish with; read: binding keys it may bind with).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rights {
        /// A user name suffix: the docs and compose call the users
        /// `memberflow-auth`, `memberflow-task`, `memberflow-admin`.
        pub principal: &'static str,
        pub configure: &'static str,
        pub write: &'static str,
        pub read: &'static str,
        /// Its topic permissions.
        pub topics: &'static [Topic],
    }

    /// `rabbitmqctl set_topic_permissions USER EXCHANGE WRITE READ`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Topic {
        pub exchange: &'static str,
        /// Routing keys the user may publish with.
        pub write: &'static str,
        /// Binding keys the user may bind a queue with.
        pub read: &'static str,
    }

    /// auth declares and publishes to `member.events`, with `member.*`
    /// routing keys only. For the erasure saga it declares `member.erasures`
    /// (so either side may start first) and binds, consumes and
    /// dead-letters its own receipt queues; it may not publish a receipt.
    pub const AUTH: Rights = Rights {
        principal: "auth",
        configure: r"^(member\.events|member\.erasures|auth\.member-erasures(\.dlx|\.dlq)?)$",
        write: r"^(member\.events|auth\.member-erasures(\.dlx|\.dlq)?)$",
        read: r"^(member\.erasures|auth\.member-erasures(\.dlx)?)$",
        topics: &[
            Topic {
                exchange: "member.events",
                write: r"^member\.",
                read: "^$",
            },
            Topic {
                exchange: "member.erasures",
                write: "^$",
                read: r"^member\.erased$",
            },
        ],
    };

    /// task declares `member.events` (configure, so either side may start
    /// first), declares, binds and consumes its own queues, and publishes
    /// to its own dead-letter exchange; it may not write to `member.events`.
    /// It declares and publishes its erasure receipts to `member.erasures`,
    /// with the routing key `member.erased` only.
    pub const TASK: Rights = Rights {
        principal: "task",
        configure: r"^(member\.events|member\.erasures|task\.member-events(\.dlx|\.dlq)?)$",
        write: r"^(member\.erasures|task\.member-events(\.dlx|\.dlq)?)$",
        read: r"^(member\.events|task\.member-events(\.dlx)?)$",
        topics: &[
            Topic {
                exchange: "member.events",
                write: "^$",
                read: r"^member\.",
            },
            Topic {
                exchange: "member.erasures",
                write: r"^member\.erased$",
                read: "^$",
            },
        ],
    };

    /// `memberflow-admin dlq list|replay`: reads the DLQ and publishes back
    /// to task's queue through the default exchange; declares nothing.
    pub const ADMIN: Rights = Rights {
        principal: "admin",
        configure: "^$",
        write: r"^amq\.default$",
        read: r"^task\.member-events\.dlq$",
        topics: &[],
    };

    /// Every principal, in the order the docs list them.
    pub const ALL: [Rights; 3] = [AUTH, TASK, ADMIN];
}
