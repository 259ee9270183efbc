//! Abuse limits: login throttling, the bounded hashing queue, and the
//! server limits (metadata size, concurrency, per-RPC timeout, message size,
//! HTTP/2 keepalive). Each refusal is a clean gRPC status.
use memberflow_tests::fixtures::bearer;
use memberflow_tests::fixtures::{PASSWORD, login, signup};
use std::time::{Duration, Instant};

use memberflow_contract::proto::auth::v1 as pb;
use memberflow_tests::{
    apps::{TestAuth, auth_settings, health_status, spawn_auth},
    env::TestEnv,
    eventually, http,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// A counter's value from the instance's `/metrics`.
async fn metric(auth: &TestAuth, name: &str) -> f64 {
    let (_, body) = http::get(auth.metrics_addr, "/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn login_is_throttled_per_account_and_works_again_after_the_delay() {
    let mut env = TestEnv::new();
    let mut s = auth_settings(&mut env);
    s.login_throttle.per_email.burst = 3;
    s.login_throttle.per_email.refill_ms = 500;
    let mut auth = spawn_auth(s).await;
    auth.client
        .sign_up(signup("ann@example.com"))
        .await
        .unwrap();
    auth.client
        .sign_up(signup("bob@example.com"))
        .await
        .unwrap();
    for _ in 0..3 {
        let err = auth
            .client
            .login(login("ann@example.com", "wrong password"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // The fourth attempt, even with the right password, waits.
    let err = auth
        .client
        .login(login("ANN@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let delay = retry_after(&err).expect("RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(500),
        "{delay:?}"
    );
    // Another account is not affected.
    auth.client
        .login(login("bob@example.com", PASSWORD))
        .await
        .unwrap();
    assert_eq!(
        metric(&auth, "memberflow_login_throttled_total{limit=\"email\"}").await,
        1.0
    );
    // After the delay the right password works.
    let client = auth.client.clone();
    eventually(
        "the right password works again",
        Duration::from_secs(5),
        || {
            let mut client = client.clone();
            async move { client.login(login("ann@example.com", PASSWORD)).await.ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn login_is_throttled_per_peer_address() {
    let mut env = TestEnv::new();
    let mut s = auth_settings(&mut env);
    s.login_throttle.per_peer.burst = 4;
    s.login_throttle.per_peer.refill_ms = 60_000;
    let mut auth = spawn_auth(s).await;
    for i in 0..4 {
        let err = auth
            .client
            .login(login(&format!("guess{i}@example.com"), PASSWORD))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = auth
        .client
        .login(login("guess9@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("address"), "{}", err.message());
    assert!(retry_after(&err).unwrap() > Duration::from_secs(50));
}

/// auth with one hashing thread at a cost that takes a while per hash.
fn slow_hashing(env: &mut TestEnv) -> auth::Settings {
    let mut s = auth_settings(env);
    s.password.memory_kib = 8 * 1024;
    s.password.iterations = 16;
    s.password.max_concurrent = 1;
    s
}

#[tokio::test]
async fn a_full_hashing_queue_answers_resource_exhausted_at_once() {
    let mut env = TestEnv::new();
    let mut s = slow_hashing(&mut env);
    s.password.max_queued = 2;
    let auth = spawn_auth(s).await;
    let db = env.pool("auth").await;
    let calls = (0..8).map(|i| {
        let mut client = auth.client.clone();
        async move {
            let started = Instant::now();
            let r = client.sign_up(signup(&format!("q{i}@example.com"))).await;
            (r, started.elapsed())
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    let refused: Vec<_> = results
        .iter()
        .filter_map(|(r, t)| r.as_ref().err().map(|e| (e, *t)))
        .collect();
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} ok, {} refused",
        refused.len()
    );
    let slowest_ok = results
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    for (err, took) in &refused {
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(retry_after(err).is_some());
        assert!(*took < slowest_ok, "refused at once ({took:?}), not queued");
    }
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM members")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(members as usize, ok, "a refused signup changes nothing");
    assert_eq!(
        metric(&auth, "memberflow_password_hash_rejected_total").await,
        refused.len() as f64
    );
}

#[tokio::test]
async fn a_hash_whose_caller_has_gone_is_not_started() {
    let mut env = TestEnv::new();
    let auth = spawn_auth(slow_hashing(&mut env)).await;
    // One hash holds the only thread; five more queue behind it, then their
    // callers give up.
    let mut busy = auth.client.clone();
    let first = tokio::spawn(async move { busy.sign_up(signup("first@example.com")).await });
    let quitters = (0..5).map(|i| {
        let mut client = auth.client.clone();
        async move {
            let mut req = Request::new(signup(&format!("gone{i}@example.com")));
            req.set_timeout(Duration::from_millis(20));
            client.sign_up(req).await
        }
    });
    for r in futures::future::join_all(quitters).await {
        let err = r.unwrap_err();
        assert!(
            matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{err:?}"
        );
    }
    first.await.unwrap().unwrap();
    eventually(
        "abandoned hashes skipped",
        Duration::from_secs(10),
        || async {
            (metric(&auth, "memberflow_password_hash_abandoned_total").await >= 4.0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn server_limits_answer_clean_statuses() {
    let mut env = TestEnv::new();
    let mut s = auth_settings(&mut env);
    s.base.server.limits.concurrency_limit = 1;
    s.base.server.limits.max_header_bytes = 4 * 1024;
    s.base.server.limits.max_message_bytes = 4 * 1024;
    let mut auth = spawn_auth(s).await;

    // Metadata over the limit: RESOURCE_EXHAUSTED, and the connection lives.
    let mut req = Request::new(login("a@example.com", PASSWORD));
    req.metadata_mut()
        .insert("x-padding", "p".repeat(8 * 1024).parse().unwrap());
    let err = auth.client.login(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("metadata"), "{}", err.message());

    // A message over the limit: a status, not a dropped connection.
    let mut big = signup("big@example.com");
    big.nickname = "n".repeat(8 * 1024);
    let err = auth.client.sign_up(big).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    // One call at a time: while one is in flight (an UpdateProfile waiting
    // for a row lock the test holds), a second is refused at once, and
    // health still answers.
    auth.client
        .sign_up(signup("slow@example.com"))
        .await
        .unwrap();
    let token = auth
        .client
        .login(login("slow@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let db = env.pool("auth").await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM members FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut busy = auth.client.clone();
    let held = tokio::spawn(async move {
        let req = bearer(
            pb::UpdateProfileRequest {
                nickname: Some("Held".into()),
                region: None,
            },
            &token,
        );
        busy.update_profile(req).await
    });
    // The held call is in flight (it holds the one permit) once its
    // backend waits for the lock; only then is a second call sure to be shed.
    eventually(
        "UpdateProfile waits for the row lock",
        Duration::from_secs(10),
        || {
            let db = db.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&db)
                .await
                .ok()?;
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    let err = eventually("a second call is shed", Duration::from_secs(10), || {
        let mut client = auth.client.clone();
        async move {
            match client.login(login("x@example.com", PASSWORD)).await {
                Err(e) if e.code() == Code::ResourceExhausted => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert!(retry_after(&err).is_some());
    assert!(
        health_status(auth.app.channel().await, auth::SERVICE_NAME)
            .await
            .is_some()
    );
    lock.commit().await.unwrap();
    held.await.unwrap().unwrap();
    auth.client
        .login(login("slow@example.com", PASSWORD))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_handler_past_the_request_timeout_gets_deadline_exceeded() {
    let mut env = TestEnv::new();
    let mut s = slow_hashing(&mut env);
    s.base.server.limits.request_timeout_ms = 5;
    let mut auth = spawn_auth(s).await;
    let err = auth
        .client
        .sign_up(signup("late@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
}

/// Reads one HTTP/2 frame header and its payload.
async fn frame(stream: &mut tokio::net::TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    const PING: u8 = 0x6;
    const SETTINGS: u8 = 0x4;
    let mut env = TestEnv::new();
    let mut s = auth_settings(&mut env);
    s.base.server.limits.keepalive_interval_secs = 1;
    s.base.server.limits.keepalive_timeout_secs = 1;
    let auth = spawn_auth(s).await;
    // A client that speaks just enough HTTP/2 to connect, then goes silent.
    let mut stream = tokio::net::TcpStream::connect(auth.app.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut pinged = false;
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((kind, flags, _)) = frame(&mut stream).await {
            if kind == SETTINGS && flags & 1 == 0 {
                // Acknowledge the server's settings; never its pings.
                stream.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.unwrap();
            }
            pinged |= kind == PING;
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a dead peer's connection");
    assert!(pinged, "the server never pinged");
    assert!(started.elapsed() >= Duration::from_secs(1));
}
