//! The dead-letter queue, for operators (`memberflow-admin dlq …`) and tests.
//!
//! Each dead-lettered message is a copy of the original, with its
//! properties, headers and routing key, plus the reason in
//! [`REASON_HEADER`]. Listing reads the queue without taking anything from
//! it; replaying puts messages back on task's own queue (through the default
//! exchange, so no other consumer of `member.events` sees them twice) and
//! removes them from the DLQ once the broker has confirmed them.
use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable},
};

use memberflow_contract::topology::{DEAD_LETTER_QUEUE, QUEUE, REASON_HEADER};

/// How long one broker request of an admin command may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One message in the DLQ, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub routing_key: String,
    /// From the `member_id` header the relay sets; empty if absent.
    pub member_id: String,
    /// From the `version` header; 0 if absent.
    pub version: i64,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Message ids put back on the main queue.
    pub replayed: Vec<String>,
    /// Messages left in the DLQ (not selected).
    pub kept: usize,
}

/// Every message in the DLQ, oldest first. Nothing is removed.
pub async fn list(conn: &Connection) -> lapin::Result<Vec<DeadLetter>> {
    let channel = conn.create_channel().await?;
    let all = drain(&channel).await?;
    let listed = all.iter().map(describe).collect();
    release(&channel, &all).await?;
    Ok(listed)
}

/// Puts the messages with these ids (all when `ids` is empty) back on the
/// main queue, with their properties and headers, less the reason. Replaying
/// twice changes nothing: the first replay removed them, and the consumer's
/// inbox and version guard make a re-applied event a no-op anyway.
pub async fn replay(conn: &Connection, ids: &[String]) -> lapin::Result<Replayed> {
    let channel = conn.create_channel().await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let all = drain(&channel).await?;
    let mut report = Replayed::default();
    let mut keep = Vec::new();
    for m in all {
        let d = describe(&m);
        if !ids.is_empty() && !ids.contains(&d.message_id) {
            keep.push(m);
            continue;
        }
        let confirm = bounded(async {
            publisher
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &m.delivery.data,
                    for_replay(&m),
                )
                .await?
                .await
        })
        .await?;
        if !confirm.is_ack() {
            keep.push(m);
            continue;
        }
        bounded(m.delivery.acker.ack(BasicAckOptions::default())).await?;
        report.replayed.push(d.message_id);
    }
    report.kept = keep.len();
    release(&channel, &keep).await?;
    let _ = publisher.close(200, "replayed".into()).await;
    Ok(report)
}

/// What dropping a member's messages did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Message ids removed from the DLQ, oldest first.
    pub dropped: Vec<String>,
    /// Messages left in the DLQ, in their order.
    pub kept: usize,
}

/// Removes every message of `member` from the DLQ (they carry the member's
/// nickname and region: after an account deletion they are the last copy in
/// task's reach) and leaves the rest in order. A message is the member's
/// when its `member_id` header or its body's `member_id` (field 2 of every
/// member event) names them.
pub async fn drop_member(conn: &Connection, member: uuid::Uuid) -> lapin::Result<Dropped> {
    let channel = conn.create_channel().await?;
    let all = drain(&channel).await?;
    let mut report = Dropped::default();
    let mut keep = Vec::new();
    let wanted = member.to_string();
    for m in all {
        let d = describe(&m);
        if d.member_id != wanted && body_member(&m.delivery.data).as_deref() != Some(&wanted) {
            keep.push(m);
            continue;
        }
        bounded(m.delivery.acker.ack(BasicAckOptions::default())).await?;
        report.dropped.push(d.message_id);
    }
    report.kept = keep.len();
    release(&channel, &keep).await?;
    Ok(report)
}

/// The `member_id` (field 2) of any member event body, if it decodes.
fn body_member(body: &[u8]) -> Option<String> {
    /// Field 2 of MemberChanged, MemberSessionsRevoked and MemberDeleted
    /// alike; decoding skips the rest.
    #[derive(Clone, PartialEq, prost::Message)]
    struct MemberId {
        #[prost(string, tag = "2")]
        member_id: String,
    }
    use prost::Message as _;
    MemberId::decode(body).ok().map(|m| m.member_id)
}

/// Takes every message, unacked, so each is seen once.
async fn drain(channel: &Channel) -> lapin::Result<Vec<BasicGetMessage>> {
    let mut all = Vec::new();
    while let Some(m) =
        bounded(channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }))
            .await?
    {
        all.push(m);
    }
    Ok(all)
}

/// Returns `kept` to the DLQ and closes the channel.
async fn release(channel: &Channel, kept: &[BasicGetMessage]) -> lapin::Result<()> {
    for m in kept {
        bounded(m.delivery.acker.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        }))
        .await?;
    }
    channel.close(200, "done".into()).await
}

async fn bounded<T>(f: impl Future<Output = lapin::Result<T>>) -> lapin::Result<T> {
    tokio::time::timeout(TIMEOUT, f).await.map_err(|_| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the broker did not answer in time",
        ))
    })?
}

fn describe(m: &BasicGetMessage) -> DeadLetter {
    let p = &m.delivery.properties;
    let header = |name: &str| {
        p.headers()
            .as_ref()
            .and_then(|h| h.inner().get(name).cloned())
    };
    let text = |v: Option<AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    };
    let version = match header("version") {
        Some(AMQPValue::LongLongInt(v)) => v,
        Some(AMQPValue::LongInt(v)) => i64::from(v),
        _ => 0,
    };
    DeadLetter {
        message_id: p
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        routing_key: m.delivery.routing_key.to_string(),
        member_id: text(header("member_id")),
        version,
        reason: text(header(REASON_HEADER)),
    }
}

/// The properties a replayed message goes back with: the original ones less
/// the dead-letter headers. The message reaches the queue under the queue's
/// name, so its event kind travels in `type`, set from the original routing
/// key when the publisher left it empty (the relay always sets it).
fn for_replay(m: &BasicGetMessage) -> BasicProperties {
    let p = &m.delivery.properties;
    let mut headers = FieldTable::default();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            if k.as_str() != REASON_HEADER && k.as_str() != "x-death" {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let p = p.clone().with_headers(headers);
    match p.kind() {
        Some(_) => p,
        None => p.with_type(m.delivery.routing_key.clone()),
    }
}
