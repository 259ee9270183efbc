//! Anti-entropy: a periodic comparison of the replica with auth, the source
//! of truth, that finds and repairs divergence nobody reported: a lost row or
//! event, a restore of task's database, a forged event, a restore of auth's
//! database, a bug.
//!
//! It compares digests range by range (`memberflow_contract::digest`): auth
//! splits a range into buckets of about equal size and digests each; the
//! replica digests the same buckets. The digest covers each member's
//! replicable content as well as its version, so equal versions with other
//! content differ. Equal buckets cost one indexed read per side and nothing
//! more. A differing bucket is split again until it is small enough to
//! compare row by row (`repair::decide`): the replica's rows are read first,
//! then auth's, and each differing member is set to auth's state: missing
//! and behind rows through the version guard, rows ahead of auth or in
//! conflict with it by compare-and-set on the row as read (`repair`). Rows
//! auth does not have are reported, or removed if `reconcile.unknown_rows`
//! says so. One task instance reconciles at a time: the holder of the
//! `reconcile` lease (`memberflow_runtime::lease`), the same rule as auth's
//! relay leader. A holder that stops renewing (paused, cut off) loses it
//! within `reconcile.lease_ms`, and another instance takes over. A resumed
//! ex-holder that finishes a write can only set a row to a state auth had,
//! and only if nothing wrote the row since it read it.
use std::time::Duration;

use futures::StreamExt;
use memberflow_contract::digest::{self, Bucket};
use memberflow_lifecycle::{Start, Ticks};
use memberflow_runtime::lease::{Elector, Term};
use memberflow_runtime::shutdown::CancellationToken;
use memberflow_runtime::telemetry::error_chain;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    auth_client::AuthClient,
    domain::ReplicaMember,
    metrics::TaskMetrics,
    repair::{self, PerKind, UnknownRows},
    replica,
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
    /// Rows found different from auth, by kind.
    pub found: PerKind,
    /// Rows set to auth's state (or removed), by kind.
    pub repaired: PerKind,
    /// The pass stopped early, between two steps, because its lease ended.
    pub stopped: bool,
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

/// One full comparison of the replica with auth, repairing what it finds;
/// `unknown` says what to do with rows auth does not have.
pub async fn reconcile_once(
    pool: &PgPool,
    source: &AuthClient,
    unknown: UnknownRows,
) -> anyhow::Result<Pass> {
    reconcile_while(pool, source, unknown, &|| true).await
}

/// [`reconcile_once`] while `held()` (the lease) holds: checked before each
/// step (a digest, a leaf's comparison and repair), so a pass whose lease
/// ends stops between two steps, never inside a repair's write.
pub async fn reconcile_while(
    pool: &PgPool,
    source: &AuthClient,
    unknown: UnknownRows,
    held: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    let mut ranges = vec![(digest::FIRST, digest::LAST)];
    while let Some((after, until)) = ranges.pop() {
        if !held() {
            pass.stopped = true;
            return Ok(pass);
        }
        let theirs = source.digest(after, until, FANOUT).await?;
        if theirs.is_empty() {
            // auth has nobody here: whatever the replica has is compared row
            // by row (read again, then auth again: see `repair`).
            repair_range(pool, source, after, until, unknown, held, &mut pass).await?;
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
                repair_range(
                    pool,
                    source,
                    bucket.after,
                    bucket.until,
                    unknown,
                    held,
                    &mut pass,
                )
                .await?;
            }
        }
    }
    if pass.stopped || !held() {
        pass.stopped = true;
        return Ok(pass);
    }
    // Tasks a CreateTask committed beside a tombstone's purge.
    let purged = replica::purge_tombstoned_tasks(pool).await?;
    if purged > 0 {
        tracing::info!(tasks = purged, "deleted the tasks of deleted members");
    }
    Ok(pass)
}

/// Compares `(after, until]` row by row, [`LEAF_ROWS`] replica rows at a
/// time: the replica's rows first, then auth's members up to the last of
/// them, so a replica row ahead of auth's answer was never auth's.
async fn repair_range(
    pool: &PgPool,
    source: &AuthClient,
    after: Uuid,
    until: Uuid,
    unknown: UnknownRows,
    held: &(dyn Fn() -> bool + Sync),
    pass: &mut Pass,
) -> anyhow::Result<()> {
    let mut lo = after;
    loop {
        if !held() {
            pass.stopped = true;
            return Ok(());
        }
        let ours = replica::observe(pool, lo, until, LEAF_ROWS).await?;
        pass.rows_read += ours.len() as u64;
        let hi = match ours.last() {
            Some(last) if ours.len() as i64 == LEAF_ROWS => last.member.id,
            _ => until,
        };
        let mut theirs: Vec<ReplicaMember> = Vec::new();
        let mut pages = std::pin::pin!(source.pages(lo, hi, &[]).await?);
        while let Some(page) = pages.next().await {
            theirs.extend(page?);
        }
        let plan = repair::decide(&theirs, &ours);
        pass.found.merge(&plan.found());
        pass.repaired
            .merge(&repair::carry_out(pool, &plan, unknown).await?);
        if hi == until {
            return Ok(());
        }
        lo = hi;
    }
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
    // Beside the relay's lease, in the outbox library's leases table.
    .in_table(crate::erasure::SPEC.tables.leases_table())
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
        // Never: idle until shutdown, since a worker that ends stops the
        // service.
        shutdown.cancelled().await;
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
/// that ends stops at its next step, never inside a repair (the next holder
/// starts its own).
async fn lead(
    pool: &PgPool,
    source: &AuthClient,
    cfg: &ReconcileSettings,
    metrics: &TaskMetrics,
    term: &Term,
) {
    // Not at once: let the consumer catch up first (and a rolling deploy's
    // new leader would otherwise pass as soon as it starts).
    let mut ticks = Ticks::new(
        Duration::from_secs(cfg.interval_secs),
        Start::AfterOnePeriod,
    );
    loop {
        tokio::select! {
            () = ticks.tick() => {}
            () = term.ended() => return,
        }
        if !term.is_held() {
            return;
        }
        let pass = reconcile_while(pool, source, cfg.unknown_rows, &|| term.is_held()).await;
        if let Ok(stopped) = pass.as_ref().map(|p| p.stopped)
            && stopped
        {
            let pass = pass.expect("checked");
            metrics.reconcile(&pass.found, &pass.repaired);
            tracing::warn!(
                found = pass.found.total(),
                repaired = pass.repaired.total(),
                "the reconciler's lease ended mid-pass; stopped the pass between steps"
            );
            return;
        }
        match pass {
            Ok(pass) => {
                metrics.reconcile(&pass.found, &pass.repaired);
                if pass.found.total() > 0 {
                    let n = |k| pass.found.get(k);
                    tracing::warn!(
                        missing = n(repair::Kind::Missing),
                        behind = n(repair::Kind::Behind),
                        ahead = n(repair::Kind::Ahead),
                        conflict = n(repair::Kind::Conflict),
                        unknown = n(repair::Kind::Unknown),
                        repaired = pass.repaired.total(),
                        policy = ?cfg.unknown_rows,
                        "the replica had diverged from auth; set it to auth's state"
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
}
