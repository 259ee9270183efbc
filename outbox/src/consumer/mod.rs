//! Consumes a service's queue through its [`Handler`]: task's replica of
//! `member.events`, auth's erasure receipts.
//!
//! * Acks only after the transaction that applied the event has committed.
//! * What to do with each delivery and each batch is decided by the pure
//!   rules in [`plan`]; this module carries them out:
//!   - a transient fault the database reports (see
//!     `memberflow_infra::pg::classify`) retries the batch in-process with
//!     backoff, unacked, for as long as it lasts;
//!   - a permanent one isolates the bad event, which alone is dead-lettered
//!     with its reason in the [`REASON_HEADER`] header;
//!   - a database this instance cannot reach (no connection, or no answer:
//!     a blackholed link) for `amqp.apply_timeout_ms` gives the batch back:
//!     the channel is closed, so the broker hands the unacked messages to
//!     another instance, and this one reattaches once its database answers;
//!   - an unknown event kind is acked and counted.
//! * After a broker restart the consumer reconnects and re-declares topology.
//! * Idempotence is the handler's, through the [`crate::inbox`] in the
//!   transaction that applies the events.
pub mod plan;
pub mod topology;

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use memberflow_infra::amqp;
use memberflow_infra::error_chain;
use memberflow_infra::pg as db;
use memberflow_infra::trace_context;
use memberflow_lifecycle::{CancellationToken, panic_text};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use self::plan::{Outcome, Plan, Poison, Triage};
pub use self::topology::{QueueSpec, declare_queue};
use crate::{
    metrics::{ConsumerMetrics, EventOutcome},
    settings::ConsumerSettings,
};
use memberflow_contract::topology::REASON_HEADER;
use uuid::Uuid;

/// What a service does with the events of its queue: the decisions and the
/// transaction that are its own, inside the consumer's loop.
pub trait Handler: Send + Sync + 'static {
    /// A decoded, validated event.
    type Event: Clone + Send + Sync + 'static;

    /// What a delivery is, from its kind (the AMQP `type`, else the routing
    /// key) and body alone.
    fn triage(&self, kind: &str, body: &[u8]) -> Triage<Self::Event>;

    /// The ordering key of the events (what they are about: a member, an
    /// order), for spans and logs.
    type Key: Ord + std::fmt::Display;

    /// The event's id (the inbox's key) and its ordering key.
    fn ids(event: &Self::Event) -> (Uuid, Self::Key);

    /// Applies `events` in one transaction that also claims their ids in
    /// the [`crate::inbox`] ([`crate::write::Tx::claim`]) and applies only
    /// the fresh ones, so a redelivery changes nothing. An error rolls
    /// all of it back; the consumer retries, isolates or gives back by
    /// [`plan::plan`].
    fn apply(&self, events: &[Self::Event]) -> impl Future<Output = sqlx::Result<Counts>> + Send;
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events not in the inbox before (the rest were duplicates).
    pub fresh: u64,
    /// Fresh events that changed something (the rest were stale).
    pub applied: u64,
}

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Events applied (including duplicates skipped by the inbox).
    pub processed: AtomicU64,
    /// Messages sent to the DLQ (poison, or failing alone for good).
    pub poisoned: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
}

/// How often the DLQ depth gauge is refreshed.
const DLQ_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// How long opening a channel and attaching the consumer (or detaching and
/// closing at shutdown) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// Why a session with the broker ended without a broker error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// An apply went unanswered: the batch was given back.
    DatabaseHung,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Done,
    /// Shutdown came while a transient fault lasted: left unacked.
    Shutdown,
    /// An apply went unanswered: to be given back.
    GiveBack,
}

