//! SetRole, SuspendMember and ReinstateMember: an admin's permission
//! change to a member (`crate::permissions` says what each does).
use memberflow_contract::reasons::{AUTH_DOMAIN, NOT_ADMIN};
use memberflow_contract::token::Verified;
use memberflow_runtime::error::Failure;
use uuid::Uuid;

use crate::{
    Error,
    domain::Access,
    domain::{AccessChange, Member},
    permissions, repo,
};

use super::{Auth, record_event};

impl Auth {
    /// Applies `change` to member `target` if the caller is an active admin,
    /// in one transaction that also ends every session of the target and
    /// writes its event. Permission changes are serialised
    /// ([`repo::lock_permissions`]), then the caller is checked under its
    /// row lock: an admin demoted or suspended a moment ago is refused.
    /// Answers the member as it is after (unchanged, and no event, when the
    /// change was already in effect).
    pub async fn change_access(
        self,
        caller: Verified,
        target: Uuid,
        change: AccessChange,
    ) -> Result<Member, Error> {
        let mut tx = self.outbox.begin().await?;
        repo::lock_permissions(&mut tx).await?;
        let admin = self.lock_caller(&mut tx, caller).await?;
        if !Access::of(&admin).is_active_admin() {
            return Err(Failure::Denied {
                reason: NOT_ADMIN,
                domain: AUTH_DOMAIN,
                message: "only an admin may change roles or suspend members".into(),
            }
            .into());
        }
        let held = if target == admin.id {
            admin
        } else {
            repo::lock_member(&mut tx, target)
                .await?
                .ok_or_else(|| Failure::NotFound(format!("member {target}")))?
        };
        let Some((member, event_id)) = permissions::apply(&mut tx, &held, &change).await? else {
            return Ok(held);
        };
        tx.commit().await?;
        record_event(event_id);
        Ok(member)
    }
}
