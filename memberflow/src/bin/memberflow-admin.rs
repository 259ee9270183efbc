//! The operator's command: inspect and repair what the services could not
//! settle by themselves. It reads the same layered config (`--config DIR`,
//! `AUTH__*` / `TASK__*`) as the services, does one thing per call, prints
//! what it changed, and exits non-zero when it could not.
//!
//! ```text
//! memberflow-admin dlq list
//! memberflow-admin dlq replay [--id MESSAGE_ID]...
//! ```
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use memberflow_common::{amqp, settings::ConfigArg};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(version, about = "Inspect and repair memberflow's queues and replica")]
struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// task's dead-letter queue (`task.member-events.dlq`).
    #[command(subcommand)]
    Dlq(Dlq),
}

#[derive(Subcommand)]
enum Dlq {
    /// One line per message: message id, routing key, member id, version, reason.
    List,
    /// Put messages back on task's queue (all, or those named); idempotent.
    Replay {
        /// A message id from `dlq list`; repeat for several. Default: all.
        #[arg(long = "id", value_name = "MESSAGE_ID")]
        ids: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memberflow-admin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let source = args.config.source()?;
    match args.command {
        Command::Dlq(cmd) => {
            let settings = task::Settings::load(&source)?;
            let url = settings.amqp.url.expose_secret();
            let conn = amqp::connect(url, "memberflow-admin")
                .await
                .with_context(|| {
                    format!("RabbitMQ is not reachable at {}", amqp::redact_url(url))
                })?;
            match cmd {
                Dlq::List => {
                    let dead = task::dlq::list(&conn).await?;
                    for d in &dead {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            d.message_id, d.routing_key, d.member_id, d.version, d.reason
                        );
                    }
                    eprintln!(
                        "{} message(s) in {}",
                        dead.len(),
                        task::consumer::DEAD_LETTER_QUEUE
                    );
                }
                Dlq::Replay { ids } => {
                    let report = task::dlq::replay(&conn, &ids).await?;
                    for id in &report.replayed {
                        println!("replayed {id}");
                    }
                    eprintln!(
                        "{} replayed to {}, {} left in the DLQ",
                        report.replayed.len(),
                        task::consumer::QUEUE,
                        report.kept
                    );
                    for id in ids.iter().filter(|i| !report.replayed.contains(i)) {
                        // Idempotent: a second replay of the same id is a no-op.
                        eprintln!("{id}: not in the DLQ (already replayed?)");
                    }
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
    Ok(())
}
