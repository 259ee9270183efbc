//! The outbox relay: moves committed outbox rows to RabbitMQ.
//!
//! # Several instances on one database
//! Exactly one relay per database publishes: the *leader*, which holds the
//! `relay` lease (see `memberflow_infra::lease`). It renews the lease every
//! third of `relay.lease_ms`; a leader that stops renewing (its process
//! paused, dead, or cut off from the database) loses it when PostgreSQL's
//! clock passes the expiry, and a standby, retrying every `leader_retry_ms`,
//! takes it with the next epoch. A resumed ex-leader checks its lease before
//! each batch and each publish, and every write it makes to the outbox is
//! fenced by its epoch: once deposed it deletes, parks and blames nothing.
//! Because one leader publishes rows in `id` order on one channel, and one
//! member's events get increasing ids (the member row lock serialises them),
//! per-member version order holds on the wire.
//!
//! The leader never tracks a high-water mark: it reads whatever rows exist,
//! oldest first, and deletes only what the broker confirmed, so a row whose
//! transaction commits late is simply picked up by a later batch.
//!
//! # Wake-ups
//! Commits in this process wake the relay at once; LISTEN/NOTIFY wakes it for
//! other instances' commits (see [`crate::wake`]); a slow poll catches
//! anything missed.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt as _, future::BoxFuture};
use memberflow_infra::amqp::Nodes;
use memberflow_infra::error_chain;
use memberflow_infra::lease::{self, Elector, Term};
use memberflow_infra::pg as db;
use memberflow_lifecycle::CancellationToken;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    OutboxSpec, Tables,
    metrics::RelayMetrics,
    publisher::{Publisher, Stop},
    settings::RelaySettings,
    settle::{RowState, settle},
    wake::RelayWake,
    write::OutboxRow,
};

/// How often the relay repeats that nothing is routable.
const TOPOLOGY_WARN_EVERY: Duration = Duration::from_secs(30);

/// The name of the relay leader's lease.
pub const LEASE: &str = "relay";

/// What one step of the relay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows published in this batch (not counting rows held behind a parked
    /// row).
    pub attempted: usize,
    /// Rows confirmed and deleted.
    pub published: usize,
    /// Rows that failed on their own and were kept, one attempt more.
    pub blamed: usize,
    /// Rows parked: failed too often, or held behind a parked row of their
    /// member.
    pub parked: usize,
    /// Nothing was routable: every row kept, none blamed.
    pub topology_fault: bool,
    /// The batch stopped short (timeout, no confirms): reconnect.
    pub stopped: Option<Stop>,
}

/// What one step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A batch was published; see the report.
    Batch(Report),
    /// The outbox was empty (or this relay's lease is gone: the read is
    /// fenced too).
    Empty,
    /// The lease is gone: nothing was written, and no new batch may start.
    Deposed,
}

/// Why a relay step failed. Nothing is deleted that was not confirmed, so
/// every failure is retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("broker error")]
    Broker(#[from] lapin::Error),
}

/// Why a row was parked without failing itself.
pub const HELD_BEHIND: &str = "held behind a parked event of the same key";

