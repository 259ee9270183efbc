//! The auth service against real PostgreSQL and RabbitMQ: signup through the
//! outbox, validation, credentials, and relay fault tolerance.
use memberflow_runtime::startup::Service as _;
use memberflow_tests::apps::{log_in, sign_up_and_log_in};
use memberflow_tests::fixtures::bearer;
use memberflow_tests::fixtures::{scalar, signup};
use memberflow_tests::system::NOWHERE;
use std::{collections::HashMap, time::Duration};

use lapin::types::AMQPValue;
use memberflow_contract::proto::auth::v1 as pb;
use memberflow_contract::topology::CONTENT_TYPE;
use memberflow_contract::topology::MEMBER_CREATED;
use memberflow_contract::topology::MEMBER_UPDATED;
use memberflow_runtime::grpc::SERVICE_TOKEN_HEADER;
use memberflow_runtime::grpc::violated_fields;
use memberflow_tests::{
    amqp::TestQueue,
    apps::{TestAuth, auth_settings, spawn_auth},
    env::TestEnv,
    eventually,
    proxy::TcpProxy,
};
use prost::Message;
use sqlx::PgPool;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(20);

async fn wait_outbox_empty(pool: &PgPool) {
    eventually("an empty outbox", WAIT, || async {
        (scalar(pool, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn signup_publishes_exactly_one_event_with_its_properties() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut auth = spawn_auth(auth_settings(&mut env)).await;

    let member = auth
        .client
        .sign_up(signup("Ann@Example.com"))
        .await
        .expect("signup")
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        member.email, "ann@example.com",
        "email is stored lower-cased"
    );
    assert_eq!(member.version, 1);

    let messages = queue.take(1, WAIT).await;
    let pool = env.pool("auth").await;
    wait_outbox_empty(&pool).await;
    assert_eq!(queue.depth().await, 0, "exactly one message per signup");

    let m = &messages[0];
    let props = &m.delivery.properties;
    let event = pb::MemberChanged::decode(m.delivery.data.as_slice()).expect("protobuf body");
    assert_eq!(event.member_id, member.id);
    assert_eq!(event.nickname, "Ann");
    assert_eq!(event.region, "Asia/Seoul");
    assert_eq!(event.version, 1);
    assert_eq!(m.delivery.routing_key.as_str(), MEMBER_CREATED);
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        event.event_id
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), MEMBER_CREATED);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        CONTENT_TYPE
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert!(props.timestamp().unwrap() > 0);
    let headers = props.headers().as_ref().unwrap().inner();
    assert!(
        matches!(headers.get("member_id"), Some(AMQPValue::LongString(s)) if s.to_string() == member.id)
    );
    assert_eq!(headers.get("version"), Some(&AMQPValue::LongLongInt(1)));
    // No email or password hash leaves auth.
    let body = String::from_utf8_lossy(&m.delivery.data);
    assert!(!body.contains("example.com"));
    auth.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_signup_publishes_nothing() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    auth.client
        .sign_up(signup("dup@example.com"))
        .await
        .unwrap();

    let err = auth
        .client
        .sign_up(signup("DUP@example.com"))
        .await
        .expect_err("duplicate email");
    assert_eq!(err.code(), Code::AlreadyExists);

    let pool = env.pool("auth").await;
    queue.take(1, WAIT).await;
    wait_outbox_empty(&pool).await;
    assert_eq!(
        queue.depth().await,
        0,
        "the rolled-back signup published nothing"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, 1);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_writes_nothing() {
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    let pool = env.pool("auth").await;

    let cases: Vec<(pb::SignUpRequest, Vec<&str>)> = vec![
        (
            pb::SignUpRequest {
                email: "nope".into(),
                ..signup("")
            },
            vec!["email"],
        ),
        (
            signup(&format!("{}@example.com", "a".repeat(250))),
            vec!["email"],
        ),
        (
            pb::SignUpRequest {
                password: "short".into(),
                ..signup("a@example.com")
            },
            vec!["password"],
        ),
        (
            pb::SignUpRequest {
                password: "x".repeat(129),
                ..signup("a@example.com")
            },
            vec!["password"],
        ),
        (
            pb::SignUpRequest {
                nickname: "   ".into(),
                ..signup("a@example.com")
            },
            vec!["nickname"],
        ),
        (
            pb::SignUpRequest {
                nickname: "n".repeat(33),
                ..signup("a@example.com")
            },
            vec!["nickname"],
        ),
        (
            pb::SignUpRequest {
                nickname: "bell\u{7}".into(),
                ..signup("a@example.com")
            },
            vec!["nickname"],
        ),
        (
            pb::SignUpRequest {
                region: "Mars/Olympus".into(),
                ..signup("a@example.com")
            },
            vec!["region"],
        ),
        (
            pb::SignUpRequest::default(),
            vec!["email", "password", "nickname", "region"],
        ),
    ];
    for (req, fields) in cases {
        let err = auth
            .client
            .sign_up(req.clone())
            .await
            .expect_err("invalid signup");
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert_eq!(violated_fields(&err), fields, "{req:?}");
    }
    assert_eq!(scalar(&pool, "SELECT count(*) FROM members").await, 0);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox").await, 0);

    // Login: a wrong email and a wrong password are indistinguishable.
    let member = auth
        .client
        .sign_up(signup("b@example.com"))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    let wrong_email = auth
        .client
        .login(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap_err();
    let wrong_password = auth
        .client
        .login(pb::LoginRequest {
            email: "b@example.com".into(),
            password: "incorrect horse".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_email.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(wrong_email.message(), wrong_password.message());

    // GetMember is for trusted services only.
    let get = |id: &str, token: Option<&str>| {
        let mut req = Request::new(pb::GetMemberRequest {
            member_id: id.into(),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert(SERVICE_TOKEN_HEADER, t.parse().unwrap());
        }
        req
    };
    let mut c = auth.client.clone();
    assert_eq!(
        c.get_member(get(&member.id, None))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        c.get_member(get(&member.id, Some("wrong")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let trusted = Some("dev-only-service-token");
    let malformed = c.get_member(get("not-a-uuid", trusted)).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&malformed), vec!["member_id"]);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        c.get_member(get(&unknown, trusted))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let got = c
        .get_member(get(&member.id, trusted))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    // What a replica needs, and no email (MemberState has no such field).
    assert_eq!(
        (
            got.id,
            got.nickname,
            got.region,
            got.version,
            got.updated_at
        ),
        (
            member.id.clone(),
            member.nickname.clone(),
            member.region.clone(),
            member.version,
            member.updated_at
        )
    );

    // UpdateProfile needs the member's own token, and valid fields.
    let anonymous = c
        .update_profile(pb::UpdateProfileRequest {
            nickname: Some("x".into()),
            region: None,
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let token = log_in(&mut c, "b@example.com").await;
    let bad = bearer(
        pb::UpdateProfileRequest {
            nickname: None,
            region: Some("Nowhere/Land".into()),
        },
        &token,
    );
    let bad = c.update_profile(bad).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), vec!["region"]);

    let version: i64 = sqlx::query_scalar("SELECT version FROM members")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 1, "rejected updates change nothing");
}

#[tokio::test]
async fn update_profile_bumps_the_version_and_emits_member_updated() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    auth.client.sign_up(signup("c@example.com")).await.unwrap();
    let token = log_in(&mut auth.client, "c@example.com").await;
    let req = bearer(
        pb::UpdateProfileRequest {
            nickname: Some("Annie".into()),
            region: Some("Europe/Berlin".into()),
        },
        &token,
    );
    let member = auth
        .client
        .update_profile(req)
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        (
            member.version,
            member.nickname.as_str(),
            member.region.as_str()
        ),
        (2, "Annie", "Europe/Berlin")
    );

    let messages = queue.take(2, WAIT).await;
    assert_eq!(messages[0].delivery.routing_key.as_str(), MEMBER_CREATED);
    assert_eq!(messages[1].delivery.routing_key.as_str(), MEMBER_UPDATED);
    let updated = pb::MemberChanged::decode(messages[1].delivery.data.as_slice()).unwrap();
    assert_eq!((updated.version, updated.nickname.as_str()), (2, "Annie"));
}

#[tokio::test]
async fn fifty_signups_during_a_broker_outage_all_arrive_once_it_returns() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let proxy = TcpProxy::start(&env.amqp_host()).await;
    let mut settings = auth_settings(&mut env);
    settings.amqp.url = env.amqp_url_via(&proxy.host()).into();
    let auth = spawn_auth(settings).await;
    let pool = env.pool("auth").await;

    proxy.cut();
    let mut ids = Vec::new();
    for i in 0..50 {
        let m = auth
            .client
            .clone()
            .sign_up(signup(&format!("m{i}@example.com")))
            .await
            .expect("signup works without the broker");
        ids.push(m.into_inner().member.unwrap().id);
    }
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM outbox").await,
        50,
        "events wait in the outbox while the broker is away"
    );
    assert_eq!(queue.depth().await, 0);

    proxy.restore();
    let messages = queue.take(50, WAIT).await;
    wait_outbox_empty(&pool).await;
    let mut seen: Vec<String> = messages
        .iter()
        .map(|m| {
            pb::MemberChanged::decode(m.delivery.data.as_slice())
                .unwrap()
                .member_id
        })
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every signup arrived exactly once");
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once_in_version_order() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let a = spawn_auth(auth_settings(&mut env)).await;
    let b = spawn_auth(auth_settings(&mut env)).await;
    let pool = env.pool("auth").await;

    // 20 members, each signed up through one instance and updated 3 times
    // through alternating instances, all members concurrently.
    let members = 20;
    let updates = 3;
    let mut tasks = Vec::new();
    for i in 0..members {
        let clients = [a.client.clone(), b.client.clone()];
        tasks.push(tokio::spawn(async move {
            let mut c = clients[i % 2].clone();
            let (_, token) = sign_up_and_log_in(&mut c, signup(&format!("r{i}@example.com"))).await;
            for u in 0..updates {
                let mut c = clients[(i + u + 1) % 2].clone();
                let req = bearer(
                    pb::UpdateProfileRequest {
                        nickname: Some(format!("v{}", u + 2)),
                        region: None,
                    },
                    &token,
                );
                c.update_profile(req).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let total = members * (updates + 1);
    let messages = queue.take(total, WAIT).await;
    wait_outbox_empty(&pool).await;
    assert_eq!(queue.depth().await, 0, "no event was published twice");

    let mut event_ids = std::collections::HashSet::new();
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for m in &messages {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        assert!(event_ids.insert(id), "duplicate event");
        let e = pb::MemberChanged::decode(m.delivery.data.as_slice()).unwrap();
        versions.entry(e.member_id).or_default().push(e.version);
    }
    assert_eq!(versions.len(), members);
    for (member, v) in versions {
        assert_eq!(v, vec![1, 2, 3, 4], "member {member} events out of order");
    }
}

#[tokio::test]
async fn health_follows_the_database_both_ways_and_early_rpcs_are_unavailable() {
    let mut env = TestEnv::new();
    let proxy = TcpProxy::start(&env.pg_host()).await;
    proxy.cut();
    let mut settings = auth_settings(&mut env);
    let db = env
        .database_url("auth")
        .replace(&env.pg_host(), &proxy.host());
    settings.database = memberflow_runtime::db::DatabaseSettings::with_url(&db);
    let app = auth::Application::build(settings).await.unwrap();
    let addr = app.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    use tonic_health::pb::health_check_response::ServingStatus;
    let status = memberflow_tests::apps::health_status(channel.clone(), auth::SERVICE_NAME).await;
    assert_eq!(status, Some(ServingStatus::NotServing));
    // An RPC before the migrations ran: UNAVAILABLE, not INTERNAL.
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    let early = client
        .sign_up(signup("early@example.com"))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");

    proxy.restore();
    memberflow_tests::apps::wait_serving(channel.clone(), auth::SERVICE_NAME).await;
    client.sign_up(signup("early@example.com")).await.unwrap();

    // Losing the database later turns health back to NOT_SERVING, and
    // recovering it to SERVING.
    proxy.cut();
    eventually("NOT_SERVING while the database is cut", WAIT, || {
        let channel = channel.clone();
        async move {
            let s = memberflow_tests::apps::health_status(channel, auth::SERVICE_NAME).await;
            (s == Some(ServingStatus::NotServing)).then_some(())
        }
    })
    .await;
    proxy.restore();
    memberflow_tests::apps::wait_serving(channel, auth::SERVICE_NAME).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unroutable_row_is_parked_without_holding_back_the_rows_behind_it() {
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut settings = auth_settings(&mut env);
    settings.relay.park_after_attempts = 2;
    let mut auth = spawn_auth(settings).await;
    let pool = env.pool("auth").await;

    // A row no queue is bound for, at the head of the outbox.
    let stuck_member = uuid::Uuid::new_v4();
    let stuck_id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at)
         VALUES (gen_random_uuid(), 'billing.invoice.created', $1, 1, '\\x00', now())
         RETURNING id",
    )
    .bind(stuck_member)
    .fetch_one(&pool)
    .await
    .unwrap();

    // Signups keep flowing past it until the relay parks it.
    let mut signed_up = 0;
    eventually("the unroutable row parked", WAIT, || {
        signed_up += 1;
        let mut client = auth.client.clone();
        let pool = pool.clone();
        let email = format!("flow{signed_up}@example.com");
        async move {
            client.sign_up(signup(&email)).await.expect("signup");
            (scalar(&pool, "SELECT count(*) FROM outbox_parked").await == 1).then_some(())
        }
    })
    .await;
    observer.take(signed_up, WAIT).await;
    wait_outbox_empty(&pool).await;
    assert_eq!(observer.depth().await, 0, "each signup published once");
    let parked = auth::outbox::parked::list(&pool, &auth::outbox::SPEC)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, stuck_id);
    assert_eq!(parked[0].routing_key, "billing.invoice.created");
    assert!(parked[0].attempts >= 2, "{parked:?}");
    assert!(parked[0].last_error.contains("unroutable"), "{parked:?}");

    // A later event of the same member must not overtake the parked one:
    // it is held behind it.
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at)
         VALUES (gen_random_uuid(), 'member.updated', $1, 2, '\\x00', now())",
    )
    .bind(stuck_member)
    .execute(&pool)
    .await
    .unwrap();
    eventually("the member's later row held", WAIT, || async {
        (scalar(&pool, "SELECT count(*) FROM outbox_parked").await == 2).then_some(())
    })
    .await;
    let held = auth::outbox::parked::list(&pool, &auth::outbox::SPEC)
        .await
        .unwrap();
    assert_eq!(held[1].last_error, auth::outbox::relay::HELD_BEHIND);
    assert_eq!(observer.depth().await, 0, "nothing of the member overtook");
    auth.client
        .sign_up(signup("later@example.com"))
        .await
        .unwrap();
    observer.take(1, WAIT).await;

    // Once a queue is bound, replaying the parked row delivers it, and the
    // row held behind it after it.
    let billing = TestQueue::bind_to(&env.amqp_url(), "billing", "billing.#").await;
    let replayed = auth::outbox::parked::replay(&pool, &auth::outbox::SPEC, &[stuck_id])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 2, "the row and the one held behind it");
    billing.take(1, WAIT).await;
    observer.take(1, WAIT).await;
    wait_outbox_empty(&pool).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox_parked").await, 0);
    assert!(
        auth::outbox::parked::replay(&pool, &auth::outbox::SPEC, &[stuck_id])
            .await
            .unwrap()
            .is_empty(),
        "a second replay changes nothing"
    );
}

/// The pid of the relay leader's own session (only a leader has one), once
/// one exists.
async fn leader_pid(pool: &PgPool) -> i32 {
    eventually("a relay leader", WAIT, || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
              WHERE application_name = 'memberflow-relay' AND datname = current_database()",
        )
        .fetch_optional(pool)
        .await
        .unwrap()
    })
    .await
}

