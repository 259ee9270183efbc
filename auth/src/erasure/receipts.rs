//! auth's consumer of erasure receipts (`task.v1.MemberErased` on
//! `auth.member-erasures`), through the shared consumer of
//! `memberflow_outbox`. Receipts arrive at least once: the inbox drops a
//! redelivery, a receipt is recorded at most once per member and service,
//! and an erasure completes exactly once, in the transaction of its last
//! receipt. A receipt for an unknown or already complete erasure changes
//! nothing and is counted as `stale`.
use chrono::{DateTime, Utc};
use memberflow_contract::proto::task::v1 as pb;
use memberflow_contract::time::from_timestamp;
use memberflow_contract::topology::{
    ERASURE_DEAD_LETTER_EXCHANGE, ERASURE_DEAD_LETTER_QUEUE, ERASURE_EXCHANGE, ERASURE_QUEUE,
    MEMBER_ERASED,
};
use memberflow_outbox::consumer::{
    Counts, Handler, QueueSpec,
    plan::{Poison, Triage, invalid},
};
use prost::Message;
use uuid::Uuid;

use crate::metrics::AuthMetrics;
use crate::outbox::write::Outbox;

/// The names of auth's receipt consumer.
pub const QUEUE_SPEC: QueueSpec = QueueSpec {
    exchange: ERASURE_EXCHANGE,
    binding_key: MEMBER_ERASED,
    queue: ERASURE_QUEUE,
    dead_letter_exchange: ERASURE_DEAD_LETTER_EXCHANGE,
    dead_letter_queue: ERASURE_DEAD_LETTER_QUEUE,
    connection_name: "auth.receipts",
};

/// A decoded, validated receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: Uuid,
    pub member_id: Uuid,
    pub version: i64,
    pub service: String,
    pub erased_at: DateTime<Utc>,
}

/// Longest service name accepted.
const MAX_SERVICE_CHARS: usize = 64;

/// What one delivery is: a receipt, an unknown kind, or poison.
pub fn triage(kind: &str, body: &[u8]) -> Triage<Receipt> {
    match kind {
        MEMBER_ERASED => Triage::decoded(decode(body)),
        other => Triage::Unknown(other.to_owned()),
    }
}

fn decode(body: &[u8]) -> Result<Receipt, Poison> {
    let e = pb::MemberErased::decode(body).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|_| invalid("event_id", "not a UUID"))?;
    let member_id =
        Uuid::parse_str(&e.member_id).map_err(|_| invalid("member_id", "not a UUID"))?;
    if e.version < 1 {
        return Err(invalid("version", "must be at least 1"));
    }
    let service_ok = !e.service.is_empty()
        && e.service.len() <= MAX_SERVICE_CHARS
        && e.service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !service_ok {
        return Err(invalid("service", "must be 1 to 64 of a-z, 0-9, - and _"));
    }
    let erased_at = e
        .erased_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("erased_at", "missing or out of range"))?;
    Ok(Receipt {
        event_id,
        member_id,
        version: e.version,
        service: e.service,
        erased_at,
    })
}

/// Records receipts and completes erasures.
#[derive(Debug, Clone)]
pub struct Receipts {
    /// auth's outbox: its transactions claim inbox ids (receipts write no
    /// event).
    outbox: Outbox,
    metrics: AuthMetrics,
}

impl Receipts {
    pub fn new(outbox: Outbox, metrics: AuthMetrics) -> Self {
        Self { outbox, metrics }
    }
}

impl Handler for Receipts {
    type Event = Receipt;

    fn triage(&self, kind: &str, body: &[u8]) -> Triage<Receipt> {
        triage(kind, body)
    }

    type Key = Uuid;

    fn ids(event: &Receipt) -> (Uuid, Uuid) {
        (event.event_id, event.member_id)
    }

