//! The alerting rules compose's Prometheus loads (deploy/prometheus): they
//! pass their promtool tests (each alert fired by one synthetic series and
//! not by another), the config loads them, and they query only metrics the
//! services export. promtool comes with Debian's `prometheus` package; a
//! missing one fails these tests rather than skipping them.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use memberflow_tests::{
    apps::{auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
    http,
};
use task::ConsistencyMode;

fn prometheus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus"))
}

/// Runs `promtool args…` in deploy/prometheus and returns its output,
/// failing the test when it fails.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool runs (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn every_alert_fires_on_its_series_and_not_on_the_other() {
    promtool(&["test", "rules", "alerts.test.yml"]);
    // Every alert has a test, each with a firing case.
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(prometheus_dir().join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("  - name: ")
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{alert} has no case that fires it"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert} has no case that must not fire it"
        );
    }
}

#[test]
fn compose_prometheus_loads_the_rules() {
    let checked = promtool(&["check", "config", "prometheus.yml"]);
    assert!(checked.contains("1 rule files found"), "{checked}");
}

#[tokio::test]
async fn the_rules_query_only_metrics_the_services_export() {
    let mut env = TestEnv::new();
    let auth = spawn_auth(auth_settings(&mut env)).await;
    let task = spawn_task(task_settings(
        &mut env,
        ConsistencyMode::NotReady,
        &format!("http://{}", auth.app.addr),
    ))
    .await;
    let mut exported = String::new();
    for addr in [auth.metrics_addr, task.metrics_addr] {
        exported.push_str(&http::get(addr, "/metrics").await.unwrap().1);
    }
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let queried: BTreeSet<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("memberflow_"))
        .collect();
    assert!(queried.len() >= 8, "{queried:?}");
    for name in queried {
        assert!(
            memberflow_tests::prometheus::is_exported(&exported, name),
            "an alert queries {name}, which no service exports"
        );
    }
}