/// Publishes one batch: reads the oldest rows, parks those whose key has a
/// parked row, publishes the rest with pipelined confirms, and settles each
/// row by the broker's answer (see [`settle`]). `term` is the leader's
/// lease: nothing starts unless it is held, and each write is fenced by its
/// epoch, so a relay that lost the lease mid-batch changes no row.
pub async fn relay_once(
    conn: &mut PgConnection,
    sql: &RelaySql,
    publisher: &Publisher,
    cfg: &RelaySettings,
    term: &Term,
) -> Result<Outcome, RelayError> {
    if !term.is_held() {
        return Ok(Outcome::Deposed);
    }
    // One read: the rows, and whether their key has a parked row (the
    // EXISTS probes outbox_parked's key index, normally empty).
    let read: Vec<(OutboxRow, bool)> = sqlx::query_as(AssertSqlSafe(sql.read.as_str()))
        .bind(term.name())
        .bind(term.epoch())
        .bind(cfg.batch_size)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r: Held| (r.row, r.held))
        .collect();
    if read.is_empty() {
        return Ok(Outcome::Empty);
    }
    let mut report = Report::default();
    let held: Vec<&str> = read
        .iter()
        .filter(|(_, held)| *held)
        .map(|(r, _)| r.key.as_str())
        .collect();
    if !held.is_empty() {
        match park(conn, sql, term, &[], &held, HELD_BEHIND).await? {
            Some(n) => report.parked += n,
            None => return Ok(Outcome::Deposed),
        }
    }
    let rows: Vec<OutboxRow> = read
        .into_iter()
        .filter_map(|(r, held)| (!held).then_some(r))
        .collect();
    let timeout = Duration::from_millis(cfg.confirm_timeout_ms);
    let (answers, stopped) = publisher.publish_batch(&rows, timeout, term).await?;
    let states: Vec<RowState> = rows
        .iter()
        .map(|r| RowState {
            id: r.id,
            attempts: r.attempts,
        })
        .collect();
    let plan = settle(&states, &answers, cfg.park_after_attempts);
    if !plan.delete.is_empty() {
        let (leading, _): (bool, i64) = sqlx::query_as(AssertSqlSafe(sql.delete.as_str()))
            .bind(term.name())
            .bind(term.epoch())
            .bind(&plan.delete)
            .fetch_one(&mut *conn)
            .await?;
        if !leading {
            return Ok(Outcome::Deposed);
        }
    }
    if !plan.blame.is_empty() {
        let leading: bool = sqlx::query_scalar(AssertSqlSafe(sql.blame.as_str()))
            .bind(term.name())
            .bind(term.epoch())
            .bind(&plan.blame)
            .bind(UNROUTABLE)
            .fetch_one(&mut *conn)
            .await?;
        if !leading {
            return Ok(Outcome::Deposed);
        }
    }
    if !plan.park.is_empty() {
        let parked_keys: Vec<&str> = rows
            .iter()
            .filter(|r| plan.park.contains(&r.id))
            .map(|r| r.key.as_str())
            .collect();
        match park(conn, sql, term, &plan.park, &parked_keys, UNROUTABLE).await? {
            Some(n) => report.parked += n,
            None => return Ok(Outcome::Deposed),
        }
        tracing::warn!(rows = ?plan.park, "parked outbox rows that kept failing; see `memberflow-admin outbox parked`");
    }
    report.attempted = rows.len();
    report.published = plan.delete.len();
    report.blamed = plan.blame.len();
    report.topology_fault = plan.topology_fault;
    report.stopped = stopped;
    Ok(Outcome::Batch(report))
}

/// The relay's statements, rendered once for one service's [`Tables`]. The
/// key is read as text and compared as the column's type, so the relay is
/// the same code for every key type and still uses the key index.
#[derive(Debug, Clone)]
pub struct RelaySql {
    /// The oldest rows, while the lease `$1` has epoch `$2`.
    read: String,
    /// Deletes the confirmed rows `$3`, fenced; says whether the fence held.
    delete: String,
    /// Counts one more attempt, with error `$4`, on the rows `$3`, fenced.
    blame: String,
    /// Moves rows `$3`, and every row of keys `$4`, to `outbox_parked`,
    /// fenced (see [`park`]).
    park: String,
    /// The outbox gauges: pending rows, the oldest's age, parked rows.
    gauges: String,
}

