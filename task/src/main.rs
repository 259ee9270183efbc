use memberflow_common::{settings::Source, shutdown, telemetry};
use task::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("info,sqlx=warn,lapin=warn");
    let settings = Settings::load(&Source::from_args("TASK", "config/task.toml"))?;
    let app = Application::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), "task listening");
    app.run_until_stopped(shutdown::on_os_signal()).await
}
