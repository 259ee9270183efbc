//! Per-RPC latency through two clients in the same run: tonic's, and Python
//! grpcio (`bench/clients/grpcio_latency.py`), which is not tonic. tonic's
//! client once hid a 40 ms server-side stall (Nagle) that every other client
//! saw, so a latency figure counts only beside a second client's.
//!
//! Each of `n` iterations: SignUp a new member, Login (which writes a
//! session row), Refresh (a rotation), CreateTask (with the SignUp's
//! consistency token; task in `read_through` mode, so a call that beats
//! replication reads the member from auth instead of failing), ListTasks,
//! GetTask, one call at a time.
//!
//! Then, through tonic: from a Logout (this session only) returning to task
//! refusing that session's access token, polled back to back, `n` times.
use std::{collections::HashMap, time::Duration};

use memberflow_contract::proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    task::v1::{self as pb, task_service_client::TaskServiceClient},
};
use memberflow_tests::{env::TestEnv, fixtures::bearer};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    Lab,
    report::{Figure, Measure},
    service::start_system,
    stats::Latency,
};

const RPCS: [&str; 7] = [
    "SignUp",
    "Login",
    "Refresh",
    "CreateTask",
    "ListTasks",
    "GetTask",
    "DeleteAccount",
];

/// The venv with grpcio and grpcio-reflection (the README check's).
fn venv() -> String {
    std::env::var("MEMBERFLOW_VENV").unwrap_or_else(|_| "/var/tmp/memberflow-venv".into())
}

/// The Python of [`venv`].
fn python() -> String {
    format!("{}/bin/python", venv())
}

