//! The outbox relay: moves committed outbox rows to RabbitMQ.
//!
//! # Several auth instances on one database
//! Exactly one relay per database publishes: the *leader*, which holds a
//! session-level PostgreSQL advisory lock on a dedicated connection. Others
//! retry the lock every `leader_retry_ms`; when the leader's process or
//! connection dies, PostgreSQL releases the lock and another instance takes
//! over. Because one leader publishes rows in `id` order on one channel, and
//! one member's events get increasing ids (the member row lock serialises
//! them), per-member version order holds on the wire.
//!
//! The leader never tracks a high-water mark: it reads whatever rows exist,
//! oldest first, and deletes only what the broker confirmed, so a row whose
//! transaction commits late is simply picked up by a later batch.
//!
//! # Wake-ups
//! Commits in this process wake the relay at once; LISTEN/NOTIFY wakes it for
//! other instances' commits (see [`super::wake`]); a slow poll catches
//! anything missed.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use memberflow_retry::sleep_or_cancel;
use memberflow_runtime::amqp::Nodes;
use memberflow_runtime::db;
use memberflow_runtime::shutdown::CancellationToken;
use memberflow_runtime::telemetry::error_chain;
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use super::{
    OutboxRow,
    publisher::{Publisher, Stop},
    settle::{RowState, settle},
    wake::{NOTIFY_CHANNEL, RelayWake},
};
use crate::{metrics::AuthMetrics, settings::RelaySettings};

/// How often the relay repeats that nothing is routable.
const TOPOLOGY_WARN_EVERY: Duration = Duration::from_secs(30);

/// Advisory lock key of the relay leader ("memberfr" as bytes).
pub const LEADER_LOCK_KEY: i64 = 0x6d65_6d62_6572_6672;

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
    /// The outbox was empty.
    Empty,
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
pub const HELD_BEHIND: &str = "held behind a parked event of the same member";

/// Publishes one batch: reads the oldest rows, parks those whose member has
/// a parked row, publishes the rest with pipelined confirms, and settles
/// each row by the broker's answer (see [`settle`]). `conn` must be the
/// leader's.
pub async fn relay_once(
    conn: &mut PgConnection,
    publisher: &Publisher,
    cfg: &RelaySettings,
) -> Result<Outcome, RelayError> {
    // One read: the rows, and whether their member has a parked row (the
    // EXISTS probes outbox_parked's member index, normally empty).
    let read: Vec<(OutboxRow, bool)> = sqlx::query_as(
        "SELECT o.id, o.event_id, o.routing_key, o.member_id, o.version, o.payload,
                o.occurred_at, o.attempts, o.traceparent, o.tracestate,
                EXISTS (SELECT 1 FROM outbox_parked p WHERE p.member_id = o.member_id) AS held
           FROM outbox o ORDER BY o.id LIMIT $1",
    )
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
    let held: Vec<Uuid> = read
        .iter()
        .filter(|(_, held)| *held)
        .map(|(r, _)| r.member_id)
        .collect();
    if !held.is_empty() {
        report.parked += park(conn, &[], &held, HELD_BEHIND).await?;
    }
    let rows: Vec<OutboxRow> = read
        .into_iter()
        .filter_map(|(r, held)| (!held).then_some(r))
        .collect();
    let timeout = Duration::from_millis(cfg.confirm_timeout_ms);
    let (answers, stopped) = publisher.publish_batch(&rows, timeout).await?;
    let states: Vec<RowState> = rows
        .iter()
        .map(|r| RowState {
            id: r.id,
            attempts: r.attempts,
        })
        .collect();
    let plan = settle(&states, &answers, cfg.park_after_attempts);
    if !plan.delete.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&plan.delete)
            .execute(&mut *conn)
            .await?;
    }
    if !plan.blame.is_empty() {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)",
        )
        .bind(&plan.blame)
        .bind(UNROUTABLE)
        .execute(&mut *conn)
        .await?;
    }
    if !plan.park.is_empty() {
        let parked_members: Vec<Uuid> = rows
            .iter()
            .filter(|r| plan.park.contains(&r.id))
            .map(|r| r.member_id)
            .collect();
        report.parked += park(conn, &plan.park, &parked_members, UNROUTABLE).await?;
        tracing::warn!(rows = ?plan.park, "parked outbox rows that kept failing; see `memberflow-admin outbox parked`");
    }
    report.attempted = rows.len();
    report.published = plan.delete.len();
    report.blamed = plan.blame.len();
    report.topology_fault = plan.topology_fault;
    report.stopped = stopped;
    Ok(Outcome::Batch(report))
}

