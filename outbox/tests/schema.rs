//! The library's migrations for a layout of the service's choosing: its
//! tables and history in the schema it names, keyed by its column; applied
//! twice they change nothing, and a changed key is refused rather than
//! half-applied. The inbox prune reads due ids through its index.
mod common;

use std::time::Duration;

use common::{Lab, TABLES, eventually};
use memberflow_outbox::{Tables, inbox};

#[tokio::test]
async fn the_tables_live_in_the_schema_named_with_the_key_named() {
    let lab = Lab::bare().await;
    for _ in 0..2 {
        TABLES
            .migrator()
            .run(&lab.pool)
            .await
            .expect("applied, then a no-op");
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'lib_outbox' ORDER BY 1",
    )
    .fetch_all(&lab.pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_memberflow_outbox_migrations",
            "inbox",
            "leases",
            "outbox",
            "outbox_parked"
        ]
    );
    let public: i64 = lab
        .count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        .await;
    assert_eq!(public, 0, "nothing in the search_path's schema");
    let key: String = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
          WHERE table_schema = 'lib_outbox' AND table_name = 'outbox' AND column_name = 'account_id'",
    )
    .fetch_one(&lab.pool)
    .await
    .unwrap();
    assert_eq!(key, "bigint");
    assert_eq!(
        lab.count("SELECT count(*) FROM lib_outbox._memberflow_outbox_migrations")
            .await,
        1
    );

    // Another key over the same tables is refused, not applied.
    let other = Tables::new::<uuid::Uuid>("account_id").in_schema("lib_outbox");
    let refused = other.migrator().run(&lab.pool).await;
    assert!(
        matches!(
            refused,
            Err(sqlx::migrate::MigrateError::VersionMismatch(_))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_inbox_prune_deletes_what_is_due_through_its_index() {
    let lab = Lab::new().await;
    let inserted = std::time::Instant::now();
    sqlx::query(
        "INSERT INTO lib_outbox.inbox (event_id, received_at)
         SELECT gen_random_uuid(), now() - interval '1 second' * i
           FROM generate_series(1, 100000) i",
    )
    .execute(&lab.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE lib_outbox.inbox")
        .execute(&lab.pool)
        .await
        .unwrap();
    let index_scans = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'inbox_received_at'",
        )
        .fetch_one(&lab.pool)
        .await
        .unwrap()
    };
    let before = index_scans().await;
    // Older than a day: 100000 - 86400 rows, plus one per second that
    // passed between the insert and the prune (a busy machine's ANALYZE).
    let pruned = inbox::prune(&lab.pool, &TABLES, Duration::from_secs(86_400))
        .await
        .unwrap();
    let passed = inserted.elapsed().as_secs();
    assert!(
        (13_599..=13_601 + passed).contains(&pruned),
        "{pruned} pruned, {passed} s after the insert"
    );
    eventually(
        Duration::from_secs(5),
        "the prune used inbox_received_at",
        || async { index_scans().await > before },
    )
    .await;
}
