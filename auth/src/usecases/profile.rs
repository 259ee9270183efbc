//! UpdateProfile: the change and its `member.updated` event, in one
//! transaction.
use memberflow_contract::token::Verified;

use crate::{
    Error,
    domain::{Member, ProfileChange},
    outbox::{EventKind, write::Enqueue},
    repo,
};

use super::{Auth, record_event};

impl Auth {
    /// Applies `change` to the caller's profile. A change to what it already
    /// is keeps the version and writes no event.
    pub async fn update_profile(
        self,
        caller: Verified,
        change: ProfileChange,
    ) -> Result<Member, Error> {
        let mut tx = self.outbox.begin().await?;
        let current = self.lock_caller(&mut tx, caller).await?;
        let Some(member) = repo::update_profile(&mut tx, caller.member_id, &change).await? else {
            return Ok(current);
        };
        let event_id = tx.enqueue(EventKind::Updated, &member).await?;
        tx.commit().await?;
        record_event(event_id);
        Ok(member)
    }
}
