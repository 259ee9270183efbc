//! A TaskService client that waits out replication lag.
//!
//! It retries exactly the `UNAVAILABLE` answers whose `ErrorInfo.reason` is
//! `USER_NOT_READY`, with exponential backoff and jitter, never sooner than
//! the server's `RetryInfo.retry_delay`, until a deadline. Each retry reuses
//! the request, so the same `request_id` keeps CreateTask idempotent. Every
//! other error returns at once.
use std::{sync::Arc, time::Duration};

use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tonic_types::StatusExt;

use memberflow_contract::{
    proto::task::v1::{
        CreateTaskRequest, GetTaskRequest, ListTasksRequest, ListTasksResponse, Task,
        task_service_client::TaskServiceClient,
    },
    reasons::USER_NOT_READY,
};
use memberflow_retry::Backoff;

/// One USER_NOT_READY answer and the wait before the next attempt.
#[derive(Debug, Clone)]
pub struct Retry {
    /// 1 for the first retry.
    pub attempt: u32,
    pub delay: Duration,
    pub status: Status,
}

/// Called before each retry's wait (the CLI prints it).
pub type RetryHook = Arc<dyn Fn(&Retry) + Send + Sync>;

/// Whether `status` is a USER_NOT_READY answer; returns its retry delay.
pub fn user_not_ready(status: &Status) -> Option<Duration> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let info = status.get_details_error_info()?;
    (info.reason == USER_NOT_READY).then(|| {
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .unwrap_or_default()
    })
}

/// TaskService for one member, authenticated by their access token.
#[derive(Clone)]
pub struct TaskClient {
    inner: TaskServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    backoff: Backoff,
    deadline: Duration,
    on_retry: Option<RetryHook>,
    /// From the caller's latest write to auth; sent with every call.
    consistency_token: Option<String>,
}

impl TaskClient {
    /// A client over `channel` acting for the holder of `access_token`.
    pub fn new(channel: Channel, access_token: &str) -> Result<Self, Status> {
        let authorization = format!("Bearer {access_token}")
            .parse()
            .map_err(|_| Status::invalid_argument("access token is not valid metadata"))?;
        Ok(Self {
            inner: TaskServiceClient::new(channel),
            authorization,
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(500)),
            deadline: Duration::from_secs(10),
            on_retry: None,
            consistency_token: None,
        })
    }

    /// Backoff between USER_NOT_READY retries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long to keep retrying before returning the last USER_NOT_READY.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Read-your-writes: the `consistency_token` auth answered the caller's
    /// latest write (SignUp, UpdateProfile) with. Every call then carries it,
    /// so task serves them from a replica that has that write.
    pub fn with_consistency_token(mut self, token: impl Into<String>) -> Self {
        self.consistency_token = Some(token.into()).filter(|t| !t.is_empty());
        self
    }

    /// Records a newer write's token (see [`Self::with_consistency_token`]).
    pub fn set_consistency_token(&mut self, token: impl Into<String>) {
        self.consistency_token = Some(token.into()).filter(|t| !t.is_empty());
    }

    fn token_or(&self, given: String) -> String {
        if given.is_empty() {
            self.consistency_token.clone().unwrap_or_default()
        } else {
            given
        }
    }

    /// Observes each retry.
    pub fn on_retry(mut self, hook: RetryHook) -> Self {
        self.on_retry = Some(hook);
        self
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.authorization.clone());
        req
    }

    /// Creates a task, waiting out USER_NOT_READY up to the deadline.
    pub async fn create_task(&mut self, mut req: CreateTaskRequest) -> Result<Task, Status> {
        req.consistency_token = self.token_or(req.consistency_token);
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut delays = self.backoff.delays();
        let mut attempt = 0;
        loop {
            let status = match self.inner.create_task(self.request(req.clone())).await {
                Ok(r) => {
                    return r
                        .into_inner()
                        .task
                        .ok_or_else(|| Status::internal("CreateTask answered without a task"));
                }
                Err(s) => s,
            };
            let Some(server_delay) = user_not_ready(&status) else {
                return Err(status);
            };
            let delay = delays
                .next()
                .unwrap_or(self.backoff.max())
                .max(server_delay);
            if tokio::time::Instant::now() + delay > give_up {
                return Err(status);
            }
            attempt += 1;
            if let Some(hook) = &self.on_retry {
                hook(&Retry {
                    attempt,
                    delay,
                    status,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn list_tasks(
        &mut self,
        mut req: ListTasksRequest,
    ) -> Result<ListTasksResponse, Status> {
        req.consistency_token = self.token_or(req.consistency_token);
        Ok(self.inner.list_tasks(self.request(req)).await?.into_inner())
    }

    pub async fn get_task(&mut self, id: &str) -> Result<Task, Status> {
        self.inner
            .get_task(self.request(GetTaskRequest {
                id: id.to_owned(),
                consistency_token: self.token_or(String::new()),
            }))
            .await?
            .into_inner()
            .task
            .ok_or_else(|| Status::internal("GetTask answered without a task"))
    }
}
