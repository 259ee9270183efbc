//! Read-through to auth: fetches a member task has not replicated yet and
//! provisions it, so CreateTask can go on at once.
//!
//! Concurrent misses for one member share one GetMember call (single-flight).
//! The call is bounded by a timeout and a concurrency limit (see
//! `auth_client`), so a slow or dead auth costs a bounded wait and never piles
//! up requests.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{auth_client::AuthClient, domain::ReplicaMember, replica};

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
    auth: AuthClient,
    pool: PgPool,
    inflight: Arc<Mutex<HashMap<Uuid, Flight>>>,
    calls: Arc<AtomicU64>,
}

impl ReadThrough {
    /// Fetches through `auth` (which connects lazily, so task starts even
    /// while auth is down) into the replica in `pool`.
    pub fn new(auth: AuthClient, pool: PgPool) -> Self {
        Self {
            auth,
            pool,
            inflight: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// GetMember calls made so far (tests check single-flight with it).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The member at `min_version` or newer, fetched once however many
    /// callers miss at the same time.
    ///
    /// A caller that finds no flight in progress may have read the replica
    /// just before another flight provisioned the member; it reads the
    /// replica once more before calling auth, so that late arrival does not
    /// cost a second GetMember.
    pub async fn fetch_and_provision(
        &self,
        id: Uuid,
        min_version: i64,
    ) -> Result<ReplicaMember, FetchError> {
        let in_flight = self
            .inflight
            .lock()
            .expect("inflight lock")
            .contains_key(&id);
        if !in_flight
            && let Ok(Some(m)) = replica::find(&self.pool, id).await
            && m.version >= min_version.max(1)
        {
            return Ok(m);
        }
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
        let m = match self.auth.member(id).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(FetchError::NotFound(id)),
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "GetMember failed");
                return Err(FetchError::Unavailable(s.message().to_owned()));
            }
        };
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
