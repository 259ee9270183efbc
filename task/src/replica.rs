//! The member replica and its inbox. Applying is idempotent (the inbox) and
//! version-aware (a stale event never overwrites a newer state).
use chrono::{DateTime, Utc};
use memberflow_outbox::write::Outbox;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Access, ReplicaMember};

/// The version guard every writer of the replica goes through (events,
/// read-through, resync, the reconciler): a row only ever moves to a newer
/// version. It is what lets a snapshot row and an event commute, so resync
/// needs no watermark. The one way around it is [`set_if_unchanged`], which
/// sets a row ahead of auth (or in conflict with it) back to auth's state,
/// only if nothing wrote the row since it was observed.
const UPSERT_IF_NEWER: &str = "ON CONFLICT (id) DO UPDATE
            SET nickname = EXCLUDED.nickname,
                region = EXCLUDED.region,
                version = EXCLUDED.version,
                occurred_at = EXCLUDED.occurred_at,
                sessions_not_before = EXCLUDED.sessions_not_before,
                sessions_version = EXCLUDED.sessions_version,
                deleted_at = EXCLUDED.deleted_at,
                role = EXCLUDED.role,
                suspended_at = EXCLUDED.suspended_at,
                suspended_reason = EXCLUDED.suspended_reason,
                replicated_at = clock_timestamp()
          WHERE members.version < EXCLUDED.version";

/// The version guard's rule as pure code: an event or snapshot at
/// `incoming` replaces a row held at `held` (`None`: no row) only if it is
/// newer. [`UPSERT_IF_NEWER`] is this rule in SQL (`WHERE members.version <
/// EXCLUDED.version`); `tests/tests/properties.rs` runs both over generated
/// schedules on a real database and checks they agree.
pub fn replaces(held: Option<i64>, incoming: i64) -> bool {
    held.is_none_or(|held| held < incoming)
}

/// Deletes the tasks of every member in `$1` the replica holds as a
/// tombstone. Every writer that may write a tombstone runs it after (as a
/// statement of its own, so it sees a task whose insert it waited for), and
/// the reconciler sweeps with [`purge_tombstoned_tasks`].
const PURGE_TASKS_SQL: &str = "DELETE FROM tasks t USING members m
     WHERE t.member_id = m.id AND m.deleted_at IS NOT NULL AND m.id = ANY($1)";

/// Deletes the tasks of the tombstones among `ids`; returns how many.
pub async fn purge_tasks<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(PURGE_TASKS_SQL)
        .bind(ids)
        .execute(db)
        .await?
        .rows_affected())
}

/// Deletes every task of any tombstone: the reconciler's sweep, which
/// catches a task a racing CreateTask committed after a tombstone's purge.
pub async fn purge_tombstoned_tasks(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM tasks t USING members m
          WHERE t.member_id = m.id AND m.deleted_at IS NOT NULL",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// A decoded, validated member event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    pub event_id: Uuid,
    pub member_id: Uuid,
    pub nickname: String,
    pub region: String,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    pub sessions_not_before: Option<DateTime<Utc>>,
    pub sessions_version: i64,
    /// A MemberDeleted: the member becomes a tombstone at `version` (the
    /// nickname and region are empty) and its tasks are deleted.
    pub deleted: bool,
    /// Role and suspension (a tombstone's: a member, not suspended).
    pub access: Access,
}

/// One session auth ended (MemberSessionEnded), by the hash of its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnded {
    pub event_id: Uuid,
    pub member_id: Uuid,
    /// base64url SHA-256 of the session id (`token::session_hash`).
    pub session_hash: String,
    pub ended_at: DateTime<Utc>,
    /// When the session's last access token expires: the entry is pruned
    /// after it.
    pub expires_at: DateTime<Utc>,
}

/// An event the consumer applies: a member's new state, or an ended
/// session, which is kept apart from the member and its version guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    Member(MemberEvent),
    SessionEnded(SessionEnded),
}

impl ReplicaEvent {
    pub fn event_id(&self) -> Uuid {
        match self {
            Self::Member(e) => e.event_id,
            Self::SessionEnded(e) => e.event_id,
        }
    }

    pub fn member_id(&self) -> Uuid {
        match self {
            Self::Member(e) => e.member_id,
            Self::SessionEnded(e) => e.member_id,
        }
    }
}