/// The relay lease's epoch: each new term of leadership bumps it.
async fn relay_epoch(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT epoch FROM leases WHERE name = 'relay'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_killed_leader_session_hands_over_and_the_outbox_drains() {
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let a = spawn_auth(auth_settings(&mut env)).await;
    let b = spawn_auth(auth_settings(&mut env)).await;
    let pool = env.pool("auth").await;
    let old = leader_pid(&pool).await;
    // Every instance keeps one session for the lease (campaign or renew).
    eventually("one lease session per instance", WAIT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'memberflow-relay-lease' AND datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 2).then_some(())
    })
    .await;
    let epoch = relay_epoch(&pool).await;

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    for i in 0..20 {
        let mut c = [a.client.clone(), b.client.clone()][i % 2].clone();
        c.sign_up(signup(&format!("k{i}@example.com")))
            .await
            .unwrap();
    }
    observer.take(20, WAIT).await;
    wait_outbox_empty(&pool).await;
    let new = leader_pid(&pool).await;
    assert_ne!(new, old, "a new session leads");
    assert!(relay_epoch(&pool).await > epoch, "under a new term");
    assert_eq!(observer.depth().await, 0, "each event published once");
}

/// Whether this instance's relay leads (its `memberflow_relay_leader`).
async fn leads(auth: &TestAuth) -> bool {
    let (_, body) = memberflow_tests::http::get(auth.metrics_addr, "/metrics")
        .await
        .unwrap();
    body.lines()
        .any(|l| l.trim() == "memberflow_relay_leader 1")
}

