//! Consumes `member.events` into the replica.
//!
//! * Acks only after the transaction that applied the event has committed.
//! * Poison (undecodable or invalid) goes straight to the dead-letter queue
//!   with `basic.reject(requeue = false)`: never a hot requeue loop.
//! * While the database is unreachable the batch is retried in-process with
//!   backoff and stays unacknowledged; a message failing for another reason
//!   is requeued, and the quorum queue's delivery limit dead-letters it.
//! * After a broker restart the consumer reconnects and re-declares topology.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Channel, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use memberflow_common::{
    amqp::{self, EXCHANGE, MEMBER_CREATED, MEMBER_UPDATED},
    grpc::from_timestamp,
    proto::auth::v1 as pb,
    shutdown::CancellationToken,
    telemetry::error_chain,
};
use prost::Message;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    replica::{self, MemberEvent},
    settings::AmqpSettings,
};

/// The queue task consumes, bound to `member.events` with `member.*`.
pub const QUEUE: &str = "task.member-events";
/// Where poison and exhausted messages go.
pub const DEAD_LETTER_EXCHANGE: &str = "task.member-events.dlx";
/// The dead-letter queue; inspect it with `rabbitmqctl list_queues`.
pub const DEAD_LETTER_QUEUE: &str = "task.member-events.dlq";

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Events applied (including duplicates skipped by the inbox).
    pub processed: AtomicU64,
    /// Messages sent to the DLQ as poison.
    pub poisoned: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
}

/// Why a message is poison.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("unknown routing key {0:?}")]
    UnknownRoutingKey(String),
    #[error("body is not a valid protobuf event: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Decodes and validates one delivery.
pub fn decode(routing_key: &str, body: &[u8]) -> Result<MemberEvent, Poison> {
    let (event_id, member_id, nickname, region, version, occurred_at) = match routing_key {
        MEMBER_CREATED => {
            let e = pb::MemberCreated::decode(body)?;
            (
                e.event_id,
                e.member_id,
                e.nickname,
                e.region,
                e.version,
                e.occurred_at,
            )
        }
        MEMBER_UPDATED => {
            let e = pb::MemberUpdated::decode(body)?;
            (
                e.event_id,
                e.member_id,
                e.nickname,
                e.region,
                e.version,
                e.occurred_at,
            )
        }
        other => return Err(Poison::UnknownRoutingKey(other.to_owned())),
    };
    let invalid = |field, reason| Poison::Invalid { field, reason };
    let event_id = Uuid::parse_str(&event_id).map_err(|_| invalid("event_id", "not a UUID"))?;
    let member_id = Uuid::parse_str(&member_id).map_err(|_| invalid("member_id", "not a UUID"))?;
    if version < 1 {
        return Err(invalid("version", "must be at least 1"));
    }
    if nickname.trim().is_empty() || nickname.chars().count() > 32 {
        return Err(invalid("nickname", "must be 1 to 32 characters"));
    }
    if region.parse::<chrono_tz::Tz>().is_err() {
        return Err(invalid("region", "not an IANA time zone"));
    }
    let occurred_at = occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("occurred_at", "missing or out of range"))?;
    Ok(MemberEvent {
        event_id,
        member_id,
        nickname,
        region,
        version,
        occurred_at,
    })
}

/// Declares everything task consumes from (idempotent).
pub async fn declare_topology(channel: &Channel, delivery_limit: i64) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    amqp::declare_exchange(channel).await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(DEAD_LETTER_QUEUE.into(), durable, quorum.clone())
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = quorum;
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    channel.queue_declare(QUEUE.into(), durable, args).await?;
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "member.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// How long opening a channel and attaching the consumer (or detaching and
/// closing at shutdown) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
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

/// The background consumer of one task instance.
pub struct Consumer {
    pool: PgPool,
    cfg: AmqpSettings,
    stats: Arc<ConsumerStats>,
    /// Set to `true` while a consumer is attached to the queue.
    attached: watch::Sender<bool>,
}

impl Consumer {
    pub fn new(pool: PgPool, cfg: AmqpSettings, stats: Arc<ConsumerStats>) -> Self {
        Self {
            pool,
            cfg,
            stats,
            attached: watch::Sender::new(false),
        }
    }

    /// Watches whether the consumer is attached (drives health).
    pub fn attached(&self) -> watch::Receiver<bool> {
        self.attached.subscribe()
    }

