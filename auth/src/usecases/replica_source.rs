//! GetMember, ListMembers and DigestMembers: what trusted services (task's
//! read-through, resync and reconciler) read of auth's members.
use memberflow_contract::digest::{self, Bucket};
use memberflow_runtime::error::Failure;
use uuid::Uuid;

use crate::{Error, repo};

use super::Auth;

impl Auth {
    /// The live member `id`; a tombstone is not a member, nothing a caller
    /// could provision.
    pub async fn get_member(self, id: Uuid) -> Result<repo::MemberState, Error> {
        repo::member_states(&self.pool, digest::FIRST, digest::LAST, &[id], 1)
            .await?
            .pop()
            .filter(|m| !m.deleted)
            .ok_or_else(|| Failure::NotFound(format!("member {id}")).into())
    }

    /// One keyset page of ListMembers: up to `limit` members in
    /// `(after, until]`, only `ids` when not empty.
    pub async fn members_page(
        self,
        after: Uuid,
        until: Uuid,
        ids: Vec<Uuid>,
        limit: i64,
    ) -> Result<Vec<repo::MemberState>, Error> {
        Ok(repo::member_states(&self.pool, after, until, &ids, limit).await?)
    }

    /// The digest of `(after, until]` in up to `buckets` buckets.
    pub async fn digest(
        self,
        after: Uuid,
        until: Uuid,
        buckets: i32,
    ) -> Result<Vec<Bucket>, Error> {
        Ok(repo::digest(&self.pool, after, until, buckets).await?)
    }
}