/// With the outbox trigger gone, a commit in an instance whose relay does
/// not lead must still wake the leader at once (a NOTIFY from the
/// committing instance), and the leader's own commits wake it in process.
/// The relays' poll is set to ten minutes, so only a wake-up publishes
/// within the wait.
#[tokio::test]
async fn a_signup_on_a_standby_wakes_the_leader_in_another_instance() {
    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut settings = || {
        let mut s = auth_settings(&mut env);
        s.relay.poll_interval_ms = 600_000;
        s
    };
    let (a, b) = (settings(), settings());
    let a = spawn_auth(a).await;
    let b = spawn_auth(b).await;
    let (leader, standby) = eventually("one instance leads", WAIT, || async {
        match (leads(&a).await, leads(&b).await) {
            (true, false) => Some((&a, &b)),
            (false, true) => Some((&b, &a)),
            _ => None,
        }
    })
    .await;
    for (i, instance) in [standby, leader, standby].into_iter().enumerate() {
        instance
            .client
            .clone()
            .sign_up(signup(&format!("wake{i}@example.com")))
            .await
            .unwrap();
        observer.take(1, WAIT).await;
    }
    wait_outbox_empty(&env.pool("auth").await).await;
}

/// `msg` with the service credential task presents.
fn trusted<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        SERVICE_TOKEN_HEADER,
        memberflow_runtime::secrets::DEV_SERVICE_TOKEN
            .parse()
            .unwrap(),
    );
    req
}

