//! task's use cases, one function each, read top to bottom: CreateTask
//! (with the miss policy: wait, read through, or USER_NOT_READY), ListTasks
//! and GetTask. Each runs as a unit of work (`memberflow_runtime::unit`):
//! the gRPC handler decodes and authorises the token, then hands the use
//! case to `Units::run`, so a caller's cancel never cuts one halfway. No
//! rule and no transaction lives in `grpc.rs`.
use std::{sync::Arc, time::Duration};

use memberflow_contract::reasons::{MEMBER_SUSPENDED, NOT_ADMIN, TASK_DOMAIN};
use memberflow_contract::token::Verified;
use memberflow_runtime::error::{Failure, Violations};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Error,
    domain::{NewTask, ReplicaMember, Task},
    freshness::Freshness,
    metrics::{ReadThroughResult, TaskMetrics},
    miss::{self, Policy, Seen, Step},
    read_through::{FetchError, ReadThrough},
    replica,
    repo::{self, Cursor},
    settings::ConsistencySettings,
};

/// What task's use cases need. Cloning shares it, so each unit of work owns
/// its own handle and outlives its caller.
#[derive(Clone)]
pub struct Tasks {
    pub(crate) pool: PgPool,
    pub(crate) consistency: ConsistencySettings,
    pub(crate) freshness: Arc<Freshness>,
    pub(crate) read_through: ReadThrough,
    pub(crate) metrics: TaskMetrics,
}

impl Tasks {
    /// Creates the caller's task once per `request_id`, for the member at
    /// `min_version` or newer, its due time resolved in the member's region.
    pub async fn create_task(
        self,
        caller: Verified,
        min_version: i64,
        new: NewTask,
    ) -> Result<Task, Error> {
        self.refuse_ended_session(caller).await?;
        let member_id = caller.member_id;
        let member = self.member(member_id, min_version).await?;
        Self::refuse_revoked(caller, &member)?;
        let tz: chrono_tz::Tz = member
            .region
            .parse()
            .map_err(|_| Error::UnknownRegion(member.region.clone()))?;
        let mut v = Violations::default();
        let due_at = v.check("due_local", new.due_local.resolve(tz));
        v.finish()?;
        repo::create_idempotent(
            &self.pool,
            member_id,
            &new,
            due_at.expect("checked"),
            &member.region,
        )
        .await?
        // The tombstone won the race with this call: refused as any later
        // call with the member's tokens is.
        .ok_or_else(|| Failure::Unauthenticated("the account was deleted".into()).into())
    }

    /// Up to `limit` of the caller's tasks (or, for an admin, `owner`'s),
    /// newest first, after `after`. Tasks are written here, synchronously:
    /// nothing to wait for, but a revoked token and a suspended member are
    /// still refused, from a replica at `min_version` when the caller named
    /// one.
    pub async fn list_tasks(
        self,
        caller: Verified,
        min_version: Option<i64>,
        owner: Option<Uuid>,
        limit: i64,
        after: Option<Cursor>,
    ) -> Result<Vec<Task>, Error> {
        self.refuse_ended_session(caller).await?;
        let owner = owner.unwrap_or(caller.member_id);
        // Another member's tasks need the caller's role: read through (or
        // wait) for an admin the replica has not seen yet.
        let min_version = match owner == caller.member_id {
            true => min_version,
            false => Some(min_version.unwrap_or(caller.version)),
        };
        let me = self.caller(caller, min_version).await?;
        if owner != caller.member_id && !me.as_ref().is_some_and(|m| m.access.is_admin()) {
            return Err(Failure::Denied {
                reason: NOT_ADMIN,
                domain: TASK_DOMAIN,
                message: "only an admin may list another member's tasks".into(),
            }
            .into());
        }
        Ok(repo::list(&self.pool, owner, limit, after).await?)
    }

    /// The caller's task `id`.
    pub async fn get_task(
        self,
        caller: Verified,
        min_version: Option<i64>,
        id: Uuid,
    ) -> Result<Task, Error> {
        self.refuse_ended_session(caller).await?;
        self.caller(caller, min_version).await?;
        repo::get(&self.pool, caller.member_id, id)
            .await?
            .ok_or_else(|| Failure::NotFound(format!("task {id}")).into())
    }

    /// Refuses a token whose session was ended (MemberSessionEnded applied
    /// here). A token without `sid` has no session of its own: only an
    /// all-sessions revocation ends it.
    async fn refuse_ended_session(&self, caller: Verified) -> Result<(), Error> {
        if let Some(session) = caller.session
            && crate::ended_sessions::has_ended(&self.pool, session).await?
        {
            return Err(Failure::Unauthenticated(
                "the access token's session has ended (logout); log in again".into(),
            )
            .into());
        }
        Ok(())
    }