impl From<MemberEvent> for ReplicaEvent {
    fn from(e: MemberEvent) -> Self {
        Self::Member(e)
    }
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Events not in the inbox before (the rest were duplicates).
    pub fresh: u64,
    /// Each replica row that changed: member, new version, and
    /// `replicated_at - occurred_at` in seconds. Fresh events that changed
    /// nothing were stale.
    pub changed: Vec<(Uuid, i64, f64)>,
    /// Ended sessions newly recorded.
    pub ended: u64,
    /// Erasure receipts written.
    pub receipts: u64,
}

/// [`apply`]'s statement after the inbox claim (`$15`, the fresh ids; the
/// member events' access is `$16` to `$18`),
/// built once: the ended sessions, the upsert through [`UPSERT_IF_NEWER`], the read-your-writes
/// NOTIFY, and what each did.
static APPLY_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH batch AS (
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[],
                              $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::bool[],
                              $16::text[], $17::timestamptz[], $18::text[])
             WITH ORDINALITY
             AS e(event_id, member_id, nickname, region, version, occurred_at,
                  sessions_not_before, sessions_version, deleted, role, suspended_at,
                  suspended_reason, n)
     ), ended_batch AS (
         SELECT * FROM UNNEST($10::uuid[], $11::uuid[], $12::text[], $13::timestamptz[],
                              $14::timestamptz[])
             AS e(event_id, member_id, session_hash, ended_at, expires_at)
     ), fresh AS (
         SELECT * FROM UNNEST($15::uuid[]) AS f(event_id)
     ), ended AS (
         INSERT INTO ended_sessions (session_hash, member_id, ended_at, expires_at)
         SELECT e.session_hash, e.member_id, e.ended_at, e.expires_at
           FROM ended_batch e JOIN fresh f USING (event_id)
         ON CONFLICT (session_hash) DO NOTHING
         RETURNING 1
     ), changed AS (
         INSERT INTO members (id, nickname, region, version, occurred_at,
                              sessions_not_before, sessions_version, deleted_at, role,
                              suspended_at, suspended_reason)
         SELECT DISTINCT ON (b.member_id) b.member_id, b.nickname, b.region, b.version,
                b.occurred_at, b.sessions_not_before, b.sessions_version,
                CASE WHEN b.deleted THEN b.occurred_at END, b.role, b.suspended_at,
                b.suspended_reason
           FROM batch b JOIN fresh f USING (event_id)
          -- Two states at one version (a forged copy): the first
          -- delivered wins, as it would across batches.
          ORDER BY b.member_id, b.version DESC, b.n
         {UPSERT_IF_NEWER}
         RETURNING id, version, extract(epoch FROM replicated_at - occurred_at)::float8 AS lag
     ), notified AS (
         -- Wakes read-your-writes waiters in every task instance.
         {notify}
     )
     SELECT coalesce((SELECT array_agg(event_id) FROM fresh), '{{}}'),
            coalesce((SELECT array_agg(id) FROM changed), '{{}}'),
            coalesce((SELECT array_agg(version) FROM changed), '{{}}'),
            coalesce((SELECT array_agg(lag) FROM changed), '{{}}'),
            (SELECT count(*) FROM notified),
            (SELECT count(*) FROM ended)",
        notify = crate::freshness::NOTIFY_APPLIED_SQL,
    )
});

