//! One service as a child process, for the tests that must signal it (a
//! paused process, SIGSTOP, keeps its sockets open; no thread can fake that):
//! `mf-service auth|task`, configured by `AUTH__*` / `TASK__*` variables only.
//! It prints its gRPC and admin addresses on the first line of stdout, then
//! serves until SIGTERM, as the real binaries do.
use memberflow_runtime::{
    settings::{ServiceSettings, Source},
    shutdown,
    startup::Service,
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
    app.run_until_stopped(shutdown::on_os_signal()).await
}
