//! Rebuilding the replica from auth, modelled on incremental snapshots
//! (Debezium, Netflix's DBLog) but without their watermarks: every write goes
//! through the replica's version guard, so a snapshot row and a live event
//! for the same member commute, and resync is safe while events flow.
//!
//! A full resync reads `auth.v1.AuthService/ListMembers` in id order, applies
//! each page in one transaction with a checkpoint (the page's last id), and
//! resumes from that checkpoint if it is interrupted.
use futures::StreamExt;
use memberflow_contract::digest;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{auth_client::AuthClient, replica};

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
    /// Replica rows they changed (missing or older ones).
    pub changed: u64,
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
