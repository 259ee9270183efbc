//! Sessions and the hashes of their refresh tokens (sqlx). Functions take
//! `&mut PgConnection` so the caller owns the transaction: an ended session
//! and its MemberSessionEnded commit together.
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::decide::Found;

/// A session as ListSessions shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    pub id: Uuid,
    pub client: String,
    pub created_at: DateTime<Utc>,
    pub last_refreshed_at: DateTime<Utc>,
}

/// What ending a session leaves for the event: whose, and when its last
/// access token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Ended {
    pub id: Uuid,
    pub member_id: Uuid,
    pub ended_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
}

/// A new session.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub member_id: Uuid,
    pub client: &'a str,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
}

/// Writes a session and its first refresh token (by hash) in one statement,
/// so a Login costs one more round trip, not a transaction.
pub async fn create<'e>(
    db: impl PgExecutor<'e>,
    s: &NewSession<'_>,
    refresh_hash: &[u8],
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH s AS (
             INSERT INTO sessions (id, member_id, client, created_at, last_refreshed_at,
                                   expires_at, access_expires_at)
             VALUES ($1, $2, $3, $4, $4, $5, $6)
             RETURNING id)
         INSERT INTO refresh_tokens (hash, session_id) SELECT $7, id FROM s",
    )
    .bind(s.id)
    .bind(s.member_id)
    .bind(s.client)
    .bind(s.now)
    .bind(s.expires_at)
    .bind(s.access_expires_at)
    .bind(refresh_hash)
    .execute(db)
    .await?;
    Ok(())
}

/// The session and member a refresh token belongs to, without a lock: the
/// first step of a refresh, before the throttle and the transaction.
pub async fn owner_of<'e>(
    db: impl PgExecutor<'e>,
    refresh_hash: &[u8],
) -> sqlx::Result<Option<(Uuid, Uuid)>> {
    sqlx::query_as(
        "SELECT s.id, s.member_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
          WHERE t.hash = $1",
    )
    .bind(refresh_hash)
    .fetch_optional(db)
    .await
}

/// Locks session `id` for the rest of the transaction and reads it with the
/// state of the presented token. Read after the lock, so of concurrent
/// refreshes with one token, each sees what the one before it committed.
pub async fn lock_for_refresh(
    conn: &mut PgConnection,
    id: Uuid,
    refresh_hash: &[u8],
) -> sqlx::Result<Option<Found>> {
    type Times = (
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let times: Option<Times> = sqlx::query_as(
        "SELECT created_at, last_refreshed_at, expires_at, ended_at
               FROM sessions WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((created_at, last_refreshed_at, expires_at, ended_at)) = times else {
        return Ok(None);
    };
    let rotated: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT rotated_at FROM refresh_tokens WHERE hash = $1 AND session_id = $2")
            .bind(refresh_hash)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(rotated.map(|(rotated_at,)| Found {
        created_at,
        last_refreshed_at,
        expires_at,
        ended_at,
        rotated_at,
    }))
}

/// Replaces the session's current refresh token with `new_hash` and moves
/// its refresh time and the expiry of its last access token.
pub async fn rotate(
    conn: &mut PgConnection,
    id: Uuid,
    new_hash: &[u8],
    now: DateTime<Utc>,
    access_expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH old AS (
             UPDATE refresh_tokens SET rotated_at = $3
              WHERE session_id = $1 AND rotated_at IS NULL),
         s AS (
             UPDATE sessions SET last_refreshed_at = $3,
                    access_expires_at = greatest(access_expires_at, $4)
              WHERE id = $1)
         INSERT INTO refresh_tokens (hash, session_id) VALUES ($2, $1)",
    )
    .bind(id)
    .bind(new_hash)
    .bind(now)
    .bind(access_expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends session `id` of `member_id`, if it is live: `None` when there is no
/// such session or it had already ended.
pub async fn end(
    conn: &mut PgConnection,
    member_id: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Ended>> {
    sqlx::query_as(
        "UPDATE sessions SET ended_at = $3
          WHERE id = $1 AND member_id = $2 AND ended_at IS NULL
      RETURNING id, member_id, ended_at, access_expires_at",
    )
    .bind(id)
    .bind(member_id)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// Whether the member has a session `id`, ended or not.
pub async fn exists(conn: &mut PgConnection, member_id: Uuid, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND member_id = $2)")
        .bind(id)
        .bind(member_id)
        .fetch_one(conn)
        .await
}

/// Ends every live session of the member but `keep`: their refresh tokens
/// stop at once. (Their access tokens are ended by the all-sessions
/// revocation written with it.) Returns how many ended.
pub async fn end_all(
    conn: &mut PgConnection,
    member_id: Uuid,
    keep: Option<Uuid>,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE sessions SET ended_at = $3
          WHERE member_id = $1 AND ended_at IS NULL AND id IS DISTINCT FROM $2",
    )
    .bind(member_id)
    .bind(keep)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Whether session `id` has ended (an access token naming it is refused).
/// A session auth never wrote counts as ended.
pub async fn has_ended<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<bool> {
    let ended: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT ended_at FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(ended.is_none_or(|(at,)| at.is_some()))
}

/// The member's live sessions (not ended, not expired, not idle past
/// `idle`), newest first.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    member_id: Uuid,
    now: DateTime<Utc>,
    idle: chrono::Duration,
) -> sqlx::Result<Vec<Session>> {
    sqlx::query_as(
        "SELECT id, client, created_at, last_refreshed_at FROM sessions
          WHERE member_id = $1 AND ended_at IS NULL AND expires_at > $2
            AND last_refreshed_at > $2 - $3
          ORDER BY created_at DESC, id",
    )
    .bind(member_id)
    .bind(now)
    .bind(idle)
    .fetch_all(db)
    .await
}

/// Deletes sessions nothing can use any more: ended, past their absolute
/// end, or idle longer than `idle`, and whose last access token has expired
/// (so a token naming one is refused for having expired, never because its
/// row is gone). Their refresh-token hashes go with them. Returns how many.
pub async fn prune(pool: &sqlx::PgPool, idle: chrono::Duration) -> sqlx::Result<u64> {
    memberflow_runtime::db::prune_in_batches(|limit| async move {
        Ok(sqlx::query(
            "DELETE FROM sessions WHERE id IN (
                 SELECT id FROM sessions
                  WHERE access_expires_at < now()
                    AND (ended_at IS NOT NULL OR expires_at < now()
                         OR last_refreshed_at < now() - $1)
                  LIMIT $2)",
        )
        .bind(idle)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}

/// Prunes every hour (and once at start) until `shutdown`.
pub async fn run_pruner(
    pool: sqlx::PgPool,
    idle: chrono::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let hourly = std::time::Duration::from_secs(3600);
    memberflow_lifecycle::every(
        hourly,
        memberflow_lifecycle::Start::Now,
        &shutdown,
        || async {
            memberflow_runtime::db::log_prune("spent sessions", prune(&pool, idle).await);
        },
    )
    .await;
}
