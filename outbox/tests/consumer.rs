//! The consumer on real PostgreSQL and RabbitMQ, with a handler of the
//! test's own: a redelivered event is applied once (the inbox), and a
//! poison message or an apply that fails for good is dead-lettered alone,
//! with its reason, while the rest of its batch commits.
mod common;

use std::{sync::Arc, time::Duration};

use common::{Lab, eventually};
use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
};
use memberflow_outbox::{
    CancellationToken,
    consumer::{
        Consumer, ConsumerStats, Counts, Handler, QueueSpec,
        plan::{Triage, invalid},
    },
    metrics::ConsumerMetrics,
    settings::ConsumerSettings,
    write::Outbox,
};
use uuid::Uuid;

const QUEUE: QueueSpec = QueueSpec {
    exchange: "lib.events",
    binding_key: "account.*",
    queue: "lib.applier",
    dead_letter_exchange: "lib.applier.dlx",
    dead_letter_queue: "lib.applier.dlq",
    connection_name: "lib.applier",
};

/// `event_id account`; account 13 is refused by the table's CHECK, a
/// permanent fault (SQLSTATE 23514).
#[derive(Debug, Clone)]
struct Changed {
    event_id: Uuid,
    account: i64,
}

struct Applier {
    outbox: Outbox<i64>,
}

impl Handler for Applier {
    type Event = Changed;
    type Key = i64;

    fn triage(&self, _kind: &str, body: &[u8]) -> Triage<Changed> {
        let text = String::from_utf8_lossy(body);
        let parsed = text.split_once(' ').and_then(|(id, account)| {
            Some(Changed {
                event_id: id.parse().ok()?,
                account: account.parse().ok()?,
            })
        });
        Triage::decoded(parsed.ok_or(invalid("body", "not `event_id account`")))
    }

    fn ids(event: &Changed) -> (Uuid, i64) {
        (event.event_id, event.account)
    }

    async fn apply(&self, events: &[Changed]) -> sqlx::Result<Counts> {
        let mut tx = self.outbox.begin().await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut fresh: std::collections::HashSet<Uuid> =
            tx.claim(&ids).await?.into_iter().collect();
        let fresh: Vec<&Changed> = events
            .iter()
            .filter(|e| fresh.remove(&e.event_id))
            .collect();
        let applied = sqlx::query(
            "INSERT INTO applied (event_id, account) SELECT * FROM UNNEST($1::uuid[], $2::int8[])",
        )
        .bind(fresh.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(fresh.iter().map(|e| e.account).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Counts {
            fresh: fresh.len() as u64,
            applied,
        })
    }
}

async fn start(lab: &Lab, shutdown: &CancellationToken) -> Arc<ConsumerStats> {
    sqlx::query(
        // No key on event_id: the inbox alone keeps a copy from applying twice.
        "CREATE TABLE applied (event_id uuid NOT NULL, account bigint NOT NULL CHECK (account <> 13))",
    )
    .execute(&lab.pool)
    .await
    .unwrap();
    let cfg = ConsumerSettings {
        broker: memberflow_outbox::infra::amqp::BrokerSettings {
            url: lab.amqp_url().into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let stats = Arc::new(ConsumerStats::default());
    let consumer = Consumer::new(
        Applier {
            outbox: lab.outbox(),
        },
        QUEUE,
        lab.pool.clone(),
        cfg,
        stats.clone(),
        ConsumerMetrics::register(&memberflow_outbox::infra::metrics::registry()),
    );
    let mut attached = consumer.attached();
    tokio::spawn(consumer.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), attached.wait_for(|a| *a))
        .await
        .expect("attached within 10 s")
        .unwrap();
    stats
}

async fn publish(channel: &lapin::Channel, body: String) {
    channel
        .basic_publish(
            QUEUE.exchange.into(),
            "account.changed".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redelivered_event_is_applied_once() {
    let lab = Lab::new().await;
    let shutdown = CancellationToken::new();
    let stats = start(&lab, &shutdown).await;
    let (_conn, channel) = lab.amqp().await;
    let id = Uuid::now_v7();
    for _ in 0..3 {
        publish(&channel, format!("{id} 7")).await;
    }
    publish(&channel, format!("{} 8", Uuid::now_v7())).await;
    eventually(
        Duration::from_secs(10),
        "all four deliveries processed",
        || async { stats.processed.load(std::sync::atomic::Ordering::Relaxed) >= 4 },
    )
    .await;
    assert_eq!(lab.count("SELECT count(*) FROM applied").await, 2);
    assert_eq!(lab.count("SELECT count(*) FROM lib_outbox.inbox").await, 2);
    shutdown.cancel();
}

#[tokio::test]
async fn poison_and_a_permanently_failing_apply_are_dead_lettered_alone() {
    let lab = Lab::new().await;
    let (_conn, channel) = lab.amqp().await;
    let shutdown = CancellationToken::new();
    let _stats = start(&lab, &shutdown).await;
    let good: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    for (n, id) in good.iter().enumerate() {
        publish(&channel, format!("{id} {n}")).await;
        if n == 2 {
            publish(&channel, "not an event".to_owned()).await;
            publish(&channel, format!("{} 13", Uuid::now_v7())).await;
        }
    }
    eventually(
        Duration::from_secs(15),
        "the good events applied",
        || async { lab.count("SELECT count(*) FROM applied").await == 6 },
    )
    .await;
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reasons.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered: {reasons:?}"
        );
        let Some(m) = channel
            .basic_get(
                QUEUE.dead_letter_queue.into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let reason = m
            .properties
            .headers()
            .as_ref()
            .and_then(|h: &FieldTable| h.inner().get("x-memberflow-reason").cloned());
        let reason = match reason {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => format!("{other:?}"),
        };
        reasons.push((String::from_utf8_lossy(&m.data).into_owned(), reason));
    }
    reasons.sort();
    assert_eq!(reasons[1].0, "not an event");
    assert!(reasons[1].1.contains("invalid body"), "{reasons:?}");
    assert!(reasons[0].0.ends_with(" 13"));
    assert!(
        reasons[0].1.contains("23514") || reasons[0].1.contains("check"),
        "{reasons:?}"
    );
    assert_eq!(
        lab.count("SELECT count(*) FROM applied WHERE account = 13")
            .await,
        0
    );
    shutdown.cancel();
}
