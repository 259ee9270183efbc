//! One service as a child process, for the tests that must signal it (a
//! paused process, SIGSTOP, keeps its sockets open; no thread can fake that):
//! `mf-service auth|task`, configured by `AUTH__*` / `TASK__*` variables only.
//! It prints its gRPC and admin addresses on the first line of stdout, then
//! serves until SIGTERM, as the real binaries do.
//!
//! `MF_TEST_WORKER=panic|return` adds a worker, `test-worker`, that waits
//! for SIGUSR1 and then panics or returns: a worker ending while the
//! service runs, for the supervision tests.
use memberflow_lifecycle::Workers;
use memberflow_runtime::{
    settings::{ServiceSettings, Source},
    shutdown,
    startup::{self, Service},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_stderr("info", &Default::default());
    match std::env::args().nth(1).as_deref() {
        Some("auth") => serve::<auth::Application>().await,
        Some("task") => serve::<task::Application>().await,
        other => anyhow::bail!("usage: mf-service auth|task (got {other:?})"),
    }
}

async fn serve<S: Service>() -> anyhow::Result<()> {
    let app = S::build(S::Settings::load(&Source::env_only())?).await?;
    println!("{} {}", app.local_addr(), app.metrics_addr());
    let mut extra = Workers::default();
    if let Ok(how) = std::env::var("MF_TEST_WORKER") {
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        extra.add("test-worker", async move {
            usr1.recv().await;
            if how == "panic" {
                panic!("the test worker was told to panic");
            }
        });
    }
    startup::run(app, shutdown::on_os_signal(), extra).await
}
