use clap::Parser;
use memberflow_common::settings::{ConfigArg, ServiceSettings as _};

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
    auth::serve(auth::Settings::load(&args.config.source()?)?).await
}
