//! Runs the whole system without Docker, against a local PostgreSQL and
//! RabbitMQ: `cargo run -p memberflow`.
//!
//! It checks both are reachable (and says what to do if not), then starts
//! auth and task as child processes of itself with prefixed logs. Ctrl-C or
//! SIGTERM stops both gracefully. `memberflow auth` / `memberflow task` run one
//! service in the foreground. Config: `config/` (or `--config DIR`) and
//! `AUTH__*` / `TASK__*` environment variables.
//!
//! The launcher is for a developer's machine: unless told otherwise it runs
//! both services in the `development` environment, where the repository's
//! dev secrets are accepted (with a warning). The service binaries on their
//! own default to `production`.
use std::{
    process::Stdio,
    sync::{Arc, Mutex},
};

use clap::{Parser, Subcommand};
use memberflow_runtime::amqp;
use memberflow_runtime::settings::ConfigArg;
use memberflow_runtime::settings::ServiceSettings as _;
use memberflow_runtime::shutdown;
use secrecy::ExposeSecret;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs auth and task together (or one of them) against a local PostgreSQL
/// and RabbitMQ.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    only: Option<Only>,
}

#[derive(Subcommand, Clone, Copy)]
enum Only {
    /// Run the auth service alone, in the foreground.
    Auth,
    /// Run the task service alone, in the foreground.
    Task,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = args
        .config
        .source()?
        .with_default_var("AUTH__ENVIRONMENT", "development")
        .with_default_var("TASK__ENVIRONMENT", "development");
    match args.only {
        Some(Only::Auth) => return auth::serve(auth::Settings::load(&source)?).await,
        Some(Only::Task) => return task::serve(task::Settings::load(&source)?).await,
        None => {}
    }
    let auth_settings = auth::Settings::load(&source)?;
    let task_settings = task::Settings::load(&source)?;
    preflight(&auth_settings, &task_settings).await?;

    let me = std::env::current_exe()?;
    let config_dir = source.dir.clone().expect("located");
    let mut children = Vec::new();
    // Each child's last `Error: ...` line (what its `main` returned: the
    // worker that ended, and how), and its output readers, to say why it
    // stopped once they have read everything.
    let mut why = Vec::new();
    for service in ["auth", "task"] {
        let said: Arc<Mutex<Option<String>>> = Arc::default();
        let mut readers = Vec::new();
        let mut child = tokio::process::Command::new(&me)
            .arg("--config")
            .arg(&config_dir)
            .arg(service)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let said = said.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(error) = line.strip_prefix("Error: ") {
                        *said.lock().expect("not poisoned") = Some(error.to_owned());
                    }
                    println!("[{service}] {line}");
                }
            }));
        }
        children.push((service, child));
        why.push((said, readers));
    }
    println!(
        "memberflow: auth on {}, task on {} (consistency.mode = {:?}); Ctrl-C stops both",
        auth_settings.base.server.addr,
        task_settings.base.server.addr,
        task_settings.consistency.mode
    );

    let stop = shutdown::on_os_signal();
    let first_exit = async {
        let (a, t) = children.split_at_mut(1);
        tokio::select! {
            s = a[0].1.wait() => (0, s),
            s = t[0].1.wait() => (1, s),
        }
    };
    // Why the launcher stops, if not by Ctrl-C/SIGTERM: it exits non-zero too.
    let mut failed: Option<String> = None;
    tokio::select! {
        () = stop.cancelled() => {}
        (i, status) = first_exit => {
            let (said, readers) = std::mem::take(&mut why[i]);
            // Its last lines, the error included, are still being read.
            for reader in readers {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
            }
            let service = children[i].0;
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let why = match said.lock().expect("not poisoned").take() {
                Some(error) => format!("{service} exited ({status}): {error}"),
                None => format!("{service} exited ({status})"),
            };
            eprintln!("memberflow: {why}; stopping the other");
            failed = Some(why);
        }
    }
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            // Graceful: SIGTERM lets each service drain and close cleanly.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for (service, mut child) in children {
        let status = child.wait().await?;
        println!("memberflow: {service} stopped ({status})");
    }
    match failed {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// Fails early, with what to do, when PostgreSQL or RabbitMQ is not there.
async fn preflight(a: &auth::Settings, t: &task::Settings) -> anyhow::Result<()> {
    for (key, db) in [("auth", &a.database), ("task", &t.database)] {
        let opts = db
            .connect_options()
            .map_err(|e| anyhow::anyhow!("{key}.database.url: {e}"))?
            .database("postgres");
        if let Err(e) = sqlx::PgConnection::connect_with(&opts).await {
            anyhow::bail!(
                "PostgreSQL is not reachable at {}:{} ({key}.database.url): {e}\n  Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n  or with Docker: docker compose up -d postgres\n  or point {}__DATABASE__URL at yours.",
                opts.get_host(),
                opts.get_port(),
                key.to_uppercase()
            );
        }
    }
    for (key, url) in [
        ("auth", a.amqp.url.expose_secret()),
        ("task", t.amqp.url.expose_secret()),
    ] {
        match amqp::connect(url, "memberflow-preflight").await {
            Ok(c) => {
                let _ = c.close(200, "preflight".into()).await;
            }
            Err(e) => anyhow::bail!(
                "RabbitMQ is not reachable at {} ({key}.amqp.url): {e}\n  Start it: rabbitmq-server -detached\n  or with Docker: docker compose up -d rabbitmq\n  or point {}__AMQP__URL at yours.",
                amqp::redact_url(url),
                key.to_uppercase()
            ),
        }
    }
    Ok(())
}
