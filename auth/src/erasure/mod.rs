//! The erasure saga's record in auth (docs/deletion.md): for each deleted
//! account, when it was requested, which services must confirm it, each
//! receipt with its time, and when it completed. It holds ids and times
//! only, no personal data, and is kept for `erasure.record_retention_days`
//! as the audit trail.
//!
//! The saga only moves forward: an erasure is never rolled back. A missing
//! receipt is made visible (`memberflow-admin erasures --pending`, the
//! `memberflow_erasures_overdue` gauge and its `ErasurePending` alert) and
//! retried (`memberflow-admin erasures retry`), which publishes the
//! deletion again; a replica that already holds the tombstone answers with
//! a receipt again.
pub mod receipts;

use std::time::Duration;

use chrono::{DateTime, Utc};
use memberflow_lifecycle::{Start, every};
use memberflow_outbox::write::Outbox;
use memberflow_runtime::{db::log_prune, shutdown::CancellationToken, telemetry::error_chain};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    metrics::AuthMetrics, outbox::write::Enqueue, repo::Tombstone, settings::ErasureSettings,
};

/// Opens the saga for `tombstone`, in the transaction that deleted the
/// account: pending until each of `expected` has sent its receipt, complete
/// at once when none is expected.
pub async fn record(
    conn: &mut PgConnection,
    tombstone: &Tombstone,
    expected: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO erasures (member_id, version, requested_at, expected, completed_at)
         VALUES ($1, $2, $3, $4, CASE WHEN cardinality($4::text[]) = 0 THEN $3 END)
         ON CONFLICT (member_id) DO NOTHING",
    )
    .bind(tombstone.id)
    .bind(tombstone.version)
    .bind(tombstone.deleted_at)
    .bind(expected)
    .execute(conn)
    .await?;
    Ok(())
}

/// Where an erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Every expected service has confirmed.
    Complete,
    /// Waiting for a receipt, within its deadline.
    Pending,
    /// Waiting for a receipt past `erasure.deadline_secs`.
    Overdue,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Pending => "pending",
            Self::Overdue => "overdue",
        }
    }
}

/// The rule: complete once completed; otherwise overdue once older than
/// `deadline` at `now`.
pub fn state(
    requested_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    deadline: Duration,
) -> State {
    if completed_at.is_some() {
        return State::Complete;
    }
    let age = (now - requested_at).to_std().unwrap_or_default();
    if age > deadline {
        State::Overdue
    } else {
        State::Pending
    }
}

/// One erasure as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub member_id: Uuid,
    pub version: i64,
    pub requested_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The last `erasures retry`, if any.
    pub retried_at: Option<DateTime<Utc>>,
    /// Each expected service, and when its receipt arrived.
    pub receipts: Vec<(String, Option<DateTime<Utc>>)>,
}

impl Erasure {
    /// Its [`State`] at `now`.
    pub fn state(&self, now: DateTime<Utc>, deadline: Duration) -> State {
        state(self.requested_at, self.completed_at, now, deadline)
    }

    /// The line `memberflow-admin erasures` prints: the member, when it was
    /// requested, each expected service with its receipt time (or
    /// `pending`), and the state.
    pub fn line(&self, now: DateTime<Utc>, deadline: Duration) -> String {
        let mut line = format!(
            "{} requested={}",
            self.member_id,
            self.requested_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        for (service, at) in &self.receipts {
            let at = at.map_or("pending".to_owned(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            });
            line.push_str(&format!(" {service}={at}"));
        }
        if let Some(retried) = self.retried_at {
            line.push_str(&format!(
                " retried={}",
                retried.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        line.push_str(&format!(" state={}", self.state(now, deadline).as_str()));
        line
    }
}

type Row = (
    Uuid,
    i64,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Vec<String>,
    Vec<Option<DateTime<Utc>>>,
);

/// Every erasure on record (only the pending ones with `pending_only`),
/// oldest first, with each expected service's receipt time.
pub async fn list(pool: &PgPool, pending_only: bool) -> sqlx::Result<Vec<Erasure>> {
    read(pool, pending_only, None).await
}

/// The erasure of `member_id`, if one is on record.
pub async fn find(pool: &PgPool, member_id: Uuid) -> sqlx::Result<Option<Erasure>> {
    Ok(read(pool, false, Some(member_id)).await?.pop())
}

/// [`list`] and [`find`]: the erasures, pending only or all, of one member
/// or all, through the primary key or the pending index.
async fn read(
    pool: &PgPool,
    pending_only: bool,
    member_id: Option<Uuid>,
) -> sqlx::Result<Vec<Erasure>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.member_id, e.version, e.requested_at, e.completed_at, e.retried_at,
                e.expected,
                ARRAY(SELECT r.received_at
                        FROM unnest(e.expected) WITH ORDINALITY AS x(service, i)
                        LEFT JOIN erasure_receipts r
                               ON r.member_id = e.member_id AND r.service = x.service
                       ORDER BY x.i)
           FROM erasures e
          WHERE (NOT $1 OR e.completed_at IS NULL)
            AND ($2::uuid IS NULL OR e.member_id = $2)
          ORDER BY e.requested_at, e.member_id",
    )
    .bind(pending_only)
    .bind(member_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(member_id, version, requested_at, completed_at, retried_at, expected, at)| Erasure {
                member_id,
                version,
                requested_at,
                completed_at,
                retried_at,
                receipts: expected.into_iter().zip(at).collect(),
            },
        )
        .collect())
}

/// Publishes the deletion of `member_id` again, through the outbox, so
/// that every replica answers with a receipt again (one that already holds
/// the tombstone does). Returns the erasure as it was, or `None` when there
/// is none on record. A completed erasure is republished too, if asked: it
/// changes nothing but proves the copies are still gone.
pub async fn retry(outbox: &Outbox, member_id: Uuid) -> sqlx::Result<Option<Erasure>> {
    let mut tx = outbox.begin().await?;
    let found: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE erasures SET retried_at = now() WHERE member_id = $1
         RETURNING version, requested_at",
    )
    .bind(member_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, requested_at)) = found else {
        return Ok(None);
    };
    tx.enqueue_deleted(&Tombstone {
        id: member_id,
        version,
        deleted_at: requested_at,
    })
    .await?;
    tx.commit().await?;
    find(outbox.pool(), member_id).await
}

