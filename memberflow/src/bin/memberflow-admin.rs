//! The operator's command: inspect and repair what the services could not
//! settle by themselves. It reads the same layered config (`--config DIR`,
//! `AUTH__*` / `TASK__*`) as the services, does one thing per call, prints
//! what it changed, and exits non-zero when it could not.
//!
//! ```text
//! memberflow-admin resync [--member ID]...
//! memberflow-admin dlq list
//! memberflow-admin dlq replay [--id MESSAGE_ID]...
//! memberflow-admin dlq drop --member ID
//! memberflow-admin outbox [--service auth|task] parked
//! memberflow-admin outbox [--service auth|task] replay [--id N]...
//! memberflow-admin erasures [--pending]
//! memberflow-admin erasures retry --member ID
//! memberflow-admin keygen
//! ```
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use memberflow_runtime::amqp;
use memberflow_runtime::settings::ConfigArg;
use memberflow_runtime::settings::ServiceSettings as _;
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
    /// Bring task's replica up to auth: every member (resuming an interrupted
    /// run), or the members named. Safe while events flow.
    Resync {
        /// A member id; repeat for several. Default: every member.
        #[arg(long = "member", value_name = "ID")]
        members: Vec<uuid::Uuid>,
    },
    /// task's dead-letter queue (`task.member-events.dlq`).
    #[command(subcommand)]
    Dlq(Dlq),
    /// A service's outbox: rows the relay parked.
    Outbox(OutboxArgs),
    /// The erasure saga: one line per deleted account, with when it was
    /// requested, each expected service's receipt time, and its state.
    Erasures(ErasuresArgs),
    /// Make the member with this email an admin who is not suspended (the
    /// first admin, or the way back in when none is left). Ends every
    /// session of theirs, as any permission change does. Database access to
    /// auth is the credential.
    GrantAdmin {
        #[arg(long)]
        email: String,
    },
    /// Print a new Ed25519 token signing key: the private key (PKCS#8 PEM,
    /// for `auth.token.signing_key`) on stdout; its key id and public key
    /// (for `token.public_keys` during a rotation) on stderr.
    Keygen,
}

