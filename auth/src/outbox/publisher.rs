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
    pub stopped: Option<Stop>,
}

/// Why a batch stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("timed out waiting for the broker")]
    TimedOut,
    #[error("unroutable: no queue is bound to the exchange")]
    Unroutable,
    #[error("nacked by the broker")]
    Nacked,
    #[error("confirms are not enabled on the channel")]
    NotConfirming,
}

impl Stop {
    /// Whether the connection itself is suspect: a broker that does not
    /// answer in time may sit behind a dead socket lapin has not noticed.
    pub fn suspect_connection(self) -> bool {
        matches!(self, Self::TimedOut | Self::NotConfirming)
    }
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

    /// Publishes `rows` in order and waits for their confirms, all under one
    /// deadline: lapin can leave a publish pending forever when the socket
    /// dies mid-write, so nothing here waits unbounded. Transport errors are
    /// returned; nacks, unroutable returns and timeouts end the batch early.
    pub async fn publish_batch(
        &self,
        rows: &[OutboxRow],
        timeout: Duration,
    ) -> lapin::Result<BatchResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending = Vec::with_capacity(rows.len());
        let mut stopped = None;
        for row in rows {
            let span = tracing::info_span!(
                "publish",
                event_id = %row.event_id,
                member_id = %row.member_id,
                version = row.version,
                routing_key = %row.routing_key,
            );
            let publish = self
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
                .instrument(span);
            match tokio::time::timeout_at(deadline, publish).await {
                Ok(confirm) => pending.push(confirm?),
                Err(_) => {
                    stopped = Some(Stop::TimedOut);
                    break;
                }
            }
        }

        let mut confirmed = 0;
        for confirm in pending {
            // A confirm that has already arrived counts even past the deadline.
            let stop = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    confirmed += 1;
                    continue;
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => Stop::Unroutable,
                Ok(Ok(Confirmation::Nack(_))) => Stop::Nacked,
                Ok(Ok(Confirmation::NotRequested)) => Stop::NotConfirming,
                Ok(Err(e)) => return Err(e),
                Err(_) => Stop::TimedOut,
            };
            return Ok(BatchResult {
                confirmed,
                stopped: Some(stop),
            });
        }
        Ok(BatchResult { confirmed, stopped })
    }

    /// Closes the channel and connection cleanly, giving up after a second
    /// each (a dead connection never answers).
    pub async fn close(self) {
        let grace = Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, self.channel.close(200, "relay stopping".into())).await;
        let _ =
            tokio::time::timeout(grace, self.connection.close(200, "relay stopping".into())).await;
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
