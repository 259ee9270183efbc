//! ChangePassword and DeleteAccount: both prove the current password first,
//! under the login throttle.
use std::net::IpAddr;

use memberflow_contract::token::Verified;
use memberflow_runtime::{
    error::{Failure, Violations},
    unit,
};

use crate::{
    Error,
    domain::{Email, Member, Password},
    outbox::write::Enqueue,
    password::Admitted,
    repo,
};

use super::{Auth, DELETED, Issued, record_event, sessions::refuse_revoked};

/// Whose account a DeleteAccount deletes.
pub enum Deleting {
    /// The bearer of an access token.
    Caller(Verified),
    /// The account `email` names, for a member who has no token (a
    /// suspended member cannot log in).
    Account { email: String },
}

impl Auth {
    /// Checks `current`, then changes the password to `new` and ends every
    /// other session in one transaction; the caller's session goes on with
    /// the new tokens answered.
    pub async fn change_password(
        self,
        caller: Verified,
        current: String,
        new: Password,
        peer: Option<IpAddr>,
        client: String,
        [for_old, for_new]: [Admitted; 2],
    ) -> Result<(Member, Issued), Error> {
        let old_hash = self
            .prove_password(caller, "current_password", current, peer, for_old)
            .await?;
        let new_hash = self.hasher.hash_in(for_new, &new).await?;
        unit::caller_waits()?;
        let (member, issued) = self
            .revoke_sessions(caller, Some((&old_hash, &new_hash)), Some(&client))
            .await?;
        Ok((member, issued.expect("a kept session is asked for")))
    }

    /// Checks `password`, then turns the member into a tombstone, removes
    /// their pending and parked events, writes MemberDeleted and records the
    /// erasure, in one transaction. The lock taken first orders it with a
    /// concurrent UpdateProfile: whichever commits second sees the other (an
    /// UpdateProfile after it finds no member). A suspended member, who
    /// cannot log in, names the account by email ([`Deleting::Account`]).
    pub async fn delete_account(
        self,
        who: Deleting,
        password: String,
        peer: Option<IpAddr>,
        admitted: Admitted,
    ) -> Result<repo::Tombstone, Error> {
        let (caller, member_id, hash) = match who {
            Deleting::Caller(caller) => {
                let hash = self
                    .prove_password(caller, "password", password, peer, admitted)
                    .await?;
                (Some(caller), caller.member_id, hash)
            }
            Deleting::Account { email } => {
                let (id, hash) = self.prove_account(&email, password, peer, admitted).await?;
                (None, id, hash)
            }
        };
        unit::caller_waits()?;
        let mut tx = self.outbox.begin().await?;
        match caller {
            Some(caller) => {
                self.lock_caller(&mut tx, caller).await?;
            }
            None => {
                repo::lock_member(&mut tx, member_id)
                    .await?
                    .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
            }
        }
        let tombstone = repo::delete_member(&mut tx, member_id, &hash)
            .await?
            .ok_or(Error::ConcurrentChange)?;
        let event_id = tx.enqueue_deleted(&tombstone).await?;
        crate::erasure::record(&mut tx, &tombstone, &self.erasure_expected).await?;
        tx.commit().await?;
        record_event(event_id);
        Ok(tombstone)
    }

    /// The member `email` names and their password hash, once `presented`
    /// matches it: Login's check (same throttle, same answer for a wrong
    /// email and a wrong password).
    async fn prove_account(
        &self,
        email: &str,
        presented: String,
        peer: Option<IpAddr>,
        admitted: Admitted,
    ) -> Result<(uuid::Uuid, String), Error> {
        let raw = email;
        let email = Email::parse(raw).ok();
        let account = email
            .as_ref()
            .map_or_else(|| raw.to_lowercase(), |e| e.as_str().to_owned());
        self.throttle.attempt(&account, peer)?;
        let creds = match &email {
            Some(e) => repo::find_credentials(&self.pool, e.as_str()).await?,
            None => None,
        };
        let (member, hash) = creds.map_or((None, None), |(m, h)| (Some(m), Some(h)));
        let ok = self
            .hasher
            .verify(admitted, presented, hash.clone())
            .await?;
        match (ok, member, hash) {
            (true, Some(member), Some(hash)) => Ok((member.id, hash)),
            _ => Err(Error::BadCredentials),
        }
    }

    /// The caller's password hash, once `presented` (the request's `field`)
    /// matches it. Charged to the member's login allowance; `admitted`, the
    /// check's place in the hashing queue, was taken before, so an overload
    /// refusal charges nothing.
    async fn prove_password(
        &self,
        caller: Verified,
        field: &str,
        presented: String,
        peer: Option<IpAddr>,
        admitted: Admitted,
    ) -> Result<String, Error> {
        let (member, hash) = repo::find_with_hash(&self.pool, caller.member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        refuse_revoked(caller, &member)?;
        self.throttle
            .attempt(&format!("member:{}", caller.member_id), peer)?;
        if !self
            .hasher
            .verify(admitted, presented, Some(hash.clone()))
            .await?
        {
            let mut v = Violations::default();
            v.add(field, "does not match the member's password");
            return Err(v.into());
        }
        Ok(hash)
    }
}
