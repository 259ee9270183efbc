//! task's one client of auth, the source of truth: the member fetch of
//! read-through, the key fetch of token verification, and the digests and
//! member pages of the reconciler and resync. Every call but GetPublicKeys
//! carries the service credential.
use std::time::Duration;

use futures::StreamExt;
use memberflow_contract::{
    digest::Bucket,
    proto::auth::v1::{
        DigestMembersRequest, GetMemberRequest, GetPublicKeysRequest, ListMembersRequest,
        MemberState, auth_service_client::AuthServiceClient,
    },
    time::from_timestamp,
    token::PublicKey,
};
use memberflow_runtime::{grpc::SERVICE_TOKEN_HEADER, trace_context};
use secrecy::ExposeSecret;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tower::{ServiceBuilder, limit::ConcurrencyLimit, timeout::Timeout};
use uuid::Uuid;

use crate::{domain::ReplicaMember, settings::AuthSettings};

/// Members per page of a resync.
pub const PAGE_SIZE: i32 = 1000;

/// auth as the source of truth: its ListMembers and DigestMembers RPCs,
/// called with the service credential.
#[derive(Clone)]
pub struct AuthClient {
    /// Bulk calls (keys, digests, member pages), bounded by their callers.
    client: AuthServiceClient<Channel>,
    /// GetMember on the request path: `auth.timeout_ms` per call, at most
    /// `auth.concurrency_limit` in flight.
    member_client: AuthServiceClient<Timeout<ConcurrencyLimit<Channel>>>,
    service_token: MetadataValue<tonic::metadata::Ascii>,
}

impl AuthClient {
    /// Connects lazily to `cfg.addr`, so task starts even while auth is down.
    pub fn new(cfg: &AuthSettings) -> anyhow::Result<Self> {
        let channel = cfg
            .endpoint()?
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.max(1_000)))
            .connect_lazy();
        let limited = ServiceBuilder::new()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .concurrency_limit(cfg.concurrency_limit.max(1))
            .service(channel.clone());
        Ok(Self {
            client: AuthServiceClient::new(channel),
            member_client: AuthServiceClient::new(limited),
            service_token: cfg
                .service_token
                .expose_secret()
                .parse()
                .map_err(|_| anyhow::anyhow!("task.auth.service_token is not valid metadata"))?,
        })
    }

    /// One member (GetMember), `None` if auth does not know it.
    pub async fn member(&self, id: Uuid) -> Result<Option<ReplicaMember>, Status> {
        let mut req = self.request(GetMemberRequest {
            member_id: id.to_string(),
        });
        // auth's GetMember span joins the caller's trace.
        trace_context::inject_metadata(req.metadata_mut());
        let member = match self.member_client.clone().get_member(req).await {
            Ok(r) => r.into_inner().member,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        }
        .ok_or_else(|| Status::internal("auth answered without a member"))?;
        replica_member(member)
            .map(Some)
            .map_err(|e| Status::internal(format!("auth answered a bad member: {e}")))
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
fn replica_member(m: MemberState) -> anyhow::Result<ReplicaMember> {
    if m.deleted {
        // A tombstone: id and version only; the deletion time is when the
        // replica learnt of it.
        return Ok(ReplicaMember::tombstone(
            Uuid::parse_str(&m.id)?,
            m.version,
            chrono::Utc::now(),
        ));
    }
    let access = crate::domain::Access::from_wire(m.role, m.suspension)
        .map_err(|(field, why)| anyhow::anyhow!("member {}: {field} {why}", m.id))?;
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
        deleted_at: None,
        access,
    })
}
