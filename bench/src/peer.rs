//! The peer: memberflow-outbox beside oxide-outbox (the crates.io crates
//! `outbox-core` 0.6 and `outbox-postgres` 0.3), on the same machine in one
//! run. Each side gets its own fresh database and vhost, the same exchange
//! and quorum queue names in it, and the same ~200 B JSON bodies; each relay
//! runs alone in a child process (the bench binary re-executed as
//! `bench peer-relay ours|oxide`), so its CPU time is read from `/proc`.
//!
//! For each side, in this order: commit [`Plan::peer_drain`] events, start
//! the relay and time the drain; then, with the same relay, an open loop of
//! single-event commits at each offered rate, commit → delivered per event.
//! A plain lapin consumer records every delivery, so duplicates, losses and
//! events delivered out of commit order (per ordering key: [`KEYS`] keys,
//! a per-key sequence number in the body) are counted over all of them.
//!
//! Every use of either library's API is in the `ours_*` and `oxide_*`
//! functions at the top, so following an API change is a few lines.
//!
//! [`Plan::peer_drain`]: crate::Plan
use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Confirmation,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_runtime::{
    amqp,
    db::{DatabaseSettings, ensure_database},
    shutdown::CancellationToken,
};
use memberflow_tests::env::TestEnv;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    time::Instant,
};

use crate::{
    Lab,
    load::open_loop,
    report::{Figure, Measure},
    stats::{Latency, rate},
};

/// Both sides publish to this exchange, in their own vhost.
const EXCHANGE: &str = "peer.events";
/// The consumer's quorum queue, bound to [`EXCHANGE`] with `#`.
const QUEUE: &str = "peer.deliveries";
/// Every event's routing key (oxide-outbox: its event type).
const ROUTING_KEY: &str = "peer.event";
/// Ordering keys: event `i` of a run has key `i % KEYS`.
const KEYS: u32 = 100;
/// Padding that brings a body to about 200 B, as in FACTS.md's baselines.
const PAD: usize = 160;
/// Events per transaction when committing the drain's backlog.
const BACKLOG_TX: usize = 100;

// ---------------------------------------------------------------------------
// memberflow-outbox: every use of its API.
// ---------------------------------------------------------------------------

/// A `bigint` ordering key (the bench's key number), in the database's
/// `search_path`.
const OURS_SPEC: memberflow_outbox::OutboxSpec = memberflow_outbox::OutboxSpec {
    tables: memberflow_outbox::Tables::new::<i64>("stream_key"),
    key_header: "stream_key",
    exchange: EXCHANGE,
    channel: "peer_outbox",
    connection_name: "bench-peer-memberflow",
    consumers: "the bench's peer consumer",
};

