//! The library's own schema: its tables (`outbox`, `outbox_parked`,
//! `inbox`, `leases`) and their migrations (`outbox/migrations`), with a
//! history of their own, so that a change to the relay's SQL lands once,
//! here, rather than in each service's migration folder.
//!
//! A service applies [`MIGRATOR`] after its own migrations (memberflow's
//! services list it in `Service::migrators`). Its first migration creates
//! the tables if they are missing and adopts them, unchanged, where a
//! service's older migrations made them.
use std::sync::LazyLock;

use sqlx::migrate::Migrator;

/// Where the library's migration history lives, apart from the service's
/// `_sqlx_migrations` (sqlx refuses a history it does not know).
pub const MIGRATIONS_TABLE: &str = "_memberflow_outbox_migrations";

/// The library's migrations, recorded in [`MIGRATIONS_TABLE`].
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});
