use auth::{Application, Settings};
use clap::Parser;
use memberflow_common::{settings::ConfigArg, settings::ServiceSettings as _, shutdown, telemetry};

/// The auth service: members, access tokens and the outbox relay.
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
    tracing::info!(addr = %app.local_addr(), "auth listening");
    app.run_until_stopped(shutdown::on_os_signal()).await
}
