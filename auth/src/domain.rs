//! Member domain types. Parsing into these is validation: a value of type
//! `Email` is a valid, normalised email, and so on.
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A valid email address in its one stored form, so that two spellings of
/// the same address collide as one account:
/// - the whole address is NFKC-normalised (full-width and other
///   compatibility look-alikes become their plain letters, `＠` becomes `@`);
/// - the domain is IDNA-normalised to ASCII (UTS 46: `bücher.de` becomes
///   `xn--bcher-kva.de`) and lower-cased;
/// - the local part is lower-cased (every major provider treats it so).
///
/// Nothing else is folded: dots and `+tags` in the local part are kept,
/// since only some providers ignore them. At most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        use unicode_normalization::UnicodeNormalization;
        const INVALID: &str = "must be a valid email address";
        if raw.is_empty() {
            return Err("must not be empty");
        }
        let nfkc: String = raw.nfkc().collect();
        if nfkc.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(INVALID);
        }
        let (local, domain) = nfkc.rsplit_once('@').ok_or(INVALID)?;
        let domain = idna::domain_to_ascii(domain).map_err(|_| INVALID)?;
        let address = format!("{}@{domain}", local.to_lowercase());
        if address.chars().count() > 254 {
            return Err("must be at most 254 characters");
        }
        if !email_address::EmailAddress::is_valid(&address) {
            return Err(INVALID);
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of 8 to 128 characters. Never logged: `Debug` is redacted.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        match raw.chars().count() {
            0..8 => Err("must be at least 8 characters"),
            8..=128 => Ok(Self(raw.to_owned())),
            _ => Err("must be at most 128 characters"),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// 1 to 32 characters of visible, one-line text (`memberflow_contract::text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nickname(String);

impl Nickname {
    pub fn parse(raw: &str) -> Result<Self, String> {
        memberflow_contract::text::display_text(raw, 32).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time-zone name such as `Asia/Seoul`, in its canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(chrono_tz::Tz);

impl Region {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        raw.parse::<chrono_tz::Tz>()
            .map(Self)
            .map_err(|_| "must be an IANA time-zone name such as Asia/Seoul")
    }

    pub fn as_str(&self) -> &str {
        self.0.name()
    }
}

/// What a member may do beyond their own account. A small, closed set:
/// parsing refuses anything else rather than guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every member: their own profile, sessions and tasks.
    Member,
    /// May set roles, suspend and reinstate members, and list any member's
    /// tasks.
    Admin,
}

impl Role {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        match raw {
            "member" => Ok(Self::Member),
            "admin" => Ok(Self::Admin),
            _ => Err("must be \"member\" or \"admin\""),
        }
    }

    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }
}

/// Why an admin suspended a member: 1 to 200 characters of one-line text
/// (`memberflow_contract::text`). About a person: erased with the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspensionReason(String);