/// Applies `events` in one transaction of two statements, the inbox claim
/// (`Tx::claim`) and [`APPLY_SQL`]: events already in the inbox are
/// skipped, the rest are recorded there, each member moves
/// to its newest version if that is newer than what the replica holds, and
/// each ended session is recorded in `ended_sessions` (insert-only, outside
/// the version guard: no member state hides it). The tasks of members that
/// became (or were) tombstones are deleted in the same transaction, and for
/// each fresh MemberDeleted whose member is now a tombstone an erasure
/// receipt is written to task's outbox ([`crate::erasure`]), whose commit
/// wakes task's relay.
pub async fn apply(outbox: &Outbox, all: &[ReplicaEvent]) -> sqlx::Result<Applied> {
    let mut events = Vec::with_capacity(all.len());
    let mut ended = Vec::new();
    for e in all {
        match e {
            ReplicaEvent::Member(m) => events.push(m),
            ReplicaEvent::SessionEnded(s) => ended.push(s),
        }
    }
    let ended_ids: Vec<Uuid> = ended.iter().map(|e| e.event_id).collect();
    let ended_members: Vec<Uuid> = ended.iter().map(|e| e.member_id).collect();
    let ended_hashes: Vec<&str> = ended.iter().map(|e| e.session_hash.as_str()).collect();
    let ended_at: Vec<DateTime<Utc>> = ended.iter().map(|e| e.ended_at).collect();
    let ended_expiry: Vec<DateTime<Utc>> = ended.iter().map(|e| e.expires_at).collect();
    let mut event_ids = Vec::with_capacity(events.len());
    let mut member_ids = Vec::with_capacity(events.len());
    let mut nicknames = Vec::with_capacity(events.len());
    let mut regions = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    let mut not_before = Vec::with_capacity(events.len());
    let mut sessions_versions = Vec::with_capacity(events.len());
    let mut deleted = Vec::with_capacity(events.len());
    let mut roles = Vec::with_capacity(events.len());
    let mut suspended_at = Vec::with_capacity(events.len());
    let mut reasons = Vec::with_capacity(events.len());
    for e in &events {
        deleted.push(e.deleted);
        roles.push(e.access.role.as_str());
        suspended_at.push(e.access.suspended_at);
        reasons.push(e.access.suspended_reason.as_deref());
        not_before.push(e.sessions_not_before);
        sessions_versions.push(e.sessions_version);
        event_ids.push(e.event_id);
        member_ids.push(e.member_id);
        nicknames.push(e.nickname.as_str());
        regions.push(e.region.as_str());
        versions.push(e.version);
        occurred.push(e.occurred_at);
    }
    type Row = (Vec<Uuid>, Vec<Uuid>, Vec<i64>, Vec<f64>, i64, i64);
    let mut tx = outbox.begin().await?;
    let all_ids: Vec<Uuid> = event_ids.iter().chain(&ended_ids).copied().collect();
    let claimed = tx.claim(&all_ids).await?;
    let (fresh, ids, versions, lags, _notified, ended): Row =
        sqlx::query_as(sqlx::AssertSqlSafe(APPLY_SQL.as_str()))
            .bind(&event_ids)
            .bind(&member_ids)
            .bind(&nicknames)
            .bind(&regions)
            .bind(&versions)
            .bind(&occurred)
            .bind(&not_before)
            .bind(&sessions_versions)
            .bind(&deleted)
            .bind(&ended_ids)
            .bind(&ended_members)
            .bind(&ended_hashes)
            .bind(&ended_at)
            .bind(&ended_expiry)
            .bind(&claimed)
            .bind(&roles)
            .bind(&suspended_at)
            .bind(&reasons)
            .fetch_one(&mut *tx)
            .await?;
    let tombstoned: Vec<Uuid> = events
        .iter()
        .filter(|e| e.deleted)
        .map(|e| e.member_id)
        .collect();
    purge_tasks(&mut *tx, &tombstoned).await?;
    // A receipt per fresh deletion: a redelivery of one already applied
    // (same id) sent its receipt in that transaction.
    let erased: Vec<(Uuid, i64)> = events
        .iter()
        .filter(|e| e.deleted && fresh.contains(&e.event_id))
        .map(|e| (e.member_id, e.version))
        .collect();
    let receipts = crate::erasure::write_receipts(&mut tx, &erased).await?;
    tx.commit().await?;
    Ok(Applied {
        receipts,
        ended: ended as u64,
        fresh: fresh.len() as u64,
        changed: ids
            .into_iter()
            .zip(versions)
            .zip(lags)
            .map(|((id, v), lag)| (id, v, lag))
            .collect(),
    })
}

/// Writes members read from auth (read-through, resync, the reconciler)
/// through the version guard, in one statement; returns how many rows
/// changed. Never moves a row backwards, so it is safe while events flow. The
/// tasks of a member written as a tombstone are deleted by the same
/// statement (a task a racing CreateTask commits meanwhile is left to the
/// reconciler's [`purge_tombstoned_tasks`]).
pub async fn upsert<'e>(db: impl PgExecutor<'e>, members: &[ReplicaMember]) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    let nicknames: Vec<&str> = members.iter().map(|m| m.nickname.as_str()).collect();
    let regions: Vec<&str> = members.iter().map(|m| m.region.as_str()).collect();
    let versions: Vec<i64> = members.iter().map(|m| m.version).collect();
    let occurred: Vec<DateTime<Utc>> = members.iter().map(|m| m.occurred_at).collect();
    let not_before: Vec<_> = members.iter().map(|m| m.sessions_not_before).collect();
    let sessions_versions: Vec<i64> = members.iter().map(|m| m.sessions_version).collect();
    let deleted_at: Vec<_> = members.iter().map(|m| m.deleted_at).collect();
    let roles: Vec<&str> = members.iter().map(|m| m.access.role.as_str()).collect();
    let suspended_at: Vec<_> = members.iter().map(|m| m.access.suspended_at).collect();
    let reasons: Vec<_> = members
        .iter()
        .map(|m| m.access.suspended_reason.as_deref())
        .collect();
    let (changed,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH up AS (
             INSERT INTO members (id, nickname, region, version, occurred_at,
                                  sessions_not_before, sessions_version, deleted_at, role,
                                  suspended_at, suspended_reason)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[],
                                  $5::timestamptz[], $6::timestamptz[], $7::int8[],
                                  $8::timestamptz[], $9::text[], $10::timestamptz[],
                                  $11::text[])
             {UPSERT_IF_NEWER}
             RETURNING id, deleted_at
         ), purged AS (
             DELETE FROM tasks WHERE member_id IN
                 (SELECT id FROM up WHERE deleted_at IS NOT NULL)
         )
         SELECT count(*) FROM up"
    )))
    .bind(&ids)
    .bind(&nicknames)
    .bind(&regions)
    .bind(&versions)
    .bind(&occurred)
    .bind(&not_before)
    .bind(&sessions_versions)
    .bind(&deleted_at)
    .bind(&roles)
    .bind(&suspended_at)
    .bind(&reasons)
    .fetch_one(db)
    .await?;
    Ok(changed as u64)
}

