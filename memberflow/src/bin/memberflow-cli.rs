//! The whole user flow from the command line: sign up, log in, create a task,
//! printing each step, including any USER_NOT_READY retries.
//!
//! `cargo run -p memberflow --bin memberflow-cli -- [--auth URL] [--task URL]
//!  [--email E] [--region ZONE] [--due YYYY-MM-DDTHH:MM]`
use std::{sync::Arc, time::Instant};

use anyhow::Context as _;
use memberflow_client::TaskClient;
use memberflow_contract::{
    proto::{
        auth::v1::{LoginRequest, SignUpRequest, auth_service_client::AuthServiceClient},
        task::v1::CreateTaskRequest,
    },
    time::from_timestamp,
};
use tonic::transport::Channel;

fn arg(name: &str, default: &str) -> String {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next();
    args.next().unwrap_or_else(|| default.to_owned())
}

/// A channel to `url`; a failure names the URL and the flag it came from.
async fn connect(flag: &str, url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_owned())
        .with_context(|| format!("{flag} {url} is not a URL"))?
        .connect()
        .await
        .with_context(|| {
            format!("cannot connect to {flag} {url} (is `cargo run -p memberflow` running?)")
        })
}

/// A time as RFC 3339 in UTC, to the second.
fn rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "(not given)".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let auth_url = arg("--auth", "http://127.0.0.1:50051");
    let task_url = arg("--task", "http://127.0.0.1:50052");
    let email = arg(
        "--email",
        &format!("demo-{}@example.com", uuid::Uuid::new_v4().simple()),
    );
    let region = arg("--region", "Asia/Seoul");
    let due = arg("--due", "2026-12-24T18:00");
    let password = "correct horse battery";

    let mut auth = AuthServiceClient::new(connect("--auth", &auth_url).await?);
    let started = Instant::now();
    let signed_up = auth
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: password.into(),
            nickname: "demo".into(),
            region: region.clone(),
        })
        .await?
        .into_inner();
    let member = signed_up.member.expect("member");
    println!(
        "1. signed up   {} <{}> in {region}, version {}",
        member.id, member.email, member.version
    );
    let login = auth
        .login(LoginRequest {
            email,
            password: password.into(),
        })
        .await?
        .into_inner();
    println!(
        "2. logged in   token expires at {}",
        rfc3339(login.expires_at.as_ref().and_then(from_timestamp))
    );

    let channel = connect("--task", &task_url).await?;
    // The signup's consistency token: task waits for its replica to have the
    // member rather than answer USER_NOT_READY.
    let mut tasks = TaskClient::new(channel, &login.access_token)?
        .with_consistency_token(signed_up.consistency_token)
        .on_retry(Arc::new(|r| {
            println!(
                "   retry {}: {} ({}); waiting {:?}",
                r.attempt,
                r.status.code(),
                r.status.message(),
                r.delay
            );
        }));
    let task = tasks
        .create_task(CreateTaskRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            title: "try memberflow".into(),
            due_local: due.clone(),
            ..Default::default()
        })
        .await?;
    println!(
        "3. created task {} due {due} {} = {}, {:?} after signup",
        task.id,
        task.time_zone,
        rfc3339(task.due_at.as_ref().and_then(from_timestamp)),
        started.elapsed()
    );
    Ok(())
}
