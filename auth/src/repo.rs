//! Member persistence. Functions take `&mut PgConnection` so the caller owns
//! the transaction: that is how the outbox row rides in the same commit
//! (see `outbox::write`, which also holds the signup statement: one
//! statement writes the member and its event).
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Access, Member, ProfileChange};

const MEMBER_COLUMNS: &str = "id, email, nickname, region, version, created_at, updated_at, \
                              sessions_not_before, sessions_version, role, suspended_at, \
                              suspended_reason";

/// Name of the unique constraint that makes emails unique.
pub const EMAIL_UNIQUE: &str = "members_email_key";

/// The member and password hash for `email` (already lower-cased).
pub async fn find_credentials(
    pool: &PgPool,
    email: &str,
) -> sqlx::Result<Option<(Member, String)>> {
    find_credentials_in(&mut *pool.acquire().await?, email).await
}

/// [`find_credentials`] in the caller's connection or transaction.
pub async fn find_credentials_in(
    conn: &mut PgConnection,
    email: &str,
) -> sqlx::Result<Option<(Member, String)>> {
    let row: Option<WithHash> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS}, password_hash FROM members WHERE email = $1"
    )))
    .bind(email)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.member, r.password_hash)))
}

#[derive(sqlx::FromRow)]
struct WithHash {
    #[sqlx(flatten)]
    member: Member,
    password_hash: String,
}

/// The member `id`, unless it is a tombstone.
pub async fn find_member(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1 AND deleted_at IS NULL"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The member `id`, share-locked for the rest of the caller's transaction:
/// a Refresh holds it so that no revocation of every session commits
/// between reading the version and issuing a token at it.
pub async fn share_lock_member(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1 AND deleted_at IS NULL FOR SHARE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Applies `change` and bumps the version, unless it changes nothing: then
/// `None`, and no new version. The row lock serialises concurrent changes of
/// one member, so their outbox rows get increasing ids in version order.
pub async fn update_profile(
    conn: &mut PgConnection,
    id: Uuid,
    change: &ProfileChange,
) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE members
            SET nickname = COALESCE($2, nickname),
                region = COALESCE($3, region),
                version = version + 1,
                updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL
            AND (COALESCE($2, nickname) IS DISTINCT FROM nickname
                 OR COALESCE($3, region) IS DISTINCT FROM region)
      RETURNING {MEMBER_COLUMNS}"
    )))
    .bind(id)
    .bind(change.nickname.as_ref().map(|n| n.as_str()))
    .bind(change.region.as_ref().map(|r| r.as_str()))
    .fetch_optional(conn)
    .await
}

/// The member `id` and its password hash.
pub async fn find_with_hash(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<(Member, String)>> {
    let row: Option<WithHash> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS}, password_hash FROM members WHERE id = $1 AND deleted_at IS NULL"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.member, r.password_hash)))
}

/// Ends every session of member `id`: a new version, `sessions_not_before`
/// now and `sessions_version` that version. With `new_hash`, the password
/// changes too, but only while the stored hash is still `old_hash` (a
/// concurrent change wins, and this one answers `None`).
pub async fn revoke_sessions(
    conn: &mut PgConnection,
    id: Uuid,
    password: Option<(&str, &str)>,
) -> sqlx::Result<Option<Member>> {
    let (old_hash, new_hash) = password.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE members
            SET version = version + 1,
                sessions_version = version + 1,
                sessions_not_before = now(),
                password_hash = COALESCE($3, password_hash),
                updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR password_hash = $2)
      RETURNING {MEMBER_COLUMNS}"
    )))
    .bind(id)
    .bind(old_hash)
    .bind(new_hash)
    .fetch_optional(conn)
    .await
}

/// The member `id`, locked for the rest of the caller's transaction; `None`
/// for a tombstone. A deletion committed while this waited for the lock
/// counts: the row is checked again once locked.
pub async fn lock_member(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// What is left of a deleted member: its id, its last version and when.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Tombstone {
    pub id: Uuid,
    pub version: i64,
    pub deleted_at: chrono::DateTime<chrono::Utc>,
}

