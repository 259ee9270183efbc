//! Rebuilding the replica from auth, modelled on incremental snapshots
//! (Debezium, Netflix's DBLog) but without their watermarks: missing and
//! older rows are written through the replica's version guard, so a snapshot
//! row and a live event for the same member commute, and resync is safe
//! while events flow.
//!
//! Resync defers to auth as the reconciler does (`repair`): a replica row
//! ahead of auth, or at auth's version with other content, is set to auth's
//! state by compare-and-set. Such a row is confirmed first: auth is read
//! again for it *after* the replica row was read, so a row only ahead of the
//! page (an update applied since the page was read) is left alone.
//!
//! A full resync reads `auth.v1.AuthService/ListMembers` in id order, applies
//! each page in one transaction with a checkpoint (the page's last id), and
//! resumes from that checkpoint if it is interrupted.
use futures::StreamExt;
use memberflow_contract::digest;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    auth_client::AuthClient,
    domain::ReplicaMember,
    repair::{self, PerKind},
    replica,
};

/// The checkpoint row of a full resync.
const CHECKPOINT: &str = "full";

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
    /// Replica rows they changed (missing, older, ahead or in conflict).
    pub changed: u64,
    /// The rows changed, by how they differed from auth.
    pub repaired: PerKind,
    /// Members auth holds in all, when known.
    pub total: Option<u64>,
}

/// Brings the replica up to auth for `scope`, calling `progress` after each
/// page. Safe to run while events flow and on several instances at once.
pub async fn resync(
    pool: &PgPool,
    source: &AuthClient,
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
        let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
        let plan = repair::decide(&members, &replica::observe_ids(&mut *tx, &ids).await?);
        let mut repaired = repair::upsert(&mut tx, &plan.upsert).await?;
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
        repaired.merge(&overwrite_confirmed(pool, source, &plan.overwrite).await?);
        state.read += members.len() as u64;
        state.changed += repaired.total();
        state.repaired.merge(&repaired);
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

/// Sets rows that looked ahead of auth's page, or in conflict with it, to
/// auth's state, once a read of auth made after the replica was read
/// confirms it (`repair`'s rule).
async fn overwrite_confirmed(
    pool: &PgPool,
    source: &AuthClient,
    suspects: &[repair::Overwrite],
) -> anyhow::Result<PerKind> {
    if suspects.is_empty() {
        return Ok(PerKind::default());
    }
    let ids: Vec<Uuid> = suspects.iter().map(|o| o.target.id).collect();
    let mut now: Vec<ReplicaMember> = Vec::new();
    let mut pages = std::pin::pin!(source.pages(digest::FIRST, digest::LAST, &ids).await?);
    while let Some(page) = pages.next().await {
        now.extend(page?);
    }
    let observed: Vec<replica::Observed> = suspects.iter().map(|o| o.observed.clone()).collect();
    let plan = repair::decide(&now, &observed);
    // Resync removes nothing; anything behind now moves on its own (events).
    Ok(repair::overwrite(pool, &plan.overwrite).await?)
}

/// Where an interrupted full resync stopped, if one did.
pub async fn checkpoint(pool: &PgPool) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT last_id FROM resync_checkpoint WHERE name = $1")
        .bind(CHECKPOINT)
        .fetch_optional(pool)
        .await
}
