//! Anti-entropy: a periodic comparison of the replica with auth that finds
//! and repairs divergence nobody reported (a restore from an old backup, a
//! lost row, a bug), like the rows a lost event would leave behind.
//!
//! It compares digests range by range (`common::digest`): auth splits a
//! range into buckets of about equal size and digests each; the replica
//! digests the same buckets. Equal buckets cost one indexed read per side
//! and nothing more. A differing bucket is split again until it is small
//! enough to compare row by row; only the members found missing or behind
//! are fetched and written, through the version guard. Nothing auth still
//! has is ever deleted; rows auth does not have are reported, not removed.
//! One task instance reconciles at a time: the holder of the `reconcile`
//! lease (`memberflow_runtime::lease`), the same rule as auth's relay
//! leader. A holder that stops renewing (paused, cut off) loses it within
//! `reconcile.lease_ms`, and another instance takes over. Its repairs go
//! through the version guard, so a resumed ex-holder that finishes a write
//! can only move a row to a version auth had.
use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use memberflow_contract::digest::{self, Bucket};
use memberflow_runtime::lease::{Elector, Term};
use memberflow_runtime::shutdown::CancellationToken;
use memberflow_runtime::telemetry::error_chain;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    auth_client::AuthClient, domain::ReplicaMember, metrics::TaskMetrics, replica,
    settings::ReconcileSettings,
};

/// The name of the reconciler's lease.
pub const LEASE: &str = "reconcile";
/// How often an instance that does not hold the lease tries to take it.
pub const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// Buckets per digest request.
const FANOUT: i32 = 64;
/// A differing bucket this small is compared row by row.
const LEAF_ROWS: i64 = 1_000;

/// What one pass found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Buckets compared.
    pub buckets: u64,
    /// Replica rows read to compare (digests and leaves).
    pub rows_read: u64,
    /// Members auth has and the replica lacks.
    pub missing: u64,
    /// Members the replica holds at an older version.
    pub stale: u64,
    /// Replica rows auth does not have, or ahead of auth: reported only.
    pub unexplained: u64,
    /// Rows written to repair.
    pub repaired: u64,
}

/// Which buckets differ: the pure comparison of auth's digest with the
/// replica's over the same bounds.
pub fn differing(theirs: &[Bucket], ours: &[(i64, String)]) -> Vec<Bucket> {
    theirs
        .iter()
        .zip(ours)
        .filter(|(t, (count, hash))| t.count != *count || &t.hash != hash)
        .map(|(t, _)| t.clone())
        .collect()
}

/// What a leaf comparison finds: members to fetch and write (missing or
/// stale), and how many replica rows auth cannot explain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeafDiff {
    pub missing: Vec<Uuid>,
    pub stale: Vec<Uuid>,
    pub unexplained: u64,
}

/// Compares one small range row by row: `theirs` from auth, `ours` from the
/// replica, both `(id, version)`.
pub fn diff_leaf(theirs: &[(Uuid, i64)], ours: &[(Uuid, i64)]) -> LeafDiff {
    let ours: HashMap<Uuid, i64> = ours.iter().copied().collect();
    let mut d = LeafDiff::default();
    let mut explained = 0;
    for (id, version) in theirs {
        match ours.get(id) {
            None => d.missing.push(*id),
            Some(v) if v < version => {
                explained += 1;
                d.stale.push(*id);
            }
            Some(v) if v == version => explained += 1,
            Some(_) => {} // ahead of auth: unexplained
        }
    }
    d.unexplained = (ours.len() - explained) as u64;
    d
}

/// One full comparison of the replica with auth, repairing what it finds.
pub async fn reconcile_once(pool: &PgPool, source: &AuthClient) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    let mut ranges = vec![(digest::FIRST, digest::LAST)];
    while let Some((after, until)) = ranges.pop() {
        let theirs = source.digest(after, until, FANOUT).await?;
        if theirs.is_empty() {
            // auth has nobody here: whatever the replica has is unexplained.
            let ours = replica::versions(pool, after, until).await?;
            pass.rows_read += ours.len() as u64;
            pass.unexplained += ours.len() as u64;
            continue;
        }
        let bounds: Vec<(Uuid, Uuid)> = theirs.iter().map(|b| (b.after, b.until)).collect();
        let ours = replica::digest(pool, &bounds).await?;
        pass.buckets += theirs.len() as u64;
        pass.rows_read += ours.iter().map(|(n, _)| *n as u64).sum::<u64>();
        for bucket in differing(&theirs, &ours) {
            if bucket.count > LEAF_ROWS {
                ranges.push((bucket.after, bucket.until));
            } else {
                repair_leaf(pool, source, &bucket, &mut pass).await?;
            }
        }
    }
    Ok(pass)
}

