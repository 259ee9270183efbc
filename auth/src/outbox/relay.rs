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
//! other instances' commits; a slow poll catches anything missed.
use std::{sync::Arc, time::Duration};

use memberflow_common::{retry::Backoff, shutdown::CancellationToken, telemetry::error_chain};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool, postgres::PgListener};
use tokio::sync::Notify;

use super::{
    OutboxRow,
    publisher::{Publisher, Stop},
};
use crate::settings::RelaySettings;

/// Advisory lock key of the relay leader ("memberfr" as bytes).
pub const LEADER_LOCK_KEY: i64 = 0x6d65_6d62_6572_6672;
/// NOTIFY channel the outbox trigger signals on.
pub const NOTIFY_CHANNEL: &str = "auth_outbox";

/// What one step of the relay did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This many rows were confirmed and deleted.
    Published(usize),
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
    #[error("{published} published, then stopped: {reason}")]
    Incomplete { published: usize, reason: Stop },
}

/// Publishes one batch: reads the oldest rows, publishes them with pipelined
/// confirms, and deletes the confirmed prefix. `conn` must be the leader's.
pub async fn relay_once(
    conn: &mut PgConnection,
    publisher: &Publisher,
    batch_size: i64,
    confirm_timeout: Duration,
) -> Result<Outcome, RelayError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT id, event_id, routing_key, member_id, version, payload, occurred_at
           FROM outbox ORDER BY id LIMIT $1",
    )
    .bind(batch_size)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Outcome::Empty);
    }
    let result = publisher.publish_batch(&rows, confirm_timeout).await?;
    let ids: Vec<i64> = rows[..result.confirmed].iter().map(|r| r.id).collect();
    if !ids.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
    }
    match result.stopped {
        None => Ok(Outcome::Published(ids.len())),
        Some(reason) => Err(RelayError::Incomplete {
            published: ids.len(),
            reason,
        }),
    }
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
    pool: PgPool,
    amqp_url: SecretString,
    cfg: RelaySettings,
    wake: Arc<Notify>,
}

impl Relay {
    /// `wake` is notified by the RPC handlers after each commit.
    pub fn new(
        pool: PgPool,
        amqp_url: SecretString,
        cfg: RelaySettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            amqp_url,
            cfg,
            wake,
        }
    }

    /// Runs until `shutdown`; an in-flight batch is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.cfg.wake_on_commit {
            tokio::spawn(forward_notifications(
                self.pool.clone(),
                self.wake.clone(),
                self.cfg.backoff,
                shutdown.clone(),
            ));
        }
        let mut delays = self.cfg.backoff.delays();
        while !shutdown.is_cancelled() {
            let Some(mut leader) = self.become_leader(&shutdown).await else {
                break;
            };
            tracing::info!("outbox relay is the leader for this database");
            match self.lead(&mut leader, &shutdown).await {
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
                    sleep_or_cancel(delays.next(), &shutdown).await;
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Waits until this instance holds the leader lock, or shutdown.
    async fn become_leader(&self, shutdown: &CancellationToken) -> Option<PgConnection> {
        let mut delays = self.cfg.backoff.delays();
        let retry = Duration::from_millis(self.cfg.leader_retry_ms);
        loop {
            let attempt = async {
                let mut conn = self.pool.acquire().await?.detach();
                let led = try_lead(&mut conn).await?;
                Ok::<_, sqlx::Error>(led.then_some(conn))
            };
            let wait = match attempt.await {
                Ok(Some(conn)) => return Some(conn),
                Ok(None) => Some(retry),
                Err(e) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "cannot reach the database for the relay lock");
                    delays.next()
                }
            };
            if !sleep_or_cancel(wait, shutdown).await {
                return None;
            }
        }
    }

    /// Publishes while leader. Returns `Ok` on shutdown and `Err` when the
    /// leader connection fails (leadership may be lost).
    async fn lead(
        &self,
        leader: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut publisher: Option<Publisher> = None;
        let mut delays = self.cfg.backoff.delays();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let confirm_timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
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
                    match Publisher::connect(self.amqp_url.expose_secret()).await {
                        Ok(p) => {
                            tracing::info!("relay connected to the broker");
                            p
                        }
                        Err(e) => {
                            tracing::warn!(error.cause_chain = %error_chain(&e), "relay cannot reach the broker; backing off");
                            sleep_or_cancel(delays.next(), shutdown).await;
                            continue;
                        }
                    }
                }
            };
            let step = relay_once(leader, &p, self.cfg.batch_size, confirm_timeout).await;
            publisher = Some(p);
            match step {
                Ok(Outcome::Published(n)) => {
                    tracing::debug!(published = n, "relayed a batch");
                    delays = self.cfg.backoff.delays();
                }
                Ok(Outcome::Empty) => {
                    delays = self.cfg.backoff.delays();
                    tokio::select! {
                        () = self.wake.notified(), if self.cfg.wake_on_commit => {}
                        () = tokio::time::sleep(poll) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Err(RelayError::Database(e)) => break Err(e),
                Err(e @ RelayError::Broker(_)) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "publish failed; reconnecting");
                    if let Some(p) = publisher.take() {
                        p.close().await;
                    }
                    sleep_or_cancel(delays.next(), shutdown).await;
                }
                Err(e @ RelayError::Incomplete { reason, .. }) => {
                    tracing::warn!(error.message = %e, "batch not fully confirmed; retrying the rest");
                    if reason.suspect_connection()
                        && let Some(p) = publisher.take()
                    {
                        p.close().await;
                    }
                    sleep_or_cancel(delays.next(), shutdown).await;
                }
            }
        };
        if let Some(p) = publisher {
            p.close().await;
        }
        result
    }
}

/// Forwards NOTIFYs on [`NOTIFY_CHANNEL`] into `wake`. After (re)connecting it
/// wakes the relay once, since notifications may have been missed meanwhile.
async fn forward_notifications(
    pool: PgPool,
    wake: Arc<Notify>,
    backoff: Backoff,
    shutdown: CancellationToken,
) {
    let mut delays = backoff.delays();
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                delays = backoff.delays();
                wake.notify_one();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        n = l.recv() => match n {
                            Ok(_) => wake.notify_one(),
                            Err(e) => {
                                tracing::warn!(error.cause_chain = %error_chain(&e), "outbox LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error.cause_chain = %error_chain(&e), "cannot LISTEN for outbox notifications");
            }
        }
        sleep_or_cancel(delays.next(), &shutdown).await;
    }
}

/// Sleeps for `d` (a missing delay means the cap was reached: 5 s); returns
/// `false` if shutdown came first.
async fn sleep_or_cancel(d: Option<Duration>, shutdown: &CancellationToken) -> bool {
    let d = d.unwrap_or(Duration::from_secs(5));
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.cancelled() => false,
    }
}