/// The library's tables in `db`, and a writer whose commits wake the relay
/// in the other process (a NOTIFY from the notifier task, until `shutdown`).
async fn ours_setup(
    db: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<memberflow_outbox::write::Outbox<i64>> {
    use memberflow_outbox::{metrics::RelayMetrics, wake::RelayWake};
    OURS_SPEC.tables.migrator().run(db).await?;
    let wake = RelayWake::new(true, OURS_SPEC.channel);
    let failures =
        RelayMetrics::register(&memberflow_runtime::metrics::registry()).relay_wake_failures;
    tokio::spawn(
        wake.clone()
            .run_notifier(db.clone(), failures, shutdown.clone()),
    );
    Ok(memberflow_outbox::write::Outbox::new(
        db.clone(),
        wake,
        &OURS_SPEC,
    ))
}

/// Commits `events` in one transaction, ordered by their key.
async fn ours_write(
    outbox: &memberflow_outbox::write::Outbox<i64>,
    events: &[PeerBody],
) -> anyhow::Result<()> {
    use memberflow_outbox::write::NewEvent;
    let mut tx = outbox.begin().await?;
    for event in events {
        let body = event.encode();
        tx.write(NewEvent::build(
            ROUTING_KEY,
            i64::from(event.key),
            event.seq as i64,
            chrono::Utc::now(),
            |_| body,
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The relay with what runs beside it in a service (its LISTEN, notifier
/// and gauges), default settings, until `shutdown`.
async fn ours_relay(
    db_url: &str,
    amqp_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use memberflow_outbox::{
        metrics::RelayMetrics, relay::Relay, settings::RelaySettings, wake::RelayWake,
    };
    let options = DatabaseSettings::with_url(db_url).connect_options()?;
    let pool = PgPool::connect_with(options.clone()).await?;
    let relay = Relay::new(
        OURS_SPEC,
        options,
        amqp::Nodes::new(&amqp_url.into(), &[]),
        RelaySettings::default(),
        RelayWake::new(true, OURS_SPEC.channel),
        RelayMetrics::register(&memberflow_runtime::metrics::registry()),
    );
    let mut workers = tokio::task::JoinSet::new();
    for (_, worker) in relay.workers(pool, &shutdown) {
        workers.spawn(worker);
    }
    while let Some(done) = workers.join_next().await {
        done?;
    }
    Ok(())
}

/// Events not yet confirmed: the relay deletes a row after its confirm.
async fn ours_unsettled(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(db)
        .await
}

// ---------------------------------------------------------------------------
// oxide-outbox: every use of its API.
// ---------------------------------------------------------------------------

/// outbox-postgres ships its schema as SQL to copy, not as a migrator.
const OXIDE_SCHEMA: &str = include_str!("../sql/oxide-outbox-0.3.0-init.sql");

type OxideService = outbox_core::OutboxService<
    outbox_postgres::PostgresWriter,
    outbox_core::NoIdempotency,
    PeerBody,
>;

/// The writer side: its own sqlx 0.8 pool and the crate's service.
#[derive(Clone)]
struct OxideWriter {
    pool: sqlx08::PgPool,
    service: Arc<OxideService>,
}

/// The crate's defaults: batch 100, poll every 10 s beside its LISTEN, a
/// 5-minute lock, no idempotency token.
fn oxide_config() -> Arc<outbox_core::OutboxConfig<PeerBody>> {
    Arc::new(outbox_core::OutboxConfig::default())
}

async fn oxide_setup(db: &PgPool, db_url: &str) -> anyhow::Result<OxideWriter> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(OXIDE_SCHEMA))
        .execute(db)
        .await?;
    let pool = sqlx08::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(db_url)
        .await?;
    let service =
        outbox_core::OutboxService::new(Arc::new(outbox_postgres::PostgresWriter), oxide_config());
    Ok(OxideWriter {
        pool,
        service: Arc::new(service),
    })
}

/// Commits `events` in one transaction. The crate has no ordering key.
async fn oxide_write(writer: &OxideWriter, events: &[PeerBody]) -> anyhow::Result<()> {
    let mut tx = writer.pool.begin().await?;
    for event in events {
        writer
            .service
            .add_event(ROUTING_KEY, event.clone(), None, &mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The crate's manager (worker loop and garbage collector) with its
/// Postgres storage and [`LapinTransport`], until `shutdown`.
async fn oxide_relay(
    db_url: &str,
    amqp_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = oxide_config();
    let pool = sqlx08::PgPool::connect(db_url).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let manager = outbox_core::OutboxManagerBuilder::new()
        .storage(Arc::new(outbox_postgres::PostgresOutbox::new(
            pool,
            config.clone(),
        )))
        .publisher(Arc::new(LapinTransport::connect(amqp_url).await?))
        .config(config)
        .shutdown_rx(stopped)
        .build()?;
    let run = tokio::spawn(manager.run());
    shutdown.cancelled().await;
    let _ = stop.send(true);
    run.await??;
    Ok(())
}

/// Events not yet confirmed: the crate marks a row `Sent` after its publish
/// returned (and keeps it for `retention_days`).
async fn oxide_unsettled(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'Sent'")
        .fetch_one(db)
        .await
}

/// oxide-outbox has no RabbitMQ transport: the smallest one its
/// `Transport` trait asks for. The trait publishes one event per call and
/// the manager awaits each call before the next, so this waits for each
/// publish's confirm (one in flight): returning before the confirm would
/// let the row be marked `Sent` before the broker has it.
struct LapinTransport {
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

impl LapinTransport {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let connection = amqp::connect(url, "bench-peer-oxide").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        amqp::declare_topic_exchange(&channel, EXCHANGE).await?;
        Ok(Self {
            _connection: connection,
            channel,
        })
    }
}

#[async_trait::async_trait]
impl outbox_core::Transport<PeerBody> for LapinTransport {
    async fn publish(
        &self,
        event: outbox_core::Event<PeerBody>,
    ) -> Result<(), outbox_core::OutboxError> {
        let broker = |e: lapin::Error| outbox_core::OutboxError::BrokerError(e.to_string());
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                event.event_type.as_str().into(),
                // As memberflow's relay: an unroutable event is an error.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &event.payload.as_value().encode(),
                BasicProperties::default()
                    .with_delivery_mode(memberflow_contract::topology::PERSISTENT)
                    .with_message_id(event.id.as_uuid().to_string().into()),
            )
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(outbox_core::OutboxError::BrokerError(
                "returned: no queue bound".into(),
            )),
            other => Err(outbox_core::OutboxError::BrokerError(format!(
                "not confirmed: {other:?}"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// The two sides behind one face.
// ---------------------------------------------------------------------------

/// The body of every event on both sides, as JSON (oxide-outbox stores its
/// payload as jsonb, so both carry the same JSON bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeerBody {
    key: u32,
    /// This key's sequence number, in commit order.
    seq: u64,
    pad: String,
}

impl PeerBody {
    fn new(key: u32, seq: u64) -> Self {
        Self {
            key,
            seq,
            pad: "x".repeat(PAD),
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plain struct serialises")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Oxide,
}

impl Side {
    fn arg(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Oxide => "oxide",
        }
    }
}

#[derive(Clone)]
enum Writer {
    Ours(memberflow_outbox::write::Outbox<i64>),
    Oxide(OxideWriter),
}

impl Writer {
    async fn write(&self, events: &[PeerBody]) -> anyhow::Result<()> {
        match self {
            Self::Ours(outbox) => ours_write(outbox, events).await,
            Self::Oxide(writer) => oxide_write(writer, events).await,
        }
    }
}

async fn unsettled(side: Side, db: &PgPool) -> sqlx::Result<i64> {
    match side {
        Side::Ours => ours_unsettled(db).await,
        Side::Oxide => oxide_unsettled(db).await,
    }
}

/// The child side: `bench peer-relay ours|oxide`, configured by
/// `PEER_DATABASE_URL` and `PEER_AMQP_URL`. Prints `ready`, starts the
/// relay on the line `go` from stdin, and stops it at the next line or EOF.
pub(crate) async fn relay_child(side: &str) -> anyhow::Result<()> {
    memberflow_runtime::telemetry::init_stderr("warn", &Default::default());
    let db = std::env::var("PEER_DATABASE_URL").context("PEER_DATABASE_URL")?;
    let broker = std::env::var("PEER_AMQP_URL").context("PEER_AMQP_URL")?;
    // Lines from stdin, read on a thread of their own (tokio's stdin needs
    // a feature the workspace does not build); EOF closes the channel.
    let (lines, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    println!("ready");
    anyhow::ensure!(
        commands.recv().await.as_deref() == Some("go"),
        "expected `go` on stdin"
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = commands.recv().await;
        stop.cancel();
    });
    match side {
        "ours" => ours_relay(&db, &broker, shutdown).await,
        "oxide" => oxide_relay(&db, &broker, shutdown).await,
        other => anyhow::bail!("unknown relay {other:?}: expected ours or oxide"),
    }
}

/// A relay child process, started but not yet relaying until [`Self::go`].
struct RelayProcess {
    child: Child,
    stdin: ChildStdin,
}

impl RelayProcess {
    async fn start(side: Side, db_url: &str, amqp_url: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["peer-relay", side.arg()])
            .env("PEER_DATABASE_URL", db_url)
            .env("PEER_AMQP_URL", amqp_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the relay process did not start in 30 s")??;
        anyhow::ensure!(
            first.as_deref() == Some("ready"),
            "the relay process printed {first:?}"
        );
        Ok(Self { child, stdin })
    }

    async fn go(&mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"go\n").await?;
        Ok(self.stdin.flush().await?)
    }

    /// User + system CPU time of the whole process so far, in seconds
    /// (`/proc/PID/stat`, all its threads).
    fn cpu_secs(&self, ticks_per_sec: f64) -> anyhow::Result<f64> {
        let pid = self.child.id().context("the relay process exited")?;
        crate::proc_stat::process_cpu_secs(pid, ticks_per_sec)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"stop\n").await?;
        self.stdin.flush().await?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the relay process did not stop within 30 s")??;
        anyhow::ensure!(status.success(), "the relay process exited with {status}");
        Ok(())
    }
}

/// What the consumer saw: each event's first delivery, arrivals in order.
#[derive(Default)]
struct Seen {
    first: HashMap<(u32, u64), Instant>,
    /// (key, seq) of every delivery, duplicates included, in arrival order.
    arrivals: Vec<(u32, u64)>,
}

impl Seen {
    /// Deliveries beyond each event's first.
    fn duplicates(&self) -> usize {
        self.arrivals.len() - self.first.len()
    }

    /// First deliveries whose seq is below one already delivered for their
    /// key: delivered out of commit order.
    fn out_of_order(&self) -> usize {
        let mut highest: HashMap<u32, u64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut late = 0;
        for &(key, seq) in &self.arrivals {
            if !seen.insert((key, seq)) {
                continue;
            }
            let top = highest.entry(key).or_insert(seq);
            if seq < *top {
                late += 1;
            } else {
                *top = seq;
            }
        }
        late
    }
}

/// A plain lapin consumer (no ack, so the broker pushes at once) on a quorum
/// queue bound to [`EXCHANGE`], recording every delivery's time.
async fn start_consumer(amqp_url: &str) -> anyhow::Result<(lapin::Connection, Arc<Mutex<Seen>>)> {
    let connection = amqp::connect(amqp_url, "bench-peer-consumer").await?;
    let channel = connection.create_channel().await?;
    amqp::declare_topic_exchange(&channel, EXCHANGE).await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = channel
        .basic_consume(
            QUEUE.into(),
            "bench-peer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let at = Instant::now();
            let Ok(body) = serde_json::from_slice::<PeerBody>(&delivery.data) else {
                eprintln!("peer: a delivery that is not a peer event");
                continue;
            };
            let mut seen = record.lock().expect("poisoned");
            seen.first.entry((body.key, body.seq)).or_insert(at);
            seen.arrivals.push((body.key, body.seq));
        }
    });
    Ok((connection, seen))
}

/// Polls every 5 ms until `done`, at most `timeout`; whether it came true.
async fn wait_until<F, Fut>(timeout: Duration, mut done: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if done().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One side's figures.
struct Outcome {
    drain_per_sec: f64,
    drain_cpu_ms_per_1000: f64,
    /// (offered rate, commit → delivered, relay CPU ms per 1,000 events).
    rates: Vec<(f64, Latency, f64)>,
    committed: usize,
    delivered: usize,
    duplicates: usize,
    out_of_order: usize,
}

async fn measure(lab: &Lab, side: Side, ticks: f64) -> anyhow::Result<Outcome> {
    let plan = &lab.plan;
    let mut env = TestEnv::new();
    let db_url = env.database_url(&format!("peer_{}", side.arg()));
    let settings = DatabaseSettings::with_url(&db_url);
    ensure_database(&settings).await?;
    let db = PgPool::connect_with(settings.connect_options()?).await?;
    let shutdown = CancellationToken::new();
    let writer = match side {
        Side::Ours => Writer::Ours(ours_setup(&db, &shutdown).await?),
        Side::Oxide => Writer::Oxide(oxide_setup(&db, &db_url).await?),
    };
    let (consumer, seen) = start_consumer(&env.amqp_url()).await?;
    let delivered = |n: usize| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { Ok(seen.lock().expect("poisoned").first.len() >= n) }
        }
    };
    // Each key's next sequence number; a key's lock is held from its
    // event's begin to its commit, so seq order is commit order.
    let next: Arc<Vec<tokio::sync::Mutex<u64>>> =
        Arc::new((0..KEYS).map(|_| tokio::sync::Mutex::new(0)).collect());

    // The backlog, committed with no relay running.
    let mut backlog = Vec::with_capacity(plan.peer_drain);
    for i in 0..plan.peer_drain {
        let mut seq = next[i % KEYS as usize].lock().await;
        backlog.push(PeerBody::new((i % KEYS as usize) as u32, *seq));
        *seq += 1;
    }
    for chunk in backlog.chunks(BACKLOG_TX) {
        writer.write(chunk).await?;
    }
    let mut committed = plan.peer_drain;

    let mut relay = RelayProcess::start(side, &db_url, &env.amqp_url()).await?;
    let cpu_before = relay.cpu_secs(ticks)?;
    relay.go().await?;
    let backlog_delivered = delivered(committed);
    let drained = wait_until(Duration::from_secs(600), || {
        let (arrived, db) = (backlog_delivered(), db.clone());
        async move { Ok(arrived.await? && unsettled(side, &db).await? == 0) }
    })
    .await?;
    let drained_at = Instant::now();
    anyhow::ensure!(
        drained,
        "{}: the drain of {committed} events did not finish in 600 s",
        side.arg()
    );
    let drain_cpu = relay.cpu_secs(ticks)? - cpu_before;
    let first_delivery = seen
        .lock()
        .expect("poisoned")
        .first
        .values()
        .min()
        .copied()
        .context("no delivery")?;
    let drain_per_sec = rate(committed, drained_at - first_delivery);

    let commits: Arc<Mutex<HashMap<(u32, u64), Instant>>> = Arc::default();
    let mut rates = Vec::new();
    for &per_sec in &plan.rates {
        let cpu_before = relay.cpu_secs(ticks)?;
        let (writer, next, commits_by) = (writer.clone(), next.clone(), commits.clone());
        let run = open_loop(per_sec, plan.propagation, move |i| {
            let (writer, next, commits) = (writer.clone(), next.clone(), commits_by.clone());
            async move {
                let key = (i % KEYS as usize) as u32;
                let mut next = next[key as usize].lock().await;
                let seq = *next;
                writer.write(&[PeerBody::new(key, seq)]).await?;
                commits
                    .lock()
                    .expect("poisoned")
                    .insert((key, seq), Instant::now());
                *next = seq + 1;
                Ok((key, seq))
            }
        })
        .await?;
        committed += run.values.len();
        let arrived = wait_until(Duration::from_secs(60), delivered(committed)).await?;
        let cpu = relay.cpu_secs(ticks)? - cpu_before;
        if !arrived {
            eprintln!(
                "peer: {}: not every event of the {per_sec}/s run arrived within 60 s",
                side.arg()
            );
        }
        let times: Vec<Duration> = {
            let (seen, commits) = (
                seen.lock().expect("poisoned"),
                commits.lock().expect("poisoned"),
            );
            run.values
                .iter()
                .filter_map(|id| {
                    let delivered = seen.first.get(id)?;
                    Some(delivered.saturating_duration_since(commits[id]))
                })
                .collect()
        };
        rates.push((
            per_sec,
            Latency::of(&times),
            cpu * 1e3 / run.values.len() as f64 * 1e3,
        ));
    }

    relay.stop().await?;
    shutdown.cancel();
    let _ = consumer.close(200, "bench done".into()).await;
    let seen = seen.lock().expect("poisoned");
    Ok(Outcome {
        drain_per_sec,
        drain_cpu_ms_per_1000: drain_cpu * 1e3 / plan.peer_drain as f64 * 1e3,
        rates,
        committed,
        delivered: seen.first.len(),
        duplicates: seen.duplicates(),
        out_of_order: seen.out_of_order(),
    })
}

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let ticks = crate::proc_stat::ticks_per_sec().await;
    let ours = measure(lab, Side::Ours, ticks).await?;
    let theirs = measure(lab, Side::Oxide, ticks).await?;
    const PEER: &str = "oxide-outbox";
    let setup = format!(
        "{KEYS} ordering keys, ~200 B JSON bodies, quorum queue, each relay alone in its own process with its crate's defaults (memberflow: batch 500, confirms pipelined, woken on commit; oxide-outbox: batch 100, one confirm at a time, LISTEN on its trigger's NOTIFY, poll 10 s), own database and vhost"
    );
    for (i, &(per_sec, latency, _)) in ours.rates.iter().enumerate() {
        lab.add(
            Figure::new(
                format!("Peer: commit → delivered, {per_sec}/s"),
                format!(
                    "open loop {} s, one event per transaction; delivered (plain lapin consumer) − commit returned; {setup}",
                    lab.plan.propagation.as_secs()
                ),
                Measure::Latency(latency),
            )
            .against(PEER, Measure::Latency(theirs.rates[i].1)),
        );
    }
    lab.add(
        Figure::new(
            "Peer: drain",
            format!(
                "{} committed events (transactions of {BACKLOG_TX}), then the relay started; first delivery → all delivered and settled in the database; {setup}",
                lab.plan.peer_drain
            ),
            Measure::Rate {
                per_sec: ours.drain_per_sec,
            },
        )
        .against(
            PEER,
            Measure::Rate {
                per_sec: theirs.drain_per_sec,
            },
        ),
    );
    lab.add(
        Figure::new(
            "Peer: relay CPU per 1,000 events, drain",
            "user + system time of the relay's process (/proc/PID/stat) from `go` to drained",
            Measure::Cpu {
                ms_per_1000: ours.drain_cpu_ms_per_1000,
            },
        )
        .against(
            PEER,
            Measure::Cpu {
                ms_per_1000: theirs.drain_cpu_ms_per_1000,
            },
        ),
    );
    if let (Some(&(per_sec, _, cpu)), Some(&(_, _, their_cpu))) =
        (ours.rates.last(), theirs.rates.last())
    {
        lab.add(
            Figure::new(
                format!("Peer: relay CPU per 1,000 events, {per_sec}/s"),
                "the same over the open loop's run until its last delivery, idle wake-ups included",
                Measure::Cpu { ms_per_1000: cpu },
            )
            .against(
                PEER,
                Measure::Cpu {
                    ms_per_1000: their_cpu,
                },
            ),
        );
    }
    let counted = |o: &Outcome| {
        format!(
            "{} events committed over the drain and the open loops",
            o.committed
        )
    };
    for (name, of) in [
        (
            "Peer: lost",
            (|o: &Outcome| o.committed - o.delivered) as fn(&Outcome) -> usize,
        ),
        ("Peer: duplicates", |o: &Outcome| o.duplicates),
        (
            "Peer: delivered out of commit order per key",
            |o: &Outcome| o.out_of_order,
        ),
    ] {
        lab.add(
            Figure::new(
                name,
                counted(&ours),
                Measure::Count {
                    n: of(&ours) as u64,
                },
            )
            .against(
                format!("{PEER} ({})", counted(&theirs)),
                Measure::Count {
                    n: of(&theirs) as u64,
                },
            ),
        );
    }
    Ok(())
}
