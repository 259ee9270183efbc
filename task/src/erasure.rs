//! task's side of the erasure saga (docs/deletion.md): a
//! `task.v1.MemberErased` receipt for each member the replica holds as a
//! tombstone after applying a MemberDeleted, written through task's own
//! outbox in the same transaction, so a receipt is sent exactly when the
//! erasure committed. A MemberDeleted for a member already a tombstone (a
//! redelivery with a new id, or a retry from auth) sends it again, so a
//! retry always completes.
use chrono::{DateTime, Utc};
use memberflow_contract::proto::task::v1 as pb;
use memberflow_contract::time::timestamp;
use memberflow_contract::topology::{ERASURE_EXCHANGE, MEMBER_ERASED, TASK_SERVICE};
use memberflow_outbox::{
    OutboxSpec, Tables,
    write::{NewEvent, Tx},
};
use prost::Message;
use uuid::Uuid;

/// Where task's outbox lives (as auth's: the `search_path`, ordered by
/// member), where its relay publishes, and the channel that wakes it.
pub const SPEC: OutboxSpec = OutboxSpec {
    tables: Tables::new::<Uuid>("member_id"),
    key_header: "member_id",
    exchange: ERASURE_EXCHANGE,
    channel: "task_outbox",
    connection_name: "task.outbox-relay",
    consumers: "auth",
};

/// The receipt for `member_id`'s tombstone at `version`, erased at
/// `erased_at`.
pub fn receipt(member_id: Uuid, version: i64, erased_at: DateTime<Utc>) -> NewEvent {
    NewEvent::build(MEMBER_ERASED, member_id, version, erased_at, |id| {
        pb::MemberErased {
            event_id: id.to_string(),
            member_id: member_id.to_string(),
            version,
            service: TASK_SERVICE.to_owned(),
            erased_at: Some(timestamp(erased_at)),
        }
        .encode_to_vec()
    })
}

/// Writes a receipt for each of `deletions` (member, the MemberDeleted's
/// version) whose member the replica now holds as a tombstone at that
/// version, in `tx` (one read of those tombstones, then one statement for
/// the receipts); returns how many. Called by every
/// apply that saw a fresh MemberDeleted, after its tombstones are written.
pub async fn write_receipts(tx: &mut Tx, deletions: &[(Uuid, i64)]) -> sqlx::Result<u64> {
    let now = Utc::now();
    let receipts: Vec<NewEvent> = deletions
        .iter()
        .map(|&(member, version)| receipt(member, version, now))
        .collect();
    if receipts.is_empty() {
        return Ok(0);
    }
    let members: Vec<Uuid> = deletions.iter().map(|d| d.0).collect();
    let versions: Vec<i64> = deletions.iter().map(|d| d.1).collect();
    let tombstones: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT m.id, m.version FROM members m
           JOIN UNNEST($1::uuid[], $2::int8[]) AS d(id, version) USING (id, version)
          WHERE m.deleted_at IS NOT NULL",
    )
    .bind(&members)
    .bind(&versions)
    .fetch_all(&mut **tx)
    .await?;
    let due: Vec<NewEvent> = receipts
        .into_iter()
        .filter(|r| tombstones.contains(&(r.key, r.version)))
        .collect();
    tx.write_all(&due).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_names_task_and_the_tombstone_and_carries_no_personal_data() {
        let member = Uuid::now_v7();
        let at = Utc::now();
        let e = receipt(member, 4, at);
        assert_eq!(
            (e.routing_key, e.key, e.version),
            (MEMBER_ERASED, member, 4)
        );
        let r = pb::MemberErased::decode(e.payload.as_slice()).unwrap();
        assert_eq!(r.event_id, e.event_id.to_string());
        assert_eq!(r.member_id, member.to_string());
        assert_eq!((r.version, r.service.as_str()), (4, "task"));
        assert_eq!(r.erased_at, Some(timestamp(at)));
    }
}