#[tokio::test]
async fn list_and_digest_members_are_for_trusted_services_and_check_their_input() {
    use futures::StreamExt;
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    for i in 0..5 {
        auth.client
            .sign_up(signup(&format!("l{i}@example.com")))
            .await
            .unwrap();
    }
    let err = auth
        .client
        .list_members(pb::ListMembersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = auth
        .client
        .digest_members(pb::DigestMembersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let bad = auth
        .client
        .list_members(trusted(pb::ListMembersRequest {
            after_id: "nope".into(),
            member_ids: vec!["also-nope".into()],
            page_size: 9_999,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&bad),
        ["after_id", "member_ids", "page_size"]
    );
    let bad = auth
        .client
        .digest_members(trusted(pb::DigestMembersRequest {
            buckets: 5_000,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["buckets"]);

    // Pages of 2 in id order, resumable from any id.
    let mut stream = auth
        .client
        .list_members(trusted(pb::ListMembersRequest {
            page_size: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.next().await {
        pages.push(page.unwrap().members);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let ids: Vec<String> = pages.concat().into_iter().map(|m| m.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    let digest = auth
        .client
        .digest_members(trusted(pb::DigestMembersRequest {
            buckets: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .buckets;
    assert_eq!(digest.iter().map(|b| b.count).sum::<i64>(), 5);
    assert_eq!(digest[0].after_id, uuid::Uuid::nil().to_string());
    assert_eq!(digest[1].after_id, digest[0].until_id, "consecutive");
    assert_eq!(digest[1].until_id, uuid::Uuid::max().to_string());
}

#[tokio::test]
async fn behind_pgbouncer_in_transaction_mode_the_relay_uses_its_direct_url() {
    use sqlx::Row;
    let mut env = TestEnv::new();
    let bouncer = memberflow_tests::pgbouncer::PgBouncer::start(&env.pg_host()).await;
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut settings = auth_settings(&mut env);
    let direct = env.database_url("auth");
    let pooled = direct.replace(&env.pg_host(), &bouncer.host());
    settings.database = memberflow_runtime::db::DatabaseSettings::with_url(&pooled);
    settings.database.direct_url = Some(direct.into());
    // Debian's PgBouncer (1.18) cannot carry sqlx's named prepared
    // statements across server connections; one client on one server
    // connection (default_pool_size = 1 in the kit) keeps the RPC path sound.
    // What this test is about is the relay's sessions, which must go direct.
    settings.database.max_connections = 1;
    let auth = spawn_auth(settings).await;

    for i in 0..30 {
        auth.client
            .clone()
            .sign_up(signup(&format!("b{i}@example.com")))
            .await
            .unwrap();
    }
    observer.take(30, WAIT).await;
    let pool = env.pool("auth").await;
    wait_outbox_empty(&pool).await;
    assert_eq!(observer.depth().await, 0, "each event once");

    // The RPCs went through PgBouncer; the relay's sessions (the leader's
    // and the lease's) did not.
    leader_pid(&pool).await;
    let admin = format!("postgres://postgres@{}/pgbouncer", bouncer.host());
    let mut console = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let clients = sqlx::raw_sql("SHOW CLIENTS")
        .fetch_all(&mut console)
        .await
        .unwrap();
    let names: Vec<String> = clients
        .iter()
        .filter_map(|r| r.try_get::<String, _>("application_name").ok())
        .collect();
    assert!(
        clients.iter().any(|r| r
            .try_get::<String, _>("database")
            .is_ok_and(|d| d.starts_with("mf_auth"))),
        "auth's pool goes through PgBouncer: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("memberflow-")),
        "no relay session through PgBouncer: {names:?}"
    );
}

/// One reflection (v1) request to `addr`, as grpcurl would send it.
async fn reflect(
    addr: std::net::SocketAddr,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    answer.message_response.expect("an answer")
}

/// The file names (and their descriptors) reflection answers `request` with.
async fn reflected_files(
    addr: std::net::SocketAddr,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Vec<prost_types::FileDescriptorProto> {
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    match reflect(addr, request.clone()).await {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|raw| prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap())
            .collect(),
        other => panic!("{request:?} on {addr}: {other:?}"),
    }
}

/// The services a port's reflection lists (v1), as grpcurl would ask.
async fn reflected_services(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let answer = reflect(addr, MessageRequest::ListServices(String::new())).await;
    let MessageResponse::ListServicesResponse(list) = answer else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn each_port_reflects_only_its_own_service() {
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task = memberflow_tests::apps::spawn_task(memberflow_tests::apps::task_settings(
        &mut env,
        task::ConsistencyMode::NotReady,
        NOWHERE,
    ))
    .await;
    let plumbing = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for (addr, own) in [
        (auth.app.addr, "auth.v1.AuthService"),
        (task.app.addr, "task.v1.TaskService"),
    ] {
        let mut expected: Vec<String> = plumbing
            .iter()
            .chain([&own])
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(reflected_services(addr).await, expected);
    }
}

/// grpcurl resolves the `Any`s in `grpc-status-details-bin` through the
/// server's reflection; a type it cannot resolve prints as "not recognized"
/// and base64. Every detail type the services send, and Status itself,
/// resolves on both ports under its canonical file, with its imports.
#[tokio::test]
async fn reflection_resolves_every_error_detail_type() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task = memberflow_tests::apps::spawn_task(memberflow_tests::apps::task_settings(
        &mut env,
        task::ConsistencyMode::NotReady,
        NOWHERE,
    ))
    .await;
    for addr in [auth.app.addr, task.app.addr] {
        for (symbol, file, import) in [
            (
                "google.rpc.BadRequest",
                "google/rpc/error_details.proto",
                "google/protobuf/duration.proto",
            ),
            (
                "google.rpc.ErrorInfo",
                "google/rpc/error_details.proto",
                "google/protobuf/duration.proto",
            ),
            (
                "google.rpc.RetryInfo",
                "google/rpc/error_details.proto",
                "google/protobuf/duration.proto",
            ),
            (
                "google.rpc.Status",
                "google/rpc/status.proto",
                "google/protobuf/any.proto",
            ),
        ] {
            let files =
                reflected_files(addr, MessageRequest::FileContainingSymbol(symbol.into())).await;
            assert_eq!(files[0].name(), file, "{symbol} on {addr}");
            assert_eq!(files[0].dependency, [import], "{symbol} on {addr}");
            let imported =
                reflected_files(addr, MessageRequest::FileByFilename(import.into())).await;
            assert_eq!(imported[0].name(), import, "{import} on {addr}");
        }
    }
}

#[tokio::test]
async fn an_update_that_changes_nothing_keeps_the_version_and_emits_nothing() {
    let mut env = TestEnv::new();
    let queue = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    auth.client
        .sign_up(signup("same@example.com"))
        .await
        .unwrap();
    queue.take(1, WAIT).await;
    let token = log_in(&mut auth.client, "same@example.com").await;
    let req = bearer(
        pb::UpdateProfileRequest {
            nickname: Some("Ann".into()),
            region: Some("Asia/Seoul".into()),
        },
        &token,
    );
    let same = auth.client.update_profile(req).await.unwrap().into_inner();
    assert_eq!(same.member.unwrap().version, 1, "no new version");
    // A real change after it is version 2: the no-op emitted nothing before it.
    let req = bearer(
        pb::UpdateProfileRequest {
            nickname: Some("Anna".into()),
            region: None,
        },
        &token,
    );
    let changed = auth.client.update_profile(req).await.unwrap().into_inner();
    assert_eq!(changed.member.unwrap().version, 2);
    let next = queue.take(1, WAIT).await;
    let event = pb::MemberChanged::decode(next[0].delivery.data.as_slice()).unwrap();
    assert_eq!((event.version, event.nickname.as_str()), (2, "Anna"));
    let pool = env.pool("auth").await;
    wait_outbox_empty(&pool).await;
    assert_eq!(queue.depth().await, 0, "exactly one event after the signup");
}
