//! The library's own schema: its tables (`outbox`, `outbox_parked`,
//! `inbox`, `leases`), where they live, which column orders events, and
//! their migrations (`outbox/migrations`), with a history of their own, so
//! that a change to the relay's SQL lands once, here, rather than in each
//! service's migration folder.
//!
//! A service describes its tables once, as a [`Tables`] constant: the
//! PostgreSQL schema they live in (or the role's `search_path`, as
//! memberflow's services do) and the ordering key, a column of a type the
//! service names ([`OrderingKey`]: `uuid`, `bigint` or `text`). It applies
//! [`Tables::migrator`] after its own migrations. The migrations are
//! templates rendered for those tables; the first creates the tables if they
//! are missing and adopts them, unchanged, where a service's older
//! migrations made them.
//!
//! Rendered for the layout memberflow's services had before the library
//! owned its schema (`search_path`, `member_id uuid`), each migration is
//! byte for byte the file it was, so sqlx finds the checksums it recorded.
//! A different key or schema renders different text, recorded as such: an
//! outbox cannot change its key or move under a running service by a
//! setting, which is what an operator would want.
use std::{borrow::Cow, fmt::Display};

use sqlx::{
    Postgres,
    migrate::{Migration, MigrationType, Migrator},
    postgres::PgHasArrayType,
};
use uuid::Uuid;

/// Where the library's migration history lives, apart from the service's
/// `_sqlx_migrations` (sqlx refuses a history it does not know).
pub const MIGRATIONS_TABLE: &str = "_memberflow_outbox_migrations";

/// The library's migrations, in order: (version, description, template).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    20261204000001,
    "outbox tables",
    include_str!("../migrations/20261204000001_outbox_tables.sql"),
)];

/// A Rust type that can order and park a service's events: its events of
/// one key are published in commit order, and parked behind its first
/// parked row.
pub trait OrderingKey:
    sqlx::Type<Postgres>
    + for<'q> sqlx::Encode<'q, Postgres>
    + PgHasArrayType
    + Display
    + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
    /// The column's SQL type.
    const SQL_TYPE: &'static str;
}

impl OrderingKey for Uuid {
    const SQL_TYPE: &'static str = "uuid";
}

impl OrderingKey for i64 {
    const SQL_TYPE: &'static str = "bigint";
}

impl OrderingKey for String {
    const SQL_TYPE: &'static str = "text";
}

/// Where one service's outbox tables live and which column orders its
/// events. Built in a `const`, so a bad name fails the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    schema: Option<&'static str>,
    key_column: &'static str,
    key_type: &'static str,
}

impl Tables {
    /// The tables in the role's `search_path` (unqualified names), ordered
    /// by `key_column`, of `K`'s type.
    ///
    /// # Panics
    /// When `key_column` is not a plain lower-case identifier, or is one of
    /// the library's own columns (at compile time in a `const`). A reserved
    /// word (`order`, `user`) passes here and fails at migration time.
    pub const fn new<K: OrderingKey>(key_column: &'static str) -> Self {
        assert!(
            is_identifier(key_column),
            "the key column must be a lower-case identifier"
        );
        assert!(
            !is_own_column(key_column),
            "the key column must not be one of the library's own columns"
        );
        Self {
            schema: None,
            key_column,
            key_type: K::SQL_TYPE,
        }
    }

    /// The same tables in PostgreSQL schema `schema` (created if missing),
    /// whatever the role's `search_path`; the migration history goes there
    /// too.
    ///
    /// # Panics
    /// When `schema` is not a plain lower-case identifier.
    pub const fn in_schema(self, schema: &'static str) -> Self {
        assert!(
            is_identifier(schema),
            "the schema must be a lower-case identifier"
        );
        Self {
            schema: Some(schema),
            ..self
        }
    }

