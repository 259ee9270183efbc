//! The library's test bench: a database and a RabbitMQ vhost of the test's
//! own, removed when it ends, and the pieces a test drives (a relay, a raw
//! consumer of what the relay publishes). No memberflow service is
//! involved: these tests use the library as another service would.
#![allow(dead_code, unreachable_pub)]
use std::{process::Command, str::FromStr, time::Duration};

use futures::StreamExt as _;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use memberflow_outbox::{
    CancellationToken, OutboxSpec, Tables,
    infra::amqp::Nodes,
    metrics::RelayMetrics,
    relay::Relay,
    settings::RelaySettings,
    wake::RelayWake,
    write::{NewEvent, Outbox},
};
use sqlx::{Connection as _, PgConnection, PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

/// A layout no memberflow service uses: a `bigint` key in its own schema.
pub const TABLES: Tables = Tables::new::<i64>("account_id").in_schema("lib_outbox");

pub const SPEC: OutboxSpec = OutboxSpec {
    tables: TABLES,
    key_header: "account_id",
    exchange: "lib.events",
    channel: "lib_outbox",
    connection_name: "lib.relay",
    consumers: "the test's queue",
};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// One test's database and vhost.
pub struct Lab {
    pub id: String,
    pub database: String,
    pub vhost: String,
    pub options: PgConnectOptions,
    pub pool: PgPool,
}

impl Lab {
    /// A fresh database with the library's tables ([`TABLES`]) and a fresh
    /// vhost.
    pub async fn new() -> Self {
        let lab = Self::bare().await;
        TABLES
            .migrator()
            .run(&lab.pool)
            .await
            .expect("the library's migrations");
        lab
    }

    /// A fresh, empty database and a fresh vhost.
    pub async fn bare() -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("mf_lib_{id}");
        let mut admin = PgConnection::connect(&format!("{PG}/postgres"))
            .await
            .expect("PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .expect("create the database");
        let vhost = format!("mf-lib-{id}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let options = PgConnectOptions::from_str(&format!("{PG}/{database}")).unwrap();
        let pool = PgPool::connect_with(options.clone())
            .await
            .expect("the test database");
        Self {
            id,
            database,
            vhost,
            options,
            pool,
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }

    pub fn nodes(&self) -> Nodes {
        Nodes::new(&self.amqp_url().into(), &[])
    }

    pub fn outbox(&self) -> Outbox<i64> {
        Outbox::without_wake(self.pool.clone(), &SPEC)
    }

    pub async fn amqp(&self) -> (Connection, Channel) {
        let conn = Connection::connect(&self.amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = conn.create_channel().await.expect("a channel");
        (conn, channel)
    }

    /// Starts a relay for [`SPEC`] with `cfg`; it runs until `shutdown`.
    pub fn start_relay(&self, cfg: RelaySettings, shutdown: &CancellationToken) -> Outbox<i64> {
        let wake = RelayWake::new(true, SPEC.channel);
        let registry = memberflow_outbox::infra::metrics::registry();
        let relay = Relay::new(
            SPEC,
            self.options.clone(),
            self.nodes(),
            cfg,
            wake.clone(),
            RelayMetrics::register(&registry),
        );
        for (_, worker) in relay.workers(self.pool.clone(), shutdown) {
            tokio::spawn(worker);
        }
        Outbox::new(self.pool.clone(), wake, &SPEC)
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let database = self.database.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&format!("{PG}/postgres")).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join()
        .ok();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl must be on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An event of `account` whose body says `account seq`.
pub fn event(routing_key: &'static str, account: i64, seq: i64) -> NewEvent<i64> {
    NewEvent::build(routing_key, account, seq, chrono::Utc::now(), |_| {
        format!("{account} {seq}").into_bytes()
    })
}

/// One message as the raw consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub message_id: String,
    pub key_header: String,
    pub body: String,
}

/// Declares the exchange and a queue bound to it with each of `keys`, and
/// collects what arrives (acked) into the returned receiver.
pub async fn raw_queue(
    channel: &Channel,
    queue: &str,
    keys: &[&str],
) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    channel
        .exchange_declare(
            SPEC.exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for key in keys {
        bind(channel, queue, key).await;
    }
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let header = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(SPEC.key_header).cloned());
            let key_header = match header {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => format!("{other:?}"),
            };
            let seen = Seen {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                key_header,
                body: String::from_utf8_lossy(&delivery.data).into_owned(),
            };
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    rx
}

pub async fn bind(channel: &Channel, queue: &str, key: &str) {
    channel
        .queue_bind(
            queue.into(),
            SPEC.exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Receives `n` messages, or fails after `within`.
pub async fn receive(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    n: usize,
    within: Duration,
) -> Vec<Seen> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) => got.push(seen),
            _ => panic!(
                "received {} of {n} messages in {within:?}: {got:?}",
                got.len()
            ),
        }
    }
    got
}

/// Polls `check` every 20 ms until it holds, or fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