impl RelaySql {
    pub fn new(tables: &Tables) -> Self {
        let outbox = tables.table("outbox");
        let parked = tables.table("outbox_parked");
        let fence = lease::fence(&tables.table(lease::TABLE));
        let key = tables.key_column();
        let key_type = tables.key_type();
        Self {
            read: format!(
                "SELECT o.id, o.event_id, o.routing_key, o.{key}::text AS key, o.version, o.payload,
                        o.occurred_at, o.attempts, o.traceparent, o.tracestate,
                        EXISTS (SELECT 1 FROM {parked} p WHERE p.{key} = o.{key}) AS held
                   FROM {outbox} o
                  WHERE EXISTS (SELECT 1 FROM {leases} WHERE name = $1 AND epoch = $2)
                  ORDER BY o.id LIMIT $3",
                leases = tables.table(lease::TABLE)
            ),
            delete: format!(
                "WITH {fence},
                      gone AS (DELETE FROM {outbox} WHERE id = ANY($3) AND EXISTS (SELECT 1 FROM lease)
                               RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM lease), (SELECT count(*) FROM gone)"
            ),
            blame: format!(
                "WITH {fence},
                      blamed AS (UPDATE {outbox} SET attempts = attempts + 1, last_error = $4
                                  WHERE id = ANY($3) AND EXISTS (SELECT 1 FROM lease) RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM lease)"
            ),
            park: format!(
                "WITH {fence},
                      moved AS (
                          DELETE FROM {outbox}
                           WHERE (id = ANY($3) OR {key} = ANY($4::text[]::{key_type}[]))
                             AND EXISTS (SELECT 1 FROM lease)
                       RETURNING *
                      ),
                      parked AS (
                          INSERT INTO {parked}
                              (id, event_id, routing_key, {key}, version, payload, occurred_at,
                               traceparent, tracestate, attempts, last_error)
                          SELECT id, event_id, routing_key, {key}, version, payload, occurred_at,
                                 traceparent, tracestate, attempts + (id = ANY($3))::int,
                                 CASE WHEN id = ANY($3) THEN $5 ELSE $6 END
                            FROM moved
                          ON CONFLICT (id) DO NOTHING
                          RETURNING 1
                      )
                 SELECT EXISTS (SELECT 1 FROM lease), (SELECT count(*) FROM parked)"
            ),
            gauges: format!(
                "SELECT (SELECT count(*) FROM {outbox}),
                        coalesce((SELECT extract(epoch FROM now() - occurred_at)::float8
                                    FROM {outbox} ORDER BY id LIMIT 1), 0),
                        (SELECT count(*) FROM {parked})"
            ),
        }
    }
}

/// An outbox row, and whether a parked row of its key holds it back.
#[derive(sqlx::FromRow)]
struct Held {
    #[sqlx(flatten)]
    row: OutboxRow,
    held: bool,
}

/// The error a row that came back unroutable is blamed with.
const UNROUTABLE: &str = "unroutable: no queue is bound for its routing key";

/// Moves the rows `ids`, and every outbox row of `keys`, to `outbox_parked`:
/// the rows named get `reason` and one more attempt, the others
/// [`HELD_BEHIND`]. Returns how many rows moved, or `None` when the lease is
/// gone (nothing moved).
async fn park(
    conn: &mut PgConnection,
    sql: &RelaySql,
    term: &Term,
    ids: &[i64],
    keys: &[&str],
    reason: &str,
) -> sqlx::Result<Option<usize>> {
    let (leading, moved): (bool, i64) = sqlx::query_as(AssertSqlSafe(sql.park.as_str()))
        .bind(term.name())
        .bind(term.epoch())
        .bind(ids)
        .bind(keys)
        .bind(reason)
        .bind(HELD_BEHIND)
        .fetch_one(conn)
        .await?;
    Ok(leading.then_some(moved as usize))
}