/// An outbox row, and whether a parked row of its member holds it back.
#[derive(sqlx::FromRow)]
struct Held {
    #[sqlx(flatten)]
    row: OutboxRow,
    held: bool,
}

/// The error a row that came back unroutable is blamed with.
const UNROUTABLE: &str = "unroutable: no queue is bound for its routing key";

/// Moves the rows `ids`, and every outbox row of `members`, to
/// `outbox_parked`: the rows named get `reason` and one more attempt, the
/// others [`HELD_BEHIND`]. Returns how many rows moved.
async fn park(
    conn: &mut PgConnection,
    ids: &[i64],
    members: &[Uuid],
    reason: &str,
) -> sqlx::Result<usize> {
    let moved = sqlx::query(
        "WITH moved AS (
             DELETE FROM outbox WHERE id = ANY($1) OR member_id = ANY($2) RETURNING *
         )
         INSERT INTO outbox_parked
             (id, event_id, routing_key, member_id, version, payload, occurred_at,
              traceparent, tracestate, attempts, last_error)
         SELECT id, event_id, routing_key, member_id, version, payload, occurred_at,
                traceparent, tracestate, attempts + (id = ANY($1))::int,
                CASE WHEN id = ANY($1) THEN $3 ELSE $4 END
           FROM moved
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(members)
    .bind(reason)
    .bind(HELD_BEHIND)
    .execute(conn)
    .await?;
    Ok(moved.rows_affected() as usize)
}

/// How long opening the leader's connection may take.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's session settings. Leadership is a session-level advisory
/// lock, so it lasts exactly as long as PostgreSQL believes the session is
/// alive:
/// * server-side TCP keepalive (idle 5 s, then 3 probes 2 s apart) ends the
///   session of a leader whose host or network died silently within about
///   11 s, which frees the lock for a standby;
/// * `statement_timeout` and `idle_in_transaction_session_timeout` keep a
///   stuck leader from holding locks or rows.
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
    ])
}