    /// The schema, if not the `search_path`'s.
    pub fn schema(&self) -> Option<&'static str> {
        self.schema
    }

    /// The ordering key's column.
    pub fn key_column(&self) -> &'static str {
        self.key_column
    }

    /// The ordering key's SQL type.
    pub fn key_type(&self) -> &'static str {
        self.key_type
    }

    /// `table`'s name as statements write it: qualified by the schema, if
    /// there is one.
    pub(crate) fn table(&self, table: &str) -> String {
        format!("{}{table}", self.prefix())
    }

    fn prefix(&self) -> String {
        self.schema.map(|s| format!("{s}.")).unwrap_or_default()
    }

    /// The leases table, as an `Elector::in_table` takes it: the relay's
    /// lease is there, and any other single worker of the service should
    /// keep its lease there too.
    pub fn leases_table(&self) -> String {
        self.table(memberflow_infra::lease::TABLE)
    }

    /// The migration history's table.
    pub fn migrations_table(&self) -> String {
        self.table(MIGRATIONS_TABLE)
    }

    /// The library's migrations rendered for these tables, recorded in
    /// [`Self::migrations_table`]. Apply it after the service's own.
    pub fn migrator(&self) -> Migrator {
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, template)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(self.render(template))),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(self.migrations_table());
        if let Some(schema) = self.schema {
            migrator.create_schema(schema);
        }
        migrator
    }

    /// `template` with its tables and key column filled in.
    fn render(&self, template: &str) -> String {
        template
            .replace("{schema}", &self.prefix())
            .replace("{key_type}", self.key_type)
            .replace("{key}", self.key_column)
    }
}

/// The columns of the library's tables besides the key.
const OWN_COLUMNS: [&str; 14] = [
    "id",
    "event_id",
    "routing_key",
    "version",
    "payload",
    "occurred_at",
    "attempts",
    "last_error",
    "traceparent",
    "tracestate",
    "parked_at",
    "received_at",
    "name",
    "holder",
];

const fn is_own_column(name: &str) -> bool {
    let mut i = 0;
    while i < OWN_COLUMNS.len() {
        if same(OWN_COLUMNS[i].as_bytes(), name.as_bytes()) {
            return true;
        }
        i += 1;
    }
    false
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `name` can stand unquoted in SQL as itself: a lower-case ASCII
/// identifier (so no quoting, no case folding, nothing to inject).
const fn is_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit());
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout auth and task had before the library owned its schema.
    const MEMBERS: Tables = Tables::new::<Uuid>("member_id");

    /// The checksum sqlx recorded for the first migration on auth's and
    /// task's databases when it was a plain file (sha384 of its bytes).
    const RECORDED: &str = "fad100b25566ee582afb133b29075676ae95af876b0a9805f6360ac6869e7ef1c44594dcf44edbd5b7ddce0d6fadcbf9";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_members_layout_renders_the_migrations_already_applied_byte_for_byte() {
        let migrator = MEMBERS.migrator();
        let first = migrator.iter().next().unwrap();
        assert_eq!(hex(&first.checksum), RECORDED);
        assert_eq!(MEMBERS.migrations_table(), MIGRATIONS_TABLE);
    }

    #[test]
    fn another_key_and_schema_render_their_own_tables() {
        const ORDERS: Tables = Tables::new::<i64>("order_id").in_schema("orders_outbox");
        let sql = ORDERS.render(MIGRATIONS[0].2);
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS orders_outbox.outbox ("));
        assert!(sql.contains("order_id   bigint        NOT NULL"));
        assert!(sql.contains("ON orders_outbox.outbox_parked (order_id)"));
        assert!(!sql.contains("member_id"));
        assert!(!sql.contains('{'), "every placeholder is filled");
        assert_eq!(
            ORDERS.migrations_table(),
            "orders_outbox._memberflow_outbox_migrations"
        );
        assert_eq!(ORDERS.table("outbox"), "orders_outbox.outbox");
    }

    #[test]
    fn names_that_would_need_quoting_are_refused() {
        for bad in ["", "Member", "1st", "a-b", "a b", "x;drop", "a\"b"] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
        for good in ["member_id", "_k", "k2"] {
            assert!(is_identifier(good), "{good:?}");
        }
        assert!(is_own_column("version") && !is_own_column("member_id"));
    }
}
