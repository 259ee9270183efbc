//! Sessions per device (issue 25): Login starts a session with a refresh
//! token, Refresh rotates it and treats the reuse of a rotated one as theft,
//! Logout ends the caller's session only, ListSessions / RevokeSession, and
//! ChangePassword keeping the caller's session. task refuses an ended
//! session's access tokens once MemberSessionEnded is applied, and prunes
//! the entry after the session's last access token expires. Nothing a
//! session is made of (refresh token, access token, raw session id) reaches
//! a log line, a span attribute or an event.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_contract::time::timestamp;
use memberflow_contract::token::session_hash;
use memberflow_contract::topology::MEMBER_SESSION_ENDED;
use memberflow_tests::{
    amqp::{RawPublisher, TestQueue},
    apps::{TestAuth, TestTask, log_in_on},
    env::TestEnv,
    eventually,
    fixtures::{bearer, create_task, scalar, signup},
    system::{System, spawn_task_alone},
};
use prost::Message;
use task::ConsistencyMode;
use tonic::Code;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// A member signed up (and logged in once, a session of its own) and
/// replicated to task: the member's id.
async fn member_in_task(auth: &mut TestAuth, task: &TestTask, email: &str) -> Uuid {
    let (id, token) = auth.member(signup(email)).await;
    let tasks = task.client(&token);
    eventually("member replicated", WAIT, || {
        let mut c = tasks.clone();
        async move { c.list_tasks(pb::ListTasksRequest::default()).await.ok() }
    })
    .await;
    id
}

