//! Setting replica rows to auth's state: the one decision the reconciler and
//! resync share, and the writes that carry it out.
//!
//! auth is the source of truth. A replica row that is missing or behind is
//! written through the version guard (`replica::upsert`), which never moves a
//! row backwards. A row *ahead* of auth, or at auth's version with other
//! content, cannot be fixed through the guard: it must move down or sideways.
//! Such a row is only ever set by a compare-and-set on the row as it was
//! observed (`replica::set_if_unchanged`), so an event applied after the
//! observation is never overwritten.
//!
//! The rule that makes "ahead" mean ahead: the replica is observed *first*,
//! and compared with a read of auth taken *after* it. auth's versions only
//! grow, so a replica version above what auth answered later was never
//! auth's (a forged event) or was lost by auth (a restore).
use std::collections::HashMap;

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::ReplicaMember,
    replica::{self, Observed},
};

/// How a replica row differs from auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// auth has the member, the replica does not.
    Missing,
    /// The replica holds an older version.
    Behind,
    /// The replica holds a version auth does not have yet: a forged event,
    /// or auth restored from a backup.
    Ahead,
    /// Same version, other content: auth restored and then changed again,
    /// reusing the version.
    Conflict,
    /// The replica has a member auth does not know.
    Unknown,
}

impl Kind {
    /// Every kind, in the order of [`PerKind`].
    pub const ALL: [Kind; 5] = [
        Kind::Missing,
        Kind::Behind,
        Kind::Ahead,
        Kind::Conflict,
        Kind::Unknown,
    ];

    /// The `kind` label value of the reconciler's metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Behind => "behind",
            Kind::Ahead => "ahead",
            Kind::Conflict => "conflict",
            Kind::Unknown => "unknown",
        }
    }
}

/// A count per [`Kind`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PerKind([u64; 5]);

impl PerKind {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize]
    }

    pub fn add(&mut self, kind: Kind, n: u64) {
        self.0[kind as usize] += n;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &PerKind) {
        for kind in Kind::ALL {
            self.add(kind, other.get(kind));
        }
    }
}

/// What the reconciler does with a replica row auth does not have
/// (`reconcile.unknown_rows`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownRows {
    /// Count and log it; touch nothing. The default: until auth keeps
    /// tombstones, such a row may be a member a restore of auth lost, and
    /// their tasks hang off it.
    #[default]
    Report,
    /// Delete it, by compare-and-set, unless it has tasks: a member with
    /// tasks was vouched for by auth once (a token auth signed created them),
    /// so it is kept and reported.
    Remove,
}

/// A row to move to auth's state, only if it is still as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwrite {
    pub kind: Kind,
    pub observed: Observed,
    pub target: ReplicaMember,
}

/// What to write for one compared range.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Missing or behind: through the version guard.
    pub upsert: Vec<(Kind, ReplicaMember)>,
    /// Ahead or in conflict: by compare-and-set.
    pub overwrite: Vec<Overwrite>,
    /// Rows auth does not have.
    pub unknown: Vec<Observed>,
}

impl Plan {
    /// How many rows of each kind the comparison found.
    pub fn found(&self) -> PerKind {
        let mut n = PerKind::default();
        for (kind, _) in &self.upsert {
            n.add(*kind, 1);
        }
        for o in &self.overwrite {
            n.add(o.kind, 1);
        }
        n.add(Kind::Unknown, self.unknown.len() as u64);
        n
    }
}

/// Compares auth's members with the replica rows of the same range (read
/// before them, see the module doc) and decides what to write.
pub fn decide(theirs: &[ReplicaMember], ours: &[Observed]) -> Plan {
    let mut ours: HashMap<Uuid, &Observed> = ours.iter().map(|o| (o.member.id, o)).collect();
    let mut plan = Plan::default();
    for t in theirs {
        let Some(o) = ours.remove(&t.id) else {
            plan.upsert.push((Kind::Missing, t.clone()));
            continue;
        };
        let kind = match o.member.version.cmp(&t.version) {
            std::cmp::Ordering::Less => {
                plan.upsert.push((Kind::Behind, t.clone()));
                continue;
            }
            std::cmp::Ordering::Greater => Kind::Ahead,
            std::cmp::Ordering::Equal if o.member.same_content(t) => continue,
            std::cmp::Ordering::Equal => Kind::Conflict,
        };
        plan.overwrite.push(Overwrite {
            kind,
            observed: o.clone(),
            target: t.clone(),
        });
    }
    let mut unknown: Vec<Observed> = ours.into_values().cloned().collect();
    unknown.sort_by_key(|o| o.member.id);
    plan.unknown = unknown;
    plan
}

