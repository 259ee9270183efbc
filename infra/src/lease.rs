//! Leadership as a lease: a row per role (`leases`, in each service's own
//! database) naming its holder, an expiry and an epoch.
//!
//! A holder proves it is alive by renewing; PostgreSQL's clock, not the
//! holder, decides when an unrenewed lease has expired, and a standby then
//! takes it with the next epoch. A session advisory lock cannot do this: a
//! paused process (SIGSTOP) keeps its TCP session, so its lock, for as long as
//! the pause lasts.
//!
//! A resumed ex-holder checks before it acts, twice:
//! * locally, [`Term::is_held`]: its last renewal started less than the lease
//!   ago by its own monotonic clock (which runs on through a pause). The
//!   database's expiry is later than that, so a holder that passes this check
//!   has not been replaced;
//! * in the database, each write it makes is fenced by its epoch
//!   ([`fence`]): the write does nothing unless the lease row still carries
//!   that epoch, and it share-locks the row, so a takeover waits for the
//!   write, or the write sees the takeover.
//!
//! Every statement here is a single statement (no transaction stays open),
//! so a holder paused mid-way holds no row lock that would block a takeover.
use std::{sync::Mutex, time::Duration};

use memberflow_lifecycle::{Start, Ticks};
use memberflow_retry::{Backoff, sleep_or_cancel};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error_chain;

/// The table of leases a service keeps unless it names another
/// ([`Elector::in_table`]).
pub const TABLE: &str = "leases";

/// The fence a holder's writes carry, for leases kept in `table`: a CTE
/// named `lease` with one row while the lease `$1` still has epoch `$2`,
/// share-locked until the statement commits. A fenced write adds `AND EXISTS
/// (SELECT 1 FROM lease)` and selects `EXISTS (SELECT 1 FROM lease)` to learn
/// whether it was still the holder. Its own parameters start at `$3`.
pub fn fence(table: &str) -> String {
    format!("lease AS (SELECT 1 FROM {table} WHERE name = $1 AND epoch = $2 FOR SHARE)")
}

/// How often a holder renews a lease of `ttl`: three tries per lease, so one
/// slow or lost renewal does not cost the lease.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

/// Campaigns for, renews and releases one named lease on behalf of this
/// process. It keeps one connection of its own, so an exhausted service pool
/// never costs it the lease.
#[derive(Debug, Clone)]
pub struct Elector {
    pool: PgPool,
    /// Where the lease row lives ([`TABLE`] unless named).
    table: std::sync::Arc<str>,
    name: &'static str,
    holder: Uuid,
    ttl: Duration,
    retry: Duration,
    backoff: Backoff,
}

impl Elector {
    /// An elector for lease `name` on the database `db` reaches: leases of
    /// `ttl`, standbys retrying every `retry` (and backing off by `backoff`
    /// while the database fails).
    pub fn new(
        db: PgConnectOptions,
        name: &'static str,
        ttl: Duration,
        retry: Duration,
        backoff: Backoff,
    ) -> Self {
        let bound = renew_every(ttl).max(Duration::from_millis(100));
        let options = db.options([("statement_timeout", format!("{}ms", bound.as_millis()))]);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(bound)
            .connect_lazy_with(options);
        Self {
            pool,
            table: TABLE.into(),
            name,
            holder: Uuid::new_v4(),
            ttl,
            retry,
            backoff,
        }
    }

