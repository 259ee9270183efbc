//! How a commit that wrote outbox rows reaches the relay leader.
//!
//! The leader is this process or another instance of the service on the
//! same database. While this process leads, an in-process [`Notify`] wakes
//! its relay at once. While another instance leads, this process sends a
//! NOTIFY on the service's channel (`auth_outbox`, `task_outbox`), which
//! every relay LISTENs to, from one background task that coalesces: one
//! NOTIFY covers every commit before it.
//!
//! Why not a trigger on the outbox, as before: PostgreSQL serialises the
//! commits of all transactions that sent a NOTIFY on one lock, held through
//! each commit's WAL flush. With a statement trigger, every signup took that
//! lock; at 32 clients the bare signup transaction ran at 0.63× its rate
//! without the trigger (bench, 2026-11-29). Here the NOTIFY is its own small
//! transaction, off the RPC's path, with `synchronous_commit` off (a wake-up
//! need not be durable: the relay's poll is the backstop), and none is sent
//! at all while this process leads.
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use memberflow_infra::error_chain;
use memberflow_lifecycle::CancellationToken;
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use tokio::sync::Notify;

/// Wakes the relay leader, wherever it runs. One per process, shared by the
/// writers (which call [`Self::committed`]) and the relay.
#[derive(Debug, Default)]
pub struct RelayWake {
    /// False for a pure polling relay (`relay.wake_on_commit = false`).
    enabled: bool,
    /// The NOTIFY channel of the service's relays.
    channel: &'static str,
    /// Whether this process's relay holds the leader lock.
    leading: AtomicBool,
    /// Wakes this process's relay.
    local: Notify,
    /// Asks the notifier task for a NOTIFY to the other instances.
    remote: Notify,
}

impl RelayWake {
    /// A wake for the relays that LISTEN on `channel`.
    pub fn new(enabled: bool, channel: &'static str) -> Arc<Self> {
        Arc::new(Self {
            enabled,
            channel,
            ..Self::default()
        })
    }

    /// A wake that wakes nothing (a pure polling relay, or a tool).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// After a commit that wrote outbox rows.
    pub fn committed(&self) {
        if !self.enabled {
            return;
        }
        if self.leading.load(Ordering::Acquire) {
            self.local.notify_one();
        } else {
            self.remote.notify_one();
        }
    }

    /// Wakes this process's relay (its LISTEN heard a NOTIFY).
    pub(crate) fn wake_local(&self) {
        self.local.notify_one();
    }

    /// Waits for a wake-up of this process's relay.
    pub(crate) async fn woken(&self) {
        self.local.notified().await;
    }

    /// Called by the relay as it takes or gives up the leader lock. A commit
    /// that raced a step-down is not lost: a new leader reads the whole
    /// outbox first.
    pub(crate) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    /// Sends the NOTIFYs the other instances' relays wait for, until
    /// `shutdown`. A failed NOTIFY is counted in `failures` and logged; the
    /// leader's poll (`relay.poll_interval_ms`) publishes the rows anyway.
    pub async fn run_notifier(
        self: Arc<Self>,
        pool: PgPool,
        failures: Counter,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = self.remote.notified() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = notify(&pool, self.channel).await {
                failures.inc();
                tracing::warn!(error.cause_chain = %error_chain(&e), "could not wake the relay leader in another instance; it will poll");
            }
        }
    }
}

/// One NOTIFY on `channel` in its own transaction, not waiting for the WAL
/// flush. Also what `memberflow-admin outbox replay` sends after it moves
/// rows back.
pub async fn notify(pool: &PgPool, channel: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `notify` holds a stored permit; a zero timeout polls once.
    async fn pending(notify: &Notify) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, notify.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_leader_wakes_itself_and_a_standby_notifies() {
        let wake = RelayWake::new(true, "test_outbox");
        wake.set_leading(true);
        wake.committed();
        assert!(pending(&wake.local).await && !pending(&wake.remote).await);
        wake.set_leading(false);
        wake.committed();
        assert!(pending(&wake.remote).await && !pending(&wake.local).await);
    }

    #[tokio::test]
    async fn a_disabled_wake_sends_nothing() {
        let wake = RelayWake::new(false, "test_outbox");
        wake.set_leading(true);
        wake.committed();
        // A zero timeout polls once: a stored permit would complete it.
        let woken = tokio::time::timeout(std::time::Duration::ZERO, wake.woken());
        assert!(woken.await.is_err(), "a polling relay is not woken");
    }

    #[tokio::test]
    async fn a_leaders_commit_wakes_its_relay() {
        let wake = RelayWake::new(true, "test_outbox");
        wake.set_leading(true);
        wake.committed();
        // The permit is stored: the relay sees it even if it waits later.
        wake.woken().await;
    }
}