/// Tries to become the relay leader on `conn`.
pub async fn try_lead(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// The background relay of one auth instance.
pub struct Relay {
    metrics: AuthMetrics,
    /// The leader's own session, hardened by [`leader_session`].
    leader_options: PgConnectOptions,
    brokers: Nodes,
    cfg: RelaySettings,
    wake: Arc<RelayWake>,
}

impl Relay {
    /// `wake` is told of the RPC handlers' commits. `db` must
    /// reach PostgreSQL directly (not through a transaction pooler): the
    /// leader lock and LISTEN live in a session.
    pub fn new(
        db: PgConnectOptions,
        brokers: Nodes,
        cfg: RelaySettings,
        wake: Arc<RelayWake>,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            metrics,
            leader_options: leader_session(db, &cfg),
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
        let (wake, backoff) = (self.wake.clone(), self.cfg.backoff);
        // After a (re)connect too: commits may have been missed.
        Some(async move {
            db::listen(listen, NOTIFY_CHANNEL, backoff, shutdown, |_| {
                wake.wake_local()
            })
            .await;
        })
    }

    /// Runs until `shutdown`; an in-flight batch is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retrying = self.cfg.backoff.retrying();
        while !shutdown.is_cancelled() {
            let Some(mut leader) = self.become_leader(&shutdown).await else {
                break;
            };
            tracing::info!("outbox relay is the leader for this database");
            self.metrics.relay_leader.set(1);
            self.wake.set_leading(true);
            let led = self.lead(&mut leader, &shutdown).await;
            self.wake.set_leading(false);
            self.metrics.relay_leader.set(0);
            match led {
                Ok(()) => {
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LEADER_LOCK_KEY)
                        .execute(&mut leader)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "relay lost its database connection; stepping down");
                    // Dropping the connection releases the lock server-side.
                    drop(leader);
                    retrying.wait(&shutdown).await;
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Waits until this instance holds the leader lock, or shutdown. A
    /// standby keeps one connection for its attempts rather than opening one
    /// per attempt.
    async fn become_leader(&self, shutdown: &CancellationToken) -> Option<PgConnection> {
        let mut retrying = self.cfg.backoff.retrying();
        let retry = Duration::from_millis(self.cfg.leader_retry_ms);
        let mut standby: Option<PgConnection> = None;
        loop {
            let conn = match standby.take() {
                Some(c) => Ok(c),
                None => self.connect_leader().await,
            };
            let attempt = match conn {
                Ok(mut c) => match try_lead(&mut c).await {
                    Ok(true) => return Some(c),
                    Ok(false) => {
                        standby = Some(c);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let wait = match attempt {
                Ok(()) => retry,
                Err(e) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "cannot reach the database for the relay lock");
                    retrying.next_delay()
                }
            };
            if !sleep_or_cancel(wait, shutdown).await {
                return None;
            }
        }
    }

    async fn connect_leader(&self) -> sqlx::Result<PgConnection> {
        tokio::time::timeout(
            LEADER_CONNECT_TIMEOUT,
            PgConnection::connect_with(&self.leader_options),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Publishes while leader. Returns `Ok` on shutdown and `Err` when the
    /// leader connection fails (leadership may be lost).
    async fn lead(
        &self,
        leader: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut publisher: Option<Publisher> = None;
        let mut retrying = self.cfg.backoff.retrying();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut topology_warned = None;
        // A step is a few statements and one confirmed batch.
        let step_bound =
            Duration::from_millis(3 * self.cfg.statement_timeout_ms + self.cfg.confirm_timeout_ms);
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let p = match publisher.take() {
                Some(p) if p.is_healthy() => p,
                stale => {
                    if let Some(p) = stale {
                        p.close().await;
                    }
                    match Publisher::connect(&self.brokers).await {
                        Ok(p) => {
                            tracing::info!("relay connected to the broker");
                            p
                        }
                        Err(e) => {
                            tracing::warn!(error.cause_chain = %error_chain(&e), "relay cannot reach the broker; backing off");
                            retrying.wait(shutdown).await;
                            continue;
                        }
                    }
                }
            };
            // Bounded on the client side too: a session that died without a
            // word answers nothing, and this leader must stop, not hang.
            let started = Instant::now();
            let step = tokio::time::timeout(step_bound, relay_once(leader, &p, &self.cfg))
                .await
                .unwrap_or_else(|_| {
                    Err(RelayError::Database(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the leader's database session stopped answering",
                    ))))
                });
            publisher = Some(p);
            match step {
                Ok(Outcome::Empty) => {
                    retrying.reset();
                    tokio::select! {
                        () = self.wake.woken(), if self.cfg.wake_on_commit => {}
                        () = tokio::time::sleep(poll) => {}
                        () = shutdown.cancelled() => {}
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
                                "nothing in the outbox is routable: no queue is bound to member.events yet; keeping every row"
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
                        retrying.wait(shutdown).await;
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
                    retrying.wait(shutdown).await;
                }
            }
        };
        if let Some(p) = publisher {
            p.close().await;
        }
        result
    }
}

/// How often the outbox gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Keeps the outbox gauges current until `shutdown`, with one cheap query
/// per interval rather than one per scrape.
pub async fn watch_outbox(pool: PgPool, metrics: AuthMetrics, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(GAUGES_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let read: sqlx::Result<(i64, f64, i64)> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox),
                    coalesce((SELECT extract(epoch FROM now() - occurred_at)::float8
                                FROM outbox ORDER BY id LIMIT 1), 0),
                    (SELECT count(*) FROM outbox_parked)",
        )
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
    }
}
