//! A minimal service on memberflow-outbox's public API alone: one table
//! (`orders`), one event type (`order.placed`), ordered by a `bigint` key
//! (the customer), with the library's tables in a schema of their own.
//!
//! It places orders (each order row and its event in one statement, and a
//! batch in one transaction), runs the relay that publishes them with
//! confirms, and consumes them back, idempotently, into `order_log`. Then it
//! prints what arrived and stops.
//!
//! ```text
//! cargo run -p memberflow-outbox --example orders
//! ```
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/outbox_example`,
//! created if missing) and `AMQP_URL` (default the local broker's `/`) say
//! where.
use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::Utc;
use memberflow_outbox::{
    CancellationToken, OutboxSpec, Tables,
    consumer::{
        Consumer, ConsumerStats, Counts, Handler, QueueSpec,
        plan::{Triage, invalid},
    },
    infra::{self, amqp::Nodes},
    metrics::{ConsumerMetrics, RelayMetrics},
    relay::Relay,
    settings::{ConsumerSettings, RelaySettings},
    wake::RelayWake,
    write::{NewEvent, Outbox, RowAndEvent},
};
use sqlx::{
    Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection},
};
use uuid::Uuid;

/// The service's outbox: its tables in schema `shop_outbox`, ordered by
/// customer.
const SPEC: OutboxSpec = OutboxSpec {
    tables: Tables::new::<i64>("customer_id").in_schema("shop_outbox"),
    key_header: "customer_id",
    exchange: "shop.events",
    channel: "shop_outbox",
    connection_name: "shop.outbox-relay",
    consumers: "shop-log",
};

/// Its consumer's queue, bound to its own exchange.
const QUEUE: QueueSpec = QueueSpec {
    exchange: "shop.events",
    binding_key: "order.*",
    queue: "shop.order-log",
    dead_letter_exchange: "shop.order-log.dlx",
    dead_letter_queue: "shop.order-log.dlq",
    connection_name: "shop.order-log",
};

const ORDER_PLACED: &str = "order.placed";

/// An order placed, as its event says: `event_id order_id customer_id`.
#[derive(Debug, Clone)]
struct Placed {
    event_id: Uuid,
    order_id: Uuid,
    customer_id: i64,
}

fn encode(event_id: Uuid, order_id: Uuid, customer_id: i64) -> Vec<u8> {
    format!("{event_id} {order_id} {customer_id}").into_bytes()
}

fn decode(body: &[u8]) -> Option<Placed> {
    let text = std::str::from_utf8(body).ok()?;
    let mut parts = text.split(' ');
    Some(Placed {
        event_id: parts.next()?.parse().ok()?,
        order_id: parts.next()?.parse().ok()?,
        customer_id: parts.next()?.parse().ok()?,
    })
}

/// Applies `order.placed` events to `order_log`, once each.
struct OrderLog {
    outbox: Outbox<i64>,
}

impl Handler for OrderLog {
    type Event = Placed;
    type Key = i64;

    fn triage(&self, kind: &str, body: &[u8]) -> Triage<Placed> {
        if kind != ORDER_PLACED {
            return Triage::Unknown(kind.to_owned());
        }
        Triage::decoded(decode(body).ok_or(invalid("body", "not `event order customer`")))
    }

    fn ids(event: &Placed) -> (Uuid, i64) {
        (event.event_id, event.customer_id)
    }

    async fn apply(&self, events: &[Placed]) -> sqlx::Result<Counts> {
        let mut tx = self.outbox.begin().await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        // Each fresh id once: a batch may hold two copies of one event.
        let mut fresh: std::collections::HashSet<Uuid> =
            tx.claim(&ids).await?.into_iter().collect();
        let fresh: Vec<&Placed> = events
            .iter()
            .filter(|e| fresh.remove(&e.event_id))
            .collect();
        let applied = sqlx::query(
            "INSERT INTO order_log (order_id, customer_id)
             SELECT * FROM UNNEST($1::uuid[], $2::int8[]) ON CONFLICT DO NOTHING",
        )
        .bind(fresh.iter().map(|e| e.order_id).collect::<Vec<_>>())
        .bind(fresh.iter().map(|e| e.customer_id).collect::<Vec<_>>())
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

/// The service's own schema; the library's comes after it.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    id          uuid        PRIMARY KEY,
    customer_id bigint      NOT NULL,
    placed_at   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS order_log (
    order_id    uuid        PRIMARY KEY,
    customer_id bigint      NOT NULL
);";

/// An order row and its event, in one statement.
const PLACE_ORDER: &str =
    "INSERT INTO orders (id, customer_id, placed_at) VALUES ($1, $2, $3) RETURNING id";

fn placed(order_id: Uuid, customer_id: i64) -> NewEvent<i64> {
    NewEvent::build(ORDER_PLACED, customer_id, 1, Utc::now(), |event_id| {
        encode(event_id, order_id, customer_id)
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/outbox_example".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let options = PgConnectOptions::from_str(&db_url)?;
    create_database(&options).await?;
    let pool = PgPool::connect_with(options.clone()).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    SPEC.tables.migrator().run(&pool).await?;

    let shutdown = CancellationToken::new();
    let registry = infra::metrics::registry();
    let wake = RelayWake::new(true, SPEC.channel);
    let outbox: Outbox<i64> = Outbox::new(pool.clone(), wake.clone(), &SPEC);

    // The relay, and what runs beside it (wake-ups, gauges).
    let consumer_settings = ConsumerSettings {
        broker: memberflow_outbox::infra::amqp::BrokerSettings {
            url: amqp_url.clone().into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let relay = Relay::new(
        SPEC,
        options.clone(),
        Nodes::new(&amqp_url.clone().into(), &[]),
        RelaySettings::default(),
        wake,
        RelayMetrics::register(&registry),
    );
    let mut workers = tokio::task::JoinSet::new();
    for (_name, worker) in relay.workers(pool.clone(), &shutdown) {
        workers.spawn(worker);
    }
    // The consumer, which declares its queue and binds it.
    let stats = Arc::new(ConsumerStats::default());
    let consumer = Consumer::new(
        OrderLog {
            outbox: outbox.clone(),
        },
        QUEUE,
        pool.clone(),
        consumer_settings,
        stats.clone(),
        ConsumerMetrics::register(&registry),
    );
    let mut attached = consumer.attached();
    workers.spawn(consumer.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), attached.wait_for(|a| *a)).await??;

    // Ten orders, one statement each; then five in one transaction.
    let place = RowAndEvent::new(&SPEC, PLACE_ORDER, 3);
    for n in 0..10_i64 {
        let order = Uuid::now_v7();
        let customer = n % 3;
        let now = Utc::now();
        place
            .execute(
                &outbox,
                |q| q.bind(order).bind(customer).bind(now),
                &placed(order, customer),
            )
            .await?;
    }
    let mut tx = outbox.begin().await?;
    let batch: Vec<NewEvent<i64>> = (0..5)
        .map(|_| {
            let order = Uuid::now_v7();
            placed(order, 7)
        })
        .collect();
    for event in &batch {
        let order = decode(&event.payload).expect("our own body").order_id;
        sqlx::query("INSERT INTO orders (id, customer_id, placed_at) VALUES ($1, 7, now())")
            .bind(order)
            .execute(&mut *tx)
            .await?;
    }
    tx.write_all(&batch).await?;
    tx.commit().await?;

    // Every order reaches the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let logged = loop {
        let logged: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM order_log JOIN orders ON orders.id = order_log.order_id",
        )
        .fetch_one(&pool)
        .await?;
        let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await?;
        if logged == placed {
            break logged;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {logged} of {placed} orders reached the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{logged} orders placed and logged through the outbox");

    shutdown.cancel();
    while workers.join_next().await.is_some() {}
    pool.close().await;
    Ok(())
}

/// Creates the database `options` names, if it is missing.
async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options
        .get_database()
        .unwrap_or("outbox_example")
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        anyhow::ensure!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a plain database name, please"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    Ok(())
}
