//! Task domain types; parsing is validation.
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

/// 1 to 200 characters of visible, one-line text (`memberflow_contract::text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, String> {
        memberflow_contract::text::display_text(raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A wall-clock time `YYYY-MM-DDTHH:MM`, not yet placed in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueLocal(NaiveDateTime);

impl DueLocal {
    /// Years a due time may fall in: every instant they give is a valid
    /// `google.protobuf.Timestamp` (years 1 to 9999) in any time zone, and
    /// every client decodes it.
    pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2200;

    pub fn parse(raw: &str) -> Result<Self, String> {
        const FORMAT: &str = "must be a local time formatted YYYY-MM-DDTHH:MM";
        let b = raw.as_bytes();
        let shape = b.len() == 16
            && [4, 7, 10, 13].iter().zip(b"--T:").all(|(&i, &c)| b[i] == c)
            && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15]
                .iter()
                .all(|&i| b[i].is_ascii_digit());
        if !shape {
            return Err(FORMAT.into());
        }
        let num = |r: std::ops::Range<usize>| raw[r].parse::<u32>().expect("digits");
        let (year, month, day) = (num(0..4) as i32, num(5..7), num(8..10));
        let (hour, minute) = (num(11..13), num(14..16));
        if !Self::YEARS.contains(&year) {
            return Err("the year must be 1900 to 2200".into());
        }
        let date = chrono::NaiveDate::from_ymd_opt(year, month, day)
            .ok_or_else(|| format!("{} is not a calendar date", &raw[..10]))?;
        let time = chrono::NaiveTime::from_hms_opt(hour, minute, 0)
            .ok_or_else(|| format!("{} is not a time of day (00:00 to 23:59)", &raw[11..]))?;
        Ok(Self(NaiveDateTime::new(date, time)))
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
    /// Set on a tombstone: auth deleted the member at `version`. A
    /// tombstone's nickname and region are empty and it has no tasks.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl ReplicaMember {
    /// The tombstone of member `id`, deleted at `version` at `at`.
    pub fn tombstone(id: Uuid, version: i64, at: DateTime<Utc>) -> Self {
        Self {
            id,
            nickname: String::new(),
            region: String::new(),
            version,
            occurred_at: at,
            sessions_not_before: None,
            sessions_version: 0,
            deleted_at: Some(at),
        }
    }

    /// Whether auth deleted this member.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The member's last session revocation, as tokens are checked against.
    pub fn sessions(&self) -> memberflow_contract::token::SessionsRevoked {
        memberflow_contract::token::SessionsRevoked {
            not_before: self.sessions_not_before,
            version: self.sessions_version,
        }
    }

    /// Whether two states of a member agree on the replicable content: what
    /// `memberflow_contract::digest::ROW_HASH_SQL` hashes beside the id and
    /// version (nickname, region, session state). `occurred_at` is when
    /// auth made the change, not part of the member, so it is left out.
    pub fn same_content(&self, other: &Self) -> bool {
        // A tombstone's content is only that it is one (its deletion time is
        // not part of the digest: ListMembers does not carry it).
        if self.is_deleted() || other.is_deleted() {
            return self.is_deleted() == other.is_deleted();
        }
        (
            &self.nickname,
            &self.region,
            self.sessions_not_before,
            self.sessions_version,
        ) == (
            &other.nickname,
            &other.region,
            other.sessions_not_before,
            other.sessions_version,
        )
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
    fn due_local_years_and_calendar_dates_are_named() {
        assert!(DueLocal::parse("1900-01-01T00:00").is_ok());
        assert!(DueLocal::parse("2200-12-31T23:59").is_ok());
        for year in ["0000", "0001", "1899", "2201", "9999"] {
            let err = DueLocal::parse(&format!("{year}-06-01T10:00")).unwrap_err();
            assert!(err.contains("1900 to 2200"), "{year}: {err}");
        }
        let err = DueLocal::parse("2026-02-30T10:00").unwrap_err();
        assert_eq!(err, "2026-02-30 is not a calendar date");
        assert!(DueLocal::parse("2027-02-29T10:00").is_err());
        assert!(DueLocal::parse("2028-02-29T10:00").is_ok());
        let err = DueLocal::parse("2026-03-08T24:00").unwrap_err();
        assert!(err.contains("not a time of day"), "{err}");
        assert!(DueLocal::parse("2026-03-08T09:60").is_err());
        assert!(DueLocal::parse("+026-03-08T09:30").is_err());
    }

    #[test]
    fn title_bounds() {
        assert!(Title::parse("  ").is_err());
        assert!(Title::parse(&"t".repeat(200)).is_ok());
        assert!(Title::parse(&"t".repeat(201)).is_err());
    }
}
