//! Logout, RevokeSession and ListSessions, and the caller checks every
//! member write shares.
use chrono::{DateTime, Utc};
use memberflow_contract::token::Verified;
use memberflow_runtime::error::Failure;
use uuid::Uuid;

use crate::{
    Error,
    domain::Member,
    outbox::{EventKind, write::Enqueue},
    repo,
    sessions::{RefreshToken, store},
};

use super::{Auth, DELETED, Issued, REVOKED, SESSION_ENDED, record_event};

/// A live session, as ListSessions shows it.
pub struct SessionView {
    pub id: Uuid,
    pub client: String,
    pub created_at: DateTime<Utc>,
    pub last_refreshed_at: DateTime<Utc>,
    /// The caller's own session.
    pub current: bool,
}

impl Auth {
    /// Ends the caller's own session, or with `all` (or a token without a
    /// session of its own) every session of theirs. Answers the member and,
    /// when all ended, the time before which tokens are refused.
    pub async fn logout(
        self,
        caller: Verified,
        all: bool,
    ) -> Result<(Member, Option<DateTime<Utc>>), Error> {
        match caller.session {
            Some(session) if !all => {
                let member = self
                    .end_session(caller, session)
                    .await?
                    .ok_or_else(|| Failure::Unauthenticated(SESSION_ENDED.into()))?;
                Ok((member, None))
            }
            _ => {
                let (member, _) = self.revoke_sessions(caller, None, None).await?;
                let not_before = member.sessions_not_before;
                Ok((member, not_before))
            }
        }
    }

    /// Ends session `id` of the caller's.
    pub async fn revoke_session(self, caller: Verified, id: Uuid) -> Result<Member, Error> {
        self.end_session(caller, id)
            .await?
            .ok_or_else(|| Failure::NotFound("no such session".into()).into())
    }

    /// The caller's live sessions, newest first.
    pub async fn list_sessions(self, caller: Verified) -> Result<Vec<SessionView>, Error> {
        let mut conn = self.pool.acquire().await?;
        let member = repo::find_member(&mut conn, caller.member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        check_caller(&mut conn, caller, &member).await?;
        let sessions = store::list(
            &mut *conn,
            caller.member_id,
            Utc::now(),
            self.lifetimes.idle,
        )
        .await?;
        Ok(sessions
            .into_iter()
            .map(|s| SessionView {
                current: caller.session == Some(s.id),
                id: s.id,
                client: s.client,
                created_at: s.created_at,
                last_refreshed_at: s.last_refreshed_at,
            })
            .collect())
    }

    /// The caller's member row, locked, if their token is still valid: auth
    /// refuses a token from before a Logout or ChangePassword at once.
    pub(super) async fn lock_caller(
        &self,
        tx: &mut sqlx::PgConnection,
        caller: Verified,
    ) -> Result<Member, Error> {
        // No live row: the member deleted their account (a token is only
        // ever signed for a member that existed), so the token is refused.
        let member = repo::lock_member(tx, caller.member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        check_caller(tx, caller, &member).await?;
        Ok(member)
    }

    /// Ends every session of the caller but `keep`, and with `password`
    /// (old hash, new hash) changes their password, writing
    /// MemberSessionsRevoked in the same transaction. With `keep`, the
    /// caller's session continues with new tokens, issued in it.
    pub(super) async fn revoke_sessions(
        &self,
        caller: Verified,
        password: Option<(&str, &str)>,
        keep: Option<&str>,
    ) -> Result<(Member, Option<Issued>), Error> {
        let mut tx = self.outbox.begin().await?;
        self.lock_caller(&mut tx, caller).await?;
        let member = repo::revoke_sessions(&mut tx, caller.member_id, password)
            .await?
            .ok_or(Error::ConcurrentChange)?;
        let now = Utc::now();
        let kept = keep.and(caller.session);
        store::end_all(&mut tx, caller.member_id, kept, now).await?;
        let issued = match (keep, kept) {
            (None, _) => None,
            // The caller's session goes on, with a refresh token the old
            // one's holder (if it was stolen) does not have.
            (Some(_), Some(session)) => {
                let refresh = RefreshToken::generate();
                let access_expires_at = now + self.token_ttl;
                store::rotate(&mut tx, session, &refresh.hash(), now, access_expires_at).await?;
                Some(self.issue(&member, session, refresh, access_expires_at))
            }
            // A token from before sessions: the caller gets a new one.
            (Some(client), None) => Some(self.start_session(&mut tx, &member, client).await?),
        };
        let event_id = tx.enqueue(EventKind::SessionsRevoked, &member).await?;
        tx.commit().await?;
        record_event(event_id);
        Ok((member, issued))
    }

    /// Ends the caller's own session, or session `id` of theirs, writing
    /// MemberSessionEnded in the same transaction. `None` when the member has
    /// no session `id`; an ended session stays ended, and no event is
    /// written again.
    async fn end_session(&self, caller: Verified, id: Uuid) -> Result<Option<Member>, Error> {
        let mut tx = self.outbox.begin().await?;
        let member = self.lock_caller(&mut tx, caller).await?;
        let Some(ended) = store::end(&mut tx, caller.member_id, id, Utc::now()).await? else {
            return Ok(store::exists(&mut tx, caller.member_id, id)
                .await?
                .then_some(member));
        };
        let event_id = tx.enqueue_session_ended(&member, &ended).await?;
        tx.commit().await?;
        record_event(event_id);
        Ok(Some(member))
    }
}

/// Refuses the caller's token if the member's sessions were all ended after
/// it was issued.
pub(super) fn refuse_revoked(caller: Verified, member: &Member) -> Result<(), Error> {
    if caller.revoked_by(&member.sessions()) {
        return Err(Failure::Unauthenticated(REVOKED.into()).into());
    }
    Ok(())
}

/// [`refuse_revoked`], and refuses a token whose own session was ended.
async fn check_caller(
    conn: &mut sqlx::PgConnection,
    caller: Verified,
    member: &Member,
) -> Result<(), Error> {
    refuse_revoked(caller, member)?;
    if let Some(session) = caller.session
        && store::has_ended(conn, session).await?
    {
        return Err(Failure::Unauthenticated(SESSION_ENDED.into()).into());
    }
    Ok(())
}
