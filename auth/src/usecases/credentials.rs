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
    domain::{Member, Password},
    outbox::write::Enqueue,
    password::Admitted,
    repo,
};

use super::{Auth, DELETED, Issued, record_event, sessions::refuse_revoked};

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

    /// Checks `password`, then turns the caller into a tombstone, removes
    /// their pending and parked events, writes MemberDeleted and records the
    /// erasure, in one transaction. The lock taken first orders it with a
    /// concurrent UpdateProfile: whichever commits second sees the other (an
    /// UpdateProfile after it finds no member).
    pub async fn delete_account(
        self,
        caller: Verified,
        password: String,
        peer: Option<IpAddr>,
        admitted: Admitted,
    ) -> Result<repo::Tombstone, Error> {
        let hash = self
            .prove_password(caller, "password", password, peer, admitted)
            .await?;
        unit::caller_waits()?;
        let mut tx = self.outbox.begin().await?;
        self.lock_caller(&mut tx, caller).await?;
        let tombstone = repo::delete_member(&mut tx, caller.member_id, &hash)
            .await?
            .ok_or(Error::ConcurrentChange)?;
        let event_id = tx.enqueue_deleted(&tombstone).await?;
        crate::erasure::record(&mut tx, &tombstone, &self.erasure_expected).await?;
        tx.commit().await?;
        record_event(event_id);
        Ok(tombstone)
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
