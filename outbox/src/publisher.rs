//! Publishes outbox rows to RabbitMQ with pipelined publisher confirms.
use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_contract::topology::{CONTENT_TYPE, PERSISTENT};
use memberflow_infra::amqp;
use memberflow_infra::lease::Term;
use memberflow_infra::trace_context;
use tracing::Instrument;

use crate::{OutboxSpec, settle::Delivery, write::OutboxRow};

/// A confirm-mode channel on its own connection.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    /// The exchange it publishes to.
    exchange: &'static str,
    /// The header that carries each event's ordering key.
    key_header: &'static str,
}

/// Why a batch went wrong as a whole: the connection is suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("timed out waiting for the broker")]
    TimedOut,
    #[error("confirms are not enabled on the channel")]
    NotConfirming,
    #[error("the relay's lease lapsed mid-batch")]
    Deposed,
}

impl Publisher {
    /// Connects, enables confirms and (re)declares `spec`'s exchange.
    pub async fn connect(brokers: &amqp::Nodes, spec: &OutboxSpec) -> lapin::Result<Self> {
        let connection = brokers.connect(spec.connection_name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        amqp::declare_topic_exchange(&channel, spec.exchange).await?;
        Ok(Self {
            connection,
            channel,
            exchange: spec.exchange,
            key_header: spec.key_header,
        })
    }

    /// Whether the connection and channel still work.
    pub fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `rows` in order and waits for their confirms, all under one
    /// deadline: lapin can leave a publish pending forever when the socket
    /// dies mid-write, so nothing here waits unbounded. Returns the broker's
    /// answer per row, and why the batch stopped short, if it did. Transport
    /// errors are returned as errors. A relay that resumes from a pause to
    /// find its `term` lapsed publishes nothing more of the batch.
    pub async fn publish_batch(
        &self,
        rows: &[OutboxRow],
        timeout: Duration,
        term: &Term,
    ) -> lapin::Result<(Vec<Delivery>, Option<Stop>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending = Vec::with_capacity(rows.len());
        let mut stopped = None;
        for row in rows {
            if !term.is_held() {
                stopped = Some(Stop::Deposed);
                break;
            }
            // The publish continues the trace of the change that wrote the
            // row; the consumer continues it from this span.
            let span = tracing::info_span!(
                "publish",
                otel.name = %format_args!("publish {}", self.exchange),
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "publish",
                messaging.destination.name = self.exchange,
                messaging.rabbitmq.destination.routing_key = %row.routing_key,
                messaging.message.id = %row.event_id,
                event_id = %row.event_id,
                key = %row.key,
                version = row.version,
                trace_id = tracing::field::Empty,
            );
            trace_context::continue_trace(&span, trace_context::context_of(&row.trace()));
            let trace = trace_context::carrier_of(&span);
            let publish = self
                .channel
                .basic_publish(
                    self.exchange.into(),
                    row.routing_key.as_str().into(),
                    // Unroutable events (no queue bound) come back and stay
                    // in the outbox instead of vanishing.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &row.payload,
                    properties(row, self.key_header, trace),
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

        let mut answers = Vec::with_capacity(rows.len());
        for confirm in pending {
            // A confirm that has already arrived counts even past the deadline.
            let answer = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Delivery::Confirmed,
                Ok(Ok(Confirmation::Ack(Some(_)))) => Delivery::Unroutable,
                Ok(Ok(Confirmation::Nack(_))) => Delivery::Nacked,
                Ok(Ok(Confirmation::NotRequested)) => {
                    stopped = Some(Stop::NotConfirming);
                    Delivery::Unconfirmed
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    stopped = Some(Stop::TimedOut);
                    Delivery::Unconfirmed
                }
            };
            answers.push(answer);
        }
        answers.resize(rows.len(), Delivery::Unconfirmed);
        Ok((answers, stopped))
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

fn properties(
    row: &OutboxRow,
    key_header: &'static str,
    trace: trace_context::Carrier,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        (trace_context::TRACEPARENT, trace.traceparent),
        (trace_context::TRACESTATE, trace.tracestate),
    ] {
        if let Some(value) = value {
            headers.insert(key.into(), AMQPValue::LongString(value.into()));
        }
    }
    headers.insert(
        key_header.into(),
        AMQPValue::LongString(row.key.as_str().into()),
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
