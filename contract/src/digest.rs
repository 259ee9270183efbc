//! The one definition of how both sides digest a range of members, so a
//! replica can find where it differs from auth without reading what it has
//! right (see `auth.v1.AuthService/DigestMembers`).
use uuid::Uuid;

/// The SQL hash of one member row, over its `id` and `version` columns. The
/// bucket hash is the decimal sum of these, which is order-independent and
/// cancels no pair the way XOR would. `hashtextextended` is PostgreSQL's hash
/// for hash partitioning, so it is stable across versions.
pub const ROW_HASH_SQL: &str = "hashtextextended(id::text || ':' || version::text, 0)";

/// The lowest member id; ranges are `(after, until]`, so it is never a member.
pub const FIRST: Uuid = Uuid::nil();
/// The highest member id.
pub const LAST: Uuid = Uuid::max();

/// An id range `(after, until]` and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub after: Uuid,
    pub until: Uuid,
    pub count: i64,
    pub hash: String,
}

/// Parses an optional range end: empty means `default`.
pub fn parse_bound(raw: &str, default: Uuid) -> Result<Uuid, uuid::Error> {
    if raw.is_empty() {
        Ok(default)
    } else {
        Uuid::parse_str(raw)
    }
}
