//! A queue a test binds to `member.events` to see exactly what was published.
use std::time::Duration;

use lapin::{
    Channel, Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use memberflow_contract::topology::EXCHANGE;
use memberflow_runtime::amqp;

pub struct TestQueue {
    _conn: Connection,
    channel: Channel,
    pub name: String,
}

impl TestQueue {
    /// Declares the exchange and a queue bound to it with `member.*`.
    pub async fn bind(amqp_url: &str, name: &str) -> Self {
        Self::bind_to(amqp_url, name, "member.*").await
    }

    /// Declares the exchange and a queue bound to it with `pattern`.
    pub async fn bind_to(amqp_url: &str, name: &str, pattern: &str) -> Self {
        let conn = amqp::connect(amqp_url, "test-observer")
            .await
            .expect("amqp connect");
        let channel = conn.create_channel().await.expect("channel");
        amqp::declare_exchange(&channel).await.expect("exchange");
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue");
        channel
            .queue_bind(
                name.into(),
                EXCHANGE.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        Self {
            _conn: conn,
            channel,
            name: name.to_owned(),
        }
    }

    /// Messages currently in the queue.
    pub async fn depth(&self) -> u32 {
        queue_depth(&self.channel, &self.name).await
    }

    /// Takes (and acks) every message until `n` have been seen, or panics
    /// after `timeout`.
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self
                .channel
                .basic_get(self.name.as_str().into(), BasicGetOptions::default())
                .await
                .expect("basic.get")
            {
                Some(m) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    got.push(m);
                }
                None if tokio::time::Instant::now() >= deadline => panic!(
                    "timed out after {timeout:?}: {} of {n} messages on {}",
                    got.len(),
                    self.name
                ),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        got
    }
}

/// Publishes raw bodies straight to `member.events`, as a misbehaving or
/// replaying producer would, and waits for the broker's confirm.
pub struct RawPublisher {
    pub conn: Connection,
    pub channel: Channel,
}

impl RawPublisher {
    pub async fn connect(amqp_url: &str) -> Self {
        let conn = amqp::connect(amqp_url, "test-publisher")
            .await
            .expect("amqp connect");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        amqp::declare_exchange(&channel).await.expect("exchange");
        Self { conn, channel }
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(_)),
            "{confirm:?}"
        );
    }

    /// Publishes a `MemberChanged` event.
    pub async fn member_event(&self, e: &MemberEventFixture) {
        use prost::Message;
        let body = memberflow_contract::proto::auth::v1::MemberChanged {
            event_id: e.event_id.to_string(),
            member_id: e.member_id.to_string(),
            nickname: e.nickname.clone(),
            region: e.region.clone(),
            version: e.version,
            occurred_at: Some(memberflow_contract::time::timestamp(chrono::Utc::now())),
            ..Default::default()
        }
        .encode_to_vec();
        let rk = if e.version == 1 {
            memberflow_contract::topology::MEMBER_CREATED
        } else {
            memberflow_contract::topology::MEMBER_UPDATED
        };
        self.publish(rk, &body).await;
    }

    /// Messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        queue_depth(&self.channel, queue).await
    }
}

/// A member event a test publishes directly.
#[derive(Debug, Clone)]
pub struct MemberEventFixture {
    pub event_id: uuid::Uuid,
    pub member_id: uuid::Uuid,
    pub nickname: String,
    pub region: String,
    pub version: i64,
}

impl MemberEventFixture {
    pub fn new(member_id: uuid::Uuid, version: i64, region: &str) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7(),
            member_id,
            nickname: format!("nick-v{version}"),
            region: region.to_owned(),
            version,
        }
    }
}

/// Takes every message now ready in `queue` (which must exist) and acks it,
/// unseen by its consumers: what an old consumer that skips an event does.
/// Returns each message's routing key.
pub async fn ack_unseen(amqp_url: &str, queue: &str) -> Vec<String> {
    let conn = amqp::connect(amqp_url, "test-skipper")
        .await
        .expect("amqp connect");
    let channel = conn.create_channel().await.expect("channel");
    let mut keys = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        keys.push(m.delivery.routing_key.to_string());
    }
    keys
}

/// Messages ready in `queue`, by passive declare.
pub async fn queue_depth(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}
