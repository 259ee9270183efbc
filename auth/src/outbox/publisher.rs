//! Publishes outbox rows to RabbitMQ with pipelined publisher confirms.
use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_common::amqp::{self, CONTENT_TYPE, EXCHANGE, PERSISTENT};
use tracing::Instrument;

use super::OutboxRow;

/// A confirm-mode channel on its own connection.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
}

/// How far a batch got.
#[derive(Debug, PartialEq, Eq)]
pub struct BatchResult {
    /// Rows confirmed by the broker, counted from the start of the batch.
    /// Only this prefix may be deleted: later rows may have been confirmed
    /// too, but republishing them keeps per-member order.
    pub confirmed: usize,
    /// Why the batch stopped short, if it did.
    pub stopped: Option<&'static str>,
}

impl Publisher {
    /// Connects, enables confirms and (re)declares the exchange.
    pub async fn connect(url: &str) -> lapin::Result<Self> {
        let connection = amqp::connect(url, "auth.outbox-relay").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        amqp::declare_exchange(&channel).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Whether the connection and channel still work.
    pub fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `rows` in order, then waits for their confirms under one
    /// deadline. Transport errors are returned; nacks, unroutable returns and
    /// timeouts end the batch early.
    pub async fn publish_batch(
        &self,
        rows: &[OutboxRow],
        confirm_timeout: Duration,
    ) -> lapin::Result<BatchResult> {
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let span = tracing::info_span!(
                "publish",
                event_id = %row.event_id,
                member_id = %row.member_id,
                version = row.version,
                routing_key = %row.routing_key,
            );
            let confirm = self
                .channel
                .basic_publish(
                    EXCHANGE.into(),
                    row.routing_key.as_str().into(),
                    // Unroutable events (no queue bound yet) come back and stay
                    // in the outbox instead of vanishing.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &row.payload,
                    properties(row),
                )
                .instrument(span)
                .await?;
            pending.push(confirm);
        }

        let deadline = tokio::time::Instant::now() + confirm_timeout;
        let mut confirmed = 0;
        for confirm in pending {
            let stopped = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    confirmed += 1;
                    continue;
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    "unroutable: no queue is bound to the exchange"
                }
                Ok(Ok(Confirmation::Nack(_))) => "nacked by the broker",
                Ok(Ok(Confirmation::NotRequested)) => "confirms are not enabled",
                Ok(Err(e)) => return Err(e),
                Err(_) => "timed out waiting for confirms",
            };
            return Ok(BatchResult {
                confirmed,
                stopped: Some(stopped),
            });
        }
        Ok(BatchResult {
            confirmed,
            stopped: None,
        })
    }

    /// Closes the channel and connection cleanly.
    pub async fn close(self) {
        let _ = self.channel.close(200, "relay stopping".into()).await;
        let _ = self.connection.close(200, "relay stopping".into()).await;
    }
}

fn properties(row: &OutboxRow) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "member_id".into(),
        AMQPValue::LongString(row.member_id.to_string().into()),
    );
    headers.insert("version".into(), AMQPValue::LongLongInt(row.version));
    BasicProperties::default()
        .with_message_id(row.event_id.to_string().into())
        .with_type(row.routing_key.as_str().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_timestamp(row.occurred_at.timestamp().max(0) as u64)
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}