/// Deletes completed records older than `retention` (their receipts go
/// with them); returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    memberflow_runtime::db::prune_in_batches(|limit| async move {
        Ok(sqlx::query(
            "DELETE FROM erasures WHERE member_id IN (
                 SELECT member_id FROM erasures
                  WHERE completed_at < now() - make_interval(secs => $1)
                  LIMIT $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}

/// How often the erasure gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Keeps `memberflow_erasures_pending` and `memberflow_erasures_overdue`
/// current, and prunes old records hourly, until `shutdown`.
pub async fn watch(
    pool: PgPool,
    cfg: ErasureSettings,
    metrics: AuthMetrics,
    shutdown: CancellationToken,
) {
    let retention = Duration::from_secs(u64::from(cfg.record_retention_days) * 86_400);
    let gauges = every(GAUGES_EVERY, Start::Now, &shutdown, || async {
        let counts: sqlx::Result<(i64, i64)> = sqlx::query_as(
            "SELECT count(*),
                    count(*) FILTER (WHERE requested_at < now() - make_interval(secs => $1))
               FROM erasures WHERE completed_at IS NULL",
        )
        .bind(cfg.deadline_secs as f64)
        .fetch_one(&pool)
        .await;
        match counts {
            Ok((pending, overdue)) => {
                metrics.erasures_pending.set(pending);
                metrics.erasures_overdue.set(overdue);
            }
            Err(e) => {
                tracing::debug!(error.cause_chain = %error_chain(&e), "erasure gauges not refreshed")
            }
        }
    });
    let prunes = every(PRUNE_EVERY, Start::Now, &shutdown, || async {
        log_prune("completed erasure records", prune(&pool, retention).await);
        log_prune(
            "receipt inbox",
            memberflow_outbox::inbox::prune(&pool, &crate::outbox::SPEC.tables, INBOX_RETENTION)
                .await,
        );
    });
    tokio::join!(gauges, prunes);
}

/// How often old records and inbox ids are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// How long the receipt inbox remembers an id. A late duplicate past it is
/// still a no-op: a receipt is recorded once per member and service.
const INBOX_RETENTION: Duration = Duration::from_secs(7 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_wins_and_pending_turns_overdue_past_the_deadline() {
        let t0 = Utc::now();
        let hour = Duration::from_secs(3_600);
        let at = |secs| t0 + chrono::Duration::seconds(secs);
        assert_eq!(state(t0, Some(at(1)), at(7_200), hour), State::Complete);
        assert_eq!(state(t0, None, at(3_600), hour), State::Pending);
        assert_eq!(state(t0, None, at(3_601), hour), State::Overdue);
        // A clock behind the request is not overdue.
        assert_eq!(state(t0, None, at(-5), hour), State::Pending);
    }

    #[test]
    fn a_line_names_each_service_and_the_state() {
        let t0 = "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let e = Erasure {
            member_id: Uuid::nil(),
            version: 4,
            requested_at: t0,
            completed_at: None,
            retried_at: None,
            receipts: vec![
                ("task".into(), Some(t0 + chrono::Duration::milliseconds(3))),
                ("billing".into(), None),
            ],
        };
        assert_eq!(
            e.line(t0, Duration::from_secs(60)),
            "00000000-0000-0000-0000-000000000000 requested=2026-12-01T10:00:00.000Z \
             task=2026-12-01T10:00:00.003Z billing=pending state=pending"
        );
    }
}