/// Writes the missing and behind rows through the version guard; returns
/// how many of each changed a row.
pub async fn upsert(
    db: &mut sqlx::PgConnection,
    plan: &[(Kind, ReplicaMember)],
) -> sqlx::Result<PerKind> {
    let mut done = PerKind::default();
    for kind in [Kind::Missing, Kind::Behind] {
        let rows: Vec<ReplicaMember> = plan
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, m)| m.clone())
            .collect();
        if !rows.is_empty() {
            done.add(kind, replica::upsert(&mut *db, &rows).await?);
        }
    }
    Ok(done)
}

/// Sets each row ahead or in conflict to auth's state if it is still as
/// observed; returns how many of each kind were set. A row changed in
/// between is left alone (the next pass looks at it again).
pub async fn overwrite(pool: &PgPool, plan: &[Overwrite]) -> sqlx::Result<PerKind> {
    let mut done = PerKind::default();
    if plan.is_empty() {
        return Ok(done);
    }
    let kinds: HashMap<Uuid, Kind> = plan.iter().map(|o| (o.target.id, o.kind)).collect();
    for id in replica::set_if_unchanged(pool, plan.iter().map(|o| (&o.observed, &o.target))).await?
    {
        if let Some(kind) = kinds.get(&id) {
            done.add(*kind, 1);
        }
    }
    Ok(done)
}

/// Carries out `policy` for rows auth does not have; returns how many were
/// removed.
pub async fn unknown(pool: &PgPool, rows: &[Observed], policy: UnknownRows) -> sqlx::Result<u64> {
    match policy {
        UnknownRows::Report => Ok(0),
        UnknownRows::Remove if rows.is_empty() => Ok(0),
        UnknownRows::Remove => replica::remove_if_unchanged(pool, rows).await,
    }
}