/// Resolves when the connection reports an error or its events end.
async fn connection_lost(
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Error {
    loop {
        match events.next().await {
            Some(lapin::Event::Error(e)) => return e,
            Some(_) => continue,
            None => return closed(),
        }
    }
}

/// The background consumer of one service instance.
pub struct Consumer<H> {
    handler: Arc<H>,
    spec: QueueSpec,
    /// To probe the database after giving a batch back.
    pool: PgPool,
    metrics: ConsumerMetrics,
    cfg: ConsumerSettings,
    stats: Arc<ConsumerStats>,
    /// Set to `true` while a consumer is attached to the queue.
    attached: watch::Sender<bool>,
    /// The broker nodes; a lost connection resumes on the next one.
    brokers: amqp::Nodes,
}

impl<H: Handler> Consumer<H> {
    /// [`Self::new`] from a service's settings (`amqp.*`).
    pub fn for_service(
        handler: H,
        spec: QueueSpec,
        pool: PgPool,
        settings: &impl crate::settings::OutboxSettings,
        stats: Arc<ConsumerStats>,
        metrics: ConsumerMetrics,
    ) -> Self {
        Self::new(handler, spec, pool, settings.amqp().clone(), stats, metrics)
    }

    pub fn new(
        handler: H,
        spec: QueueSpec,
        pool: PgPool,
        cfg: ConsumerSettings,
        stats: Arc<ConsumerStats>,
        metrics: ConsumerMetrics,
    ) -> Self {
        Self {
            handler: Arc::new(handler),
            spec,
            pool,
            metrics,
            brokers: cfg.nodes(),
            cfg,
            stats,
            attached: watch::Sender::new(false),
        }
    }

    fn set_attached(&self, attached: bool) {
        self.attached.send_replace(attached);
        self.metrics.attached.set(i64::from(attached));
    }

    /// Watches whether the consumer is attached (drives health).
    pub fn attached(&self) -> watch::Receiver<bool> {
        self.attached.subscribe()
    }

    /// The readiness check of a service that consumes: attached, or
    /// detached for less than `amqp.detached_grace_secs` since it last was
    /// (see [`Attachment`]).
    pub fn readiness(&self) -> impl FnMut() -> bool + Send + 'static {
        let attached = self.attached();
        let mut attachment = Attachment::new(Duration::from_secs(self.cfg.detached_grace_secs));
        move || attachment.healthy(*attached.borrow(), std::time::Instant::now())
    }

    /// Consumes until `shutdown`: the batch in hand is finished and acked,
    /// then the consumer is cancelled and the channel closed cleanly.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retrying = self.cfg.backoff.retrying();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::DatabaseHung) => {
                    self.set_attached(false);
                    tracing::warn!(
                        apply_timeout_ms = self.cfg.apply_timeout_ms,
                        "the database did not answer an apply in time; gave the batch back to the broker, detached until the database answers"
                    );
                    // Reattaching first would only take another batch hostage.
                    let mut probing = self.cfg.backoff.retrying();
                    while !db::is_alive(&self.pool).await {
                        if !probing.wait(&shutdown).await {
                            break;
                        }
                    }
                }
                Err(e) => {
                    self.set_attached(false);
                    tracing::warn!(error.cause_chain = %error_chain(&e), "consumer lost the broker; reconnecting");
                    if !retrying.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        self.set_attached(false);
        tracing::info!("consumer stopped");
    }

    /// One connection's worth of consuming: until shutdown, a broker error,
    /// or a batch given back.
    async fn session(&self, shutdown: &CancellationToken) -> lapin::Result<Ended> {
        let conn = self.brokers.connect(self.spec.connection_name).await?;
        // lapin can leave a request pending forever when the socket dies
        // mid-write, so set-up is bounded like the connect.
        let setup = async {
            let channel = conn.create_channel().await?;
            declare_queue(
                &channel,
                &self.spec,
                self.cfg.delivery_limit,
                self.cfg.quorum_group_size(),
            )
            .await?;
            channel
                .basic_qos(self.cfg.prefetch, BasicQosOptions::default())
                .await?;
            // Dead-lettering publishes with confirms on a channel of its own,
            // so the original is acked only once the DLQ holds the copy.
            let dead_letters = conn.create_channel().await?;
            dead_letters
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    self.spec.queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            lapin::Result::Ok((channel, dead_letters, consumer))
        };
        let (channel, dead_letters, consumer) = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| closed())??;
        let tag = consumer.tag();
        self.set_attached(true);
        tracing::info!(queue = self.spec.queue, "consumer attached");
        // The delivery stream does not always end when the socket dies; the
        // connection's events do say so.
        let mut events = Box::pin(conn.events_listener());
        let mut batches = consumer.ready_chunks(self.cfg.batch_max.max(1));
        let mut dlq_every =
            memberflow_lifecycle::Ticks::new(DLQ_GAUGE_EVERY, memberflow_lifecycle::Start::Now);
        let result = loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break Ok(Ended::Shutdown),
                e = connection_lost(&mut events) => break Err(e),
                () = dlq_every.tick() => {
                    // One passive declare per interval, not per scrape.
                    let depth = tokio::time::timeout(
                        SETUP_TIMEOUT,
                        channel.queue_declare(
                            self.spec.dead_letter_queue.into(),
                            QueueDeclareOptions { passive: true, ..Default::default() },
                            FieldTable::default(),
                        ),
                    )
                    .await;
                    if let Ok(Ok(q)) = depth {
                        self.metrics.dlq_messages.set(i64::from(q.message_count()));
                    }
                    continue;
                }
                b = batches.next() => b,
            };
            let Some(batch) = batch else {
                break Err(closed());
            };
            let deliveries = batch.into_iter().collect::<lapin::Result<Vec<_>>>()?;
            // Acks on a dead socket may never resolve either. Abandoning the
            // batch is safe: it was not acked, so it is redelivered, and the
            // inbox turns whatever was already applied into a no-op.
            let settled = tokio::select! {
                r = self.process(deliveries, &dead_letters, shutdown) => r?,
                e = connection_lost(&mut events) => break Err(e),
            };
            match settled {
                Settled::Done => {}
                // Shutdown while a fault lasted: leave the batch unacked.
                Settled::Shutdown => break Ok(Ended::Shutdown),
                // Closing the channel below returns every unacked delivery.
                Settled::GiveBack => break Ok(Ended::DatabaseHung),
            }
        };
        if result.is_ok() {
            // Bounded: a dead connection never answers, and shutdown must end.
            let goodbye = async {
                let _ = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await;
                let _ = dead_letters.close(200, "consumer stopping".into()).await;
                let _ = channel.close(200, "consumer stopping".into()).await;
                let _ = conn.close(200, "consumer stopping".into()).await;
            };
            let _ = tokio::time::timeout(SETUP_TIMEOUT, goodbye).await;
        }
        result
    }

    /// Settles one batch of deliveries as [`plan`] decides. What is not
    /// settled when it returns early (shutdown while a transient fault
    /// lasted, or a hung apply) stays unacked.
    async fn process(
        &self,
        deliveries: Vec<Delivery>,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> lapin::Result<Settled> {
        let mut batch = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            // The kind is the `type` property the relay sets, else the routing
            // key: a replayed message arrives with the queue's name as its key.
            let kind = d
                .properties
                .kind()
                .as_ref()
                .map_or(d.routing_key.as_str(), |k| k.as_str());
            // A triage that panics (a bug one body triggers) would end the
            // consumer, and the process, on every instance the message is
            // redelivered to: it is poison instead.
            let triaged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handler.triage(kind, &d.data)
            }))
            .unwrap_or_else(|panic| Triage::Poison(Poison::Panicked(panic_text(panic.as_ref()))));
            match triaged {
                Triage::Apply(event) => batch.push((d, event)),
                Triage::Unknown(kind) => {
                    self.metrics.events(EventOutcome::unknown, 1);
                    tracing::info!(routing_key = %kind, message_id = ?d.properties.message_id(), "skipping an event kind this version does not know");
                    d.acker.ack(BasicAckOptions::default()).await?;
                }
                Triage::Poison(reason) => {
                    self.dead_letter(dead_letters, &d, &reason.to_string())
                        .await?;
                }
            }
        }
        if batch.is_empty() {
            return Ok(Settled::Done);
        }
        let give_back_after = Duration::from_millis(self.cfg.apply_timeout_ms);
        // Since when the current part has found the database unreachable.
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        // Parts still to settle, in delivery order: the whole batch first,
        // single events after an isolation.
        let mut parts: VecDeque<&[(Delivery, H::Event)]> = VecDeque::from([batch.as_slice()]);
        let mut retrying = self.cfg.backoff.retrying();
        while let Some(&part) = parts.front() {
            let events: Vec<H::Event> = part.iter().map(|(_, e)| e.clone()).collect();
            let span = apply_span::<H>(&self.spec, part);
            let started = tokio::time::Instant::now();
            // Bounded so that the whole time unreachable stays within
            // `give_back_after`: an apply on a blackholed link never ends.
            let bound = give_back_after
                .saturating_sub(unreachable_since.map_or(Duration::ZERO, |since| started - since));
            // The apply runs on a task of its own and is never cancelled
            // mid-flight: a connection lost to the broker (which drops this
            // batch) or the bound below only stop the waiting. Cancelling
            // it could return a pooled connection to the pool inside the
            // transaction it had begun (BEGIN sent, no ROLLBACK), where the
            // next autocommit statement, a CreateTask, would never commit:
            // the nemesis found acknowledged tasks lost so.
            let apply = {
                let (handler, events) = (self.handler.clone(), events.clone());
                // Counted to the consumer's worker (worker_poll_seconds_total).
                memberflow_lifecycle::spawn(
                    async move { handler.apply(&events).await }.instrument(span.clone()),
                )
            };
            let outcome = match tokio::time::timeout(bound, apply).await {
                // Cancelled, not panicked: only as the runtime shuts down.
                // Left unacked, for redelivery.
                Ok(Err(joined)) if joined.is_cancelled() => return Ok(Settled::Shutdown),
                // A panic in the handler: a bug these events trigger, which
                // every redelivery would trigger again. Its transaction was
                // dropped with the task, so rolled back.
                Ok(Err(joined)) => Outcome::Panicked {
                    message: memberflow_lifecycle::panic_message(joined),
                },
                Ok(Ok(Ok(counts))) => {
                    unreachable_since = None;
                    span.in_scope(|| tracing::debug!(applied = counts.applied, "applied"));
                    let m = &self.metrics;
                    m.events(EventOutcome::applied, counts.applied);
                    m.events(
                        EventOutcome::stale,
                        counts.fresh.saturating_sub(counts.applied),
                    );
                    m.events(
                        EventOutcome::duplicate,
                        (events.len() as u64).saturating_sub(counts.fresh),
                    );
                    Outcome::Committed
                }
                Err(_) => Outcome::Unreachable {
                    for_: unreachable_since.get_or_insert(started).elapsed(),
                    reason: "no answer from the database within amqp.apply_timeout_ms".into(),
                },
                Ok(Ok(Err(e))) if db::is_unreachable(&e) => Outcome::Unreachable {
                    for_: unreachable_since.get_or_insert(started).elapsed(),
                    reason: error_chain(&e),
                },
                Ok(Ok(Err(e))) => {
                    unreachable_since = None;
                    Outcome::Failed {
                        fault: db::classify(&e),
                        reason: error_chain(&e),
                    }
                }
            };
            match plan::plan(part.len(), &outcome, give_back_after) {
                Plan::Ack => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .processed
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    // Deliveries on one channel are acked in order, and all
                    // before this part are settled: one multiple-ack will do.
                    let (last, _) = part.last().expect("parts are never empty");
                    last.acker
                        .ack(BasicAckOptions {
                            multiple: part.len() > 1,
                        })
                        .await?;
                    parts.pop_front();
                    retrying.reset();
                }
                Plan::Retry => {
                    self.metrics.retries.inc();
                    if let Outcome::Failed { reason, .. } | Outcome::Unreachable { reason, .. } =
                        &outcome
                    {
                        span.in_scope(|| tracing::warn!(error.cause_chain = %reason, "transient database fault; retrying the batch"));
                    }
                    if !retrying.wait(shutdown).await {
                        return Ok(Settled::Shutdown);
                    }
                }
                Plan::GiveBack => {
                    self.metrics.given_back.inc();
                    return Ok(Settled::GiveBack);
                }
                Plan::Isolate => {
                    span.in_scope(|| match &outcome {
                        Outcome::Panicked { message } => tracing::error!(
                            panic.message = %message,
                            "the apply panicked (a bug); applying the batch's events one by one to dead-letter the one that panics"
                        ),
                        _ => tracing::warn!("batch failed; applying its events one by one"),
                    });
                    parts.pop_front();
                    for i in (0..part.len()).rev() {
                        parts.push_front(&part[i..=i]);
                    }
                }
                Plan::DeadLetter(reason) => {
                    self.dead_letter(dead_letters, &part[0].0, &reason).await?;
                    parts.pop_front();
                }
            }
        }
        Ok(Settled::Done)
    }

    /// Copies `d` to the dead-letter exchange with its properties, headers
    /// and routing key, plus [`REASON_HEADER`]; acks the original once the
    /// broker has confirmed the copy.
    async fn dead_letter(
        &self,
        channel: &Channel,
        d: &Delivery,
        reason: &str,
    ) -> lapin::Result<()> {
        self.stats.poisoned.fetch_add(1, Ordering::Relaxed);
        self.metrics.events(EventOutcome::poison, 1);
        tracing::warn!(
            reason,
            routing_key = %d.routing_key,
            message_id = ?d.properties.message_id(),
            "dead-lettering a message that cannot be applied"
        );
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let properties = d.properties.clone().with_headers(headers);
        let confirm = tokio::time::timeout(SETUP_TIMEOUT, async {
            channel
                .basic_publish(
                    self.spec.dead_letter_exchange.into(),
                    d.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    properties,
                )
                .await?
                .await
        })
        .await
        .map_err(|_| closed())??;
        if !confirm.is_ack() {
            // Not in the DLQ: leave the original to be redelivered.
            return Err(closed());
        }
        d.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

/// Whether the consumer counts as healthy: attached, or detached for less
/// than a grace period since it was last attached (a broker restart should
/// not flap every instance out of a load balancer). Never healthy before its
/// first attach.
#[derive(Debug)]
pub struct Attachment {
    grace: Duration,
    ever_attached: bool,
    detached_since: Option<std::time::Instant>,
}

impl Attachment {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            ever_attached: false,
            detached_since: None,
        }
    }

    /// Records whether the consumer is attached `now`; returns whether that
    /// is healthy.
    pub fn healthy(&mut self, attached: bool, now: std::time::Instant) -> bool {
        if attached {
            self.ever_attached = true;
            self.detached_since = None;
            return true;
        }
        let since = *self.detached_since.get_or_insert(now);
        self.ever_attached && now.duration_since(since) < self.grace
    }
}

