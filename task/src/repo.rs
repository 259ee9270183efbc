//! Task persistence.
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{NewTask, Task};

const COLUMNS: &str = "id, member_id, title, due_at, time_zone, created_at";

/// Inserts the task, or returns the one an earlier call with the same
/// `request_id` created (and creates nothing); `None` when the member is no
/// longer live (a tombstone was written after the caller's replica read).
pub async fn create_idempotent(
    pool: &PgPool,
    member_id: Uuid,
    new: &NewTask,
    due_at: DateTime<Utc>,
    time_zone: &str,
) -> sqlx::Result<Option<Task>> {
    let inserted: Option<Task> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        // Only for a live member, share-locked: a tombstone written meanwhile
        // is seen once its lock is released, and one written after waits
        // for this insert and then deletes the task.
        "INSERT INTO tasks (id, member_id, request_id, title, due_at, time_zone)
         SELECT $1, $2, $3, $4, $5, $6
          WHERE EXISTS (SELECT 1 FROM members
                         WHERE id = $2 AND deleted_at IS NULL FOR SHARE)
         ON CONFLICT (member_id, request_id) DO NOTHING
         RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(member_id)
    .bind(new.request_id)
    .bind(new.title.as_str())
    .bind(due_at)
    .bind(time_zone)
    .fetch_optional(pool)
    .await?;
    match inserted {
        Some(t) => Ok(Some(t)),
        // A retry of a request that created its task (which a tombstone
        // would have deleted), or none: the member was deleted meanwhile.
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM tasks WHERE member_id = $1 AND request_id = $2"
            )))
            .bind(member_id)
            .bind(new.request_id)
            .fetch_optional(pool)
            .await
        }
    }
}

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of the member's tasks, newest first.
pub async fn list(
    pool: &PgPool,
    member_id: Uuid,
    limit: i64,
    after: Option<Cursor>,
) -> sqlx::Result<Vec<Task>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tasks
          WHERE member_id = $1
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC
          LIMIT $4"
    )))
    .bind(member_id)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The task, only if it belongs to `member_id`.
pub async fn get(pool: &PgPool, member_id: Uuid, id: Uuid) -> sqlx::Result<Option<Task>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tasks WHERE id = $1 AND member_id = $2"
    )))
    .bind(id)
    .bind(member_id)
    .fetch_optional(pool)
    .await
}