    /// The same elector, for a lease kept in `table` (a name a statement
    /// can hold as it is, schema-qualified or not) rather than [`TABLE`].
    pub fn in_table(self, table: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            table: table.into(),
            ..self
        }
    }

    /// This process's id in the `holder` column.
    pub fn holder(&self) -> Uuid {
        self.holder
    }

    /// Takes the lease if it is free or expired, once. A takeover bumps the
    /// epoch, which fences every write of the previous holder.
    pub async fn try_acquire(&self, shutdown: &CancellationToken) -> sqlx::Result<Option<Term>> {
        let started = Instant::now();
        let epoch: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} AS l (name, holder, epoch, expires_at, acquired_at, renewed_at)
             VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', now(), now())
             ON CONFLICT (name) DO UPDATE
                SET holder = excluded.holder, epoch = l.epoch + 1,
                    expires_at = excluded.expires_at, acquired_at = now(), renewed_at = now()
              WHERE l.expires_at <= now()
             RETURNING epoch",
            self.table
        )))
        .bind(self.name)
        .bind(self.holder)
        .bind(self.ttl.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(epoch.map(|epoch| Term {
            name: self.name,
            epoch,
            valid_until: Mutex::new(started + self.ttl),
            ended: shutdown.child_token(),
        }))
    }

    /// Campaigns until this process holds the lease (`None` on shutdown).
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Term> {
        let mut retrying = self.backoff.retrying();
        loop {
            let wait = match tokio::time::timeout(renew_every(self.ttl), self.try_acquire(shutdown))
                .await
            {
                Ok(Ok(Some(term))) => {
                    tracing::info!(lease = self.name, epoch = term.epoch, holder = %self.holder, "took the lease");
                    return Some(term);
                }
                Ok(Ok(None)) => {
                    retrying.reset();
                    self.retry
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = self.name, error.cause_chain = %error_chain(&e), "cannot reach the database to take the lease");
                    retrying.next_delay()
                }
                Err(_) => {
                    tracing::warn!(lease = self.name, "taking the lease timed out");
                    retrying.next_delay()
                }
            };
            // A retry after each attempt, not a periodic chore: it waits
            // after its work, so a stall cannot bunch attempts.
            if !sleep_or_cancel(wait, shutdown).await {
                return None;
            }
        }
    }

    /// Renews `term` every [`renew_every`] until it ends: `stop` is
    /// cancelled, another holder took the lease, or no renewal succeeded
    /// within the lease (the database was unreachable, or this process was
    /// paused). Ends the term whichever way it ends.
    pub async fn keep(&self, term: &Term, stop: &CancellationToken) {
        let every = renew_every(self.ttl);
        let mut ticks = Ticks::new(every, Start::AfterOnePeriod);
        loop {
            tokio::select! {
                () = ticks.tick() => {}
                () = stop.cancelled() => break,
                () = term.ended.cancelled() => break,
            }
            let started = Instant::now();
            let left = term.valid_until().saturating_duration_since(started);
            if left.is_zero() {
                tracing::warn!(
                    lease = self.name,
                    epoch = term.epoch,
                    "the lease lapsed before it could be renewed (was this process paused, or the database unreachable?); stepping down"
                );
                break;
            }
            match tokio::time::timeout(left.min(every), self.renew(term)).await {
                Ok(Ok(true)) => term.extend(started + self.ttl),
                Ok(Ok(false)) => {
                    tracing::warn!(
                        lease = self.name,
                        epoch = term.epoch,
                        "another instance holds the lease now; stepping down"
                    );
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = self.name, error.cause_chain = %error_chain(&e), "could not renew the lease; retrying")
                }
                Err(_) => tracing::warn!(lease = self.name, "renewing the lease timed out"),
            }
        }
        term.end();
    }

    async fn renew(&self, term: &Term) -> sqlx::Result<bool> {
        let renewed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET expires_at = now() + $3 * interval '1 millisecond', renewed_at = now()
              WHERE name = $1 AND epoch = $2",
            self.table
        )))
        .bind(self.name)
        .bind(term.epoch)
        .bind(self.ttl.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Gives the lease up at once, so a standby need not wait for it to
    /// expire (a clean shutdown or step-down). Bounded: a database that does
    /// not answer just lets it expire.
    pub async fn release(&self, term: &Term) {
        term.end();
        let release = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET expires_at = now() WHERE name = $1 AND epoch = $2",
            self.table
        )))
        .bind(self.name)
        .bind(term.epoch)
        .execute(&self.pool);
        let _ = tokio::time::timeout(Duration::from_secs(1), release).await;
    }
}

/// One tenure of a lease: its epoch, and until when this process may act on
/// it by its own clock.
#[derive(Debug)]
pub struct Term {
    name: &'static str,
    epoch: i64,
    valid_until: Mutex<Instant>,
    /// Cancelled when the term ends, or on shutdown.
    ended: CancellationToken,
}

impl Term {
    /// The lease's name, the first parameter of a [`fence`]d statement.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The fencing token, the second parameter of a [`fence`]d statement.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether this process may still act as the holder: the term has not
    /// ended, and its last renewal started less than the lease ago. Check it
    /// before starting anything new.
    pub fn is_held(&self) -> bool {
        !self.ended.is_cancelled() && Instant::now() < self.valid_until()
    }

    /// Resolves when the term ends (or shutdown comes): wait on it beside
    /// anything long.
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    /// Cancelled when the term ends or at shutdown, for waits that take a
    /// token (a backoff).
    pub fn token(&self) -> &CancellationToken {
        &self.ended
    }

    /// Ends the term: the holder found itself fenced off, or is leaving.
    pub fn end(&self) {
        self.ended.cancel();
    }

    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().expect("lease term poisoned")
    }

    fn extend(&self, until: Instant) {
        let mut valid = self.valid_until.lock().expect("lease term poisoned");
        *valid = (*valid).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(ttl: Duration, shutdown: &CancellationToken) -> Term {
        Term {
            name: "test",
            epoch: 1,
            valid_until: Mutex::new(Instant::now() + ttl),
            ended: shutdown.child_token(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_is_held_until_its_lease_lapses_by_the_local_clock() {
        let shutdown = CancellationToken::new();
        let t = term(Duration::from_secs(6), &shutdown);
        assert!(t.is_held());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.is_held());
        t.extend(Instant::now() + Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.is_held(), "a renewal extends it");
        // A pause: nothing ran, the clock did.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!t.is_held(), "lapsed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_when_ended_or_at_shutdown() {
        let shutdown = CancellationToken::new();
        let (a, b) = (
            term(Duration::from_secs(6), &shutdown),
            term(Duration::from_secs(6), &shutdown),
        );
        a.end();
        assert!(!a.is_held());
        a.ended().await;
        assert!(b.is_held());
        shutdown.cancel();
        assert!(!b.is_held());
        b.ended().await;
    }

    #[test]
    fn an_extension_never_shortens_a_term() {
        let shutdown = CancellationToken::new();
        let t = term(Duration::from_secs(6), &shutdown);
        let before = t.valid_until();
        t.extend(before - Duration::from_secs(1));
        assert_eq!(t.valid_until(), before);
    }
}
