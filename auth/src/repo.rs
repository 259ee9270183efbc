//! Member persistence. Functions take `&mut PgConnection` so the caller owns
//! the transaction: that is how the outbox row rides in the same commit.
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Member, NewMember, ProfileChange};

const MEMBER_COLUMNS: &str = "id, email, nickname, region, version, created_at, updated_at";

/// Name of the unique constraint that makes emails unique.
pub const EMAIL_UNIQUE: &str = "members_email_key";

/// Inserts a new member at version 1.
pub async fn insert_member(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewMember,
    password_hash: &str,
) -> sqlx::Result<Member> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO members (id, email, password_hash, nickname, region)
         VALUES ($1, $2, $3, $4, $5) RETURNING {MEMBER_COLUMNS}"
    )))
    .bind(id)
    .bind(new.email.as_str())
    .bind(password_hash)
    .bind(new.nickname.as_str())
    .bind(new.region.as_str())
    .fetch_one(conn)
    .await
}

/// The member id and password hash for `email` (already lower-cased).
pub async fn find_credentials(pool: &PgPool, email: &str) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as("SELECT id, password_hash FROM members WHERE email = $1")
        .bind(email)
        .fetch_optional(pool)
        .await
}

pub async fn find_member(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Applies `change` and bumps the version. The row lock taken by UPDATE
/// serialises concurrent changes of one member, so their outbox rows get
/// increasing ids in version order.
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
          WHERE id = $1
      RETURNING {MEMBER_COLUMNS}"
    )))
    .bind(id)
    .bind(change.nickname.as_ref().map(|n| n.as_str()))
    .bind(change.region.as_ref().map(|r| r.as_str()))
    .fetch_optional(conn)
    .await
}

/// Whether `e` is a violation of the unique constraint `name`.
pub fn on_constraint(e: &sqlx::Error, name: &str) -> bool {
    e.as_database_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == name)
}