/// Carries out a whole plan; returns the rows repaired of each kind.
pub async fn carry_out(pool: &PgPool, plan: &Plan, policy: UnknownRows) -> sqlx::Result<PerKind> {
    let mut done = PerKind::default();
    if !plan.upsert.is_empty() {
        let mut conn = pool.acquire().await?;
        done.merge(&upsert(&mut conn, &plan.upsert).await?);
    }
    done.merge(&overwrite(pool, &plan.overwrite).await?);
    done.add(Kind::Unknown, unknown(pool, &plan.unknown, policy).await?);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn member(id: u128, version: i64, nickname: &str) -> ReplicaMember {
        ReplicaMember {
            id: Uuid::from_u128(id),
            nickname: nickname.into(),
            region: "Asia/Seoul".into(),
            version,
            occurred_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            sessions_not_before: None,
            sessions_version: 0,
            deleted_at: None,
            access: crate::domain::Access::member(),
        }
    }

    #[test]
    fn tombstones_are_applied_and_never_undone() {
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let gone = |id, v, s| ReplicaMember::tombstone(Uuid::from_u128(id), v, at(s));
        let theirs = [gone(1, 3, 5), gone(2, 3, 5), gone(3, 3, 5), gone(4, 3, 5)];
        let ours = [
            // Behind: the live row becomes the tombstone, through the guard.
            seen(member(1, 2, "Ann")),
            // The same tombstone, learnt at another time: equal.
            seen(gone(2, 3, 9)),
            // Live at auth's version (a forged event): set to the tombstone.
            seen(member(3, 3, "Forged")),
            // Live ahead of the tombstone: set down to it.
            seen(member(4, 7, "Forged")),
        ];
        let plan = decide(&theirs, &ours);
        assert_eq!(plan.upsert, vec![(Kind::Behind, theirs[0].clone())]);
        let kinds: Vec<(Kind, bool)> = plan
            .overwrite
            .iter()
            .map(|o| (o.kind, o.target.is_deleted()))
            .collect();
        assert_eq!(kinds, vec![(Kind::Conflict, true), (Kind::Ahead, true)]);
        assert!(plan.unknown.is_empty());
        // A tombstone auth does not have is never read as a member to keep:
        // auth's live row (a new version) wins through the guard.
        let plan = decide(&[member(5, 4, "Back")], &[seen(gone(5, 3, 5))]);
        assert_eq!(plan.upsert, vec![(Kind::Behind, member(5, 4, "Back"))]);
    }

    fn seen(m: ReplicaMember) -> Observed {
        Observed {
            member: m,
            replicated_at: DateTime::from_timestamp(1_800_000_001, 0).unwrap(),
        }
    }

    #[test]
    fn every_kind_is_found_and_equal_rows_are_left_alone() {
        let theirs = [
            member(1, 1, "same"),
            member(2, 3, "newer"),
            member(3, 2, "Later"),
            member(4, 3, "After3"),
            member(5, 1, "new"),
        ];
        let ours = [
            seen(member(1, 1, "same")),
            seen(member(2, 2, "older")),
            seen(member(3, 1000, "Forged")),
            seen(member(4, 3, "R3")),
            seen(member(6, 4, "stray")),
        ];
        let plan = decide(&theirs, &ours);
        assert_eq!(
            plan.upsert,
            vec![
                (Kind::Behind, theirs[1].clone()),
                (Kind::Missing, theirs[4].clone())
            ]
        );
        assert_eq!(
            plan.overwrite,
            vec![
                Overwrite {
                    kind: Kind::Ahead,
                    observed: ours[2].clone(),
                    target: theirs[2].clone()
                },
                Overwrite {
                    kind: Kind::Conflict,
                    observed: ours[3].clone(),
                    target: theirs[3].clone()
                },
            ]
        );
        assert_eq!(plan.unknown, vec![ours[4].clone()]);
        let found = plan.found();
        assert_eq!(
            Kind::ALL.map(|k| found.get(k)),
            [1, 1, 1, 1, 1],
            "one of each kind"
        );
    }

    #[test]
    fn session_state_is_content_and_occurred_at_is_not() {
        let auth = member(1, 2, "n");
        let mut revoked = auth.clone();
        revoked.sessions_version = 2;
        revoked.sessions_not_before = Some(auth.occurred_at);
        assert_eq!(
            decide(std::slice::from_ref(&auth), &[seen(revoked)]).overwrite[0].kind,
            Kind::Conflict
        );
        let mut later = auth.clone();
        later.occurred_at += chrono::Duration::seconds(5);
        assert_eq!(decide(&[auth], &[seen(later)]), Plan::default());
    }

    #[test]
    fn an_overwrite_carries_the_observation_it_was_decided_on() {
        // The compare-and-set token is the observed row, not the target:
        // a row that changed after it was read does not match it.
        let plan = decide(&[member(1, 2, "auth")], &[seen(member(1, 9, "ahead"))]);
        let o = &plan.overwrite[0];
        assert_eq!((o.observed.member.version, o.target.version), (9, 2));
        assert_eq!(
            o.observed.replicated_at,
            seen(member(1, 9, "")).replicated_at
        );
    }

    #[test]
    fn the_unknown_rows_policy_reads_from_config_text() {
        use serde::de::value::{Error, StrDeserializer};
        let parse = |s| UnknownRows::deserialize(StrDeserializer::<Error>::new(s));
        assert_eq!(parse("remove").unwrap(), UnknownRows::Remove);
        assert_eq!(parse("report").unwrap(), UnknownRows::Report);
        assert!(parse("delete").is_err());
        assert_eq!(UnknownRows::default(), UnknownRows::Report);
    }
}
