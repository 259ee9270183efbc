//! Task domain types; parsing is validation.
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

/// A title of 1 to 200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let t = raw.trim();
        match t.chars().count() {
            0 => Err("must not be empty"),
            1..=200 => Ok(Self(t.to_owned())),
            _ => Err("must be at most 200 characters"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A wall-clock time `YYYY-MM-DDTHH:MM`, not yet placed in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueLocal(NaiveDateTime);

impl DueLocal {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.len() != 16 {
            return Err("must be a local time formatted YYYY-MM-DDTHH:MM");
        }
        NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M")
            .map(Self)
            .map_err(|_| "must be a local time formatted YYYY-MM-DDTHH:MM")
    }

    /// The instant this wall-clock time denotes in `tz`. A time skipped by a
    /// DST gap does not exist and is an error; a time repeated by a DST
    /// overlap resolves to its first (earlier) occurrence.
    pub fn resolve(self, tz: Tz) -> Result<DateTime<Utc>, &'static str> {
        match tz.from_local_datetime(&self.0) {
            LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
            LocalResult::None => Err(
                "does not exist in the member's time zone (skipped by a daylight-saving change)",
            ),
        }
    }
}

/// A validated CreateTask request.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub request_id: Uuid,
    pub title: Title,
    pub due_local: DueLocal,
}

/// The replicated part of a member.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaMember {
    pub id: Uuid,
    pub nickname: String,
    pub region: String,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    /// When the member's sessions were last ended, and at which version.
    pub sessions_not_before: Option<DateTime<Utc>>,
    pub sessions_version: i64,
}

impl ReplicaMember {
    /// The member's last session revocation, as tokens are checked against.
    pub fn sessions(&self) -> memberflow_common::token::SessionsRevoked {
        memberflow_common::token::SessionsRevoked {
            not_before: self.sessions_not_before,
            version: self.sessions_version,
        }
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Task {
    pub id: Uuid,
    pub member_id: Uuid,
    pub title: String,
    pub due_at: DateTime<Utc>,
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_local_is_strict() {
        assert!(DueLocal::parse("2026-03-08T09:30").is_ok());
        for bad in [
            "2026-03-08 09:30",
            "2026-3-8T9:30",
            "2026-02-30T10:00",
            "2026-03-08T24:00",
            "",
            "2026-03-08T09:30:00",
        ] {
            assert!(DueLocal::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dst_gap_is_rejected_and_overlap_takes_the_first() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08 02:30 does not exist in New York.
        assert!(
            DueLocal::parse("2026-03-08T02:30")
                .unwrap()
                .resolve(ny)
                .is_err()
        );
        // 2026-11-01 01:30 happens twice; the first is EDT (UTC-4).
        let t = DueLocal::parse("2026-11-01T01:30")
            .unwrap()
            .resolve(ny)
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-01T05:30:00+00:00");
    }

    #[test]
    fn title_bounds() {
        assert!(Title::parse("  ").is_err());
        assert!(Title::parse(&"t".repeat(200)).is_ok());
        assert!(Title::parse(&"t".repeat(201)).is_err());
    }
}
