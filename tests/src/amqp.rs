//! A queue a test binds to `member.events` to see exactly what was published.
use std::time::Duration;

use lapin::{
    Channel, Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use memberflow_common::amqp::{self, EXCHANGE};

pub struct TestQueue {
    _conn: Connection,
    channel: Channel,
    pub name: String,
}

impl TestQueue {
    /// Declares the exchange and a queue bound to it with `member.*`.
    pub async fn bind(amqp_url: &str, name: &str) -> Self {
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
                "member.*".into(),
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
        self.channel
            .queue_declare(
                self.name.as_str().into(),
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