/// How long opening the leader's connection may take.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's session settings (leadership itself is the lease, not this
/// session):
/// * server-side TCP keepalive (idle 5 s, then 3 probes 2 s apart) ends the
///   session of a leader whose host or network died silently;
/// * `statement_timeout` and `idle_in_transaction_session_timeout` keep a
///   stuck leader from holding locks or rows;
/// * `synchronous_commit = off`: the leader writes only bookkeeping (the
///   delete of confirmed rows, an attempt counted, a row parked), and none of
///   it must be on disk before the next batch starts. A crash that loses
///   the last such commits republishes rows the broker already has (every
///   consumer dedupes by event id, as after any redelivery) or counts an
///   attempt again. It takes a WAL flush off every batch's path; the
///   events themselves were committed synchronously by their writers.
pub fn leader_session(db: PgConnectOptions, cfg: &RelaySettings) -> PgConnectOptions {
    db.application_name("memberflow-relay").options([
        (
            "statement_timeout",
            format!("{}ms", cfg.statement_timeout_ms),
        ),
        (
            "idle_in_transaction_session_timeout",
            format!("{}ms", cfg.statement_timeout_ms),
        ),
        ("tcp_keepalives_idle", "5".to_owned()),
        ("tcp_keepalives_interval", "2".to_owned()),
        ("tcp_keepalives_count", "3".to_owned()),
        ("synchronous_commit", "off".to_owned()),
    ])
}

/// The background relay of one service instance.
pub struct Relay {
    metrics: RelayMetrics,
    /// Where it publishes and which channel wakes it.
    spec: OutboxSpec,
    /// Its statements, for `spec`'s tables.
    sql: Arc<RelaySql>,
    /// The leader's own session, hardened by [`leader_session`].
    leader_options: PgConnectOptions,
    /// Campaigns for, renews and releases the [`LEASE`].
    elector: Elector,
    brokers: Nodes,
    cfg: RelaySettings,
    wake: Arc<RelayWake>,
}

/// How a term as leader ended.
enum Led {
    Shutdown,
    /// The lease lapsed or another instance took it.
    Deposed,
}

impl Relay {
    /// `wake` is told of the writers' commits. `db` must reach PostgreSQL
    /// directly (not through a transaction pooler): LISTEN lives in a
    /// session.
    /// [`Self::new`] from a service's settings.
    pub fn for_service(
        spec: OutboxSpec,
        settings: &impl crate::settings::OutboxSettings,
        wake: Arc<RelayWake>,
        metrics: RelayMetrics,
    ) -> Result<Self, sqlx::Error> {
        Ok(Self::new(
            spec,
            settings.leader_options()?,
            settings.amqp().nodes(),
            settings.relay().clone(),
            wake,
            metrics,
        ))
    }

    pub fn new(
        spec: OutboxSpec,
        db: PgConnectOptions,
        brokers: Nodes,
        cfg: RelaySettings,
        wake: Arc<RelayWake>,
        metrics: RelayMetrics,
    ) -> Self {
        let elector = Elector::new(
            db.clone().application_name("memberflow-relay-lease"),
            LEASE,
            Duration::from_millis(cfg.lease_ms),
            Duration::from_millis(cfg.leader_retry_ms),
            cfg.backoff,
        )
        .in_table(spec.tables.leases_table());
        Self {
            metrics,
            sql: Arc::new(RelaySql::new(&spec.tables)),
            spec,
            leader_options: leader_session(db, &cfg),
            elector,
            brokers,
            cfg,
            wake,
        }
    }

    /// With `relay.wake_on_commit`, the loop that wakes this relay on
    /// another instance's NOTIFY; the caller spawns and joins it.
    pub fn listen_for_wakes(
        &self,
        shutdown: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        if !self.cfg.wake_on_commit {
            return None;
        }
        // LISTEN needs a session: the direct connection, never a pooler.
        let listen = PgPoolOptions::new().max_connections(1).connect_lazy_with(
            self.leader_options
                .clone()
                .application_name("memberflow-listen"),
        );
        let (wake, backoff, channel) = (self.wake.clone(), self.cfg.backoff, self.spec.channel);
        // After a (re)connect too: commits may have been missed.
        Some(async move {
            db::listen(listen, channel, backoff, shutdown, |_| wake.wake_local()).await;
        })
    }

