//! The outbox library's own schema: its migrations create its tables on a
//! fresh database, and adopt them, unchanged and with nothing lost, where a
//! service's older migrations created them (auth's and task's databases).
use memberflow_outbox::{Tables, schema::MIGRATIONS_TABLE};
use memberflow_runtime::db::{DatabaseSettings, ensure_database};
use memberflow_tests::env::TestEnv;
use sqlx::PgPool;

const TABLES: [&str; 4] = ["outbox", "outbox_parked", "inbox", "leases"];

async fn database(env: &mut TestEnv, name: &str) -> PgPool {
    ensure_database(&DatabaseSettings::with_url(&env.database_url(name)))
        .await
        .expect("create the database");
    env.pool(name).await
}

/// Each table's columns (name, type, nullable, default) and indexes, as
/// PostgreSQL describes them, sorted.
async fn shape(pool: &PgPool) -> Vec<String> {
    let columns: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text,
                column_default::text
           FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = ANY($1)",
    )
    .bind(TABLES)
    .fetch_all(pool)
    .await
    .expect("columns");
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT tablename::text, indexdef FROM pg_indexes
          WHERE schemaname = 'public' AND tablename = ANY($1)",
    )
    .bind(TABLES)
    .fetch_all(pool)
    .await
    .expect("indexes");
    let mut shape: Vec<String> = columns
        .into_iter()
        .map(|(t, c, ty, null, default)| format!("{t}.{c} {ty} null={null} default={default:?}"))
        .chain(indexes.into_iter().map(|(t, def)| format!("{t}: {def}")))
        .collect();
    shape.sort();
    shape
}

async fn applied(pool: &PgPool, table: &str) -> i64 {
    // `table` is one of this file's constants.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("migration history")
}

#[tokio::test]
async fn the_library_creates_its_tables_and_adopts_the_services_unchanged() {
    let mut env = TestEnv::new();
    // A fresh database: the library alone creates its tables.
    let fresh = database(&mut env, "library").await;
    Tables::new::<uuid::Uuid>("member_id")
        .migrator()
        .run(&fresh)
        .await
        .expect("the library's migrations");
    let created = shape(&fresh).await;
    for table in TABLES {
        assert!(
            created.iter().any(|c| c.starts_with(&format!("{table}."))),
            "{table} missing: {created:#?}"
        );
    }

    // auth's and task's databases, made by their own older migrations,
    // each holding an outbox row: adopted as they are.
    for (name, service, library) in [
        (
            "auth",
            &auth::startup::MIGRATOR,
            &*auth::startup::OUTBOX_MIGRATOR,
        ),
        (
            "task",
            &task::startup::MIGRATOR,
            &*task::startup::OUTBOX_MIGRATOR,
        ),
    ] {
        let pool = database(&mut env, name).await;
        service.run(&pool).await.expect("the service's migrations");
        let before = shape(&pool).await;
        assert_eq!(before, created, "{name}'s tables have the library's shape");
        sqlx::query(
            "INSERT INTO outbox (event_id, routing_key, member_id, version, payload, occurred_at)
             VALUES (gen_random_uuid(), 'member.created', gen_random_uuid(), 1, '\\x00', now())",
        )
        .execute(&pool)
        .await
        .expect("an outbox row");
        let service_history = applied(&pool, "_sqlx_migrations").await;
        for _ in 0..2 {
            library
                .run(&pool)
                .await
                .expect("adopted (and again: a no-op)");
        }
        assert_eq!(
            shape(&pool).await,
            before,
            "{name}: adoption changed nothing"
        );
        assert_eq!(applied(&pool, "outbox").await, 1, "{name}: nothing lost");
        assert_eq!(applied(&pool, MIGRATIONS_TABLE).await, 1);
        assert_eq!(
            applied(&pool, "_sqlx_migrations").await,
            service_history,
            "{name}: the service's own history is untouched"
        );
    }
}
