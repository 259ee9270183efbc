//! The one definition of how both sides digest a range of members, so a
//! replica can find where it differs from auth without reading what it has
//! right (see `auth.v1.AuthService/DigestMembers`).
use uuid::Uuid;

/// The SQL hash of one member row: its id, version and replicable content
/// (nickname, region, session state, role, suspension), so a replica row at auth's version
/// with other content differs. Both sides run this same text over their own
/// `members` table, whose columns carry the same names and types.
///
/// The hashed text is canonical on both sides: a row constructor's text form
/// quotes any field that needs it (so no two rows share a text, whatever
/// their nicknames hold) and writes NULL as an empty field; the timestamp
/// is hashed as integer microseconds since the epoch, so neither side's
/// `TimeZone` or `DateStyle` setting matters. The bucket hash is the decimal
/// sum of the row hashes, which is order-independent and cancels no pair the
/// way XOR would. `hashtextextended` is PostgreSQL's hash for hash
/// partitioning, so it is stable across versions.
///
/// A tombstone (`deleted_at` set) hashes as its id, its version and the
/// word `deleted` only: that is all ListMembers tells of it, and a live row
/// at the same version never hashes the same. A live `member` who is not
/// suspended hashes as it did before roles and deletions existed, so old
/// and new versions of each side agree on every such row; an admin or a
/// suspended member hashes with its role and suspension (time and reason)
/// too, so a replica that missed a suspension differs from auth and the
/// reconciler repairs it. Between an old and a new version those rows, and
/// only those, differ: deploy task first (docs/security.md).
///
/// A column added to the replicated state joins this list and
/// `task::domain::ReplicaMember::same_content`.
pub const ROW_HASH_SQL: &str = "hashtextextended(CASE \
     WHEN deleted_at IS NOT NULL THEN ROW(id, version, 'deleted')::text \
     WHEN role = 'member' AND suspended_at IS NULL \
     THEN ROW(id, version, nickname, region, sessions_version, \
     (extract(epoch FROM sessions_not_before) * 1000000)::int8)::text \
     ELSE ROW(id, version, nickname, region, sessions_version, \
     (extract(epoch FROM sessions_not_before) * 1000000)::int8, role, \
     (extract(epoch FROM suspended_at) * 1000000)::int8, suspended_reason)::text END, 0)";

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
