//! SuspendMember → the first call of that member task refuses, at a steady
//! rate: the bound docs/security.md states ("one propagation" while events
//! flow), measured end to end. Each member, signed up, logged in and
//! replicated first (unmeasured), is suspended by an admin; from the moment
//! the OK arrives, a prober calls task's ListTasks with the member's access
//! token from before, back to back, until task refuses it
//! (PERMISSION_DENIED `MEMBER_SUSPENDED`, or UNAUTHENTICATED: the
//! suspension ended the session). The figure runs from just before the
//! SuspendMember call (as propagation runs from just before SignUp) to the
//! start of the first refused call, so it is late by at most one call; the
//! calls task still served after the OK are counted beside it.
use std::time::{Duration, Instant};

use memberflow_contract::proto::{
    auth::v1::{LoginRequest, SuspendMemberRequest, auth_service_client::AuthServiceClient},
    task::v1::{ListTasksRequest, task_service_client::TaskServiceClient},
};
use memberflow_tests::fixtures::bearer;
use sqlx::PgPool;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use crate::{deletion::Doomed, load::open_loop, signup, stats::Latency};

/// How long a prober waits for the refusal before the run fails.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// What the run measured: the latency, and how many calls task still
/// served after an acknowledged suspension (all within the latency).
pub(crate) struct Measured {
    pub(crate) latency: Latency,
    pub(crate) served_after: usize,
}

/// Signs up an admin, makes them one as an operator would (`memberflow-admin
/// grant-admin`'s function), and logs them in: their access token.
pub(crate) async fn admin(
    auth: &AuthServiceClient<Channel>,
    auth_db: &PgPool,
) -> anyhow::Result<String> {
    let tag = format!("admin-{}", Uuid::new_v4().simple());
    let req = signup::request(&tag, 0);
    let login = LoginRequest {
        email: req.email.clone(),
        password: req.password.clone(),
    };
    signup::sign_up(auth.clone(), req).await?;
    let outbox = auth::outbox::write::Outbox::without_wake(auth_db.clone(), &auth::outbox::SPEC);
    let email = auth::domain::Email::parse(&login.email)
        .map_err(|e| anyhow::anyhow!("the admin's email: {e:?}"))?;
    auth::permissions::grant_admin(&outbox, &email)
        .await
        .map_err(|e| anyhow::anyhow!("grant-admin: {e:?}"))?
        .ok_or_else(|| anyhow::anyhow!("grant-admin found no {}", login.email))?;
    memberflow_outbox::wake::notify(auth_db, auth::outbox::SPEC.channel).await?;
    Ok(auth.clone().login(login).await?.into_inner().access_token)
}

/// Suspends `members` at `per_sec`, each probed at task until refused.
pub(crate) async fn measure(
    auth: &AuthServiceClient<Channel>,
    task: &Channel,
    admin_token: String,
    members: Doomed,
    per_sec: f64,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let run = open_loop(per_sec, duration, {
        let (auth, task) = (auth.clone(), TaskServiceClient::new(task.clone()));
        move |i| {
            let (mut auth, mut task) = (auth.clone(), task.clone());
            let (admin, members) = (admin_token.clone(), members.clone());
            async move {
                let (id, token) = &members[i];
                let started = Instant::now();
                auth.suspend_member(bearer(
                    SuspendMemberRequest {
                        member_id: id.to_string(),
                        reason: "bench: measured".into(),
                    },
                    &admin,
                ))
                .await?;
                let acked = Instant::now();
                let mut served = 0;
                loop {
                    let probe = Instant::now();
                    match task
                        .list_tasks(bearer(ListTasksRequest::default(), token))
                        .await
                    {
                        Ok(_) => served += 1,
                        Err(s)
                            if matches!(
                                s.code(),
                                Code::PermissionDenied | Code::Unauthenticated
                            ) =>
                        {
                            return Ok((probe - started, served));
                        }
                        Err(s) => return Err(s.into()),
                    }
                    anyhow::ensure!(
                        acked.elapsed() < REFUSED_WITHIN,
                        "task still served {id} {REFUSED_WITHIN:?} after its suspension"
                    );
                }
            }
        }
    })
    .await?;
    let served_after = run.values.iter().map(|(_, n)| n).sum();
    let mut ms: Vec<f64> = run
        .values
        .iter()
        .map(|(d, _)| d.as_secs_f64() * 1e3)
        .collect();
    Ok(Measured {
        latency: Latency::of_ms(&mut ms),
        served_after,
    })
}