    /// In one transaction: the receipts lock their erasures, so two
    /// instances recording the last two receipts of one erasure at once are
    /// ordered and the second sees the first; then [`RECORD_SQL`] records
    /// the fresh ones and completes what they complete, once
    /// (`completed_at IS NULL`). The inbox claim comes between them, in the
    /// same transaction.
    async fn apply(&self, events: &[Receipt]) -> sqlx::Result<Counts> {
        let mut members: Vec<Uuid> = events.iter().map(|e| e.member_id).collect();
        members.sort_unstable();
        members.dedup();
        let mut tx = self.outbox.begin().await?;
        // First, alone: a statement that waited for this lock takes a new
        // snapshot, so the next one sees the receipts it waited for.
        sqlx::query(
            "SELECT 1 FROM erasures WHERE member_id = ANY($1) AND completed_at IS NULL
              ORDER BY member_id FOR UPDATE",
        )
        .bind(&members)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let fresh = tx.claim(&ids).await?;
        let (recorded, completed): (i64, Vec<f64>) = sqlx::query_as(RECORD_SQL)
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.member_id).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.service.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.version).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.erased_at).collect::<Vec<_>>())
            .bind(&fresh)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        for seconds in &completed {
            self.metrics.erasures_completed.inc();
            self.metrics.erasure_seconds.observe(seconds.max(0.0));
        }
        let fresh = fresh.len() as i64;
        if recorded < fresh {
            tracing::info!(
                ignored = fresh - recorded,
                "receipts for an unknown or already complete erasure (or a second from one service): acked"
            );
        }
        Ok(Counts {
            fresh: fresh as u64,
            applied: recorded as u64,
        })
    }
}

/// [`Receipts::apply`]'s one statement after the lock: the fresh receipts
/// (by the inbox) of pending erasures from expected services are recorded,
/// the first per member and service; then each erasure whose expected
/// services have all answered (receipts recorded before, and by this
/// statement, which its own snapshot cannot see) completes, once. Returns
/// (recorded, each completion's seconds since the request). `$6` holds the
/// fresh ids, claimed before it.
const RECORD_SQL: &str = "WITH batch AS (
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[])
             AS r(event_id, member_id, service, version, erased_at)
     ), fresh AS (
         SELECT * FROM UNNEST($6::uuid[]) AS f(event_id)
     ), recorded AS (
         INSERT INTO erasure_receipts (member_id, service, event_id, version, erased_at)
         SELECT DISTINCT ON (b.member_id, b.service)
                b.member_id, b.service, b.event_id, b.version, b.erased_at
           FROM batch b
           JOIN fresh f USING (event_id)
           JOIN erasures e ON e.member_id = b.member_id AND e.completed_at IS NULL
                          AND b.service = ANY(e.expected)
          ORDER BY b.member_id, b.service, b.event_id
         ON CONFLICT (member_id, service) DO NOTHING
         RETURNING member_id, service
     ), completed AS (
         UPDATE erasures e SET completed_at = clock_timestamp()
          WHERE e.member_id IN (SELECT member_id FROM recorded)
            AND e.completed_at IS NULL
            AND e.expected <@ (ARRAY(SELECT r.service FROM erasure_receipts r
                                      WHERE r.member_id = e.member_id)
                               || ARRAY(SELECT n.service FROM recorded n
                                         WHERE n.member_id = e.member_id))
      RETURNING extract(epoch FROM e.completed_at - e.requested_at)::float8 AS seconds
     )
     SELECT (SELECT count(*) FROM recorded),
            coalesce((SELECT array_agg(seconds) FROM completed), '{}')";

#[cfg(test)]
mod tests {
    use super::*;
    use memberflow_contract::time::timestamp;

    fn body(f: impl FnOnce(&mut pb::MemberErased)) -> Vec<u8> {
        let mut e = pb::MemberErased {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            version: 3,
            service: "task".into(),
            erased_at: Some(timestamp(Utc::now())),
        };
        f(&mut e);
        e.encode_to_vec()
    }

    #[test]
    fn a_valid_receipt_is_applied() {
        let Triage::Apply(r) = triage(MEMBER_ERASED, &body(|_| {})) else {
            panic!("a valid receipt")
        };
        assert_eq!((r.version, r.service.as_str()), (3, "task"));
    }

    #[test]
    fn other_kinds_are_unknown_not_poison() {
        assert_eq!(
            triage("member.erased_v2", &body(|_| {})),
            Triage::Unknown("member.erased_v2".into())
        );
    }

    #[test]
    fn broken_receipts_are_poison() {
        let cases: [(&str, Vec<u8>); 6] = [
            ("garbage", vec![0xff, 0xff, 0xff]),
            ("event id", body(|e| e.event_id = "x".into())),
            ("member id", body(|e| e.member_id = String::new())),
            ("version", body(|e| e.version = 0)),
            ("service", body(|e| e.service = "Task Service".into())),
            ("erased_at", body(|e| e.erased_at = None)),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(triage(MEMBER_ERASED, &bytes), Triage::Poison(_)),
                "{what}"
            );
        }
    }
}
