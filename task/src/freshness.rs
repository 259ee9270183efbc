//! Read-your-writes: a CreateTask that needs the replica at a version it
//! does not hold yet waits for it, woken by the apply that brings it (not by
//! polling), for at most `consistency.wait_ms`.
//!
//! * In this instance the consumer reports each replica row it moved
//!   ([`Freshness::applied`]).
//! * Other instances' applies arrive by LISTEN/NOTIFY on [`CHANNEL`] in
//!   task's database: the apply statement notifies `member:version,…` (or an
//!   empty payload for large batches, which makes every waiter re-check).
//!
//! The `RetryInfo` a USER_NOT_READY carries is sized from the replication
//! lag measured here: the recent p99 plus a margin, within bounds.
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::sync::watch;
use uuid::Uuid;

/// The NOTIFY channel replica applies are announced on.
pub const CHANNEL: &str = "task_replica";
/// The apply statement's last step: announces the rows of its `changed`
/// CTE (columns `id`, `version`) on [`CHANNEL`] as `member:version,…`, which
/// [`parse_payload`] reads; more than 100 rows send an empty payload, which
/// makes every waiter re-check. Sent at commit, so waiters never see an
/// uncommitted row.
pub const NOTIFY_APPLIED_SQL: &str = "SELECT pg_notify('task_replica', CASE WHEN count(*) <= 100
                 THEN string_agg(id::text || ':' || version, ',') ELSE '' END)
               FROM changed HAVING count(*) > 0";
/// Replication lags kept for sizing `RetryInfo`.
const LAGS_KEPT: usize = 1024;
/// Added to the lag p99 for `RetryInfo`.
const MARGIN: Duration = Duration::from_millis(5);

/// Who waits for which member, and the recent replication lags.
#[derive(Debug, Default)]
pub struct Freshness {
    waiters: Mutex<HashMap<Uuid, watch::Sender<i64>>>,
    lags: Mutex<VecDeque<f64>>,
}

impl Freshness {
    /// The replica row of `member` moved to `version`.
    pub fn applied(&self, member: Uuid, version: i64) {
        let waiters = self.waiters.lock().expect("waiters lock");
        if let Some(tx) = waiters.get(&member) {
            tx.send_if_modified(|seen| {
                let newer = version > *seen;
                *seen = (*seen).max(version);
                newer
            });
        }
    }

    /// Something was applied that cannot be named (another instance's large
    /// batch, or a LISTEN reconnect): every waiter re-checks.
    pub fn applied_unnamed(&self) {
        for tx in self.waiters.lock().expect("waiters lock").values() {
            tx.send_modify(|_| {});
        }
    }

    /// Members being waited for right now (tests and logs).
    pub fn waiting(&self) -> usize {
        self.waiters
            .lock()
            .expect("waiters lock")
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }

    /// Starts watching `member`: the returned [`Watch`] wakes on every
    /// apply of a newer version. Watch before reading the replica, so an
    /// apply in between is not missed.
    pub fn watch(&self, member: Uuid) -> Watch<'_> {
        let rx = self
            .waiters
            .lock()
            .expect("waiters lock")
            .entry(member)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watch {
            freshness: self,
            member,
            rx: Some(rx),
        }
    }

    /// Records one applied event's replication lag, in seconds.
    pub fn observe_lag(&self, seconds: f64) {
        let mut lags = self.lags.lock().expect("lags lock");
        if lags.len() == LAGS_KEPT {
            lags.pop_front();
        }
        lags.push_back(seconds);
    }

    /// The `RetryInfo` delay to send now (see [`retry_delay`]).
    pub fn retry_after(&self, min: Duration, max: Duration) -> Duration {
        let lags: Vec<f64> = self
            .lags
            .lock()
            .expect("lags lock")
            .iter()
            .copied()
            .collect();
        retry_delay(&lags, min, max)
    }

    /// Handles one NOTIFY payload (`None` after a LISTEN reconnect).
    pub fn notified(&self, payload: Option<&str>) {
        match payload.map(parse_payload) {
            Some(Some(applied)) => {
                for (member, version) in applied {
                    self.applied(member, version);
                }
            }
            _ => self.applied_unnamed(),
        }
    }
}

/// One caller waiting for applies of one member; forgets the member when
/// the last watcher goes.
#[derive(Debug)]
pub struct Watch<'a> {
    freshness: &'a Freshness,
    member: Uuid,
    rx: Option<watch::Receiver<i64>>,
}

impl Watch<'_> {
    /// Whether an apply came before `deadline` (then read the replica again).
    pub async fn changed_before(&mut self, deadline: tokio::time::Instant) -> bool {
        let rx = self.rx.as_mut().expect("present until drop");
        matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut waiters = self.freshness.waiters.lock().expect("waiters lock");
        if waiters
            .get(&self.member)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            waiters.remove(&self.member);
        }
    }
}

/// The retry delay for a client: the p99 of recent replication lags plus a
/// margin, within `[min, max]`; `min` before any lag is known.
pub fn retry_delay(lags: &[f64], min: Duration, max: Duration) -> Duration {
    if lags.is_empty() {
        return min;
    }
    let mut sorted = lags.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1];
    (Duration::from_secs_f64(p99.max(0.0)) + MARGIN).clamp(min, max.max(min))
}

/// `member:version,…`, as the apply statement notifies; `None` for an empty
/// or unreadable payload.
fn parse_payload(payload: &str) -> Option<Vec<(Uuid, i64)>> {
    if payload.is_empty() {
        return None;
    }
    payload
        .split(',')
        .map(|pair| {
            let (id, version) = pair.split_once(':')?;
            Some((Uuid::parse_str(id).ok()?, version.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_follows_the_lag_p99_within_bounds() {
        let (min, max) = (Duration::from_millis(5), Duration::from_millis(500));
        assert_eq!(retry_delay(&[], min, max), min);
        let mut lags = vec![0.002; 99];
        lags.push(0.040);
        // p99 of 100 samples is the 99th: 2 ms, plus the 5 ms margin.
        assert_eq!(retry_delay(&lags, min, max), Duration::from_millis(7));
        lags.extend([0.040; 10]);
        assert_eq!(retry_delay(&lags, min, max), Duration::from_millis(45));
        assert_eq!(retry_delay(&[30.0], min, max), max);
    }

    #[test]
    fn payloads_name_members_or_ask_everyone_to_recheck() {
        let id = Uuid::now_v7();
        assert_eq!(parse_payload(&format!("{id}:3")), Some(vec![(id, 3)]));
        assert_eq!(parse_payload(""), None);
        assert_eq!(parse_payload("garbage"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_apply_wakes_its_waiter_and_only_a_newer_version_counts() {
        let f = Freshness::default();
        let id = Uuid::now_v7();
        let soon = || tokio::time::Instant::now() + Duration::from_millis(10);
        let mut w = f.watch(id);
        assert_eq!(f.waiting(), 1);
        f.applied(id, 2);
        assert!(w.changed_before(soon()).await);
        f.applied(id, 1);
        assert!(
            !w.changed_before(soon()).await,
            "an older version wakes nobody"
        );
        f.applied_unnamed();
        assert!(w.changed_before(soon()).await);
        drop(w);
        assert_eq!(f.waiting(), 0, "the last watcher forgets the member");
    }

    #[test]
    fn the_notify_statement_names_this_channel() {
        assert!(NOTIFY_APPLIED_SQL.contains(&format!("pg_notify('{CHANNEL}'")));
    }
}
