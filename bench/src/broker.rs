//! Raw lapin, for the broker's limits and for filling queues: publishing with
//! pipelined confirms and consuming with a manual ack per message.
use std::{collections::VecDeque, time::Duration};

use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use memberflow_contract::proto::auth::v1::MemberChanged;
use memberflow_runtime::amqp;
use prost::Message as _;
use tokio::time::Instant;
use uuid::Uuid;

/// An event body as auth's relay publishes it.
pub(crate) fn member_created(event_id: Uuid, member_id: Uuid) -> Vec<u8> {
    MemberChanged {
        event_id: event_id.to_string(),
        member_id: member_id.to_string(),
        nickname: "bench member".into(),
        region: "Asia/Seoul".into(),
        version: 1,
        occurred_at: Some(memberflow_contract::time::timestamp(chrono::Utc::now())),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A channel in confirm mode on `url`.
pub(crate) async fn confirm_channel(url: &str) -> anyhow::Result<(lapin::Connection, Channel)> {
    let conn = amqp::connect(url, "bench").await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// Publishes every `(routing_key, body)` persistently to `exchange`, keeping
/// at most `window` unconfirmed, and fails on any nack. Returns the time from
/// the first publish to the last confirm.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    window: usize,
) -> anyhow::Result<Duration> {
    async fn settle(confirm: PublisherConfirm) -> anyhow::Result<()> {
        match confirm.await? {
            Confirmation::Ack(_) => Ok(()),
            other => anyhow::bail!("broker did not ack a publish: {other:?}"),
        }
    }
    let props = BasicProperties::default()
        .with_delivery_mode(memberflow_contract::topology::PERSISTENT)
        .with_content_type(memberflow_contract::topology::CONTENT_TYPE.into());
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(window);
    for (routing_key, body) in messages {
        if in_flight.len() >= window {
            settle(in_flight.pop_front().expect("non-empty")).await?;
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        settle(confirm).await?;
    }
    Ok(start.elapsed())
}

/// Consumes `n` messages from `queue` with `prefetch` and acks each one by
/// itself. Returns the time from subscribing to the last ack.
pub(crate) async fn consume_acked(
    channel: &Channel,
    queue: &str,
    n: usize,
    prefetch: u16,
) -> anyhow::Result<Duration> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let start = Instant::now();
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer cancelled"))??;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(start.elapsed())
}
