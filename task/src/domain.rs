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

/// A member's role and suspension, as auth replicates them. task enforces
/// what it replicates: a suspended member is refused every call, and only
/// an `admin` may read another member's tasks.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Access {
    /// As auth sent it: `member`, `admin`, or a role this version does not
    /// know yet, which is kept as it came and grants nothing.
    pub role: String,
    /// Set while suspended, with the admin's reason.
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_reason: Option<String>,
}

impl Access {
    /// The role every member has unless an admin gives another.
    pub const MEMBER: &str = "member";
    /// The one role that grants anything beyond the member's own account.
    pub const ADMIN: &str = "admin";

    /// A member who is not suspended: every member before roles existed,
    /// and what a tombstone keeps.
    pub fn member() -> Self {
        Self {
            role: Self::MEMBER.to_owned(),
            suspended_at: None,
            suspended_reason: None,
        }
    }

    /// Longest role kept: auth's are far shorter; a longer one is garbage.
    const MAX_ROLE_CHARS: usize = 32;
    /// Longest suspension reason auth accepts, in characters.
    const MAX_REASON_CHARS: usize = 200;

    /// The access a message from auth carries (an event, GetMember,
    /// ListMembers). An empty role comes from an auth that predates roles:
    /// `member`. Errors name the field and why.
    pub fn from_wire(
        role: String,
        suspension: Option<memberflow_contract::proto::auth::v1::Suspension>,
    ) -> Result<Self, (&'static str, &'static str)> {
        let role = if role.is_empty() {
            Self::MEMBER.to_owned()
        } else {
            role
        };
        if role.chars().count() > Self::MAX_ROLE_CHARS {
            return Err(("role", "must be at most 32 characters"));
        }
        let (suspended_at, suspended_reason) = match suspension {
            None => (None, None),
            Some(s) => {
                let since = s
                    .since
                    .as_ref()
                    .and_then(memberflow_contract::time::from_timestamp)
                    .ok_or(("suspension.since", "missing or out of range"))?;
                if s.reason.chars().count() > Self::MAX_REASON_CHARS {
                    return Err(("suspension.reason", "must be at most 200 characters"));
                }
                (Some(since), Some(s.reason))
            }
        };
        Ok(Self {
            role,
            suspended_at,
            suspended_reason,
        })
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended_at.is_some()
    }

    /// An admin who is not suspended.
    pub fn is_admin(&self) -> bool {
        self.role == Self::ADMIN && !self.is_suspended()
    }
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
    #[sqlx(flatten)]
    pub access: Access,
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
            access: Access::member(),
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
    /// version (nickname, region, session state, role, suspension). `occurred_at` is when
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
            &self.access,
        ) == (
            &other.nickname,
            &other.region,
            other.sessions_not_before,
            other.sessions_version,
            &other.access,
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
    fn access_from_the_wire() {
        use memberflow_contract::proto::auth::v1::Suspension;
        let old = Access::from_wire(String::new(), None).unwrap();
        assert_eq!(old, Access::member(), "an auth from before roles");
        assert!(!old.is_admin());
        let unknown = Access::from_wire("auditor".into(), None).unwrap();
        assert_eq!(unknown.role, "auditor", "kept as it came");
        assert!(!unknown.is_admin(), "and grants nothing");
        assert!(Access::from_wire("admin".into(), None).unwrap().is_admin());
        let since = memberflow_contract::time::timestamp(Utc::now());
        let suspended = Access::from_wire(
            "admin".into(),
            Some(Suspension {
                reason: "spam".into(),
                since: Some(since),
            }),
        )
        .unwrap();
        assert!(suspended.is_suspended());
        assert!(!suspended.is_admin(), "a suspended admin grants nothing");
        let no_time = Some(Suspension {
            reason: "spam".into(),
            since: None,
        });
        assert_eq!(
            Access::from_wire("member".into(), no_time).unwrap_err().0,
            "suspension.since"
        );
        assert!(Access::from_wire("r".repeat(33), None).is_err());
    }

    #[test]
    fn title_bounds() {
        assert!(Title::parse("  ").is_err());
        assert!(Title::parse(&"t".repeat(200)).is_ok());
        assert!(Title::parse(&"t".repeat(201)).is_err());
    }
}
