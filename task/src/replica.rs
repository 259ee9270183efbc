//! The member replica and its inbox. Applying is idempotent (the inbox) and
//! version-aware (a stale event never overwrites a newer state).
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::ReplicaMember;

/// A decoded, validated member event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    pub event_id: Uuid,
    pub member_id: Uuid,
    pub nickname: String,
    pub region: String,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
}

/// Applies `events` in one statement (so in one transaction): events already
/// in the inbox are skipped, the rest are recorded there, and each member
/// moves to its newest version if that is newer than what the replica holds.
/// Returns how many replica rows changed.
pub async fn apply(pool: &PgPool, events: &[MemberEvent]) -> sqlx::Result<u64> {
    let mut event_ids = Vec::with_capacity(events.len());
    let mut member_ids = Vec::with_capacity(events.len());
    let mut nicknames = Vec::with_capacity(events.len());
    let mut regions = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    for e in events {
        event_ids.push(e.event_id);
        member_ids.push(e.member_id);
        nicknames.push(e.nickname.as_str());
        regions.push(e.region.as_str());
        versions.push(e.version);
        occurred.push(e.occurred_at);
    }
    let done = sqlx::query(
        "WITH batch AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::timestamptz[])
                 AS e(event_id, member_id, nickname, region, version, occurred_at)
         ), fresh AS (
             INSERT INTO inbox (event_id) SELECT event_id FROM batch
             ON CONFLICT DO NOTHING
             RETURNING event_id
         )
         INSERT INTO members (id, nickname, region, version, occurred_at)
         SELECT DISTINCT ON (b.member_id) b.member_id, b.nickname, b.region, b.version, b.occurred_at
           FROM batch b JOIN fresh f USING (event_id)
          ORDER BY b.member_id, b.version DESC
         ON CONFLICT (id) DO UPDATE
            SET nickname = EXCLUDED.nickname,
                region = EXCLUDED.region,
                version = EXCLUDED.version,
                occurred_at = EXCLUDED.occurred_at,
                replicated_at = clock_timestamp()
          WHERE members.version < EXCLUDED.version",
    )
    .bind(&event_ids)
    .bind(&member_ids)
    .bind(&nicknames)
    .bind(&regions)
    .bind(&versions)
    .bind(&occurred)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts a member fetched from auth (read-through) at its version, so the
/// event that follows becomes a no-op; never moves a row backwards.
pub async fn provision<'e>(db: impl PgExecutor<'e>, m: &ReplicaMember) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO members (id, nickname, region, version, occurred_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE
            SET nickname = EXCLUDED.nickname, region = EXCLUDED.region,
                version = EXCLUDED.version, occurred_at = EXCLUDED.occurred_at,
                replicated_at = clock_timestamp()
          WHERE members.version < EXCLUDED.version",
    )
    .bind(m.id)
    .bind(&m.nickname)
    .bind(&m.region)
    .bind(m.version)
    .bind(m.occurred_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<ReplicaMember>> {
    sqlx::query_as("SELECT id, nickname, region, version, occurred_at FROM members WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