    /// Refuses a token issued before the member's sessions were ended, and
    /// a suspended member, as far as the replica knows (within the
    /// replication delay of auth). A tombstone refuses every token: the
    /// member deleted their account. The suspension is told first: it ended
    /// the sessions too, and is what the member must know.
    fn refuse_revoked(caller: Verified, member: &ReplicaMember) -> Result<(), Error> {
        if member.is_deleted() {
            return Err(Failure::Unauthenticated("the account was deleted".into()).into());
        }
        if member.access.is_suspended() {
            return Err(Failure::Denied {
                reason: MEMBER_SUSPENDED,
                domain: TASK_DOMAIN,
                message: "the account is suspended".into(),
            }
            .into());
        }
        if caller.revoked_by(&member.sessions()) {
            return Err(Failure::Unauthenticated(
                "the access token was revoked (logout or password change); log in again".into(),
            )
            .into());
        }
        Ok(())
    }

    /// The caller's replica row once [`Self::refuse_revoked`] passes it,
    /// for calls that read no member otherwise: one primary-key read of the
    /// replica, or with a `min_version` the caller named (a consistency
    /// token), the member at that version or newer as CreateTask reads it.
    /// `None`: the replica has not seen the member and nothing asked it to.
    async fn caller(
        &self,
        caller: Verified,
        min_version: Option<i64>,
    ) -> Result<Option<ReplicaMember>, Error> {
        let member = match min_version {
            Some(v) => Some(self.member(caller.member_id, v).await?),
            None => replica::find(&self.pool, caller.member_id).await?,
        };
        if let Some(m) = &member {
            Self::refuse_revoked(caller, m)?;
        }
        Ok(member)
    }

    /// The member from the replica at `min_version` or newer (a missing
    /// member counts as behind), following [`miss::decide`] step by step:
    /// one read of the replica, or one fetch from auth, per step. Never
    /// answers with an older copy.
    async fn member(&self, id: Uuid, min_version: i64) -> Result<ReplicaMember, Error> {
        let policy = Policy {
            mode: self.consistency.mode,
            wait: Duration::from_millis(self.consistency.wait_ms),
        };
        let mut held = replica::find(&self.pool, id).await?;
        let mut watch = None;
        let mut wait_over = false;
        let step = loop {
            let seen = Seen::Replica {
                version: held.as_ref().map(|m| m.version),
                wait_over,
            };
            match miss::decide(policy, min_version, seen) {
                Step::Serve => return Ok(held.expect("a copy was seen")),
                Step::Wait => {
                    match &mut watch {
                        // Watch, then read: an apply in between wakes us.
                        None => {
                            watch = Some((
                                self.freshness.watch(id),
                                tokio::time::Instant::now() + policy.wait,
                            ))
                        }
                        Some((w, deadline)) => {
                            if !w.changed_before(*deadline).await {
                                wait_over = true;
                                continue;
                            }
                        }
                    }
                    held = replica::find(&self.pool, id).await?;
                }
                step => break step,
            }
        };
        drop(watch);
        let (step, fetched) = match step {
            Step::Fetch => self.fetch(id, min_version, policy).await,
            step => (step, None),
        };
        match step {
            Step::Serve => Ok(fetched.expect("a member was fetched")),
            Step::NotFound => Err(Failure::NotFound(format!("member {id}")).into()),
            _ => {
                self.metrics.user_not_ready.inc();
                Err(Error::UserNotReady {
                    member_id: id,
                    retry_after: self.freshness.retry_after(
                        Duration::from_millis(self.consistency.retry_after_min_ms),
                        Duration::from_millis(self.consistency.retry_after_max_ms),
                    ),
                })
            }
        }
    }

    /// The fetch step: GetMember from auth, provisioned into the replica;
    /// the step after it and, to serve, the member.
    async fn fetch(
        &self,
        id: Uuid,
        min_version: i64,
        policy: Policy,
    ) -> (Step, Option<ReplicaMember>) {
        let (seen, member, result) =
            match self.read_through.fetch_and_provision(id, min_version).await {
                Ok(m) => (
                    Seen::Fetched { version: m.version },
                    Some(m),
                    ReadThroughResult::ok,
                ),
                Err(FetchError::NotFound(_)) => {
                    (Seen::AuthNotFound, None, ReadThroughResult::not_found)
                }
                Err(FetchError::Unavailable(_)) => {
                    (Seen::AuthUnavailable, None, ReadThroughResult::unavailable)
                }
            };
        self.metrics.read_through(result);
        (miss::decide(policy, min_version, seen), member)
    }
}
