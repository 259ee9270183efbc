//! Login and Refresh: a session's start and its token rotation.
use std::net::IpAddr;

use chrono::Utc;
use memberflow_contract::reasons::{AUTH_DOMAIN, MEMBER_SUSPENDED};
use memberflow_runtime::{error::Failure, unit};
use uuid::Uuid;

use crate::{
    Error,
    domain::{Email, Member},
    outbox::write::Enqueue,
    password::Admitted,
    repo,
    sessions::{
        RefreshToken,
        decide::{Refresh, decide},
        store::{self, NewSession},
    },
};

use super::{Auth, DELETED, Issued, record_event};

/// A Login as it arrived: malformed input is just a failed login, so the
/// email is checked here, not refused as bad input.
pub struct LoginAttempt {
    pub email: String,
    pub password: String,
    pub peer: Option<IpAddr>,
    /// The caller's `user-agent`, kept as the session's `client`.
    pub client: String,
}

impl Auth {
    /// Checks the password (a wrong email costs as much as a wrong
    /// password), then starts a session. `admitted`, the hash's place in the
    /// hashing queue, was taken before the attempt is charged to the
    /// account, so a refusal for the server's own load costs it nothing.
    pub async fn login(self, attempt: LoginAttempt, admitted: Admitted) -> Result<Issued, Error> {
        let email = Email::parse(&attempt.email).ok();
        let account = email
            .as_ref()
            .map_or_else(|| attempt.email.to_lowercase(), |e| e.as_str().to_owned());
        self.throttle.attempt(&account, attempt.peer)?;
        let creds = match &email {
            Some(e) => repo::find_credentials(&self.pool, e.as_str()).await?,
            None => None,
        };
        let (member, hash) = creds.map_or((None, None), |(m, h)| (Some(m), Some(h)));
        let ok = self.hasher.verify(admitted, attempt.password, hash).await?;
        let member = match (ok, member) {
            (true, Some(member)) => member,
            _ => return Err(Error::BadCredentials),
        };
        tracing::Span::current().record("member_id", tracing::field::display(member.id));
        unit::caller_waits()?;
        // The member again, share-locked: a suspension (or deletion) that
        // committed since the password was read is seen, and one that
        // commits after waits for this session and then ends it.
        let mut tx = self.pool.begin().await?;
        let member = repo::share_lock_member(&mut tx, member.id)
            .await?
            .ok_or(Error::BadCredentials)?;
        refuse_suspended(&member)?;
        let issued = self
            .start_session(&mut tx, &member, &attempt.client)
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// A new session for `member`, written in `conn`, and its first tokens.
    pub(super) async fn start_session(
        &self,
        conn: &mut sqlx::PgConnection,
        member: &Member,
        client: &str,
    ) -> Result<Issued, Error> {
        let now = Utc::now();
        let refresh = RefreshToken::generate();
        let session = NewSession {
            id: Uuid::new_v4(),
            member_id: member.id,
            client,
            now,
            expires_at: now + self.lifetimes.absolute,
            access_expires_at: now + self.token_ttl,
        };
        store::create(conn, &session, &refresh.hash()).await?;
        Ok(self.issue(member, session.id, refresh, session.access_expires_at))
    }

    /// Rotates the presented token, or refuses it as [`decide`] says. Reuse
    /// ends the session and commits that before answering.
    pub async fn refresh(
        self,
        presented: RefreshToken,
        peer: Option<IpAddr>,
    ) -> Result<Issued, Error> {
        let hash = presented.hash();
        let owner = store::owner_of(&self.pool, &hash).await?;
        let account = owner.map_or_else(
            || "session:unknown".to_owned(),
            |(s, _)| format!("session:{s}"),
        );
        self.throttle.attempt(&account, peer)?;
        let Some((session, member_id)) = owner else {
            return Err(refresh_refused(Refresh::Unknown));
        };
        tracing::Span::current().record("member_id", tracing::field::display(member_id));
        let mut tx = self.outbox.begin().await?;
        // Member before session, as Logout locks them: a share lock, so
        // refreshes of one member's sessions do not wait on each other.
        // No live row: the account was deleted (its sessions with it).
        let member = repo::share_lock_member(&mut tx, member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        // A suspension ends every session, so this is a second line: a
        // session a racing Login started is refused too.
        refuse_suspended(&member)?;
        let found = store::lock_for_refresh(&mut tx, session, &hash).await?;
        let now = Utc::now();
        match decide(found, now, self.lifetimes) {
            Refresh::Valid => {
                let refresh = RefreshToken::generate();
                let expires_at = now + self.token_ttl;
                store::rotate(&mut tx, session, &refresh.hash(), now, expires_at).await?;
                tx.commit().await?;
                Ok(self.issue(&member, session, refresh, expires_at))
            }
            Refresh::Reuse => {
                if let Some(ended) = store::end(&mut tx, member_id, session, now).await? {
                    let event_id = tx.enqueue_session_ended(&member, &ended).await?;
                    tx.commit().await?;
                    record_event(event_id);
                    tracing::warn!("a rotated refresh token was presented again: session ended");
                }
                Err(refresh_refused(Refresh::Reuse))
            }
            other => Err(refresh_refused(other)),
        }
    }
}

/// Refuses a suspended member a new token: PERMISSION_DENIED with ErrorInfo
/// MEMBER_SUSPENDED (told only after the password or refresh token proved
/// who the caller is).
fn refuse_suspended(member: &Member) -> Result<(), Error> {
    if member.is_suspended() {
        return Err(Failure::Denied {
            reason: MEMBER_SUSPENDED,
            domain: AUTH_DOMAIN,
            message: "the account is suspended: an admin must reinstate it".into(),
        }
        .into());
    }
    Ok(())
}

/// What a refused refresh answers: ABORTED for a retry within the grace,
/// UNAUTHENTICATED otherwise.
fn refresh_refused(why: Refresh) -> Error {
    let failure = match why {
        Refresh::RotatedWithinGrace => return Error::RefreshRetried,
        Refresh::Reuse => Failure::Unauthenticated(
            "the refresh token was already used: the session has ended; log in again".into(),
        ),
        Refresh::ExpiredAbsolute | Refresh::ExpiredIdle => {
            Failure::Unauthenticated("the session has expired; log in again".into())
        }
        Refresh::Ended | Refresh::Unknown | Refresh::Valid => Failure::Unauthenticated(
            "the refresh token is not valid (unknown or ended); log in again".into(),
        ),
    };
    failure.into()
}