/// The span of one apply: how many events, the range of their keys, and
/// the trace: it continues the events' trace when they share one, and links
/// to each trace otherwise.
fn apply_span<H: Handler>(spec: &QueueSpec, part: &[(Delivery, H::Event)]) -> tracing::Span {
    let first = part.iter().map(|(_, e)| H::ids(e).1).min();
    let last = part.iter().map(|(_, e)| H::ids(e).1).max();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {}", spec.exchange),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = spec.queue,
        messaging.batch.message_count = part.len(),
        events = part.len(),
        key.first = tracing::field::Empty,
        key.last = tracing::field::Empty,
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let (Some(first), Some(last)) = (first, last) {
        span.record("key.first", tracing::field::display(first));
        span.record("key.last", tracing::field::display(last));
    }
    if let [(_, one)] = part {
        span.record("event_id", tracing::field::display(H::ids(one).0));
    }
    let contexts: Vec<SpanContext> = part
        .iter()
        .map(|(d, _)| {
            trace_context::context_of(&trace_of(d))
                .span()
                .span_context()
                .clone()
        })
        .filter(SpanContext::is_valid)
        .collect();
    let one_trace = contexts
        .first()
        .is_some_and(|c| contexts.iter().all(|o| o.trace_id() == c.trace_id()));
    if one_trace {
        let parent = trace_context::context_of(&trace_of(&part[0].0));
        trace_context::continue_trace(&span, parent);
    } else {
        for context in contexts {
            span.add_link(context);
        }
        trace_context::record_trace_id(&span);
    }
    span
}

/// The trace context a delivery carries in its headers.
fn trace_of(d: &Delivery) -> trace_context::Carrier {
    let header = |name: &str| {
        d.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name).cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            })
    };
    trace_context::Carrier {
        traceparent: header(trace_context::TRACEPARENT),
        tracestate: header(trace_context::TRACESTATE),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Attachment;

    #[test]
    fn healthy_while_attached_or_briefly_detached_never_before_the_first_attach() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut a = Attachment::new(Duration::from_secs(10));
        assert!(!a.healthy(false, s(0)), "not yet attached");
        assert!(a.healthy(true, s(1)));
        assert!(a.healthy(false, s(2)), "detached, within the grace");
        assert!(a.healthy(false, s(11)));
        assert!(!a.healthy(false, s(12)), "detached past the grace");
        assert!(a.healthy(true, s(13)), "back");
        assert!(a.healthy(false, s(14)), "a new grace");
    }
}
