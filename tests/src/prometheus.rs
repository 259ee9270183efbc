//! A real Prometheus server (Debian package `prometheus`) scraping the
//! services under test every second, and its HTTP query API.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{eventually, http};

/// A running Prometheus; stopped and its data removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts one scraping `targets` (job name, admin address) every second.
    pub async fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let dir = std::env::temp_dir().join(format!("mf-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (apt-get install prometheus)");
        eventually("Prometheus ready", Duration::from_secs(30), || async move {
            matches!(http::get(addr, "/-/ready").await, Ok((200, _))).then_some(())
        })
        .await;
        Self { child, dir, addr }
    }

    /// The sum of every series `query` returns now, or `None` when it
    /// returns nothing.
    pub async fn sum(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", http::encode(query));
        let (status, body) = http::get(self.addr, &path).await.ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        if result.is_empty() {
            return None;
        }
        Some(
            result
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the exposition `exported` (every service's `/metrics` text) has
/// metric `name`: a sample line, or its family's TYPE line when it has no
/// sample yet (OpenMetrics names a counter's family without `_total`). For
/// checks that what a dashboard or an alert queries is really exported.
pub fn is_exported(exported: &str, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    exported.lines().any(|l| {
        l.starts_with(&format!("{name} "))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("# TYPE {family} "))
    })
}
