//! DeleteAccount → the member's last task row gone from task's database, at
//! a steady rate. task deletes a member's tasks in the transaction that
//! writes its tombstone (`replica::apply`), so the tombstone's
//! `replicated_at` is the moment the last task row went; the time is taken
//! from just before each DeleteAccount call, on the same host clock.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use memberflow_contract::proto::auth::v1::{
    DeleteAccountRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use memberflow_tests::{eventually, fixtures::bearer};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    load::{closed_loop, open_loop},
    signup,
    stats::Latency,
};

/// Members to delete: id and access token.
pub(crate) type Doomed = Arc<Vec<(Uuid, String)>>;

/// Signs up and logs in the `per_sec × duration` members [`measure`] will
/// delete, and waits until the replica holds them (unmeasured).
pub(crate) async fn members(
    auth: &AuthServiceClient<Channel>,
    task_db: &PgPool,
    per_sec: f64,
    duration: Duration,
) -> anyhow::Result<Doomed> {
    let n = (per_sec * duration.as_secs_f64()).round() as usize;
    let tag = format!("del-{}", Uuid::new_v4().simple());
    let members = Arc::new(
        closed_loop(4, n, {
            let (auth, tag) = (auth.clone(), tag.clone());
            move |i| {
                let (mut auth, req) = (auth.clone(), signup::request(&tag, i));
                async move {
                    let login = LoginRequest {
                        email: req.email.clone(),
                        password: req.password.clone(),
                    };
                    let id = signup::sign_up(auth.clone(), req).await?;
                    let token = auth.login(login).await?.into_inner().access_token;
                    Ok((id, token))
                }
            }
        })
        .await?
        .values,
    );
    let ids: Vec<Uuid> = members.iter().map(|(id, _)| *id).collect();
    eventually(
        "members to delete replicated",
        Duration::from_secs(60),
        || count(task_db, &ids, "true"),
    )
    .await;
    Ok(members)
}

/// Deletes `members` at `per_sec`: DeleteAccount's start → the replica's
/// tombstone, per member.
pub(crate) async fn measure(
    auth: &AuthServiceClient<Channel>,
    task_db: &PgPool,
    members: Doomed,
    per_sec: f64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let ids: Vec<Uuid> = members.iter().map(|(id, _)| *id).collect();
    let run = open_loop(per_sec, duration, {
        let (auth, members) = (auth.clone(), members.clone());
        move |i| {
            let (mut auth, members) = (auth.clone(), members.clone());
            async move {
                let (id, token) = &members[i];
                let started = Utc::now();
                auth.delete_account(bearer(
                    DeleteAccountRequest {
                        password: signup::PASSWORD.into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await?;
                Ok((*id, started))
            }
        }
    })
    .await?;
    eventually("tombstones in the replica", Duration::from_secs(60), || {
        count(task_db, &ids, "deleted_at IS NOT NULL")
    })
    .await;
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE member_id = ANY($1)")
        .bind(&ids)
        .fetch_one(task_db)
        .await?;
    anyhow::ensure!(gone == 0, "{gone} tasks outlived their member's tombstone");
    let replicated: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, replicated_at FROM members WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(task_db)
            .await?;
    let started: std::collections::HashMap<Uuid, DateTime<Utc>> = run.values.into_iter().collect();
    let mut ms: Vec<f64> = replicated
        .iter()
        .filter_map(|(id, at)| Some((*at - *started.get(id)?).as_seconds_f64() * 1e3))
        .collect();
    Ok(Latency::of_ms(&mut ms))
}

/// The erasure of each of `ids` (deleted by [`measure`]), from auth's
/// record: the request (the deletion's commit time) to the last expected
/// receipt recorded (`completed_at`), per member, once all are complete.
pub(crate) async fn erasures(auth_db: &PgPool, ids: &[Uuid]) -> anyhow::Result<Latency> {
    eventually(
        "every erasure complete",
        Duration::from_secs(60),
        || async {
            let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM erasures WHERE member_id = ANY($1) AND completed_at IS NOT NULL",
        )
        .bind(ids)
        .fetch_one(auth_db)
        .await
        .ok()?;
            (done as usize == ids.len()).then_some(())
        },
    )
    .await;
    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM completed_at - requested_at)::float8 * 1e3
           FROM erasures WHERE member_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(auth_db)
    .await?;
    Ok(Latency::of_ms(&mut ms))
}

/// `Some` once every member of `ids` has a replica row where `condition`.
async fn count(task_db: &PgPool, ids: &[Uuid], condition: &str) -> Option<()> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM members WHERE id = ANY($1) AND {condition}"
    )))
    .bind(ids)
    .fetch_one(task_db)
    .await
    .ok()?;
    (n as usize == ids.len()).then_some(())
}