async fn repair_leaf(
    pool: &PgPool,
    source: &AuthClient,
    bucket: &Bucket,
    pass: &mut Pass,
) -> anyhow::Result<()> {
    let mut theirs: Vec<ReplicaMember> = Vec::new();
    let mut pages = std::pin::pin!(source.pages(bucket.after, bucket.until, &[]).await?);
    while let Some(page) = pages.next().await {
        theirs.extend(page?);
    }
    let ours = replica::versions(pool, bucket.after, bucket.until).await?;
    pass.rows_read += ours.len() as u64;
    let versions: Vec<(Uuid, i64)> = theirs.iter().map(|m| (m.id, m.version)).collect();
    let d = diff_leaf(&versions, &ours);
    pass.missing += d.missing.len() as u64;
    pass.stale += d.stale.len() as u64;
    pass.unexplained += d.unexplained;
    let fix: Vec<ReplicaMember> = theirs
        .into_iter()
        .filter(|m| d.missing.contains(&m.id) || d.stale.contains(&m.id))
        .collect();
    if !fix.is_empty() {
        pass.repaired += replica::upsert(pool, &fix).await?;
    }
    Ok(())
}

/// The reconciler's elector: the `reconcile` lease on task's database.
pub fn elector(
    db: sqlx::postgres::PgConnectOptions,
    cfg: &ReconcileSettings,
    backoff: memberflow_retry::Backoff,
) -> Elector {
    Elector::new(
        db.application_name("memberflow-reconcile-lease"),
        LEASE,
        Duration::from_millis(cfg.lease_ms),
        STANDBY_RETRY,
        backoff,
    )
}

/// Reconciles every `interval_secs` (0: never) until `shutdown`, on the one
/// instance that holds the lease; the others stand by to take it over.
pub async fn run(
    pool: PgPool,
    elector: Elector,
    source: AuthClient,
    cfg: ReconcileSettings,
    metrics: TaskMetrics,
    shutdown: CancellationToken,
) {
    if cfg.interval_secs == 0 {
        return;
    }
    while !shutdown.is_cancelled() {
        let Some(term) = elector.acquire(&shutdown).await else {
            return;
        };
        metrics.reconcile_leader.set(1);
        let renewing = CancellationToken::new();
        tokio::join!(
            async {
                lead(&pool, &source, &cfg, &metrics, &term).await;
                renewing.cancel();
            },
            elector.keep(&term, &renewing),
        );
        metrics.reconcile_leader.set(0);
        // Fenced by the epoch: a no-op if another instance took over.
        elector.release(&term).await;
    }
}

/// Runs a pass every interval while `term` is held; a pass under a term
/// that ends is abandoned (the next holder starts its own).
async fn lead(
    pool: &PgPool,
    source: &AuthClient,
    cfg: &ReconcileSettings,
    metrics: &TaskMetrics,
    term: &Term,
) {
    let mut every = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await; // not at once: let the consumer catch up first
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = term.ended() => return,
        }
        if !term.is_held() {
            return;
        }
        let pass = tokio::select! {
            pass = reconcile_once(pool, source) => pass,
            () = term.ended() => {
                tracing::warn!("the reconciler's lease ended mid-pass; abandoning the pass");
                return;
            }
        };
        match pass {
            Ok(pass) => {
                let found = pass.missing + pass.stale + pass.unexplained;
                metrics.reconcile_found.inc_by(found);
                metrics.reconcile_repaired.inc_by(pass.repaired);
                if found > 0 {
                    tracing::warn!(
                        ?pass,
                        "the replica had diverged from auth; repaired what auth explains"
                    );
                } else {
                    tracing::info!(
                        buckets = pass.buckets,
                        rows_read = pass.rows_read,
                        "replica matches auth"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error.cause_chain = %error_chain(e.as_ref()), "reconcile pass failed; retrying at the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(count: i64, hash: &str) -> Bucket {
        Bucket {
            after: Uuid::nil(),
            until: Uuid::max(),
            count,
            hash: hash.into(),
        }
    }

    #[test]
    fn equal_buckets_are_skipped_and_any_difference_is_kept() {
        let theirs = [bucket(3, "7"), bucket(3, "8"), bucket(2, "9")];
        let ours = [(3, "7".into()), (3, "1".into()), (1, "9".into())];
        let d = differing(&theirs, &ours);
        assert_eq!(d, vec![theirs[1].clone(), theirs[2].clone()]);
    }

    #[test]
    fn a_leaf_diff_finds_missing_stale_and_unexplained_rows() {
        let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(Uuid::from_u128);
        let theirs = [(a, 1), (b, 3), (c, 2), (d, 1)];
        let ours = [(a, 1), (b, 2), (c, 5), (e, 1)];
        let diff = diff_leaf(&theirs, &ours);
        assert_eq!(diff.missing, vec![d]);
        assert_eq!(diff.stale, vec![b]);
        // c is ahead of auth, e unknown to auth: neither is touched.
        assert_eq!(diff.unexplained, 2);
    }
}
