//! The public keys task verifies access tokens with: those in its config,
//! and those auth serves through GetPublicKeys, cached.
//!
//! A token naming a key not in the cache makes task ask auth again, at most
//! once per [`MIN_REFRESH_INTERVAL`], so a new signing key works within that
//! and a stream of made-up key ids cannot turn into a stream of calls to auth. A
//! periodic refresh drops keys auth no longer serves (the last step of a
//! rotation).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use memberflow_contract::token::{PublicKey, TokenError, Verified, Verifier};
use memberflow_runtime::error::Failure;
use memberflow_runtime::grpc::bearer;
use memberflow_runtime::shutdown::CancellationToken;

use crate::auth_client::AuthClient;

/// The shortest time between two refreshes caused by unknown key ids.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The trusted keys and how to refresh them.
#[derive(Clone)]
pub struct TrustedKeys {
    verifier: Verifier,
    configured: Arc<[PublicKey]>,
    source: AuthClient,
    last_refresh: Arc<Mutex<Option<Instant>>>,
    refresh_lock: Arc<tokio::sync::Mutex<()>>,
}

impl TrustedKeys {
    /// Starts with `configured` only; [`Self::refresh`] adds auth's.
    pub fn new(configured: Vec<PublicKey>, source: AuthClient) -> Self {
        Self {
            verifier: Verifier::new(&configured),
            configured: configured.into(),
            source,
            last_refresh: Arc::default(),
            refresh_lock: Arc::default(),
        }
    }

    /// The caller of a member RPC, from their bearer token; a token signed
    /// with a key not seen yet makes task ask auth for its keys first.
    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Verified, Failure> {
        let token = bearer(metadata)
            .ok_or_else(|| Failure::Unauthenticated("missing bearer token".into()))?;
        let verified = match self.verifier.verify(token) {
            Err(TokenError::UnknownKey(kid)) => {
                self.refresh_for(&kid).await;
                self.verifier.verify(token)
            }
            other => other,
        };
        verified.map_err(|e| Failure::Unauthenticated(e.to_string()))
    }

    /// Refreshes for an unknown `kid`. Refreshes are at least
    /// [`MIN_REFRESH_INTERVAL`] apart: a caller that comes sooner waits for
    /// the next one (so a brand-new key works, after at most that wait), and
    /// callers share any refresh that starts after they arrived.
    async fn refresh_for(&self, kid: &str) {
        let arrived = Instant::now();
        let _one = self.refresh_lock.lock().await;
        let last = *self.last_refresh.lock().expect("refresh clock lock");
        if last.is_some_and(|t| t >= arrived) || self.verifier.trusts(kid) {
            return; // A refresh since this caller arrived already tried.
        }
        if let Some(t) = last {
            tokio::time::sleep_until((t + MIN_REFRESH_INTERVAL).into()).await;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, kid, "could not fetch auth's public keys");
        }
    }

    /// Trusts the configured keys plus exactly those auth serves now.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        *self.last_refresh.lock().expect("refresh clock lock") = Some(Instant::now());
        let mut keys = self.configured.to_vec();
        for key in self.source.public_keys().await? {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        self.verifier.replace(&keys);
        tracing::debug!(kids = ?self.verifier.kids(), "public keys refreshed");
        Ok(())
    }

    /// Refreshes every `every` until `shutdown`, and once at once.
    pub async fn refresh_every(self, every: Duration, shutdown: CancellationToken) {
        let period = every.max(MIN_REFRESH_INTERVAL);
        memberflow_lifecycle::every(
            period,
            memberflow_lifecycle::Start::Now,
            &shutdown,
            || async {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "could not fetch auth's public keys");
                }
            },
        )
        .await;
    }
}
