//! `task.v1.TaskService`: proto ↔ domain conversion and the RPC handlers.
use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::DateTime;
use memberflow_contract::consistency::ConsistencyToken;
use memberflow_contract::proto::task::v1::{self as pb, task_service_server::TaskService};
use memberflow_contract::time::timestamp;
use memberflow_contract::token::Verified;
use memberflow_runtime::error::Failure;
use memberflow_runtime::error::Violations;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Error,
    domain::{DueLocal, NewTask, ReplicaMember, Task, Title},
    freshness::Freshness,
    keys::TrustedKeys,
    metrics::{ReadThroughResult, TaskMetrics},
    miss::{self, Policy, Seen, Step},
    read_through::{FetchError, ReadThrough},
    replica,
    repo::{self, Cursor},
    settings::ConsistencySettings,
};

const DEFAULT_PAGE_SIZE: i32 = 20;
const MAX_PAGE_SIZE: i32 = 100;

/// The RPC handlers and what they need.
#[derive(Clone)]
pub struct TaskApi {
    pub(crate) pool: PgPool,
    pub(crate) keys: TrustedKeys,
    pub(crate) consistency: ConsistencySettings,
    pub(crate) freshness: Arc<Freshness>,
    pub(crate) read_through: ReadThrough,
    pub(crate) metrics: TaskMetrics,
}

impl TryFrom<pb::CreateTaskRequest> for NewTask {
    type Error = Violations;

    fn try_from(req: pb::CreateTaskRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let request_id = v.check(
            "request_id",
            Uuid::parse_str(&req.request_id).map_err(|_| "must be a UUID"),
        );
        let title = v.check("title", Title::parse(&req.title));
        let due_local = v.check("due_local", DueLocal::parse(&req.due_local));
        v.finish()?;
        Ok(Self {
            request_id: request_id.expect("checked"),
            title: title.expect("checked"),
            due_local: due_local.expect("checked"),
        })
    }
}

impl From<Task> for pb::Task {
    fn from(t: Task) -> Self {
        Self {
            id: t.id.to_string(),
            member_id: t.member_id.to_string(),
            title: t.title,
            due_at: Some(timestamp(t.due_at)),
            time_zone: t.time_zone,
            created_at: Some(timestamp(t.created_at)),
        }
    }
}

fn encode_cursor(t: &Task) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", t.created_at.timestamp_micros(), t.id))
}

fn decode_cursor(token: &str) -> Option<Cursor> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    Some(Cursor {
        created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: id.parse().ok()?,
    })
}

impl TaskApi {
    /// The caller, from their bearer token, unless its session was ended
    /// (MemberSessionEnded applied here). A token without `sid` has no
    /// session of its own: only an all-sessions revocation ends it.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Verified, Error> {
        let caller = self.keys.authenticate(req.metadata()).await?;
        tracing::Span::current().record("member_id", tracing::field::display(caller.member_id));
        if let Some(session) = caller.session
            && crate::ended_sessions::has_ended(&self.pool, session).await?
        {
            return Err(Failure::Unauthenticated(
                "the access token's session has ended (logout); log in again".into(),
            )
            .into());
        }
        Ok(caller)
    }

    /// Refuses a token issued before the member's sessions were ended, as far
    /// as the replica knows (within the replication delay of auth).
    /// A tombstone refuses every token: the member deleted their account.
    fn refuse_revoked(caller: Verified, member: &ReplicaMember) -> Result<(), Error> {
        if member.is_deleted() {
            return Err(Failure::Unauthenticated("the account was deleted".into()).into());
        }
        if caller.revoked_by(&member.sessions()) {
            return Err(Failure::Unauthenticated(
                "the access token was revoked (logout or password change); log in again".into(),
            )
            .into());
        }
        Ok(())
    }

    /// [`Self::refuse_revoked`] for calls that do not otherwise read the
    /// member: one primary-key read of the replica.
    async fn refuse_if_revoked(&self, caller: Verified) -> Result<(), Error> {
        match replica::find(&self.pool, caller.member_id).await? {
            Some(member) => Self::refuse_revoked(caller, &member),
            None => Ok(()),
        }
    }

    /// The version the caller has seen: the access token's claim, raised by
    /// a `consistency_token` from one of their writes. A token naming
    /// another member is refused.
    fn known_version(&self, caller: Verified, consistency_token: &str) -> Result<i64, Error> {
        if consistency_token.is_empty() {
            return Ok(caller.version);
        }
        let mut v = Violations::default();
        let token = v.check(
            "consistency_token",
            ConsistencyToken::parse(consistency_token),
        );
        if let Some(t) = token
            && t.member_id != caller.member_id
        {
            v.add("consistency_token", "names another member");
        }
        v.finish()?;
        Ok(caller.version.max(token.expect("checked").version))
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

    async fn create(
        &self,
        caller: Verified,
        min_version: i64,
        new: NewTask,
    ) -> Result<Task, Error> {
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
        let task = repo::create_idempotent(
            &self.pool,
            member_id,
            &new,
            due_at.expect("checked"),
            &member.region,
        )
        .await?
        // The tombstone won the race with this call: refused as any later
        // call with the member's tokens is.
        .ok_or_else(|| Failure::Unauthenticated("the account was deleted".into()))?;
        Ok(task)
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    #[tracing::instrument(name = "CreateTask", skip_all, fields(member_id, request_id))]
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let caller = self.authenticate(&request).await?;
        let min_version = self.known_version(caller, &request.get_ref().consistency_token)?;
        let new = NewTask::try_from(request.into_inner()).map_err(Error::from)?;
        tracing::Span::current().record("request_id", tracing::field::display(new.request_id));
        let task = self.create(caller, min_version, new).await?;
        Ok(Response::new(pb::CreateTaskResponse {
            task: Some(task.into()),
        }))
    }

    #[tracing::instrument(name = "ListTasks", skip_all, fields(member_id))]
    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = self.authenticate(&request).await?;
        // Tasks are written here, synchronously: nothing to wait for, but a
        // bad token is still refused.
        self.known_version(caller, &request.get_ref().consistency_token)?;
        self.refuse_if_revoked(caller).await?;
        let member_id = caller.member_id;
        let req = request.into_inner();
        let mut v = Violations::default();
        if !(0..=MAX_PAGE_SIZE).contains(&req.page_size) {
            v.add("page_size", "must be 0 (the default, 20) to 100");
        }
        let after = if req.page_token.is_empty() {
            None
        } else {
            v.check(
                "page_token",
                decode_cursor(&req.page_token).ok_or("is not a token from a previous page"),
            )
        };
        v.finish().map_err(Error::from)?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        };
        let mut tasks = repo::list(&self.pool, member_id, i64::from(size) + 1, after)
            .await
            .map_err(Error::from)?;
        let next_page_token = if tasks.len() > size as usize {
            tasks.truncate(size as usize);
            tasks.last().map(encode_cursor).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "GetTask", skip_all, fields(member_id))]
    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let caller = self.authenticate(&request).await?;
        self.known_version(caller, &request.get_ref().consistency_token)?;
        self.refuse_if_revoked(caller).await?;
        let member_id = caller.member_id;
        let raw = request.into_inner().id;
        let mut v = Violations::default();
        let id = v.check("id", Uuid::parse_str(&raw).map_err(|_| "must be a UUID"));
        v.finish().map_err(Error::from)?;
        let task = repo::get(&self.pool, member_id, id.expect("checked"))
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Failure::NotFound(format!("task {raw}")))?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task.into()),
        }))
    }
}