/// Turns member `id` into a [`Tombstone`] at a new version, while its
/// password hash is still `hash` (a concurrent ChangePassword wins, and this
/// answers `None`): email, password hash, nickname, region, session state,
/// role and suspension (its reason is about the person) are cleared, so the email is free at once and every token is refused. The
/// member's pending and parked outbox rows go too: they carry the nickname
/// and region, and the MemberDeleted the caller enqueues supersedes them.
pub async fn delete_member(
    tx: &mut memberflow_outbox::write::Tx,
    id: Uuid,
    hash: &str,
) -> sqlx::Result<Option<Tombstone>> {
    let tombstone: Option<Tombstone> = sqlx::query_as(
        "UPDATE members
            SET email = NULL, password_hash = NULL, nickname = NULL, region = NULL,
                sessions_not_before = NULL, sessions_version = 0,
                role = 'member', suspended_at = NULL, suspended_reason = NULL,
                version = version + 1, deleted_at = now(), updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL AND password_hash = $2
      RETURNING id, version, deleted_at",
    )
    .bind(id)
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await?;
    if tombstone.is_some() {
        tx.forget(&id).await?;
        // Every session (its refresh tokens go with it): nothing can be
        // refreshed, and the devices' user agents are gone too.
        sqlx::query("DELETE FROM sessions WHERE member_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(tombstone)
}

/// Sets member `id`'s role and suspension to `access` (decided by
/// `permissions::next_access`) at a new version that also ends
/// every session (`sessions_not_before` now, `sessions_version` that
/// version), so that no token from before carries rights the member no
/// longer has. A suspension keeps its first time.
pub async fn set_access(
    conn: &mut PgConnection,
    id: Uuid,
    access: &Access,
) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE members
            SET role = $2,
                suspended_at = CASE WHEN $3::text IS NOT NULL THEN coalesce(suspended_at, now()) END,
                suspended_reason = $3,
                version = version + 1,
                sessions_version = version + 1,
                sessions_not_before = now(),
                updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL
      RETURNING {MEMBER_COLUMNS}"
    )))
    .bind(id)
    .bind(access.role.as_str())
    .bind(access.suspension.as_deref())
    .fetch_optional(conn)
    .await
}

/// How many admins who are not suspended there are.
pub async fn count_active_admins(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM members
          WHERE role = 'admin' AND suspended_at IS NULL AND deleted_at IS NULL",
    )
    .fetch_one(conn)
    .await
}

/// Serialises every permission change for the rest of the caller's
/// transaction, so that two admins demoting each other at once cannot both
/// pass the "an active admin remains" check (each would count the other).
/// Permission changes are rare; the lock is one row's worth of contention.
pub async fn lock_permissions(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('memberflow.auth.permissions'))")
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `e` is a violation of the unique constraint `name`.
pub fn on_constraint(e: &sqlx::Error, name: &str) -> bool {
    e.as_database_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == name)
}

/// The replicable state of one member. A tombstone has `deleted` set, its id
/// and version, and every other field empty.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberState {
    pub id: Uuid,
    pub nickname: String,
    pub region: String,
    pub version: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub sessions_not_before: Option<chrono::DateTime<chrono::Utc>>,
    pub sessions_version: i64,
    pub deleted: bool,
    pub role: String,
    pub suspended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub suspended_reason: Option<String>,
}

/// Up to `limit` members in `(after, until]`, in id order, only `ids` when
/// not empty. One keyset step of ListMembers.
pub async fn member_states(
    pool: &PgPool,
    after: Uuid,
    until: Uuid,
    ids: &[Uuid],
    limit: i64,
) -> sqlx::Result<Vec<MemberState>> {
    sqlx::query_as(
        "SELECT id, coalesce(nickname, '') AS nickname, coalesce(region, '') AS region,
                version, updated_at, sessions_not_before, sessions_version,
                deleted_at IS NOT NULL AS deleted, role, suspended_at, suspended_reason
           FROM members
          WHERE id > $1 AND id <= $2 AND (cardinality($3::uuid[]) = 0 OR id = ANY($3))
          ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(until)
    .bind(ids)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Splits `(after, until]` into up to `buckets` buckets of about equal size
/// and digests each, in one indexed scan. The buckets are consecutive and
/// cover the whole range; none when it holds no member.
pub async fn digest(
    pool: &PgPool,
    after: Uuid,
    until: Uuid,
    buckets: i32,
) -> sqlx::Result<Vec<memberflow_contract::digest::Bucket>> {
    // PostgreSQL has no max(uuid); the canonical text sorts the same way.
    let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT max(id::text)::uuid, count(*), sum(h)::text FROM (
             SELECT id, {hash} AS h, ntile($3) OVER (ORDER BY id) AS b
               FROM members WHERE id > $1 AND id <= $2) x
          GROUP BY b ORDER BY b",
        hash = memberflow_contract::digest::ROW_HASH_SQL
    )))
    .bind(after)
    .bind(until)
    .bind(buckets)
    .fetch_all(pool)
    .await?;
    let last = rows.len().saturating_sub(1);
    let mut lower = after;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (max_id, count, hash))| {
            let upper = if i == last { until } else { max_id };
            let b = memberflow_contract::digest::Bucket {
                after: lower,
                until: upper,
                count,
                hash,
            };
            lower = upper;
            b
        })
        .collect())
}
