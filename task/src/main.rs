use clap::Parser;
use memberflow_common::settings::{ConfigArg, ServiceSettings as _};

/// The task service: the member replica and members’ tasks.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    task::serve(task::Settings::load(&args.config.source()?)?).await
}
