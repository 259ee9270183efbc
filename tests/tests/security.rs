//! Access tokens and sessions: Ed25519 tokens with a key id, public keys
//! from auth, rotation without downtime, and Logout / ChangePassword ending
//! sessions in auth at once and in task through the outbox.
use memberflow_tests::fixtures::bearer;
use memberflow_tests::fixtures::{PASSWORD, create_task, signup};
use memberflow_tests::system::spawn_system;
use std::time::{Duration, Instant};

use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_contract::token::Signer;
use memberflow_runtime::grpc::violated_fields;
use memberflow_tests::{
    amqp::{MemberEventFixture, RawPublisher, TestQueue},
    apps::{TestAuth, auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
    eventually,
};
use prost::Message;
use sqlx::PgPool;
use task::ConsistencyMode;
use tonic::{Code, Request};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn login(auth: &mut TestAuth, email: &str, password: &str) -> Result<String, tonic::Status> {
    Ok(auth
        .client
        .login(memberflow_tests::fixtures::login(email, password))
        .await?
        .into_inner()
        .access_token)
}

/// The decoded JSON header of a JWT.
fn jwt_header(token: &str) -> serde_json::Value {
    use base64::Engine;
    let b64 = token.split('.').next().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

async fn update_nickname(
    auth: &mut TestAuth,
    token: &str,
    nickname: &str,
) -> Result<auth_pb::UpdateProfileResponse, tonic::Status> {
    Ok(auth
        .client
        .update_profile(bearer(
            auth_pb::UpdateProfileRequest {
                nickname: Some(nickname.into()),
                region: None,
            },
            token,
        ))
        .await?
        .into_inner())
}

#[tokio::test]
async fn tokens_are_ed25519_with_a_key_id_and_task_learns_keys_from_auth() {
    let mut env = TestEnv::new();
    let (signer, pem) = Signer::generate();
    let mut settings = auth_settings(&mut env);
    settings.token.signing_key = pem.into();
    let mut auth = spawn_auth(settings).await;
    // task with no configured key: it must ask auth.
    let mut ts = task_settings(
        &mut env,
        ConsistencyMode::ReadThrough,
        &format!("http://{}", auth.app.addr),
    );
    ts.token.public_keys = String::new();
    let task = spawn_task(ts).await;

    let keys = auth
        .client
        .get_public_keys(auth_pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    assert_eq!(jwk.kid, signer.public_key().kid());
    assert_eq!(jwk.x, signer.public_key().x());

    let (_, token) = auth.member(signup("ed@example.com")).await;
    let header = jwt_header(&token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], jwk.kid.as_str());
    task.client(&token)
        .create_task(create_task("t"))
        .await
        .unwrap();

    // The development key is not trusted by this deployment, and an HS256
    // token is refused whatever secret it uses.
    let (id, _) = auth.member(signup("other@example.com")).await;
    let dev = memberflow_tests::apps::mint_token(id, chrono::Duration::minutes(5));
    let hs256 = {
        let header = base64_json(r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#);
        let claims = base64_json(&format!(
            r#"{{"sub":"{id}","iss":"memberflow-auth","aud":"memberflow","iat":{now},"exp":{exp},"ver":1}}"#,
            now = chrono::Utc::now().timestamp(),
            exp = chrono::Utc::now().timestamp() + 300,
        ));
        format!("{header}.{claims}.c2lnbmF0dXJl")
    };
    for bad in [dev, hs256] {
        let err = update_nickname(&mut auth, &bad, "Eve").await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "auth: {err:?}");
        let err = task
            .client(&bad)
            .create_task(create_task("t"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "task: {err:?}");
    }
}

fn base64_json(json: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

#[tokio::test]
async fn a_signing_key_rotates_without_refusing_a_valid_token() {
    let mut env = TestEnv::new();
    let (old, old_pem) = Signer::generate();
    let (new, new_pem) = Signer::generate();
    let mut settings = auth_settings(&mut env);
    settings.token.signing_key = old_pem.into();
    let mut auth = spawn_auth(settings.clone()).await;
    let addr = auth.app.addr;
    let mut ts = task_settings(
        &mut env,
        ConsistencyMode::ReadThrough,
        &format!("http://{addr}"),
    );
    ts.token.public_keys = String::new();
    ts.token.refresh_secs = 1;
    let task = spawn_task(ts).await;
    let (_, old_token) = auth.member(signup("rot@example.com")).await;
    task.client(&old_token)
        .create_task(create_task("a"))
        .await
        .unwrap();

    // Step 2: sign with the new key, keep accepting (and publishing) the old.
    // Restarted on the same address, as a rolling deploy would.
    settings.base.server.addr = addr.to_string();
    settings.token.signing_key = new_pem.into();
    settings.token.public_keys = old.public_key().to_pem();
    auth.app.stop().await.unwrap();
    let mut auth = spawn_auth(settings.clone()).await;
    let new_token = login(&mut auth, "rot@example.com", PASSWORD).await.unwrap();
    assert_eq!(jwt_header(&new_token)["kid"], new.public_key().kid());
    // task has never seen the new kid: it asks auth, and the call succeeds.
    task.client(&new_token)
        .create_task(create_task("b"))
        .await
        .unwrap();
    task.client(&old_token)
        .create_task(create_task("c"))
        .await
        .unwrap();
    update_nickname(&mut auth, &old_token, "Still me")
        .await
        .unwrap();

    // Step 3: once old tokens have expired, the old key goes.
    settings.token.public_keys = String::new();
    auth.app.stop().await.unwrap();
    let mut auth = spawn_auth(settings).await;
    let err = update_nickname(&mut auth, &old_token, "Eve")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // task drops it at its next refresh.
    eventually("task forgets the retired key", WAIT, || {
        let mut client = task.client(&old_token);
        async move {
            let r = client.list_tasks(pb::ListTasksRequest::default()).await;
            matches!(r, Err(s) if s.code() == Code::Unauthenticated).then_some(())
        }
    })
    .await;
    task.client(&new_token)
        .create_task(create_task("d"))
        .await
        .unwrap();
}

async fn replica_sessions(pool: &PgPool, id: Uuid) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT version, sessions_version FROM members WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn logout_of_all_sessions_ends_them_in_auth_at_once_and_in_task_after_replication() {
    let mut env = TestEnv::new();
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let task_db = env.pool("task").await;
    let (id, token) = auth.member(signup("bye@example.com")).await;
    let mut tasks = task.client(&token);
    eventually("member replicated", WAIT, || {
        let mut c = tasks.clone();
        async move { c.create_task(create_task("before")).await.ok() }
    })
    .await;

    let out = auth
        .client
        .logout(bearer(
            auth_pb::LogoutRequest { all_sessions: true },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let logged_out = Instant::now();
    assert!(out.not_before.is_some());
    assert!(!out.consistency_token.is_empty());
    // auth: refused at once.
    let err = update_nickname(&mut auth, &token, "Eve").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
    let err = auth
        .client
        .logout(bearer(
            auth_pb::LogoutRequest { all_sessions: true },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // task: refused once the event is applied, on every RPC.
    eventually("task refuses the token", WAIT, || {
        let mut c = tasks.clone();
        async move {
            let r = c.list_tasks(pb::ListTasksRequest::default()).await;
            matches!(r, Err(s) if s.code() == Code::Unauthenticated).then_some(())
        }
    })
    .await;
    let delay = logged_out.elapsed();
    eprintln!("logout reached task in {delay:?}");
    let err = tasks.create_task(create_task("after")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let (version, sessions_version) = replica_sessions(&task_db, id).await.unwrap();
    assert_eq!(
        version, sessions_version,
        "the revocation is the newest state"
    );

    // A replayed older event does not undo it (the version guard).
    let publisher = RawPublisher::connect(&env.amqp_url()).await;
    publisher
        .member_event(&MemberEventFixture::new(id, version - 1, "Asia/Seoul"))
        .await;
    let mut fresh = MemberEventFixture::new(Uuid::now_v7(), 1, "Asia/Seoul");
    fresh.nickname = "marker".into();
    publisher.member_event(&fresh).await;
    eventually("the marker after the replay is applied", WAIT, || {
        let pool = task_db.clone();
        async move { replica_sessions(&pool, fresh.member_id).await }
    })
    .await;
    assert_eq!(
        replica_sessions(&task_db, id).await.unwrap(),
        (version, sessions_version)
    );
    let err = tasks.create_task(create_task("after")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A new login works everywhere, at once in auth.
    let again = login(&mut auth, "bye@example.com", PASSWORD).await.unwrap();
    update_nickname(&mut auth, &again, "Back").await.unwrap();
    task.client(&again)
        .create_task(create_task("again"))
        .await
        .unwrap();
}

#[tokio::test]
async fn change_password_checks_the_current_one_and_ends_sessions() {
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    let auth_db = env.pool("auth").await;
    let (id, token) = auth.member(signup("pw@example.com")).await;
    let change = |current: &str, new: &str| auth_pb::ChangePasswordRequest {
        current_password: current.into(),
        new_password: new.into(),
    };
    let events =
        TestQueue::bind_to(&env.amqp_url(), "revocations", "member.sessions_revoked").await;
    let cases = [
        (
            change("wrong password", "a new long password"),
            "current_password",
        ),
        (change(PASSWORD, "short"), "new_password"),
        (change("", "a new long password"), "current_password"),
    ];
    for (req, field) in cases {
        let err = auth
            .client
            .change_password(bearer(req.clone(), &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert_eq!(violated_fields(&err), vec![field.to_owned()], "{req:?}");
    }
    let err = auth
        .client
        .change_password(Request::new(change(PASSWORD, "a new long password")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Refusals changed nothing: the old password and token still work.
    update_nickname(&mut auth, &token, "Same").await.unwrap();

    let out = auth
        .client
        .change_password(bearer(change(PASSWORD, "a new long password"), &token))
        .await
        .unwrap()
        .into_inner();
    // One event, through the outbox, with the contract's fields.
    let got = events.take(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "member.sessions_revoked"
    );
    let event = auth_pb::MemberSessionsRevoked::decode(&got[0].delivery.data[..]).unwrap();
    assert_eq!(event.member_id, id.to_string());
    assert_eq!(event.not_before, out.not_before);
    let version: i64 = sqlx::query_scalar("SELECT version FROM members WHERE id = $1")
        .bind(id)
        .fetch_one(&auth_db)
        .await
        .unwrap();
    assert_eq!(event.version, version);
    assert!(event.occurred_at.is_some() && Uuid::parse_str(&event.event_id).is_ok());
    let err = update_nickname(&mut auth, &token, "Eve").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = login(&mut auth, "pw@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let token = login(&mut auth, "pw@example.com", "a new long password")
        .await
        .unwrap();
    update_nickname(&mut auth, &token, "New").await.unwrap();
}
