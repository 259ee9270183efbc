//! What task declares on the broker: its quorum queue bound to
//! `member.events`, and the dead-letter exchange and queue behind it.
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_contract::topology::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE, QUEUE};
use memberflow_runtime::amqp;

/// Declares everything task consumes from (idempotent).
/// `group_size` sets `x-quorum-initial-group-size` (how many cluster nodes
/// hold each queue); `None` leaves it to the broker.
pub async fn declare_topology(
    channel: &Channel,
    delivery_limit: i64,
    group_size: Option<u32>,
) -> lapin::Result<()> {
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
    if let Some(size) = group_size {
        quorum.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongUInt(size),
        );
    }
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
