//! A three-node RabbitMQ cluster on this machine, from the Debian
//! `rabbitmq-server` already installed, beside (never instead of) the
//! machine's own broker on 5672.
//!
//! Each node runs as the `rabbitmq` user (so all share its Erlang cookie),
//! with its own node name (`mfN@localhost`), AMQP port, distribution port,
//! config file (pinning its listener; the system-wide `rabbitmq.conf` pins
//! 5672), an empty plugins file (no management port clash), data and log
//! directories. Nodes 2 and 3 join node 1. Dropping the cluster stops every
//! node and removes its directories.
use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use crate::eventually;

/// First AMQP port; node N listens on `AMQP_BASE + N`.
const AMQP_BASE: u16 = 5680;
/// First distribution port; node N uses `DIST_BASE + N`.
const DIST_BASE: u16 = 25680;

/// A running three-node cluster.
pub struct RabbitCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
}

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs")
}

/// `rabbitmqctl -n node args…` (the Debian wrapper runs it as `rabbitmq`).
pub fn ctl(node: &str, args: &[&str]) -> Output {
    Command::new("rabbitmqctl")
        .args(["-q", "-n", node])
        .args(args)
        .output()
        .expect("rabbitmqctl runs")
}

fn ctl_ok(node: &str, args: &[&str]) {
    let out = ctl(node, args);
    assert!(
        out.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills any process still running as broker node `name` (found by its
/// `RABBITMQ_NODENAME`), for nodes a killed test run left behind.
fn kill_leftover(name: &str) {
    let wanted = format!("RABBITMQ_NODENAME={name}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl RabbitCluster {
    /// Starts three nodes and joins them; about 30 s.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("mf-cluster-{}", std::process::id()));
        let nodes: Vec<Node> = (1..=3)
            .map(|n| Node {
                name: format!("mf{n}@localhost"),
                amqp_port: AMQP_BASE + n,
            })
            .collect();
        // A node left over by a killed run would hold the name and the
        // ports; one that does not answer `stop` (its directory already
        // removed, or hung) is killed.
        for node in &nodes {
            let _ = ctl(&node.name, &["stop"]);
            kill_leftover(&node.name);
        }
        let cluster = Self { dir, nodes };
        for (i, node) in cluster.nodes.iter().enumerate() {
            cluster.launch(node, DIST_BASE + i as u16 + 1);
        }
        for node in &cluster.nodes {
            cluster.wait_running(&node.name).await;
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            ctl_ok(&node.name, &["stop_app"]);
            ctl_ok(&node.name, &["join_cluster", &first]);
            ctl_ok(&node.name, &["start_app"]);
        }
        for node in &cluster.nodes {
            cluster.wait_running(&node.name).await;
        }
        cluster
    }

    fn launch(&self, node: &Node, dist_port: u16) {
        let dir = self.dir.join(&node.name);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{}\n", node.amqp_port),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let status = sh(&format!(
            "chown -R rabbitmq:rabbitmq {}",
            self.dir.display()
        ));
        assert!(status.status.success(), "chown: {status:?}");
        let d = dir.display();
        let env = format!(
            "RABBITMQ_NODENAME={name} RABBITMQ_NODE_PORT={port} RABBITMQ_DIST_PORT={dist_port} \
             RABBITMQ_CONFIG_FILE={d}/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins \
             RABBITMQ_MNESIA_BASE={d}/mnesia RABBITMQ_LOG_BASE={d}/log RABBITMQ_PID_FILE={d}/pid",
            name = node.name,
            port = node.amqp_port,
        );
        let out = sh(&format!(
            "su rabbitmq -s /bin/sh -c 'env {env} /usr/lib/rabbitmq/bin/rabbitmq-server -detached'"
        ));
        assert!(out.status.success(), "starting {}: {out:?}", node.name);
    }

    async fn wait_running(&self, node: &str) {
        eventually(
            &format!("{node} running"),
            Duration::from_secs(90),
            || async move {
                let node = node.to_owned();
                let ok = tokio::task::spawn_blocking(move || {
                    Command::new("rabbitmq-diagnostics")
                        .args(["-q", "-n", &node, "check_running"])
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
                .await
                .unwrap();
                ok.then_some(())
            },
        )
        .await;
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// AMQP URLs of every node for `vhost`.
    pub fn urls(&self, vhost: &str) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", n.amqp_port))
            .collect()
    }

    /// Creates `vhost` (cluster-wide) with permissions for `guest`.
    pub fn add_vhost(&self, vhost: &str) {
        let first = &self.nodes[0].name;
        ctl_ok(first, &["add_vhost", vhost]);
        ctl_ok(
            first,
            &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        );
    }

    /// The node leading quorum queue `queue` in `vhost`, asked of a running node.
    pub fn leader(&self, vhost: &str, queue: &str) -> Option<String> {
        self.nodes.iter().find_map(|n| {
            let out = ctl(&n.name, &["list_queues", "-p", vhost, "name", "leader"]);
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(queue)).then(|| cols.next().map(str::to_owned))?
            })
        })
    }

    /// Stops the RabbitMQ application on `node` (the Erlang VM stays).
    pub fn stop_app(&self, node: &str) {
        ctl_ok(node, &["stop_app"]);
    }

    /// Starts it again and waits until it runs.
    pub async fn start_app(&self, node: &str) {
        ctl_ok(node, &["start_app"]);
        self.wait_running(node).await;
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = ctl(&node.name, &["stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
