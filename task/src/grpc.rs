//! `task.v1.TaskService`: proto ↔ domain conversion and the RPC handlers.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::DateTime;
use memberflow_contract::consistency::ConsistencyToken;
use memberflow_contract::proto::task::v1::{self as pb, task_service_server::TaskService};
use memberflow_contract::time::timestamp;
use memberflow_contract::token::Verified;
use memberflow_runtime::error::Violations;
use memberflow_runtime::unit::{CallSlot, Units};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Error,
    domain::{DueLocal, NewTask, Task, Title},
    keys::TrustedKeys,
    repo::Cursor,
    usecases::Tasks,
};

const DEFAULT_PAGE_SIZE: i32 = 20;
const MAX_PAGE_SIZE: i32 = 100;

/// The RPC handlers: each decodes and authorises, runs its use case as a
/// unit of work ([`Units::run`]), and encodes the answer. They hold no pool:
/// database work reaches PostgreSQL only through a unit.
#[derive(Clone)]
pub struct TaskApi {
    /// The use cases.
    pub(crate) tasks: Tasks,
    pub(crate) units: Units,
    pub(crate) keys: TrustedKeys,
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
    /// The caller, from their bearer token.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Verified, Error> {
        let caller = self.keys.authenticate(req.metadata()).await?;
        tracing::Span::current().record("member_id", tracing::field::display(caller.member_id));
        Ok(caller)
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
}

impl TaskApi {
    /// [`Self::known_version`] when the caller named a consistency token
    /// (a read then waits for the replica to reach it); `None` otherwise.
    /// A bad token is refused either way.
    fn named_version(
        &self,
        caller: Verified,
        consistency_token: &str,
    ) -> Result<Option<i64>, Error> {
        let version = self.known_version(caller, consistency_token)?;
        Ok((!consistency_token.is_empty()).then_some(version))
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
        let slot = CallSlot::of(&request);
        let min_version = self.known_version(caller, &request.get_ref().consistency_token)?;
        let new = NewTask::try_from(request.into_inner()).map_err(Error::from)?;
        tracing::Span::current().record("request_id", tracing::field::display(new.request_id));
        let use_case = self.tasks.clone().create_task(caller, min_version, new);
        let task = self.units.run(slot, use_case).await?;
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
        let slot = CallSlot::of(&request);
        let min_version = self.named_version(caller, &request.get_ref().consistency_token)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let owner = if req.member_id.is_empty() {
            None
        } else {
            v.check(
                "member_id",
                Uuid::parse_str(&req.member_id).map_err(|_| "must be a member id (a UUID)"),
            )
        };
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
        let use_case =
            self.tasks
                .clone()
                .list_tasks(caller, min_version, owner, i64::from(size) + 1, after);
        let mut tasks = self.units.run(slot, use_case).await?;
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
        let slot = CallSlot::of(&request);
        let min_version = self.named_version(caller, &request.get_ref().consistency_token)?;
        let raw = request.into_inner().id;
        let mut v = Violations::default();
        let id = v.check("id", Uuid::parse_str(&raw).map_err(|_| "must be a UUID"));
        v.finish().map_err(Error::from)?;
        let use_case = self
            .tasks
            .clone()
            .get_task(caller, min_version, id.expect("checked"));
        let task = self.units.run(slot, use_case).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task.into()),
        }))
    }
}