#[derive(clap::Args)]
struct OutboxArgs {
    /// Whose outbox: auth's (member events) or task's (erasure receipts).
    #[arg(long, value_enum, default_value_t = Service::Auth)]
    service: Service,
    #[command(subcommand)]
    command: Outbox,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Service {
    Auth,
    Task,
}

#[derive(clap::Args)]
struct ErasuresArgs {
    /// Only the erasures still waiting for a receipt.
    #[arg(long)]
    pending: bool,
    #[command(subcommand)]
    command: Option<Erasures>,
}

#[derive(Subcommand)]
enum Erasures {
    /// Publish a member's deletion again, so that every replica sends its
    /// receipt again (one that already erased the member does).
    Retry {
        /// The deleted member's id.
        #[arg(long = "member", value_name = "ID")]
        member: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum Outbox {
    /// One line per parked row: id, event id, routing key, member id, version, attempts, error.
    Parked,
    /// Put parked rows back in the outbox (all, or those named, with the
    /// rest of their member's parked rows); the relay publishes them.
    Replay {
        /// An id from `outbox parked`; repeat for several. Default: all.
        #[arg(long = "id", value_name = "N")]
        ids: Vec<i64>,
    },
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
    /// Remove every message of a member (after their account was deleted:
    /// the messages carry their nickname); the rest stay, in order.
    Drop {
        /// The deleted member's id.
        #[arg(long = "member", value_name = "ID")]
        member: uuid::Uuid,
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
    if let Command::Keygen = args.command {
        let (signer, pem) = memberflow_contract::token::Signer::generate();
        print!("{pem}");
        eprintln!("kid: {}", signer.public_key().kid());
        eprint!("{}", signer.public_key().to_pem());
        return Ok(());
    }
    let source = args.config.source()?;
    match args.command {
        Command::Keygen => unreachable!("handled above"),
        Command::Resync { members } => {
            let settings = task::Settings::load(&source)?;
            let pool = connect_db(&settings.database).await?;
            task::startup::MIGRATOR.run(&pool).await?;
            let auth = task::auth_client::AuthClient::new(&settings.auth)?;
            let scope = if members.is_empty() {
                task::resync::Scope::All
            } else {
                task::resync::Scope::Members(members)
            };
            let mut show = Progress::new();
            let done = task::resync::resync(&pool, &auth, scope, |p| show.update(p))
                .await
                .with_context(|| {
                    format!(
                        "resync from auth at {} failed; run it again to resume",
                        settings.auth.addr
                    )
                })?;
            show.finish();
            let n = |k| done.repaired.get(k);
            use task::repair::Kind;
            println!(
                "resync done: {} member(s) read from auth, {} replica row(s) changed \
                 ({} missing, {} behind, {} ahead of auth, {} in conflict with auth)",
                done.read,
                done.changed,
                n(Kind::Missing),
                n(Kind::Behind),
                n(Kind::Ahead),
                n(Kind::Conflict)
            );
        }
        Command::Dlq(cmd) => {
            let settings = task::Settings::load(&source)?;
            let conn = settings
                .amqp
                .nodes()
                .connect("memberflow-admin")
                .await
                .with_context(|| {
                    let url = settings.amqp.url.expose_secret();
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
                        memberflow_contract::topology::DEAD_LETTER_QUEUE
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
                        memberflow_contract::topology::QUEUE,
                        report.kept
                    );
                    for id in ids.iter().filter(|i| !report.replayed.contains(i)) {
                        // Idempotent: a second replay of the same id is a no-op.
                        eprintln!("{id}: not in the DLQ (already replayed?)");
                    }
                }
                Dlq::Drop { member } => {
                    let report = task::dlq::drop_member(&conn, member).await?;
                    for id in &report.dropped {
                        println!("dropped {id}");
                    }
                    eprintln!(
                        "{} message(s) of member {member} dropped, {} left in the DLQ",
                        report.dropped.len(),
                        report.kept
                    );
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Command::Outbox(OutboxArgs { service, command }) => {
            let (pool, spec) = match service {
                Service::Auth => {
                    let settings = auth::Settings::load(&source)?;
                    (connect_db(&settings.database).await?, auth::outbox::SPEC)
                }
                Service::Task => {
                    let settings = task::Settings::load(&source)?;
                    (connect_db(&settings.database).await?, task::erasure::SPEC)
                }
            };
            match command {
                Outbox::Parked => {
                    let rows = memberflow_outbox::parked::list(&pool, &spec).await?;
                    for r in &rows {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            r.id,
                            r.event_id,
                            r.routing_key,
                            r.key,
                            r.version,
                            r.attempts,
                            r.last_error
                        );
                    }
                    eprintln!("{} parked row(s)", rows.len());
                }
                Outbox::Replay { ids } => {
                    let rows = memberflow_outbox::parked::replay(&pool, &spec, &ids).await?;
                    for r in &rows {
                        println!(
                            "replayed {} ({} v{} of key {})",
                            r.id, r.routing_key, r.version, r.key
                        );
                    }
                    eprintln!("{} row(s) back in the outbox", rows.len());
                    for id in ids.iter().filter(|i| !rows.iter().any(|r| r.id == **i)) {
                        eprintln!("{id}: not parked (already replayed?)");
                    }
                }
            }
        }
        Command::GrantAdmin { email } => {
            let settings = auth::Settings::load(&source)?;
            let pool = connect_db(&settings.database).await?;
            let email = auth::domain::Email::parse(&email)
                .map_err(|why| anyhow::anyhow!("--email {why}"))?;
            let outbox =
                memberflow_outbox::write::Outbox::without_wake(pool.clone(), &auth::outbox::SPEC);
            let Some((member, changed)) = auth::permissions::grant_admin(&outbox, &email).await?
            else {
                anyhow::bail!("no member has the email {}", email.as_str());
            };
            println!("{}\tadmin\tversion {}", member.id, member.version);
            if changed {
                wake_auth_relay(&pool).await;
                eprintln!("{} is an admin; their sessions ended", email.as_str());
            } else {
                eprintln!(
                    "{} was already an active admin; nothing changed",
                    email.as_str()
                );
            }
        }
        Command::Erasures(ErasuresArgs { pending, command }) => {
            let settings = auth::Settings::load(&source)?;
            let pool = connect_db(&settings.database).await?;
            let deadline = std::time::Duration::from_secs(settings.erasure.deadline_secs);
            match command {
                None => {
                    let all = auth::erasure::list(&pool, pending).await?;
                    let now = chrono::Utc::now();
                    for e in &all {
                        println!("{}", e.line(now, deadline));
                    }
                    eprintln!("{} erasure(s)", all.len());
                }
                Some(Erasures::Retry { member }) => {
                    let outbox = memberflow_outbox::write::Outbox::without_wake(
                        pool.clone(),
                        &auth::outbox::SPEC,
                    );
                    let Some(e) = auth::erasure::retry(&outbox, member).await? else {
                        anyhow::bail!("no erasure on record for member {member}");
                    };
                    wake_auth_relay(&pool).await;
                    println!("{}", e.line(chrono::Utc::now(), deadline));
                    eprintln!("republished the deletion of member {member}");
                }
            }
        }
    }
    Ok(())
}

/// Wakes auth's relay after a committed outbox row. The row is committed; a
/// lost wake-up only delays it to the relay's next poll.
async fn wake_auth_relay(pool: &sqlx::PgPool) {
    if let Err(e) = memberflow_outbox::wake::notify(pool, auth::outbox::SPEC.channel).await {
        eprintln!("could not wake the relay ({e}); it publishes at its next poll");
    }
}

/// A connection pool to `db`, failing fast with a clear message.
async fn connect_db(db: &memberflow_runtime::db::DatabaseSettings) -> anyhow::Result<sqlx::PgPool> {
    let name = db.database_name()?;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(db.connect_options()?)
        .await
        .with_context(|| format!("PostgreSQL database {name:?} is not reachable"))
}

/// Resync progress: a bar on a terminal, a plain line every 10,000 members in
/// a pipe or a log.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: u64,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} members  {per_sec}  eta {eta}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self { bar, last_line: 0 }
    }

    fn update(&mut self, p: task::resync::Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total.unwrap_or(p.read).max(p.read));
                bar.set_position(p.read);
            }
            None if p.read >= self.last_line + 10_000 => {
                self.last_line = p.read;
                eprintln!(
                    "resync: {} of {} members read, {} changed",
                    p.read,
                    p.total.map_or("?".to_owned(), |t| t.to_string()),
                    p.changed
                );
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