    /// Consumes until `shutdown`: the batch in hand is finished and acked,
    /// then the consumer is cancelled and the channel closed cleanly.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = self.cfg.backoff.delays();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.attached.send_replace(false);
                    tracing::warn!(error.cause_chain = %error_chain(&e), "consumer lost the broker; reconnecting");
                    let d = delays.next().unwrap_or(self.cfg.backoff.max());
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.attached.send_replace(false);
        tracing::info!("consumer stopped");
    }

    /// One connection's worth of consuming. `Ok` means shutdown.
    async fn session(&self, shutdown: &CancellationToken) -> lapin::Result<()> {
        let conn = amqp::connect(self.cfg.url.expose_secret(), "task.consumer").await?;
        // lapin can leave a request pending forever when the socket dies
        // mid-write, so set-up is bounded like the connect.
        let setup = async {
            let channel = conn.create_channel().await?;
            declare_topology(&channel, self.cfg.delivery_limit).await?;
            channel
                .basic_qos(self.cfg.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    QUEUE.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            lapin::Result::Ok((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| closed())??;
        let tag = consumer.tag();
        self.attached.send_replace(true);
        tracing::info!(queue = QUEUE, "consumer attached");
        // The delivery stream does not always end when the socket dies; the
        // connection's events do say so.
        let mut events = Box::pin(conn.events_listener());
        let mut batches = consumer.ready_chunks(self.cfg.batch_max.max(1));
        let result = loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                e = connection_lost(&mut events) => break Err(e),
                b = batches.next() => b,
            };
            let Some(batch) = batch else {
                break Err(closed());
            };
            let deliveries = batch.into_iter().collect::<lapin::Result<Vec<_>>>()?;
            // Acks on a dead socket may never resolve either. Abandoning the
            // batch is safe: it was not acked, so it is redelivered, and the
            // inbox turns whatever was already applied into a no-op.
            let processed = tokio::select! {
                r = self.process(deliveries, shutdown) => r?,
                e = connection_lost(&mut events) => break Err(e),
            };
            if !processed {
                // Shutdown while the database was down: leave them unacked.
                break Ok(());
            }
        };
        if result.is_ok() {
            // Bounded: a dead connection never answers, and shutdown must end.
            let goodbye = async {
                let _ = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await;
                let _ = channel.close(200, "task stopping".into()).await;
                let _ = conn.close(200, "task stopping".into()).await;
            };
            let _ = tokio::time::timeout(SETUP_TIMEOUT, goodbye).await;
        }
        result
    }

    /// Rejects poison, applies the rest in one transaction, then acks.
    /// Returns `false` if shutdown interrupted a retry (nothing was acked).
    async fn process(
        &self,
        deliveries: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> lapin::Result<bool> {
        let mut good = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match decode(d.routing_key.as_str(), &d.data) {
                Ok(event) => good.push((d, event)),
                Err(reason) => {
                    self.stats.poisoned.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        poison.reason = %reason,
                        routing_key = %d.routing_key,
                        message_id = ?d.properties.message_id(),
                        "dead-lettering a poison message"
                    );
                    d.acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if good.is_empty() {
            return Ok(true);
        }
        let events: Vec<MemberEvent> = good.iter().map(|(_, e)| e.clone()).collect();
        let span = tracing::info_span!(
            "apply",
            events = events.len(),
            event_id = %events[0].event_id,
            member_id = %events[0].member_id,
        );
        let mut delays = self.cfg.backoff.delays();
        loop {
            match replica::apply(&self.pool, &events)
                .instrument(span.clone())
                .await
            {
                Ok(changed) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .processed
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    span.in_scope(|| tracing::debug!(changed, "applied"));
                    // Deliveries on one channel are acked in order; one
                    // multiple-ack settles the whole batch.
                    let last = good.last().expect("non-empty");
                    last.0.acker.ack(BasicAckOptions { multiple: true }).await?;
                    return Ok(true);
                }
                Err(e) if memberflow_common::db::is_unavailable(&e) => {
                    tracing::warn!(error.cause_chain = %error_chain(&e), "database unavailable; retrying the batch");
                    let d = delays.next().unwrap_or(self.cfg.backoff.max());
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = shutdown.cancelled() => return Ok(false),
                    }
                }
                Err(e) if good.len() > 1 => {
                    // Isolate the culprit: retry one event per transaction.
                    tracing::warn!(error.cause_chain = %error_chain(&e), "batch failed; applying its events one by one");
                    for one in good {
                        if !Box::pin(self.process(vec![one.0], shutdown)).await? {
                            return Ok(false);
                        }
                    }
                    return Ok(true);
                }
                Err(e) => {
                    tracing::error!(error.cause_chain = %error_chain(&e), "cannot apply event; requeueing (the delivery limit dead-letters it)");
                    good[0]
                        .0
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await?;
                    return Ok(true);
                }
            }
        }
    }
}
