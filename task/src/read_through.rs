//! Read-through to auth: fetches a member task has not replicated yet and
//! provisions it, so CreateTask can go on at once.
//!
//! Concurrent misses for one member share one GetMember call (single-flight).
//! The call goes through tower layers: a timeout and a concurrency limit, so a
//! slow or dead auth costs a bounded wait and never piles up requests.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use memberflow_common::{
    grpc::SERVICE_TOKEN_HEADER,
    proto::auth::v1::{GetMemberRequest, auth_service_client::AuthServiceClient},
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tonic::{Code, Request, transport::Channel};
use tower::{ServiceBuilder, limit::ConcurrencyLimit, timeout::Timeout};
use uuid::Uuid;

use crate::{domain::ReplicaMember, replica, settings::AuthSettings};

type Client = AuthServiceClient<Timeout<ConcurrencyLimit<Channel>>>;
type Flight = Shared<BoxFuture<'static, Result<ReplicaMember, FetchError>>>;

/// Why read-through could not provision a member.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// auth does not know the member.
    #[error("member {0} does not exist")]
    NotFound(Uuid),
    /// auth is down, slow or refused us; the caller answers USER_NOT_READY.
    #[error("auth is unavailable: {0}")]
    Unavailable(String),
}

/// Fetches members from auth and provisions them into the replica.
#[derive(Clone)]
pub struct ReadThrough {
    client: Client,
    service_token: SecretString,
    pool: PgPool,
    inflight: Arc<Mutex<HashMap<Uuid, Flight>>>,
    calls: Arc<AtomicU64>,
}

impl ReadThrough {
    /// Connects lazily, so task starts even while auth is down.
    pub fn new(cfg: &AuthSettings, pool: PgPool) -> anyhow::Result<Self> {
        let channel = cfg
            .endpoint()?
            .connect_timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_lazy();
        let svc = ServiceBuilder::new()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .concurrency_limit(cfg.concurrency_limit.max(1))
            .service(channel);
        Ok(Self {
            client: AuthServiceClient::new(svc),
            service_token: cfg.service_token.clone(),
            pool,
            inflight: Arc::default(),
            calls: Arc::default(),
        })
    }

    /// GetMember calls made so far (tests check single-flight with it).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The member, fetched once however many callers miss at the same time.
    pub async fn fetch_and_provision(&self, id: Uuid) -> Result<ReplicaMember, FetchError> {
        let flight = {
            let mut map = self.inflight.lock().expect("inflight lock");
            map.entry(id)
                .or_insert_with(|| {
                    let this = self.clone();
                    async move { this.fetch_uncached(id).await }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = flight.clone().await;
        let mut map = self.inflight.lock().expect("inflight lock");
        if map.get(&id).is_some_and(|f| f.ptr_eq(&flight)) {
            map.remove(&id);
        }
        result
    }

    #[tracing::instrument(name = "read_through", skip(self), fields(member_id = %id))]
    async fn fetch_uncached(&self, id: Uuid) -> Result<ReplicaMember, FetchError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut req = Request::new(GetMemberRequest {
            member_id: id.to_string(),
        });
        let token =
            self.service_token.expose_secret().parse().map_err(|_| {
                FetchError::Unavailable("service token is not valid metadata".into())
            })?;
        req.metadata_mut().insert(SERVICE_TOKEN_HEADER, token);
        // auth's GetMember span joins the caller's trace.
        memberflow_common::trace_context::inject_metadata(req.metadata_mut());
        let member = match self.client.clone().get_member(req).await {
            Ok(r) => r.into_inner().member,
            Err(s) if s.code() == Code::NotFound => return Err(FetchError::NotFound(id)),
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "GetMember failed");
                return Err(FetchError::Unavailable(s.message().to_owned()));
            }
        }
        .ok_or_else(|| FetchError::Unavailable("auth answered without a member".into()))?;
        let m = crate::resync::replica_member(member)
            .map_err(|e| FetchError::Unavailable(format!("auth answered a bad member: {e}")))?;
        replica::upsert(&self.pool, std::slice::from_ref(&m))
            .await
            .map_err(|e| FetchError::Unavailable(format!("provisioning failed: {e}")))?;
        // Another writer may have provisioned a newer version meanwhile.
        match replica::find(&self.pool, id).await {
            Ok(Some(current)) => Ok(current),
            _ => Ok(m),
        }
    }
}
