//! Roles and suspension (issue 36): SetRole, SuspendMember and
//! ReinstateMember for admins only, with their refusals; a permission
//! change ends every session of the member, at auth at once and at every
//! task instance within one propagation; task refuses a suspended member
//! from its replica, also when the suspension's event was delayed (task
//! down, the broker cut: the reconciler's digest covers the suspension).
use std::time::{Duration, Instant};

use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_tests::{
    apps::{TestAuth, TestTask, log_in_on, spawn_task, task_settings},
    env::TestEnv,
    eventually,
    fixtures::{PASSWORD, bearer, create_task, scalar, signup},
    system::{System, spawn_system},
};
use sqlx::PgPool;
use task::ConsistencyMode;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Makes `email` an active admin as an operator would (`memberflow-admin
/// grant-admin` runs this same function; its own test runs the binary), and
/// logs them in: their access token.
async fn admin(auth: &mut TestAuth, auth_db: &PgPool, email: &str) -> (Uuid, String) {
    let (id, _) = auth.member(signup(email)).await;
    let outbox =
        memberflow_outbox::write::Outbox::without_wake(auth_db.clone(), &auth::outbox::SPEC);
    let email_ = auth::domain::Email::parse(email).unwrap();
    let (member, changed) = auth::permissions::grant_admin(&outbox, &email_)
        .await
        .unwrap()
        .expect("the member exists");
    assert!(changed && member.role == "admin");
    memberflow_outbox::wake::notify(auth_db, auth::outbox::SPEC.channel)
        .await
        .unwrap();
    // The grant ended the sessions it found: log in after it.
    let token = log_in_on(&mut auth.client, email, "admin-console")
        .await
        .access_token;
    (id, token)
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

async fn set_role(
    auth: &mut TestAuth,
    token: &str,
    member: &str,
    role: &str,
) -> Result<auth_pb::SetRoleResponse, Status> {
    let req = auth_pb::SetRoleRequest {
        member_id: member.into(),
        role: role.into(),
    };
    auth.client
        .set_role(bearer(req, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn suspend(
    auth: &mut TestAuth,
    token: &str,
    member: &str,
    why: &str,
) -> Result<auth_pb::SuspendMemberResponse, Status> {
    let req = auth_pb::SuspendMemberRequest {
        member_id: member.into(),
        reason: why.into(),
    };
    auth.client
        .suspend_member(bearer(req, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn reinstate(
    auth: &mut TestAuth,
    token: &str,
    member: &str,
) -> Result<auth_pb::ReinstateMemberResponse, Status> {
    let req = auth_pb::ReinstateMemberRequest {
        member_id: member.into(),
    };
    auth.client
        .reinstate_member(bearer(req, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn login(auth: &mut TestAuth, email: &str) -> Result<auth_pb::LoginResponse, Status> {
    auth.client
        .login(memberflow_tests::fixtures::login(email, PASSWORD))
        .await
        .map(tonic::Response::into_inner)
}

async fn refresh(auth: &mut TestAuth, refresh_token: &str) -> Result<(), Status> {
    auth.client
        .refresh(auth_pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|_| ())
}

/// ListTasks at `task` as the holder of `token`, of `owner`'s tasks when
/// set: task's raw client, so no retry hides an answer.
async fn list(task: &TestTask, token: &str, owner: Option<Uuid>) -> Result<Vec<pb::Task>, Status> {
    let mut client = pb::task_service_client::TaskServiceClient::new(task.channel.clone());
    let req = pb::ListTasksRequest {
        member_id: owner.map(|o| o.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    client
        .list_tasks(bearer(req, token))
        .await
        .map(|r| r.into_inner().tasks)
}

/// Waits until `task` answers `token`'s ListTasks with `code` (and, when
/// set, ErrorInfo `why`): how long that took.
async fn task_answers(task: &TestTask, token: &str, code: Code, why: &str) -> Duration {
    let started = Instant::now();
    eventually("task's answer", WAIT, || async {
        match list(task, token, None).await {
            Err(s) if s.code() == code && (why.is_empty() || reason(&s) == why) => Some(()),
            _ => None,
        }
    })
    .await;
    started.elapsed()
}

async fn member_row(auth_db: &PgPool, id: Uuid) -> (String, Option<String>, i64) {
    sqlx::query_as("SELECT role, suspended_reason, version FROM members WHERE id = $1")
        .bind(id)
        .fetch_one(auth_db)
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_rpcs_refuse_bad_input_non_admins_and_the_last_admin() {
    let mut env = TestEnv::new();
    let (mut auth, _task) = spawn_system(&mut env, ConsistencyMode::ReadThrough).await;
    let auth_db = env.pool("auth").await;
    let (admin_id, admin_token) = admin(&mut auth, &auth_db, "root@example.com").await;
    let (member, member_token) = auth.member(signup("ann@example.com")).await;
    let before = member_row(&auth_db, member).await;
    let events_before = scalar(&auth_db, "SELECT count(*) FROM outbox").await;

    // A member is not an admin: PERMISSION_DENIED, NOT_ADMIN, nothing changes.
    let denied = set_role(&mut auth, &member_token, &admin_id.to_string(), "member")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(reason(&denied), "NOT_ADMIN");
    let denied = suspend(&mut auth, &member_token, &admin_id.to_string(), "x")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(member_row(&auth_db, admin_id).await.0, "admin");

    // Bad input: a BadRequest naming each field, and nothing changes.
    let bad = set_role(&mut auth, &admin_token, "not-a-uuid", "root")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["member_id", "role"]);
    for role in ["", "Admin", "superuser"] {
        let bad = set_role(&mut auth, &admin_token, &member.to_string(), role)
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&bad), ["role"], "{role:?}");
    }
    for why in ["", "   ", "two\nlines", &"r".repeat(201)] {
        let bad = suspend(&mut auth, &admin_token, &member.to_string(), why)
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{why:?}");
        assert_eq!(violated_fields(&bad), ["reason"]);
    }
    assert_eq!(member_row(&auth_db, member).await, before);
    assert_eq!(
        scalar(&auth_db, "SELECT count(*) FROM outbox").await,
        events_before
    );
    let unknown = set_role(
        &mut auth,
        &admin_token,
        &Uuid::now_v7().to_string(),
        "admin",
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The last admin cannot demote or suspend themself out of the role.
    let last = set_role(&mut auth, &admin_token, &admin_id.to_string(), "member")
        .await
        .unwrap_err();
    assert_eq!(last.code(), Code::FailedPrecondition);
    assert_eq!(reason(&last), "LAST_ADMIN");
    let last = suspend(&mut auth, &admin_token, &admin_id.to_string(), "oops")
        .await
        .unwrap_err();
    assert_eq!(reason(&last), "LAST_ADMIN");
    assert_eq!(member_row(&auth_db, admin_id).await.0, "admin");

    // A promotion: a new version that ends the member's sessions at auth at
    // once; the same again changes nothing.
    let promoted = set_role(&mut auth, &admin_token, &member.to_string(), "admin")
        .await
        .unwrap();
    let state = promoted.member.unwrap();
    assert_eq!(
        (state.role.as_str(), state.version),
        ("admin", before.2 + 1)
    );
    assert_eq!(state.sessions_version, state.version);
    assert!(!promoted.consistency_token.is_empty());
    let old = auth
        .client
        .list_sessions(bearer(auth_pb::ListSessionsRequest {}, &member_token))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated, "a token from before");
    let again = set_role(&mut auth, &admin_token, &member.to_string(), "admin")
        .await
        .unwrap();
    assert_eq!(again.member.unwrap().version, state.version, "no change");
    // With a second admin, the first may step down.
    set_role(&mut auth, &admin_token, &admin_id.to_string(), "member")
        .await
        .unwrap();
    assert_eq!(member_row(&auth_db, admin_id).await.0, "member");
}

#[tokio::test]
async fn a_suspension_ends_every_session_on_both_task_instances_and_reinstating_lets_the_member_back()
 {
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env)
        .mode(ConsistencyMode::ReadThrough)
        .task_instances(2)
        .start()
        .await;
    let auth_db = env.pool("auth").await;
    let auth = system.auth();
    let (_, admin_token) = admin(auth, &auth_db, "root@example.com").await;
    let (ann, _) = auth.member(signup("ann@example.com")).await;
    let (bob, _) = auth.member(signup("bob@example.com")).await;
    let ann_login = log_in_on(&mut auth.client, "ann@example.com", "phone").await;
    let bob_login = log_in_on(&mut auth.client, "bob@example.com", "laptop").await;
    let mut tasks = system.tasks[0].client(&ann_login.access_token);
    let ann_task = tasks
        .create_task(create_task("before the suspension"))
        .await
        .unwrap();
    for t in &system.tasks {
        eventually("ann known to every task", WAIT, || async {
            list(t, &ann_login.access_token, None).await.ok()
        })
        .await;
    }

    // An admin reads another member's tasks; a member may not.
    let seen = list(&system.tasks[1], &admin_token, Some(ann))
        .await
        .unwrap();
    assert_eq!(
        seen.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&ann_task.id]
    );
    let not_admin = list(&system.tasks[0], &bob_login.access_token, Some(ann))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);
    assert_eq!(reason(&not_admin), "NOT_ADMIN");

    // Act: suspend Ann.
    let auth = system.auth();
    let suspended = suspend(auth, &admin_token, &ann.to_string(), "abusive messages")
        .await
        .unwrap();
    let s = suspended.member.unwrap().suspension.expect("suspended");
    assert_eq!(s.reason, "abusive messages");

    // Assert: auth refuses at once: no refresh, no login.
    let refused = refresh(auth, &ann_login.refresh_token).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "{refused:?}"
    );
    let refused = login(auth, "ann@example.com").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&refused), "MEMBER_SUSPENDED");
    // Every task instance refuses within one propagation, from its replica.
    for t in &system.tasks {
        let took = task_answers(
            t,
            &ann_login.access_token,
            Code::PermissionDenied,
            "MEMBER_SUSPENDED",
        )
        .await;
        assert!(took < WAIT, "{took:?}");
        let mut c = t.client(&ann_login.access_token);
        let create = c.create_task(create_task("while suspended")).await;
        assert_eq!(reason(&create.unwrap_err()), "MEMBER_SUSPENDED");
        let get = c.get_task(&ann_task.id).await.unwrap_err();
        assert_eq!(reason(&get), "MEMBER_SUSPENDED");
    }

    // A role change ends every session too: Bob's old token and refresh
    // token stop, at auth at once and at both tasks.
    let auth = system.auth();
    set_role(auth, &admin_token, &bob.to_string(), "admin")
        .await
        .unwrap();
    let refused = refresh(auth, &bob_login.refresh_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    for t in &system.tasks {
        task_answers(t, &bob_login.access_token, Code::Unauthenticated, "").await;
    }

    // Reinstated, Ann logs in again; her old token stays refused.
    let auth = system.auth();
    reinstate(auth, &admin_token, &ann.to_string())
        .await
        .unwrap();
    let again = login(auth, "ann@example.com").await.unwrap();
    for t in &system.tasks {
        eventually("the new token is served", WAIT, || async {
            list(t, &again.access_token, None).await.ok()
        })
        .await;
        let old = list(t, &ann_login.access_token, None).await.unwrap_err();
        assert_eq!(old.code(), Code::Unauthenticated);
    }

    // Suspended again, Ann can still delete her account, by email.
    let auth = system.auth();
    suspend(auth, &admin_token, &ann.to_string(), "again")
        .await
        .unwrap();
    let mut no_token = auth.client.clone();
    let deleted = no_token
        .delete_account(auth_pb::DeleteAccountRequest {
            password: PASSWORD.into(),
            email: "ann@example.com".into(),
        })
        .await
        .unwrap();
    assert!(!deleted.into_inner().consistency_token.is_empty());
    let gone: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT nickname, suspended_reason FROM members WHERE id = $1")
            .bind(ann)
            .fetch_one(&auth_db)
            .await
            .unwrap();
    assert_eq!(gone, (None, None), "the reason is erased with the account");
}

#[tokio::test]
async fn a_suspension_while_task_is_down_is_enforced_once_task_is_back() {
    let mut env = TestEnv::new();
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let auth_db = env.pool("auth").await;
    let (_, admin_token) = admin(&mut auth, &auth_db, "root@example.com").await;
    let (ann, ann_token) = auth.member(signup("ann@example.com")).await;
    eventually("ann replicated", WAIT, || async {
        list(&task, &ann_token, None).await.ok()
    })
    .await;
    let auth_addr = format!("http://{}", auth.app.addr);
    task.app.stop().await.unwrap();

    suspend(&mut auth, &admin_token, &ann.to_string(), "fraud")
        .await
        .unwrap();
    let task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &auth_addr,
    ))
    .await;

    task_answers(
        &task,
        &ann_token,
        Code::PermissionDenied,
        "MEMBER_SUSPENDED",
    )
    .await;
}

#[tokio::test]
async fn a_suspension_whose_event_is_held_by_a_broker_outage_is_enforced_by_the_reconciler() {
    let mut env = TestEnv::new();
    let mut system = System::builder(&mut env)
        .mode(ConsistencyMode::NotReady)
        .broker_via_proxy()
        .tune_task(|s| s.reconcile.interval_secs = 1)
        .start()
        .await;
    let auth_db = env.pool("auth").await;
    let auth = system.auth();
    let (_, admin_token) = admin(auth, &auth_db, "root@example.com").await;
    let (ann, ann_token) = auth.member(signup("ann@example.com")).await;
    eventually("ann replicated", WAIT, || async {
        list(&system.tasks[0], &ann_token, None).await.ok()
    })
    .await;
    eventually("the outbox drained", WAIT, || async {
        (scalar(&auth_db, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;

    // Act: the broker goes, then the suspension commits: its event waits in
    // auth's outbox.
    system.broker().cut();
    let auth = system.auth();
    suspend(auth, &admin_token, &ann.to_string(), "compromised")
        .await
        .unwrap();

    // Assert: task refuses Ann anyway, within the reconciler's interval,
    // while the event is still unpublished.
    let took = task_answers(
        &system.tasks[0],
        &ann_token,
        Code::PermissionDenied,
        "MEMBER_SUSPENDED",
    )
    .await;
    assert!(
        scalar(&auth_db, "SELECT count(*) FROM outbox").await >= 1,
        "the event is still held: the reconciler repaired the replica"
    );
    eprintln!("suspension enforced across the outage after {took:?}");
    system.broker().restore();
    eventually("the outbox drained", WAIT, || async {
        (scalar(&auth_db, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    let still = list(&system.tasks[0], &ann_token, None).await.unwrap_err();
    assert_eq!(reason(&still), "MEMBER_SUSPENDED");

    // The digest covers the suspension itself, not only the version: a
    // replica row that lost it at auth's version is found and repaired.
    let task_db = env.pool("task").await;
    sqlx::query("UPDATE members SET suspended_at = NULL, suspended_reason = NULL WHERE id = $1")
        .bind(ann)
        .execute(&task_db)
        .await
        .unwrap();
    eventually("the reconciler restores the suspension", WAIT, || async {
        let n = scalar(
            &task_db,
            &format!(
                "SELECT count(*) FROM members WHERE id = '{ann}' AND suspended_at IS NOT NULL"
            ),
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
}