async fn succeeds(program: &str, args: &[&str]) -> bool {
    tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Run before the first phase, so that a missing Python does not end a run
/// minutes in: creates the venv the clients phase needs if it is not there,
/// or stops saying what is missing and the one command that provides it.
pub(crate) async fn ensure_python() -> anyhow::Result<()> {
    let (venv, python) = (venv(), python());
    let ready = || succeeds(&python, &["-c", "import grpc, grpc_reflection"]);
    if ready().await {
        return Ok(());
    }
    eprintln!("bench: creating {venv} with grpcio and grpcio-reflection for the clients phase");
    let pip = format!("{venv}/bin/pip");
    let _ = succeeds("python3", &["-m", "venv", &venv]).await
        && succeeds(&pip, &["install", "-q", "grpcio", "grpcio-reflection"]).await;
    anyhow::ensure!(
        ready().await,
        "the clients phase needs a Python with grpcio and grpcio-reflection at {python} \
         and could not create it (python3 with its venv module, and PyPI, are needed).\n  \
         Provide it with: scripts/install-tools python\n  \
         or run another phase alone: --only system|relay|consumer|replica|scale"
    );
    Ok(())
}

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let n = lab.plan.client_calls;
    let mut env = TestEnv::new();
    let (auth, task) = start_system(&mut env, "read_through", &[]).await?;
    let tonic = tonic_samples(&auth.url(), &task.url(), n).await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/grpcio_latency.py");
    let (auth_url, task_url) = (auth.url(), task.url());
    let out = tokio::process::Command::new(python())
        .args([
            script,
            auth_url.trim_start_matches("http://"),
            task_url.trim_start_matches("http://"),
            &n.to_string(),
            &Uuid::new_v4().simple().to_string(),
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "the grpcio client failed (is grpcio installed in {}?): {}",
        python(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut grpcio: HashMap<String, Vec<f64>> = serde_json::from_slice(&out.stdout)?;
    for rpc in RPCS {
        let theirs = Latency::of_ms(
            grpcio
                .get_mut(rpc)
                .map(Vec::as_mut_slice)
                .unwrap_or(&mut []),
        );
        let ours = Latency::of(&tonic[rpc]);
        let met = theirs.p50_ms <= 1.5 * ours.p50_ms && theirs.p50_ms < 3.0;
        lab.add(
            Figure::new(
                format!("{rpc} latency, Python grpcio client"),
                format!("{n} calls, one at a time, bench hash cost, loopback"),
                Measure::Latency(theirs),
            )
            .against("tonic client, same run", Measure::Latency(ours))
            .target("p50 ≤ 1.5× tonic's and < 3 ms", met),
        );
    }
    let refused = logout_to_refusal(&auth.url(), &task.url(), n).await?;
    lab.add(Figure::new(
        "Logout → task refuses that session's token",
        format!(
            "{n} logouts of one session each, tonic, task polled back to back \
             (ListTasks), relay + consumer on loopback"
        ),
        Measure::Latency(Latency::of(&refused)),
    ));
    lab.stop(task, "task").await?;
    lab.stop(auth, "auth").await?;
    Ok(())
}

/// Per logout: from Logout returning to the first ListTasks task answers
/// UNAUTHENTICATED for the ended session's access token.
async fn logout_to_refusal(
    auth_url: &str,
    task_url: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let channel = |url: &str| tonic::transport::Endpoint::from_shared(url.to_owned());
    let mut auth = AuthServiceClient::new(channel(auth_url)?.connect().await?);
    let mut tasks = TaskServiceClient::new(channel(task_url)?.connect().await?);
    let email = format!("logout-{}@example.com", Uuid::new_v4().simple());
    let signed = auth
        .sign_up(auth_pb::SignUpRequest {
            email: email.clone(),
            password: "correct horse battery".into(),
            nickname: "Out".into(),
            region: "Asia/Seoul".into(),
        })
        .await?
        .into_inner();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let token = auth
            .login(auth_pb::LoginRequest {
                email: email.clone(),
                password: "correct horse battery".into(),
            })
            .await?
            .into_inner()
            .access_token;
        // Served first, so the member is in the replica and the token good.
        tasks
            .create_task(bearer(
                pb::CreateTaskRequest {
                    request_id: Uuid::new_v4().to_string(),
                    title: "bench".into(),
                    due_local: "2026-12-24T18:00".into(),
                    consistency_token: signed.consistency_token.clone(),
                },
                &token,
            ))
            .await?;
        auth.logout(bearer(auth_pb::LogoutRequest::default(), &token))
            .await?;
        let t = Instant::now();
        let deadline = t + Duration::from_secs(10);
        loop {
            let r = tasks
                .list_tasks(bearer(pb::ListTasksRequest::default(), &token))
                .await;
            match r {
                Err(s) if s.code() == tonic::Code::Unauthenticated => break,
                _ if Instant::now() > deadline => {
                    anyhow::bail!("task still accepts a logged-out session's token after 10 s")
                }
                _ => {}
            }
        }
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// The same sequence through tonic's generated clients.
async fn tonic_samples(
    auth_url: &str,
    task_url: &str,
    n: usize,
) -> anyhow::Result<HashMap<&'static str, Vec<Duration>>> {
    let channel = |url: &str| tonic::transport::Endpoint::from_shared(url.to_owned());
    let mut auth = AuthServiceClient::new(channel(auth_url)?.connect().await?);
    let mut tasks = TaskServiceClient::new(channel(task_url)?.connect().await?);
    let mut samples: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    let run = Uuid::new_v4().simple().to_string();
    for i in 0..n {
        let email = format!("rs{i}-{run}@example.com");
        let t = Instant::now();
        let signed = auth
            .sign_up(auth_pb::SignUpRequest {
                email: email.clone(),
                password: "correct horse battery".into(),
                nickname: "Rs".into(),
                region: "Asia/Seoul".into(),
            })
            .await?
            .into_inner();
        samples.entry("SignUp").or_default().push(t.elapsed());
        let t = Instant::now();
        let login = auth
            .login(auth_pb::LoginRequest {
                email,
                password: "correct horse battery".into(),
            })
            .await?
            .into_inner();
        samples.entry("Login").or_default().push(t.elapsed());
        let t = Instant::now();
        let token = auth
            .refresh(auth_pb::RefreshRequest {
                refresh_token: login.refresh_token,
            })
            .await?
            .into_inner()
            .access_token;
        samples.entry("Refresh").or_default().push(t.elapsed());
        let t = Instant::now();
        let created = tasks
            .create_task(bearer(
                pb::CreateTaskRequest {
                    request_id: Uuid::new_v4().to_string(),
                    title: "bench".into(),
                    due_local: "2026-12-24T18:00".into(),
                    consistency_token: signed.consistency_token,
                },
                &token,
            ))
            .await?
            .into_inner()
            .task
            .unwrap_or_default();
        samples.entry("CreateTask").or_default().push(t.elapsed());
        let t = Instant::now();
        tasks
            .list_tasks(bearer(
                pb::ListTasksRequest {
                    page_size: 10,
                    ..Default::default()
                },
                &token,
            ))
            .await?;
        samples.entry("ListTasks").or_default().push(t.elapsed());
        let t = Instant::now();
        tasks
            .get_task(bearer(
                pb::GetTaskRequest {
                    id: created.id,
                    ..Default::default()
                },
                &token,
            ))
            .await?;
        samples.entry("GetTask").or_default().push(t.elapsed());
        let t = Instant::now();
        auth.delete_account(bearer(
            auth_pb::DeleteAccountRequest {
                password: "correct horse battery".into(),
                ..Default::default()
            },
            &token,
        ))
        .await?;
        samples
            .entry("DeleteAccount")
            .or_default()
            .push(t.elapsed());
    }
    Ok(samples)
}
