//! What a consumer declares on the broker: the exchange it consumes from,
//! its quorum queue bound to it, and the dead-letter exchange and queue
//! behind it. Each side of an exchange declares it, so either may start
//! first.
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_infra::amqp;

/// The names one consumer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    /// The durable topic exchange the queue is bound to.
    pub exchange: &'static str,
    /// The binding key (`member.*`, `member.erased`).
    pub binding_key: &'static str,
    /// The quorum queue consumed.
    pub queue: &'static str,
    /// Where permanently bad messages go (fanout).
    pub dead_letter_exchange: &'static str,
    /// The dead-letter queue behind it.
    pub dead_letter_queue: &'static str,
    /// The consumer's AMQP connection name, as the broker's UI shows it.
    pub connection_name: &'static str,
}

/// Declares everything `spec`'s consumer uses (idempotent).
/// `group_size` sets `x-quorum-initial-group-size` (how many cluster nodes
/// hold each queue); `None` leaves it to the broker.
pub async fn declare_queue(
    channel: &Channel,
    spec: &QueueSpec,
    delivery_limit: i64,
    group_size: Option<u32>,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    amqp::declare_topic_exchange(channel, spec.exchange).await?;
    channel
        .exchange_declare(
            spec.dead_letter_exchange.into(),
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
    if let Some(size) = group_size {
        quorum.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongUInt(size),
        );
    }
    channel
        .queue_declare(spec.dead_letter_queue.into(), durable, quorum.clone())
        .await?;
    channel
        .queue_bind(
            spec.dead_letter_queue.into(),
            spec.dead_letter_exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = quorum;
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(spec.dead_letter_exchange.into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    channel
        .queue_declare(spec.queue.into(), durable, args)
        .await?;
    channel
        .queue_bind(
            spec.queue.into(),
            spec.exchange.into(),
            spec.binding_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
