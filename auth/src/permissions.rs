//! Roles and suspension: what a permission change does to a member, and the
//! one transactional step every permission change takes (an admin's
//! SetRole, SuspendMember or ReinstateMember, and the operator's
//! `memberflow-admin grant-admin`).
//!
//! A permission change is a new version of the member that ends every one
//! of their sessions in the same transaction: refresh tokens stop at once,
//! and every access token from before carries a version below the new
//! `sessions_version`, so auth refuses it at once and task within one
//! propagation. Access tokens carry no role: auth decides from its own rows,
//! task from its replica, so no token can carry a role the member has lost.
use chrono::Utc;
use memberflow_contract::reasons::{AUTH_DOMAIN, LAST_ADMIN};
use memberflow_runtime::error::Failure;

use crate::{
    domain::{Access, AccessChange, Member, Role},
    outbox::{EventKind, write::Enqueue, write::Tx},
    repo,
    sessions::store,
};

/// The access `held` moves to under `change`, or `None` when it changes
/// nothing (the role already held, suspending the suspended, reinstating
/// one who is not): then no version, no event, and no session ends.
pub fn next_access(held: &Access, change: &AccessChange) -> Option<Access> {
    let next = match change {
        AccessChange::SetRole(role) => Access {
            role: *role,
            suspension: held.suspension.clone(),
        },
        // A second suspension keeps the first reason (and time).
        AccessChange::Suspend(_) if held.suspension.is_some() => held.clone(),
        AccessChange::Suspend(reason) => Access {
            role: held.role,
            suspension: Some(reason.as_str().to_owned()),
        },
        AccessChange::Reinstate => Access {
            role: held.role,
            suspension: None,
        },
        AccessChange::MakeActiveAdmin => Access {
            role: Role::Admin,
            suspension: None,
        },
    };
    (next != *held).then_some(next)
}

/// Whether moving one member from `held` to `next` leaves at least one
/// active admin, when `active_admins` are active now (this member
/// included, if they are one). Only a change that takes an active admin out
/// of the role can fail it: the last admin cannot demote or suspend
/// themself out of it.
pub fn leaves_an_admin(held: &Access, next: &Access, active_admins: i64) -> bool {
    let loses = held.is_active_admin() && !next.is_active_admin();
    !loses || active_admins > 1
}

/// Applies `change` to `target`, already locked in `tx` by the caller (who
/// took [`repo::lock_permissions`] first): the new role and suspension, a
/// new version ending every session, and the member's `member.updated`
/// event carrying both, all in `tx`. `Ok(None)` when it changes nothing.
/// Refuses a change that would leave no active admin.
pub async fn apply(
    tx: &mut Tx,
    target: &Member,
    change: &AccessChange,
) -> Result<Option<(Member, uuid::Uuid)>, Failure> {
    let held = Access::of(target);
    let Some(next) = next_access(&held, change) else {
        return Ok(None);
    };
    if held.is_active_admin() && !next.is_active_admin() {
        let admins = repo::count_active_admins(tx).await?;
        if !leaves_an_admin(&held, &next, admins) {
            return Err(Failure::Precondition {
                reason: LAST_ADMIN,
                domain: AUTH_DOMAIN,
                message: "this would leave no active admin: make another admin first".into(),
            });
        }
    }
    let member = repo::set_access(tx, target.id, &next)
        .await?
        .ok_or_else(|| Failure::NotFound(format!("member {}", target.id)))?;
    store::end_all(tx, member.id, None, Utc::now()).await?;
    let event_id = tx.enqueue(EventKind::Updated, &member).await?;
    Ok(Some((member, event_id)))
}

/// The operator's way to make an admin (`memberflow-admin grant-admin`;
/// database access is the credential): the member `email` names becomes an
/// active admin, their sessions end, and the event is written, in one
/// transaction. `None` when no live member has that email; the flag says
/// whether anything changed.
pub async fn grant_admin(
    outbox: &crate::outbox::write::Outbox,
    email: &crate::domain::Email,
) -> Result<Option<(Member, bool)>, Failure> {
    let mut tx = outbox.begin().await?;
    repo::lock_permissions(&mut tx).await?;
    let Some((held, _)) = repo::find_credentials_in(&mut tx, email.as_str()).await? else {
        return Ok(None);
    };
    let Some(held) = repo::lock_member(&mut tx, held.id).await? else {
        return Ok(None);
    };
    match apply(&mut tx, &held, &AccessChange::MakeActiveAdmin).await? {
        Some((member, _)) => {
            tx.commit().await?;
            Ok(Some((member, true)))
        }
        None => Ok(Some((held, false))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SuspensionReason;

    fn access(role: Role, suspended: Option<&str>) -> Access {
        Access {
            role,
            suspension: suspended.map(str::to_owned),
        }
    }

    #[test]
    fn a_change_to_what_is_held_is_none() {
        let member = access(Role::Member, None);
        let suspended = access(Role::Member, Some("spam"));
        assert_eq!(
            next_access(&member, &AccessChange::SetRole(Role::Member)),
            None
        );
        assert_eq!(next_access(&member, &AccessChange::Reinstate), None);
        let again = AccessChange::Suspend(SuspensionReason::parse("other").unwrap());
        assert_eq!(
            next_access(&suspended, &again),
            None,
            "the first reason stays"
        );
        let admin = access(Role::Admin, None);
        assert_eq!(next_access(&admin, &AccessChange::MakeActiveAdmin), None);
    }

    #[test]
    fn changes_move_one_field_and_keep_the_other() {
        let suspended = access(Role::Member, Some("spam"));
        assert_eq!(
            next_access(&suspended, &AccessChange::SetRole(Role::Admin)),
            Some(access(Role::Admin, Some("spam")))
        );
        assert_eq!(
            next_access(&suspended, &AccessChange::Reinstate),
            Some(access(Role::Member, None))
        );
        assert_eq!(
            next_access(&suspended, &AccessChange::MakeActiveAdmin),
            Some(access(Role::Admin, None))
        );
        let suspend = AccessChange::Suspend(SuspensionReason::parse("abuse").unwrap());
        assert_eq!(
            next_access(&access(Role::Admin, None), &suspend),
            Some(access(Role::Admin, Some("abuse")))
        );
    }

    #[test]
    fn the_last_active_admin_stays_one() {
        let admin = access(Role::Admin, None);
        let demoted = access(Role::Member, None);
        let suspended = access(Role::Admin, Some("x"));
        assert!(!leaves_an_admin(&admin, &demoted, 1));
        assert!(!leaves_an_admin(&admin, &suspended, 1));
        assert!(leaves_an_admin(&admin, &demoted, 2));
        // Changes that take no active admin away always pass.
        let member = access(Role::Member, None);
        assert!(leaves_an_admin(&member, &admin, 0));
        assert!(leaves_an_admin(&suspended, &demoted, 1));
    }
}
