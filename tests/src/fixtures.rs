//! Requests and queries every suite builds, defined once: a valid signup,
//! a login, a task to create, a scalar query.
use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use sqlx::PgPool;
use tonic::Request;
use uuid::Uuid;

/// The password every fixture member has.
pub const PASSWORD: &str = "correct horse battery";

/// A valid signup for `email` (nickname `Ann`, region `Asia/Seoul`); change
/// fields with struct update syntax.
pub fn signup(email: &str) -> auth_pb::SignUpRequest {
    auth_pb::SignUpRequest {
        email: email.into(),
        password: PASSWORD.into(),
        nickname: "Ann".into(),
        region: "Asia/Seoul".into(),
    }
}

/// A login as `email` with `password`.
pub fn login(email: &str, password: &str) -> auth_pb::LoginRequest {
    auth_pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    }
}

/// A new task (a fresh `request_id`) due on Christmas Eve, local time, with
/// no consistency token.
pub fn create_task(title: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        request_id: Uuid::new_v4().to_string(),
        title: title.into(),
        due_local: "2026-12-24T18:00".into(),
        consistency_token: String::new(),
    }
}

/// The one `i64` that `sql` selects (a count, a version).
pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// [`create_task`] due at `due_local` (`YYYY-MM-DDTHH:MM`, the member's zone).
pub fn create_task_due(title: &str, due_local: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        due_local: due_local.into(),
        ..create_task(title)
    }
}

/// `msg` with `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    req
}

/// Puts `n` members straight into auth's table, bypassing the outbox, as a
/// restore or a lost event would leave them: the replica never hears of them.
pub async fn seed_auth_members(auth_db: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO members (id, email, password_hash, nickname, region, version)
         SELECT gen_random_uuid(), 'seed' || g || '@example.com', 'not-a-hash',
                'seed ' || g, 'Asia/Seoul', 1 + g % 3
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(auth_db)
    .await
    .unwrap();
}
