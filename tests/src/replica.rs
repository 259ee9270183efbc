//! The replica beside auth, for the resync and reconciler suites: a stage
//! (auth, a task reading through to it, auth as task's resync source, both
//! databases) and the replicable state of either side to compare. Members
//! seeded into auth without events: `fixtures::seed_auth_members`.
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    apps::{TestAuth, TestTask, auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
};

/// A member's replicable state, as both sides store it: id, nickname,
/// region, version, sessions_version, sessions_not_before. A tombstone reads
/// as empty nickname and region on both sides.
pub type MemberRow = (Uuid, String, String, i64, i64, Option<DateTime<Utc>>);

/// Every member of `pool` (auth's or task's database), in id order.
pub async fn members(pool: &PgPool) -> Vec<MemberRow> {
    sqlx::query_as(
        "SELECT id, coalesce(nickname, '') AS nickname, coalesce(region, '') AS region,
                version, sessions_version, sessions_not_before
           FROM members ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("read members")
}

/// auth and a task reading through to it: `tune` adjusts task's settings;
/// returns the running services, auth as task's resync source, and both
/// databases.
pub async fn replica_stage(
    env: &mut TestEnv,
    tune: impl FnOnce(&mut task::Settings),
) -> (
    TestAuth,
    TestTask,
    task::auth_client::AuthClient,
    PgPool,
    PgPool,
) {
    let auth = spawn_auth(auth_settings(env)).await;
    let mut settings = task_settings(
        env,
        task::ConsistencyMode::NotReady,
        &format!("http://{}", auth.app.addr),
    );
    tune(&mut settings);
    let source = task::auth_client::AuthClient::new(&settings.auth).expect("auth client");
    let task = spawn_task(settings).await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    (auth, task, source, auth_db, task_db)
}

/// auth's members of `ids` (tombstones included), read now through task's
/// client of auth, as resync and the reconciler read them.
pub async fn auth_now(
    source: &task::auth_client::AuthClient,
    ids: &[Uuid],
) -> Vec<task::domain::ReplicaMember> {
    use futures::StreamExt;
    use memberflow_contract::digest;
    let mut out = Vec::new();
    let mut pages = std::pin::pin!(
        source
            .pages(digest::FIRST, digest::LAST, ids)
            .await
            .expect("auth answers ListMembers")
    );
    while let Some(page) = pages.next().await {
        out.extend(page.expect("a page of members"));
    }
    out
}
