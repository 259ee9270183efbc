//! Rebuilding the replica from auth, modelled on incremental snapshots
//! (Debezium, Netflix's DBLog) but without their watermarks: every write goes
//! through the replica's version guard, so a snapshot row and a live event
//! for the same member commute, and resync is safe while events flow.
//!
//! A full resync reads `auth.v1.AuthService/ListMembers` in id order, applies
//! each page in one transaction with a checkpoint (the page's last id), and
//! resumes from that checkpoint if it is interrupted.
use std::time::Duration;

use futures::StreamExt;
use memberflow_common::{
    digest::{self, Bucket},
    grpc::{SERVICE_TOKEN_HEADER, from_timestamp},
    proto::auth::v1::{
        DigestMembersRequest, GetPublicKeysRequest, ListMembersRequest, MemberState,
        auth_service_client::AuthServiceClient,
    },
    token::PublicKey,
};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tonic::{Request, Status, metadata::MetadataValue, transport::Channel};
use uuid::Uuid;

use crate::{domain::ReplicaMember, replica, settings::AuthSettings};

/// Members per page of a resync.
pub const PAGE_SIZE: i32 = 1000;
/// The checkpoint row of a full resync.
const CHECKPOINT: &str = "full";

/// auth as the source of truth: its ListMembers and DigestMembers RPCs,
/// called with the service credential.
#[derive(Clone)]
pub struct AuthSource {
    client: AuthServiceClient<Channel>,
    service_token: MetadataValue<tonic::metadata::Ascii>,
}

impl AuthSource {
    /// Connects lazily to `cfg.addr`.
    pub fn new(cfg: &AuthSettings) -> anyhow::Result<Self> {
        let channel = cfg
            .endpoint()?
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.max(1_000)))
            .connect_lazy();
        Ok(Self {
            client: AuthServiceClient::new(channel),
            service_token: cfg.service_token.expose_secret().parse()?,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert(SERVICE_TOKEN_HEADER, self.service_token.clone());
        req
    }

    /// The public keys auth signs access tokens with (GetPublicKeys).
    pub async fn public_keys(&self) -> anyhow::Result<Vec<PublicKey>> {
        let res = self
            .client
            .clone()
            .get_public_keys(GetPublicKeysRequest {})
            .await?
            .into_inner();
        res.keys
            .iter()
            .map(|k| Ok(PublicKey::from_jwk(&k.kid, &k.crv, &k.x)?))
            .collect()
    }

    /// auth's digest of `(after, until]` in up to `buckets` buckets.
    pub async fn digest(
        &self,
        after: Uuid,
        until: Uuid,
        buckets: i32,
    ) -> Result<Vec<Bucket>, Status> {
        let res = self
            .client
            .clone()
            .digest_members(self.request(DigestMembersRequest {
                after_id: after.to_string(),
                until_id: until.to_string(),
                buckets,
            }))
            .await?
            .into_inner();
        res.buckets
            .into_iter()
            .map(|b| {
                let parse = |s: &str| {
                    Uuid::parse_str(s).map_err(|_| Status::internal("auth sent a bad bucket bound"))
                };
                Ok(Bucket {
                    after: parse(&b.after_id)?,
                    until: parse(&b.until_id)?,
                    count: b.count,
                    hash: b.hash,
                })
            })
            .collect()
    }

    /// The members in `(after, until]` (only `ids` if not empty), in id
    /// order, a page at a time.
    pub async fn pages(
        &self,
        after: Uuid,
        until: Uuid,
        ids: &[Uuid],
    ) -> Result<impl futures::Stream<Item = anyhow::Result<Vec<ReplicaMember>>> + use<>, Status>
    {
        let stream = self
            .client
            .clone()
            .list_members(self.request(ListMembersRequest {
                after_id: after.to_string(),
                until_id: until.to_string(),
                member_ids: ids.iter().map(ToString::to_string).collect(),
                page_size: PAGE_SIZE,
            }))
            .await?
            .into_inner();
        Ok(stream.map(|msg| {
            msg?.members
                .into_iter()
                .map(replica_member)
                .collect::<anyhow::Result<Vec<_>>>()
        }))
    }
}

/// A member as auth serves it (ListMembers, GetMember), as the replica keeps it.
pub(crate) fn replica_member(m: MemberState) -> anyhow::Result<ReplicaMember> {
    Ok(ReplicaMember {
        id: Uuid::parse_str(&m.id)?,
        nickname: m.nickname,
        region: m.region,
        version: m.version,
        occurred_at: m
            .updated_at
            .as_ref()
            .and_then(from_timestamp)
            .ok_or_else(|| anyhow::anyhow!("member {} without updated_at", m.id))?,
        sessions_not_before: m.sessions_not_before.as_ref().and_then(from_timestamp),
        sessions_version: m.sessions_version,
    })
}

/// What a resync covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every member, resuming from the checkpoint of an interrupted run.
    All,
    /// Only these members.
    Members(Vec<Uuid>),
}

/// How far a resync got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Members read from auth so far.
    pub read: u64,
    /// Replica rows they changed (missing or older ones).
    pub changed: u64,
    /// Members auth holds in all, when known.
    pub total: Option<u64>,
}

/// Brings the replica up to auth for `scope`, calling `progress` after each
/// page. Safe to run while events flow and on several instances at once.
pub async fn resync(
    pool: &PgPool,
    source: &AuthSource,
    scope: Scope,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let (after, ids, checkpointed) = match scope {
        Scope::All => (
            checkpoint(pool).await?.unwrap_or(digest::FIRST),
            vec![],
            true,
        ),
        Scope::Members(ids) => (digest::FIRST, ids, false),
    };
    let mut state = Progress {
        total: match ids.len() {
            0 => Some(
                source
                    .digest(digest::FIRST, digest::LAST, 1)
                    .await?
                    .iter()
                    .map(|b| b.count as u64)
                    .sum(),
            ),
            n => Some(n as u64),
        },
        ..Progress::default()
    };
    let mut pages = std::pin::pin!(source.pages(after, digest::LAST, &ids).await?);
    while let Some(members) = pages.next().await {
        let members = members?;
        let mut tx = pool.begin().await?;
        let changed = replica::upsert(&mut *tx, &members).await?;
        if let (true, Some(last)) = (checkpointed, members.last()) {
            sqlx::query(
                "INSERT INTO resync_checkpoint (name, last_id) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET last_id = EXCLUDED.last_id, updated_at = now()",
            )
            .bind(CHECKPOINT)
            .bind(last.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        state.read += members.len() as u64;
        state.changed += changed;
        progress(state);
    }
    if checkpointed {
        sqlx::query("DELETE FROM resync_checkpoint WHERE name = $1")
            .bind(CHECKPOINT)
            .execute(pool)
            .await?;
    }
    Ok(state)
}

/// Where an interrupted full resync stopped, if one did.
pub async fn checkpoint(pool: &PgPool) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT last_id FROM resync_checkpoint WHERE name = $1")
        .bind(CHECKPOINT)
        .fetch_optional(pool)
        .await
}
