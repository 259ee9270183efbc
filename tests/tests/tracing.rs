//! One trace from SignUp to the replica: a client's `traceparent` is
//! continued by auth's RPC span, rides the outbox row, is published as an
//! AMQP header by the relay's publish span, and is continued by task's apply
//! span. Spans go to an in-process exporter (this binary's own subscriber).
use std::time::Duration;

use memberflow_contract::proto::auth::v1 as auth_pb;
use memberflow_tests::{
    amqp::TestQueue,
    apps::{auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
    eventually,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use task::ConsistencyMode;
use tonic::Request;
use tracing_subscriber::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn one_trace_covers_signup_publish_and_apply() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let mut env = TestEnv::new();
    let observer = TestQueue::bind(&env.amqp_url(), "observer").await;
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    let _task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &format!("http://{}", auth.app.addr),
    ))
    .await;

    let mut req = Request::new(auth_pb::SignUpRequest {
        email: "traced@example.com".into(),
        password: "correct horse battery".into(),
        nickname: "Traced".into(),
        region: "Asia/Seoul".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let member = auth
        .client
        .sign_up(req)
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();

    // The AMQP message carries the client's trace.
    let published = observer.take(1, WAIT).await;
    let headers = published[0].delivery.properties.headers().clone().unwrap();
    let traceparent = match headers.inner().get("traceparent") {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no traceparent header: {other:?}"),
    };
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );

    // The replica is written, and its apply span is in the same trace as the
    // SignUp RPC and the relay's publish.
    let task_db = env.pool("task").await;
    eventually("the member replicated", WAIT, || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM members WHERE id = $1::uuid")
            .bind(&member.id)
            .fetch_optional(&task_db)
            .await
            .unwrap()
    })
    .await;
    let names = eventually("the three spans exported", WAIT, || {
        let exporter = exporter.clone();
        async move {
            let names: Vec<String> = exporter
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
                .map(|s| s.name.to_string())
                .collect();
            let has = |n: &str| names.iter().any(|x| x == n);
            (has("auth.v1.AuthService/SignUp")
                && has("publish member.events")
                && has("process member.events"))
            .then_some(names)
        }
    })
    .await;
    assert!(
        names.iter().any(|n| n == "SignUp"),
        "the handler's span too: {names:?}"
    );
}
