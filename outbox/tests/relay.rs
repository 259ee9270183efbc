//! The relay on real PostgreSQL and RabbitMQ, as another service would use
//! it (a `bigint` key in a schema of its own): commit order per key,
//! deletion only after a confirm, nothing for a rolled-back change, the
//! fence of a deposed leader, parking and replay.
mod common;

use std::{collections::BTreeMap, time::Duration};

use sqlx::Connection as _;

use common::{Lab, SPEC, TABLES, bind, event, eventually, raw_queue, receive};
use memberflow_outbox::{
    CancellationToken,
    infra::lease::Elector,
    parked,
    publisher::Publisher,
    relay::{self, HELD_BEHIND, Outcome, RelaySql},
    settings::RelaySettings,
};

const PLACED: &str = "account.changed";

#[tokio::test]
async fn every_committed_event_is_published_once_in_commit_order_per_key() {
    let lab = Lab::new().await;
    let (_conn, channel) = lab.amqp().await;
    let mut seen = raw_queue(&channel, "watch", &["#"]).await;
    let shutdown = CancellationToken::new();
    let outbox = lab.start_relay(RelaySettings::default(), &shutdown);

    // Five writers, one per key, each committing 40 events in order, all at
    // once; and one change rolled back.
    let writers: Vec<_> = (1..=5_i64)
        .map(|account| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for seq in 0..40 {
                    let mut tx = outbox.begin().await.unwrap();
                    tx.write(event(PLACED, account, seq)).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let mut rolled_back = outbox.begin().await.unwrap();
    rolled_back.write(event(PLACED, 99, 0)).await.unwrap();
    drop(rolled_back);
    for w in writers {
        w.await.unwrap();
    }

    let got = receive(&mut seen, 200, Duration::from_secs(20)).await;
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for m in &got {
        let (account, seq) = m.body.split_once(' ').unwrap();
        assert_eq!(m.key_header, account, "the key rides in its header");
        per_key
            .entry(account.parse().unwrap())
            .or_default()
            .push(seq.parse().unwrap());
    }
    let expected: Vec<i64> = (0..40).collect();
    for account in 1..=5 {
        assert_eq!(
            per_key[&account], expected,
            "account {account}: in commit order, once"
        );
    }
    assert!(
        !per_key.contains_key(&99),
        "nothing of a rolled-back change"
    );
    // Confirmed rows are deleted; nothing else arrives.
    eventually(Duration::from_secs(5), "the outbox drains", || async {
        lab.count("SELECT count(*) FROM lib_outbox.outbox").await == 0
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "no duplicate after the drain"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_deposed_leader_publishes_and_changes_nothing() {
    let lab = Lab::new().await;
    let (_conn, channel) = lab.amqp().await;
    let mut seen = raw_queue(&channel, "watch", &["#"]).await;
    let mut tx = lab.outbox().begin().await.unwrap();
    for seq in 0..3 {
        tx.write(event(PLACED, 1, seq)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let elector = |ttl| {
        Elector::new(
            lab.options.clone(),
            relay::LEASE,
            ttl,
            Duration::from_millis(50),
            Default::default(),
        )
        .in_table(TABLES.leases_table())
    };
    let a = elector(Duration::from_secs(60))
        .try_acquire(&shutdown)
        .await
        .unwrap()
        .expect("the lease is free");
    // Another instance takes over (as after A's lease lapsed in the
    // database while A was paused): A still believes it leads.
    sqlx::query("UPDATE lib_outbox.leases SET epoch = epoch + 1")
        .execute(&lab.pool)
        .await
        .unwrap();
    assert!(a.is_held(), "A's own clock says it leads");

    let publisher = Publisher::connect(&lab.nodes(), &SPEC).await.unwrap();
    let sql = RelaySql::new(&TABLES);
    let mut conn = sqlx::PgConnection::connect_with(&lab.options)
        .await
        .unwrap();
    let outcome = relay::relay_once(&mut conn, &sql, &publisher, &RelaySettings::default(), &a)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Empty, "the fenced read sees nothing");
    assert_eq!(lab.count("SELECT count(*) FROM lib_outbox.outbox").await, 3);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "a deposed leader publishes nothing"
    );

    // A term whose lease ran out by its own clock starts nothing at all.
    let short = elector(Duration::from_millis(100));
    sqlx::query("UPDATE lib_outbox.leases SET expires_at = now()")
        .execute(&lab.pool)
        .await
        .unwrap();
    let b = short
        .try_acquire(&shutdown)
        .await
        .unwrap()
        .expect("expired: taken");
    eventually(
        Duration::from_secs(2),
        "B's term lapses locally",
        || async { !b.is_held() },
    )
    .await;
    let outcome = relay::relay_once(&mut conn, &sql, &publisher, &RelaySettings::default(), &b)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Deposed);
    assert_eq!(lab.count("SELECT count(*) FROM lib_outbox.outbox").await, 3);
}

#[tokio::test]
async fn an_unroutable_event_is_parked_with_its_key_and_replayed_in_order() {
    const LOST: &str = "account.lost";
    let lab = Lab::new().await;
    let (_conn, channel) = lab.amqp().await;
    let mut seen = raw_queue(&channel, "watch", &[PLACED]).await;
    let shutdown = CancellationToken::new();
    let outbox = lab.start_relay(
        RelaySettings {
            park_after_attempts: 2,
            ..Default::default()
        },
        &shutdown,
    );
    let write = |e| {
        let outbox = outbox.clone();
        async move {
            let mut tx = outbox.begin().await.unwrap();
            tx.write(e).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    write(event(LOST, 1, 0)).await;
    // Routable events of another key beside it, so the broker's answer
    // blames the one row (not a missing binding for everything).
    let mut other = 0;
    eventually(
        Duration::from_secs(15),
        "the unroutable row is parked",
        || {
            other += 1;
            let write = write(event(PLACED, 2, other));
            let lab = &lab;
            async move {
                write.await;
                !parked::list(&lab.pool, &SPEC).await.unwrap().is_empty()
            }
        },
    )
    .await;
    // A later event of the same key waits behind it, parked too.
    write(event(PLACED, 1, 1)).await;
    eventually(
        Duration::from_secs(5),
        "the next event of key 1 is held",
        || async { parked::list(&lab.pool, &SPEC).await.unwrap().len() == 2 },
    )
    .await;
    let rows = parked::list(&lab.pool, &SPEC).await.unwrap();
    assert_eq!(
        (rows[0].key.as_str(), rows[0].version, rows[0].attempts),
        ("1", 0, 2)
    );
    assert_eq!(rows[1].last_error, HELD_BEHIND);
    let others = receive(&mut seen, other as usize, Duration::from_secs(10)).await;
    assert!(
        others.iter().all(|m| m.key_header == "2"),
        "key 2 flowed meanwhile"
    );

    // The binding arrives; the operator replays: both, in their order.
    bind(&channel, "watch", LOST).await;
    let replayed = parked::replay(&lab.pool, &SPEC, &[rows[0].id])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 2, "the row and the one held behind it");
    let got = receive(&mut seen, 2, Duration::from_secs(10)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["1 0", "1 1"]);
    assert_eq!(
        lab.count("SELECT count(*) FROM lib_outbox.outbox_parked")
            .await,
        0
    );
    shutdown.cancel();
}