async fn refresh(
    auth: &mut TestAuth,
    refresh_token: &str,
) -> Result<auth_pb::RefreshResponse, tonic::Status> {
    auth.client
        .refresh(auth_pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list_sessions(
    auth: &mut TestAuth,
    access_token: &str,
) -> Result<Vec<auth_pb::Session>, tonic::Status> {
    auth.client
        .list_sessions(bearer(auth_pb::ListSessionsRequest {}, access_token))
        .await
        .map(|r| r.into_inner().sessions)
}

/// Waits until task refuses `access_token` as UNAUTHENTICATED; how long
/// that took.
async fn task_refuses(task: &TestTask, access_token: &str) -> Duration {
    let started = Instant::now();
    let tasks = task.client(access_token);
    eventually("task refuses the token", WAIT, || {
        let mut c = tasks.clone();
        async move {
            let r = c.list_tasks(pb::ListTasksRequest::default()).await;
            matches!(r, Err(s) if s.code() == Code::Unauthenticated).then_some(())
        }
    })
    .await;
    started.elapsed()
}

async fn task_accepts(task: &TestTask, access_token: &str) {
    task.client(access_token)
        .create_task(create_task("still here"))
        .await
        .expect("task accepts the token");
}

#[tokio::test]
async fn logout_on_one_device_ends_that_session_only() {
    // Arrange: one member, logged in on devices A and B.
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();
    let email = "two@example.com";
    member_in_task(auth, &task, email).await;
    let a = log_in_on(&mut auth.client, email, "phone").await;
    let b = log_in_on(&mut auth.client, email, "laptop").await;
    assert_ne!(a.session_id, b.session_id);
    task_accepts(&task, &a.access_token).await;

    // Act: Logout on A, with the default (this session only).
    let out = auth
        .client
        .logout(bearer(auth_pb::LogoutRequest::default(), &a.access_token))
        .await
        .unwrap()
        .into_inner();

    // Assert: A ends at auth at once (access and refresh), and at task once
    // the event is applied.
    assert!(out.not_before.is_none(), "only one session ended");
    let err = list_sessions(auth, &a.access_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = refresh(auth, &a.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let took = task_refuses(&task, &a.access_token).await;
    eprintln!("logout reached task in {took:?}");
    assert!(took < WAIT);
    // B goes on: its access token at task, and its refresh token.
    task_accepts(&task, &b.access_token).await;
    let next = refresh(auth, &b.refresh_token).await.unwrap();
    assert_eq!(next.session_id, b.session_id);
    task_accepts(&task, &next.access_token).await;
    let listed = list_sessions(auth, &next.access_token).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s.session_id == b.session_id && s.current)
    );
    assert!(listed.iter().all(|s| s.session_id != a.session_id));
}

#[tokio::test]
async fn a_rotated_refresh_token_presented_again_ends_the_session() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();
    let email = "rot@example.com";
    member_in_task(auth, &task, email).await;
    let first = log_in_on(&mut auth.client, email, "phone").await;
    let second = refresh(auth, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    task_accepts(&task, &second.access_token).await;

    // Act: the first refresh token again (grace 0): reuse.
    let err = refresh(auth, &first.refresh_token).await.unwrap_err();

    // Assert: refused, and the session's current tokens stop: at auth at
    // once, at task once the event is applied.
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("already used"), "{}", err.message());
    let err = refresh(auth, &second.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    for token in [&first.access_token, &second.access_token] {
        let err = list_sessions(auth, token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let took = task_refuses(&task, &second.access_token).await;
    eprintln!("reuse reached task in {took:?}");
    task_refuses(&task, &first.access_token).await;
}

#[tokio::test]
async fn within_the_grace_a_second_presentation_is_aborted_and_after_it_is_reuse() {
    const GRACE: Duration = Duration::from_millis(1_500);
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env)
        .tune_auth(|s| s.token.refresh_reuse_grace_ms = GRACE.as_millis() as u64)
        .start()
        .await;
    let auth = sys.auth();
    auth.member(signup("grace@example.com")).await;
    let first = log_in_on(&mut auth.client, "grace@example.com", "phone").await;
    let second = refresh(auth, &first.refresh_token).await.unwrap();
    let rotated = Instant::now();

    // The client's immediate retry: ABORTED, nothing ends.
    let err = refresh(auth, &first.refresh_token).await.unwrap_err();
    assert!(rotated.elapsed() < GRACE, "the retry came too late to test");
    assert_eq!(err.code(), Code::Aborted, "{}", err.message());
    let third = refresh(auth, &second.refresh_token).await.unwrap();
    list_sessions(auth, &third.access_token).await.unwrap();

    // After the window: reuse, and the session ends.
    tokio::time::sleep_until((rotated + GRACE + Duration::from_millis(100)).into()).await;
    let err = refresh(auth, &first.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = refresh(auth, &third.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn twenty_concurrent_refreshes_with_one_token_issue_at_most_one() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let auth_db = env.pool("auth").await;
    let auth = sys.auth();
    auth.member(signup("race@example.com")).await;
    let login = log_in_on(&mut auth.client, "race@example.com", "phone").await;

    let calls = (0..20).map(|_| {
        let mut client = auth.client.clone();
        let token = login.refresh_token.clone();
        async move {
            client
                .refresh(auth_pb::RefreshRequest {
                    refresh_token: token,
                })
                .await
        }
    });
    let results = futures::future::join_all(calls).await;

    let issued: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(issued.len() <= 1, "{} refresh tokens issued", issued.len());
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
        }
    }
    let stored = scalar(
        &auth_db,
        &format!(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = '{}'",
            login.session_id
        ),
    )
    .await;
    assert!(
        stored <= 2,
        "{stored} refresh tokens stored for the session"
    );
}

#[tokio::test]
async fn list_sessions_shows_both_devices_and_revoke_session_ends_one() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();
    let email = "list@example.com";
    member_in_task(auth, &task, email).await;
    let a = log_in_on(&mut auth.client, email, "phone").await;
    let b = log_in_on(&mut auth.client, email, "laptop").await;

    let listed = list_sessions(auth, &a.access_token).await.unwrap();
    // The signup's own login, A and B: newest first.
    let ids: Vec<&str> = listed.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids[..2], [b.session_id.as_str(), a.session_id.as_str()]);
    let current: Vec<&str> = listed
        .iter()
        .filter(|s| s.current)
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(current, [a.session_id.as_str()]);
    assert!(
        listed[0].client.starts_with("laptop"),
        "{}",
        listed[0].client
    );
    assert!(
        listed[1].client.starts_with("phone"),
        "{}",
        listed[1].client
    );
    assert!(listed.iter().all(|s| s.created_at.is_some()));

    let revoke = |id: &str| auth_pb::RevokeSessionRequest {
        session_id: id.into(),
    };
    let out = auth
        .client
        .revoke_session(bearer(revoke(&b.session_id), &a.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!out.consistency_token.is_empty());
    // Again: already ended, still fine.
    auth.client
        .revoke_session(bearer(revoke(&b.session_id), &a.access_token))
        .await
        .unwrap();
    let listed = list_sessions(auth, &a.access_token).await.unwrap();
    assert!(listed.iter().all(|s| s.session_id != b.session_id));
    assert_eq!(
        refresh(auth, &b.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    task_refuses(&task, &b.access_token).await;
    task_accepts(&task, &a.access_token).await;

    let err = auth
        .client
        .revoke_session(bearer(revoke(&Uuid::new_v4().to_string()), &a.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = auth
        .client
        .revoke_session(bearer(revoke("not-an-id"), &a.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn change_password_keeps_the_callers_session_with_new_tokens_and_ends_the_other() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();
    let email = "cp@example.com";
    member_in_task(auth, &task, email).await;
    let a = log_in_on(&mut auth.client, email, "phone").await;
    let b = log_in_on(&mut auth.client, email, "laptop").await;

    let out = auth
        .client
        .change_password(bearer(
            auth_pb::ChangePasswordRequest {
                current_password: memberflow_tests::fixtures::PASSWORD.into(),
                new_password: "a new long password".into(),
            },
            &a.access_token,
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(out.session_id, a.session_id);
    assert!(out.expires_at.is_some());
    assert_ne!(out.refresh_token, a.refresh_token);
    let listed = list_sessions(auth, &out.access_token).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current);
    for old in [&a.access_token, &b.access_token] {
        assert_eq!(
            list_sessions(auth, old).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    assert_eq!(
        refresh(auth, &b.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    task_refuses(&task, &b.access_token).await;
    task_accepts(&task, &out.access_token).await;
    let next = refresh(auth, &out.refresh_token).await.unwrap();
    assert_eq!(next.session_id, a.session_id);
    task_accepts(&task, &next.access_token).await;
}

#[tokio::test]
async fn a_token_without_sid_works_until_every_session_is_ended() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();
    let email = "old@example.com";
    let id = member_in_task(auth, &task, email).await;
    let a = log_in_on(&mut auth.client, email, "phone").await;
    // As auth issued tokens before sessions existed: no `sid`.
    let old = memberflow_tests::apps::mint_token(id, chrono::Duration::minutes(5));
    task_accepts(&task, &old).await;
    list_sessions(auth, &old).await.unwrap();

    // Logout with it has no session of its own to end: it ends them all.
    let out = auth
        .client
        .logout(bearer(auth_pb::LogoutRequest::default(), &old))
        .await
        .unwrap()
        .into_inner();
    assert!(out.not_before.is_some());
    assert_eq!(
        refresh(auth, &a.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    task_refuses(&task, &old).await;
    task_refuses(&task, &a.access_token).await;
}

#[tokio::test]
async fn ended_sessions_are_pruned_after_their_last_access_token_expires() {
    // Arrange: task alone, two MemberSessionEnded: one whose tokens have
    // expired, one whose have not.
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let pool = env.pool("task").await;
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    let now = chrono::Utc::now();
    let (gone, kept) = (Uuid::new_v4(), Uuid::new_v4());
    for (session, expires_at) in [
        (gone, now - chrono::Duration::seconds(1)),
        (kept, now + chrono::Duration::minutes(15)),
    ] {
        let event = auth_pb::MemberSessionEnded {
            event_id: Uuid::now_v7().to_string(),
            member_id: Uuid::now_v7().to_string(),
            session_hash: session_hash(session),
            ended_at: Some(timestamp(now)),
            expires_at: Some(timestamp(expires_at)),
        };
        publisher
            .publish(MEMBER_SESSION_ENDED, &event.encode_to_vec())
            .await;
    }
    eventually("both entries applied", WAIT, || {
        let pool = pool.clone();
        async move {
            (scalar(&pool, "SELECT count(*) FROM ended_sessions").await == 2).then_some(())
        }
    })
    .await;
    assert!(task.processed() >= 2);

    // Act
    let pruned = task::ended_sessions::prune(&pool).await.unwrap();

    // Assert
    assert_eq!(pruned, 1);
    assert!(!task::ended_sessions::has_ended(&pool, gone).await.unwrap());
    assert!(task::ended_sessions::has_ended(&pool, kept).await.unwrap());
}

#[tokio::test]
async fn auth_prunes_sessions_nothing_can_use_any_more() {
    let mut env = TestEnv::new();
    let mut sys = System::builder(&mut env).start().await;
    let auth_db = env.pool("auth").await;
    let auth = sys.auth();
    auth.member(signup("prune@example.com")).await;
    let ended = log_in_on(&mut auth.client, "prune@example.com", "phone").await;
    let live = log_in_on(&mut auth.client, "prune@example.com", "laptop").await;
    auth.client
        .logout(bearer(
            auth_pb::LogoutRequest::default(),
            &ended.access_token,
        ))
        .await
        .unwrap();
    // As if the ended session's last access token had expired.
    sqlx::query("UPDATE sessions SET access_expires_at = now() - interval '1 s' WHERE id = $1")
        .bind(Uuid::parse_str(&ended.session_id).unwrap())
        .execute(&auth_db)
        .await
        .unwrap();

    let pruned = auth::sessions::store::prune(&auth_db, chrono::Duration::days(7))
        .await
        .unwrap();

    assert_eq!(pruned, 1);
    let left = |id: &str| format!("SELECT count(*) FROM sessions WHERE id = '{id}'");
    assert_eq!(scalar(&auth_db, &left(&ended.session_id)).await, 0);
    assert_eq!(scalar(&auth_db, &left(&live.session_id)).await, 1);
    refresh(auth, &live.refresh_token).await.unwrap();
}

/// A `MakeWriter` that keeps every log line in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Self;

    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn no_log_line_span_attribute_or_event_carries_a_token_or_session_id() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;

    // Arrange: every log line (debug for memberflow's crates, as verbose as
    // an operator would turn them) and every span of this process, and
    // every message on member.events.
    let logs = Captured::default();
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("auth", tracing::Level::DEBUG)
        .with_target("task", tracing::Level::DEBUG)
        .with_target("memberflow_runtime", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_filter(filter),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        )
        .init();
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut sys = System::builder(&mut env).start().await;
    let task = sys.tasks.remove(0);
    let auth = sys.auth();

    // Act: every session RPC, including a reuse.
    let email = "leak@example.com";
    member_in_task(auth, &task, email).await;
    let a = log_in_on(&mut auth.client, email, "phone").await;
    let b = log_in_on(&mut auth.client, email, "laptop").await;
    let c = log_in_on(&mut auth.client, email, "tablet").await;
    let a2 = refresh(auth, &a.refresh_token).await.unwrap();
    refresh(auth, &a.refresh_token).await.unwrap_err();
    list_sessions(auth, &b.access_token).await.unwrap();
    auth.client
        .revoke_session(bearer(
            auth_pb::RevokeSessionRequest {
                session_id: c.session_id.clone(),
            },
            &b.access_token,
        ))
        .await
        .unwrap();
    task_accepts(&task, &b.access_token).await;
    auth.client
        .logout(bearer(auth_pb::LogoutRequest::default(), &b.access_token))
        .await
        .unwrap();
    task_refuses(&task, &b.access_token).await;
    task_refuses(&task, &c.access_token).await;
    task_refuses(&task, &a2.access_token).await;

    // Assert: three MemberSessionEnded (reuse, revoke, logout), and none of
    // the secrets anywhere.
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for (device, login) in [("a", &a), ("b", &b), ("c", &c)] {
        secrets.push((device, login.refresh_token.clone()));
        secrets.push((device, login.access_token.clone()));
        secrets.push((device, login.session_id.clone()));
        secrets.push((device, login.session_id.replace('-', "")));
    }
    secrets.push(("a2", a2.refresh_token.clone()));
    secrets.push(("a2", a2.access_token.clone()));

    // member.created, then the three ends.
    let messages = observer.take(4, WAIT).await;
    let ended = messages
        .iter()
        .filter(|m| m.delivery.routing_key.as_str() == MEMBER_SESSION_ENDED)
        .count();
    assert_eq!(ended, 3, "one MemberSessionEnded per ended session");
    for m in &messages {
        let headers = format!("{:?}", m.delivery.properties);
        for (what, secret) in &secrets {
            assert!(
                !contains(&m.delivery.data, secret.as_bytes()) && !headers.contains(secret),
                "{what}'s secret in a {} event",
                m.delivery.routing_key
            );
        }
    }
    let logs = String::from_utf8_lossy(&logs.0.lock().expect("poisoned")).into_owned();
    assert!(logs.contains("Refresh"), "the capture saw the RPCs");
    for (what, secret) in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{what}'s secret in the logs"
        );
    }
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    assert!(
        spans.iter().any(|s| s.name == "Refresh"),
        "the capture saw the spans"
    );
    for span in &spans {
        let attributes = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect::<Vec<_>>()
            .join(" ");
        for (what, secret) in &secrets {
            assert!(
                !attributes.contains(secret.as_str()),
                "{what}'s secret in span {}",
                span.name
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
