use clap::Parser;
use memberflow_common::{settings::ConfigArg, settings::ServiceSettings as _, shutdown, telemetry};
use task::{Application, Settings};

/// The task service: the member replica and members' tasks.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(telemetry::DEFAULT_FILTER);
    let settings = Settings::load(&args.config.source()?)?;
    let app = Application::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), "task listening");
    app.run_until_stopped(shutdown::on_os_signal()).await
}
