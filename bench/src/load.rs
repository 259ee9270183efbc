//! Load generators. The closed loop keeps `concurrency` operations in flight
//! (throughput); the open loop starts operations on a fixed schedule whether
//! or not earlier ones have finished, so a slow system cannot slow the
//! offered rate down and hide its own latency.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};

use crate::stats::{Latency, rate};

/// What a load run observed.
pub(crate) struct Run<T> {
    /// Latency of each operation, as the caller saw it.
    pub(crate) latency: Latency,
    /// Completed operations per second of wall time.
    pub(crate) per_sec: f64,
    /// Each operation's result, in completion order.
    pub(crate) values: Vec<T>,
}

/// `n` operations from `concurrency` workers, each issuing the next as soon as
/// its previous one returns. `op(i)` runs operation `i`; any error fails the run.
pub(crate) async fn closed_loop<T, F, Fut>(
    concurrency: usize,
    n: usize,
    op: F,
) -> anyhow::Result<Run<T>>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(done);
                }
                let t = Instant::now();
                let v = op(i).await?;
                done.push((t.elapsed(), v));
            }
        });
    }
    collect(workers, start, n).await
}

/// Operations started at `per_sec` for `duration`, each in its own task.
pub(crate) async fn open_loop<T, F, Fut>(
    per_sec: f64,
    duration: Duration,
    op: F,
) -> anyhow::Result<Run<T>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let n = (per_sec * duration.as_secs_f64()).round() as usize;
    let period = Duration::from_secs_f64(1.0 / per_sec);
    let start = Instant::now();
    let mut ops = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let fut = op(i);
        ops.spawn(async move {
            let t = Instant::now();
            let v = fut.await?;
            anyhow::Ok(vec![(t.elapsed(), v)])
        });
    }
    collect(ops, start, n).await
}

async fn collect<T: 'static>(
    mut tasks: JoinSet<anyhow::Result<Vec<(Duration, T)>>>,
    start: Instant,
    n: usize,
) -> anyhow::Result<Run<T>> {
    let mut latencies = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        for (d, v) in done?? {
            latencies.push(d);
            values.push(v);
        }
    }
    let elapsed = start.elapsed();
    Ok(Run {
        latency: Latency::of(&latencies),
        per_sec: rate(values.len(), elapsed),
        values,
    })
}