/// A replica row as the reconciler or resync read it: the compare-and-set
/// token of a later write.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Observed {
    #[sqlx(flatten)]
    pub member: ReplicaMember,
    /// Every replica writer stamps it, so it changes with every write.
    pub replicated_at: DateTime<Utc>,
}

/// The replica columns a [`Observed`] row is read from.
const OBSERVED_COLUMNS: &str = "id, nickname, region, version, occurred_at, sessions_not_before,
                                sessions_version, deleted_at, role, suspended_at,
                                suspended_reason, replicated_at";

/// Up to `limit` replica rows in `(after, until]`, in id order, as observed
/// for a later compare-and-set.
pub async fn observe<'e>(
    db: impl PgExecutor<'e>,
    after: Uuid,
    until: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Observed>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OBSERVED_COLUMNS} FROM members WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
    )))
    .bind(after)
    .bind(until)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The replica rows of `ids`, as observed for a later compare-and-set.
pub async fn observe_ids<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> sqlx::Result<Vec<Observed>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OBSERVED_COLUMNS} FROM members WHERE id = ANY($1) ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Sets each planned row to auth's state, bypassing the version guard, but
/// only where the row is still exactly as observed: same version, content
/// and `replicated_at` (which every writer stamps, so even a change and its
/// undo in between are seen). `plan` pairs each row as observed with the
/// state to set. Returns the ids set. One statement, then the tasks of any
/// row set to a tombstone are deleted in the same transaction.
pub async fn set_if_unchanged<'a>(
    pool: &PgPool,
    plan: impl IntoIterator<Item = (&'a Observed, &'a ReplicaMember)>,
) -> sqlx::Result<Vec<Uuid>> {
    let plan: Vec<_> = plan.into_iter().collect();
    let targets: Vec<&ReplicaMember> = plan.iter().map(|(_, target)| *target).collect();
    let seen: Vec<&ReplicaMember> = plan.iter().map(|(observed, _)| &observed.member).collect();
    let seen_at: Vec<DateTime<Utc>> = plan.iter().map(|(o, _)| o.replicated_at).collect();
    let mut tx = pool.begin().await?;
    let set: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE members m
            SET nickname = t.nickname, region = t.region, version = t.version,
                occurred_at = t.occurred_at, sessions_not_before = t.sessions_not_before,
                sessions_version = t.sessions_version, deleted_at = t.deleted_at,
                role = t.role, suspended_at = t.suspended_at,
                suspended_reason = t.suspended_reason,
                replicated_at = clock_timestamp()
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[],
                       $6::timestamptz[], $7::int8[],
                       $8::int8[], $9::text[], $10::text[], $11::timestamptz[], $12::int8[],
                       $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
                       $16::text[], $17::timestamptz[], $18::text[],
                       $19::text[], $20::timestamptz[], $21::text[])
             AS t(id, nickname, region, version, occurred_at, sessions_not_before,
                  sessions_version,
                  seen_version, seen_nickname, seen_region, seen_not_before,
                  seen_sessions_version, seen_at, deleted_at, seen_deleted_at,
                  role, suspended_at, suspended_reason,
                  seen_role, seen_suspended_at, seen_suspended_reason)
          WHERE m.id = t.id
            AND m.version = t.seen_version
            AND m.replicated_at = t.seen_at
            AND (m.nickname, m.region, m.sessions_not_before, m.sessions_version, m.deleted_at,
                 m.role, m.suspended_at, m.suspended_reason)
                IS NOT DISTINCT FROM
                (t.seen_nickname, t.seen_region, t.seen_not_before, t.seen_sessions_version,
                 t.seen_deleted_at, t.seen_role, t.seen_suspended_at, t.seen_suspended_reason)
      RETURNING m.id",
    )
    .bind(targets.iter().map(|m| m.id).collect::<Vec<_>>())
    .bind(
        targets
            .iter()
            .map(|m| m.nickname.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        targets
            .iter()
            .map(|m| m.region.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(targets.iter().map(|m| m.version).collect::<Vec<_>>())
    .bind(targets.iter().map(|m| m.occurred_at).collect::<Vec<_>>())
    .bind(
        targets
            .iter()
            .map(|m| m.sessions_not_before)
            .collect::<Vec<_>>(),
    )
    .bind(
        targets
            .iter()
            .map(|m| m.sessions_version)
            .collect::<Vec<_>>(),
    )
    .bind(seen.iter().map(|m| m.version).collect::<Vec<_>>())
    .bind(seen.iter().map(|m| m.nickname.as_str()).collect::<Vec<_>>())
    .bind(seen.iter().map(|m| m.region.as_str()).collect::<Vec<_>>())
    .bind(
        seen.iter()
            .map(|m| m.sessions_not_before)
            .collect::<Vec<_>>(),
    )
    .bind(seen.iter().map(|m| m.sessions_version).collect::<Vec<_>>())
    .bind(&seen_at)
    .bind(targets.iter().map(|m| m.deleted_at).collect::<Vec<_>>())
    .bind(seen.iter().map(|m| m.deleted_at).collect::<Vec<_>>())
    .bind(access_column(&targets, |a| Some(a.role.as_str())))
    .bind(
        targets
            .iter()
            .map(|m| m.access.suspended_at)
            .collect::<Vec<_>>(),
    )
    .bind(access_column(&targets, |a| a.suspended_reason.as_deref()))
    .bind(access_column(&seen, |a| Some(a.role.as_str())))
    .bind(
        seen.iter()
            .map(|m| m.access.suspended_at)
            .collect::<Vec<_>>(),
    )
    .bind(access_column(&seen, |a| a.suspended_reason.as_deref()))
    .fetch_all(&mut *tx)
    .await?;
    purge_tasks(&mut *tx, &set).await?;
    tx.commit().await?;
    Ok(set)
}

/// One text column of `members`' access, for an UNNEST.
fn access_column<'a>(
    members: &[&'a ReplicaMember],
    f: impl Fn(&'a Access) -> Option<&'a str>,
) -> Vec<Option<&'a str>> {
    members.iter().map(|m| f(&m.access)).collect()
}

/// Deletes rows auth does not have, where each is still as observed and has
/// no tasks (those are kept: auth vouched for the member once). Returns how
/// many were deleted.
pub async fn remove_if_unchanged(pool: &PgPool, rows: &[Observed]) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM members m
          USING UNNEST($1::uuid[], $2::int8[], $3::timestamptz[]) AS t(id, seen_version, seen_at)
          WHERE m.id = t.id AND m.version = t.seen_version AND m.replicated_at = t.seen_at
            AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.member_id = m.id)",
    )
    .bind(rows.iter().map(|o| o.member.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.member.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.replicated_at).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The replica's digest of each range `(after, until]` in `bounds`, computed
/// as auth computes its own (see `memberflow_contract::digest`): `(count, hash)` each.
/// Each row is read once, through the primary key.
pub async fn digest(pool: &PgPool, bounds: &[(Uuid, Uuid)]) -> sqlx::Result<Vec<(i64, String)>> {
    let (after, until): (Vec<Uuid>, Vec<Uuid>) = bounds.iter().copied().unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT x.n, x.hash
           FROM UNNEST($1::uuid[], $2::uuid[]) WITH ORDINALITY AS b(lo, hi, i)
          CROSS JOIN LATERAL (
                SELECT count(*) AS n, coalesce(sum({hash}), 0)::text AS hash
                  FROM members WHERE id > b.lo AND id <= b.hi) x
          ORDER BY b.i",
        hash = memberflow_contract::digest::ROW_HASH_SQL
    )))
    .bind(&after)
    .bind(&until)
    .fetch_all(pool)
    .await
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<ReplicaMember>> {
    sqlx::query_as(
        "SELECT id, nickname, region, version, occurred_at, sessions_not_before, sessions_version,
                deleted_at, role, suspended_at, suspended_reason
           FROM members WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}
