//! auth's use cases, one function each, read top to bottom: what a call
//! reads, checks, writes and commits. Each runs as a unit of work
//! (`memberflow_runtime::unit`): the gRPC handler decodes and authorises,
//! then hands the use case to `Units::run`, so a caller's cancel never cuts
//! one halfway; a use case's database work commits or never starts. No
//! transaction lives in `grpc.rs`.
//!
//! | use case | RPC | file |
//! |---|---|---|
//! | [`Auth::sign_up`] | SignUp | `sign_up.rs` |
//! | [`Auth::login`], [`Auth::refresh`] | Login, Refresh | `login.rs` |
//! | [`Auth::logout`], [`Auth::revoke_session`], [`Auth::list_sessions`] | Logout, RevokeSession, ListSessions | `sessions.rs` |
//! | [`Auth::update_profile`] | UpdateProfile | `profile.rs` |
//! | [`Auth::change_password`], [`Auth::delete_account`] | ChangePassword, DeleteAccount | `credentials.rs` |
//! | [`Auth::change_access`] | SetRole, SuspendMember, ReinstateMember | `permissions.rs` |
//! | [`Auth::get_member`], [`Auth::members_page`], [`Auth::digest`] | GetMember, ListMembers, DigestMembers | `replica_source.rs` |
mod credentials;
pub mod login;
mod permissions;
mod profile;
mod replica_source;
mod sessions;
mod sign_up;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use memberflow_contract::token::Signer;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::Member,
    outbox::write::Outbox,
    password::Hasher,
    sessions::{Lifetimes, RefreshToken},
    throttle::LoginThrottle,
};

pub use credentials::Deleting;
pub use sessions::SessionView;

/// What auth's use cases need. Cloning shares it (a pool, Arcs, keys), so
/// each unit of work owns its own handle and outlives its caller.
#[derive(Clone)]
pub struct Auth {
    pub(crate) pool: PgPool,
    pub(crate) hasher: Hasher,
    /// Signs access tokens; only auth holds it.
    pub(crate) signer: Signer,
    pub(crate) token_ttl: Duration,
    /// How long sessions and refresh tokens live.
    pub(crate) lifetimes: Lifetimes,
    /// Writes a change with its events and wakes the relay after each
    /// commit. Every write that emits an event goes through it.
    pub(crate) outbox: Outbox,
    /// The services whose receipts complete an erasure
    /// (`erasure.expected_services`).
    pub(crate) erasure_expected: Arc<[String]>,
    /// Login and ChangePassword attempts per account and per peer.
    pub(crate) throttle: LoginThrottle,
}

/// The tokens of a session after a Login, Refresh or ChangePassword.
pub struct Issued {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub session_id: Uuid,
}

impl Auth {
    /// Signs an access token for `member` in `session`.
    fn issue(
        &self,
        member: &Member,
        session: Uuid,
        refresh: RefreshToken,
        expires_at: DateTime<Utc>,
    ) -> Issued {
        Issued {
            access_token: self.signer.issue_in_session(
                member.id,
                member.version,
                session,
                expires_at,
            ),
            expires_at,
            refresh_token: refresh.into_string(),
            session_id: session,
        }
    }
}

/// Records the event a use case wrote on the call's span.
fn record_event(event_id: Uuid) {
    tracing::Span::current().record("event_id", tracing::field::display(event_id));
}

/// What a token of a deleted member gets.
const DELETED: &str = "the account was deleted";
/// What a token from before a Logout or ChangePassword gets.
const REVOKED: &str = "the access token was revoked (logout or password change); log in again";
/// What a token of an ended session gets.
const SESSION_ENDED: &str = "the access token's session has ended (logout); log in again";
