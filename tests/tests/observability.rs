//! Metrics as an operator sees them: a real Prometheus scrapes both
//! services while members sign up and create tasks, and its query API must
//! show the figures moving; the Grafana dashboard only queries metrics the
//! services really export.
use memberflow_tests::system::spawn_system;
use std::{collections::BTreeSet, time::Duration};

use memberflow_contract::proto::auth::v1 as auth_pb;
use memberflow_tests::{env::TestEnv, eventually, http, prometheus::Prometheus};
use task::ConsistencyMode;

const WAIT: Duration = Duration::from_secs(60);
const MEMBERS: usize = 5;

#[tokio::test]
async fn prometheus_sees_the_pipeline_move() {
    let mut env = TestEnv::new();
    let (mut auth, task) = spawn_system(&mut env, ConsistencyMode::NotReady).await;
    let prometheus =
        Prometheus::start(&[("auth", auth.metrics_addr), ("task", task.metrics_addr)]).await;

    for i in 0..MEMBERS {
        let (_, token) = auth
            .member(auth_pb::SignUpRequest {
                nickname: format!("p{i}"),
                region: "Europe/Paris".into(),
                ..memberflow_tests::fixtures::signup(&format!("p{i}@example.com"))
            })
            .await;
        task.client(&token)
            .create_task(memberflow_tests::fixtures::create_task("t"))
            .await
            .unwrap();
    }

    let n = MEMBERS as f64;
    let wait_for = |query: &'static str, expect: f64| {
        let prometheus = &prometheus;
        async move {
            eventually(&format!("{query} == {expect}"), WAIT, || async move {
                (prometheus.sum(query).await == Some(expect)).then_some(())
            })
            .await
        }
    };
    wait_for("memberflow_relay_published_total{job=\"auth\"}", n).await;
    wait_for(
        "grpc_server_handled_total{job=\"task\",grpc_method=\"CreateTask\",grpc_code=\"OK\"}",
        n,
    )
    .await;
    wait_for(
        "memberflow_consumer_events_total{job=\"task\",outcome=\"applied\"}",
        n,
    )
    .await;
    // One lag observation per applied event.
    wait_for("memberflow_replication_lag_seconds_count{job=\"task\"}", n).await;
    wait_for("memberflow_relay_leader{job=\"auth\"}", 1.0).await;
    wait_for("memberflow_consumer_attached{job=\"task\"}", 1.0).await;
    wait_for("memberflow_outbox_pending{job=\"auth\"}", 0.0).await;
    // The retries the client made are the USER_NOT_READY answers counted.
    let not_ready = prometheus
        .sum("grpc_server_handled_total{job=\"task\",grpc_method=\"CreateTask\",grpc_code=\"Unavailable\"}")
        .await
        .unwrap_or(0.0);
    wait_for_value(
        &prometheus,
        "memberflow_user_not_ready_total{job=\"task\"}",
        not_ready,
    )
    .await;

    // Liveness and readiness over HTTP, apart from gRPC health.
    for addr in [auth.metrics_addr, task.metrics_addr] {
        assert_eq!(http::get(addr, "/livez").await.unwrap().0, 200);
        assert_eq!(http::get(addr, "/readyz").await.unwrap().0, 200);
        assert_eq!(http::get(addr, "/nope").await.unwrap().0, 404);
    }

    // Every metric the Grafana dashboard queries is one the services export.
    let mut exported = String::new();
    for addr in [auth.metrics_addr, task.metrics_addr] {
        exported.push_str(&http::get(addr, "/metrics").await.unwrap().1);
    }
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{exported}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/dashboards/memberflow.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        assert!(
            memberflow_tests::prometheus::is_exported(&exported, name),
            "the dashboard queries {name}, which no service exports"
        );
    }
}

async fn wait_for_value(prometheus: &Prometheus, query: &str, expect: f64) {
    eventually(&format!("{query} == {expect}"), WAIT, || async move {
        (prometheus.sum(query).await.unwrap_or(0.0) == expect).then_some(())
    })
    .await;
}

/// The metric names in a PromQL expression: identifiers that name ours.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("memberflow_") || w.starts_with("grpc_server_"))
        .map(str::to_owned)
        .collect()
}