    /// The relay and what runs beside it in every service, as named
    /// workers for the service's supervisor: the LISTEN for other
    /// instances' wake-ups, the notifier that wakes them, and the outbox
    /// gauges (read through `pool`).
    pub fn workers(
        self,
        pool: PgPool,
        shutdown: &CancellationToken,
    ) -> Vec<(&'static str, BoxFuture<'static, ()>)> {
        let mut workers: Vec<(&'static str, BoxFuture<'static, ()>)> = Vec::new();
        if let Some(listen) = self.listen_for_wakes(shutdown.clone()) {
            workers.push(("relay-wake-listener", listen.boxed()));
        }
        workers.push((
            "relay-wake-notifier",
            self.wake
                .clone()
                .run_notifier(
                    pool.clone(),
                    self.metrics.relay_wake_failures.clone(),
                    shutdown.clone(),
                )
                .boxed(),
        ));
        workers.push((
            "outbox-gauges",
            watch_outbox(
                pool,
                self.sql.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            )
            .boxed(),
        ));
        workers.push(("relay", self.run(shutdown.clone()).boxed()));
        workers
    }

    /// Runs until `shutdown`; an in-flight batch is finished first. Each
    /// turn campaigns for the lease, leads while renewing it, and gives it
    /// up at the end.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retrying = self.cfg.backoff.retrying();
        while !shutdown.is_cancelled() {
            let Some(term) = self.elector.acquire(&shutdown).await else {
                break;
            };
            tracing::info!(
                epoch = term.epoch(),
                exchange = self.spec.exchange,
                "outbox relay is the leader for this database"
            );
            self.metrics.relay_leader.set(1);
            self.wake.set_leading(true);
            let renewing = CancellationToken::new();
            let (led, ()) = tokio::join!(
                async {
                    let led = self.lead(&term, &shutdown).await;
                    renewing.cancel();
                    led
                },
                self.elector.keep(&term, &renewing),
            );
            self.wake.set_leading(false);
            self.metrics.relay_leader.set(0);
            // Fenced by the epoch: a no-op if another instance took over.
            self.elector.release(&term).await;
            match led {
                Ok(Led::Shutdown) => {}
                Ok(Led::Deposed) => tracing::warn!(
                    epoch = term.epoch(),
                    "the relay is no longer the leader: its lease lapsed or another instance took it"
                ),
                Err(e) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "relay lost its database connection; stepping down");
                    retrying.wait(&shutdown).await;
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    async fn connect_leader(&self) -> sqlx::Result<PgConnection> {
        tokio::time::timeout(
            LEADER_CONNECT_TIMEOUT,
            PgConnection::connect_with(&self.leader_options),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Publishes while `term` is held. Returns how the term ended, or `Err`
    /// when the leader's connection fails.
    async fn lead(&self, term: &Term, shutdown: &CancellationToken) -> Result<Led, sqlx::Error> {
        let mut leader = self.connect_leader().await?;
        // Cancelled when the term ends or at shutdown.
        let ending = term.token();
        let mut publisher: Option<Publisher> = None;
        let mut retrying = self.cfg.backoff.retrying();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut topology_warned = None;
        // A step is a few statements and one confirmed batch.
        let step_bound =
            Duration::from_millis(3 * self.cfg.statement_timeout_ms + self.cfg.confirm_timeout_ms);
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(Led::Shutdown);
            }
            // Checked before anything new starts: a relay that resumes
            // from a pause finds its lease lapsed here.
            if !term.is_held() {
                break Ok(Led::Deposed);
            }
            let p = match publisher.take() {
                Some(p) if p.is_healthy() => p,
                stale => {
                    if let Some(p) = stale {
                        p.close().await;
                    }
                    match Publisher::connect(&self.brokers, &self.spec).await {
                        Ok(p) => {
                            tracing::info!("relay connected to the broker");
                            p
                        }
                        Err(e) => {
                            tracing::warn!(error.cause_chain = %error_chain(&e), "relay cannot reach the broker; backing off");
                            retrying.wait(ending).await;
                            continue;
                        }
                    }
                }
            };
            // Bounded on the client side too: a session that died without a
            // word answers nothing, and this leader must stop, not hang.
            let started = Instant::now();
            let step = tokio::time::timeout(
                step_bound,
                relay_once(&mut leader, &self.sql, &p, &self.cfg, term),
            )
            .await
            .unwrap_or_else(|_| {
                Err(RelayError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the leader's database session stopped answering",
                ))))
            });
            publisher = Some(p);
            match step {
                Ok(Outcome::Deposed) => break Ok(Led::Deposed),
                Ok(Outcome::Empty) => {
                    retrying.reset();
                    // Waits for a wake-up or the poll after each empty step:
                    // a poll, not a periodic chore, so a stall cannot bunch
                    // steps.
                    tokio::select! {
                        () = self.wake.woken(), if self.cfg.wake_on_commit => {}
                        () = tokio::time::sleep(poll) => {}
                        () = ending.cancelled() => {}
                    }
                }
                Ok(Outcome::Batch(report)) => {
                    tracing::debug!(?report, "relayed a batch");
                    self.metrics
                        .relay_batch
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.relay_published.inc_by(report.published as u64);
                    self.metrics
                        .relay_publish_failures
                        .inc_by((report.attempted - report.published) as u64);
                    if report.topology_fault {
                        // Once per interval, not once per retry.
                        if topology_warned
                            .is_none_or(|at: Instant| at.elapsed() >= TOPOLOGY_WARN_EVERY)
                        {
                            topology_warned = Some(Instant::now());
                            tracing::warn!(
                                exchange = self.spec.exchange,
                                consumers = self.spec.consumers,
                                "nothing in the outbox is routable: no queue is bound to the exchange yet; keeping every row"
                            );
                        }
                    } else {
                        topology_warned = None;
                    }
                    if let Some(stop) = report.stopped {
                        tracing::warn!(reason = %stop, published = report.published, "batch not fully confirmed; reconnecting");
                        if let Some(p) = publisher.take() {
                            p.close().await;
                        }
                    }
                    if report.topology_fault || report.stopped.is_some() || report.blamed > 0 {
                        retrying.wait(ending).await;
                    } else {
                        retrying.reset();
                    }
                }
                Err(RelayError::Database(e)) => break Err(e),
                Err(e @ RelayError::Broker(_)) => {
                    self.metrics.relay_publish_failures.inc();
                    tracing::warn!(error.cause_chain = %error_chain(&e), "publish failed; reconnecting");
                    if let Some(p) = publisher.take() {
                        p.close().await;
                    }
                    retrying.wait(ending).await;
                }
            }
        };
        if let Some(p) = publisher {
            p.close().await;
        }
        let _ = leader.close().await;
        result
    }
}

/// How often the outbox gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Keeps the outbox gauges current until `shutdown`, with one cheap query
/// per interval rather than one per scrape.
pub async fn watch_outbox(
    pool: PgPool,
    sql: Arc<RelaySql>,
    metrics: RelayMetrics,
    shutdown: CancellationToken,
) {
    memberflow_lifecycle::every(GAUGES_EVERY, memberflow_lifecycle::Start::Now, &shutdown, || async {
        let read: sqlx::Result<(i64, f64, i64)> =
            sqlx::query_as(AssertSqlSafe(sql.gauges.as_str()))
        .fetch_one(&pool)
        .await;
        match read {
            Ok((pending, oldest, parked)) => {
                metrics.outbox_pending.set(pending);
                metrics.outbox_oldest_age.set(oldest.max(0.0));
                metrics.outbox_parked.set(parked);
            }
            Err(e) => {
                tracing::debug!(error.cause_chain = %error_chain(&e), "outbox gauges not refreshed")
            }
        }
    })
    .await;
}