impl SuspensionReason {
    pub fn parse(raw: &str) -> Result<Self, String> {
        memberflow_contract::text::display_text(raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A permission change an admin makes (SetRole, SuspendMember,
/// ReinstateMember).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessChange {
    SetRole(Role),
    Suspend(SuspensionReason),
    Reinstate,
    /// The operator's `memberflow-admin grant-admin`: admin and not
    /// suspended, whatever the member held (the way back in when no active
    /// admin is left).
    MakeActiveAdmin,
}

/// A member's role and suspension (the reason, while suspended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub role: Role,
    pub suspension: Option<String>,
}

impl Access {
    /// The access `member` holds now. A role the column's CHECK would not
    /// let in cannot be read; `member` stands in for safety.
    pub fn of(member: &Member) -> Self {
        Self {
            role: Role::parse(&member.role).unwrap_or(Role::Member),
            suspension: member.suspended_reason.clone(),
        }
    }

    /// An admin who is not suspended: one who may make permission changes.
    pub fn is_active_admin(&self) -> bool {
        self.role == Role::Admin && self.suspension.is_none()
    }
}

/// A validated signup.
#[derive(Debug)]
pub struct NewMember {
    pub email: Email,
    pub password: Password,
    pub nickname: Nickname,
    pub region: Region,
}

/// A validated profile change; at least one field is set.
#[derive(Debug)]
pub struct ProfileChange {
    pub nickname: Option<Nickname>,
    pub region: Option<Region>,
}

/// A member as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    pub id: Uuid,
    pub email: String,
    pub nickname: String,
    pub region: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the member's sessions were last ended; `None` if never.
    pub sessions_not_before: Option<DateTime<Utc>>,
    /// The version that ending produced (0 if never).
    pub sessions_version: i64,
    /// `member` or `admin` (the column's CHECK keeps it to those).
    pub role: String,
    /// Set while suspended, with `suspended_reason`.
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_reason: Option<String>,
}

impl Member {
    /// A member just signed up at `now`, at version 1. Times are kept to the
    /// microsecond, as PostgreSQL stores them, so the event carries exactly
    /// the stored `updated_at`.
    pub fn signed_up(id: Uuid, new: &NewMember, now: DateTime<Utc>) -> Self {
        use chrono::SubsecRound as _;
        let now = now.trunc_subsecs(6);
        Self {
            id,
            email: new.email.as_str().to_owned(),
            nickname: new.nickname.as_str().to_owned(),
            region: new.region.as_str().to_owned(),
            version: 1,
            created_at: now,
            updated_at: now,
            sessions_not_before: None,
            sessions_version: 0,
            role: Role::Member.as_str().to_owned(),
            suspended_at: None,
            suspended_reason: None,
        }
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended_at.is_some()
    }

    /// The member's last session revocation, as tokens are checked against.
    pub fn sessions(&self) -> memberflow_contract::token::SessionsRevoked {
        memberflow_contract::token::SessionsRevoked {
            not_before: self.sessions_not_before,
            version: self.sessions_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_lower_cased_and_bounded() {
        assert_eq!(
            Email::parse("Ann@Example.COM").unwrap().as_str(),
            "ann@example.com"
        );
        assert!(Email::parse("not-an-email").is_err());
        assert!(Email::parse("a b@example.com").is_err());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn one_address_has_one_form() {
        let same = [
            ("u@bücher.de", "u@xn--bcher-kva.de"),
            ("u@xn--bcher-kva.de", "u@xn--bcher-kva.de"),
            ("U@BÜCHER.DE", "u@xn--bcher-kva.de"),
            ("ｕ＠ｅｘａｍｐｌｅ．ｃｏｍ", "u@example.com"),
            ("Ann.Lee+news@Example.com", "ann.lee+news@example.com"),
        ];
        for (raw, stored) in same {
            assert_eq!(Email::parse(raw).unwrap().as_str(), stored, "{raw}");
        }
        for bad in [
            "u@",
            "@example.com",
            "u@exa mple.com",
            "u\0@example.com",
            "u@-x-.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_length_bounds() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(128)).is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn nickname_is_trimmed_and_checked() {
        assert_eq!(Nickname::parse("  ann ").unwrap().as_str(), "ann");
        assert!(Nickname::parse("   ").is_err());
        assert!(Nickname::parse(&"n".repeat(33)).is_err());
        assert!(Nickname::parse("a\u{7}b").is_err());
        assert!(Nickname::parse(&"가".repeat(32)).is_ok());
    }

    #[test]
    fn roles_are_a_closed_set() {
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert_eq!(Role::parse("member"), Ok(Role::Member));
        for bad in ["", "Admin", "root", "admin ", "superuser"] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
        for role in [Role::Member, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
    }

    #[test]
    fn a_suspension_reason_is_bounded_one_line_text() {
        assert_eq!(SuspensionReason::parse(" spam ").unwrap().as_str(), "spam");
        assert!(SuspensionReason::parse("").is_err());
        assert!(SuspensionReason::parse("a\nb").is_err());
        assert!(SuspensionReason::parse(&"r".repeat(200)).is_ok());
        assert!(SuspensionReason::parse(&"r".repeat(201)).is_err());
    }

    #[test]
    fn region_is_an_iana_zone() {
        assert_eq!(Region::parse("Asia/Seoul").unwrap().as_str(), "Asia/Seoul");
        assert!(Region::parse("Mars/Olympus").is_err());
        assert!(Region::parse("").is_err());
    }
}
