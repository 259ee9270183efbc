//! What a presented refresh token gets: a pure function of what the store
//! holds for it and the time, so every branch has a unit test.
use chrono::{DateTime, Utc};

use super::Lifetimes;

/// What the store holds for a presented refresh token: its session's times
/// and whether the token was rotated away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub created_at: DateTime<Utc>,
    pub last_refreshed_at: DateTime<Utc>,
    /// The absolute end of the session.
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When this token was replaced by the next; `None` while current.
    pub rotated_at: Option<DateTime<Utc>>,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The current token of a live session: rotate it and issue new tokens.
    Valid,
    /// A token rotated away less than the grace ago: a client's retry.
    /// ABORTED, nothing ends.
    RotatedWithinGrace,
    /// A token rotated away longer ago: presumed stolen. End the session
    /// (and with it every token descended from its login); UNAUTHENTICATED.
    Reuse,
    /// Past the session's absolute lifetime.
    ExpiredAbsolute,
    /// Not refreshed within the idle lifetime.
    ExpiredIdle,
    /// The session was already ended (logout, revocation, an earlier reuse).
    Ended,
    /// No such token.
    Unknown,
}

/// Decides a refresh. A session that has ended or expired answers so
/// whatever the token, so a late reuse of an ended session ends nothing
/// more.
pub fn decide(found: Option<Found>, now: DateTime<Utc>, lifetimes: Lifetimes) -> Refresh {
    let Some(f) = found else {
        return Refresh::Unknown;
    };
    if f.ended_at.is_some() {
        return Refresh::Ended;
    }
    if now >= f.expires_at {
        return Refresh::ExpiredAbsolute;
    }
    if now >= f.last_refreshed_at + lifetimes.idle {
        return Refresh::ExpiredIdle;
    }
    match f.rotated_at {
        None => Refresh::Valid,
        Some(at) if now < at + lifetimes.reuse_grace => Refresh::RotatedWithinGrace,
        Some(_) => Refresh::Reuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + secs, 0).unwrap()
    }

    const LIFE: Lifetimes = Lifetimes {
        absolute: Duration::days(30),
        idle: Duration::days(7),
        reuse_grace: Duration::seconds(2),
    };

    fn live() -> Found {
        Found {
            created_at: at(0),
            last_refreshed_at: at(100),
            expires_at: at(0) + LIFE.absolute,
            ended_at: None,
            rotated_at: None,
        }
    }

    #[test]
    fn the_current_token_of_a_live_session_is_valid() {
        assert_eq!(decide(Some(live()), at(200), LIFE), Refresh::Valid);
    }

    #[test]
    fn a_rotated_token_is_a_retry_within_the_grace_and_reuse_after() {
        let rotated = Found {
            rotated_at: Some(at(100)),
            ..live()
        };
        assert_eq!(
            decide(Some(rotated), at(101), LIFE),
            Refresh::RotatedWithinGrace
        );
        assert_eq!(decide(Some(rotated), at(102), LIFE), Refresh::Reuse);
        let no_grace = Lifetimes {
            reuse_grace: Duration::zero(),
            ..LIFE
        };
        assert_eq!(decide(Some(rotated), at(100), no_grace), Refresh::Reuse);
    }

    #[test]
    fn sessions_expire_absolutely_and_when_idle() {
        let old = live();
        assert_eq!(
            decide(Some(old), old.expires_at, LIFE),
            Refresh::ExpiredAbsolute
        );
        assert_eq!(
            decide(Some(old), old.last_refreshed_at + LIFE.idle, LIFE),
            Refresh::ExpiredIdle
        );
        // Expiry wins over reuse: an expired session has nothing left to end.
        let rotated = Found {
            rotated_at: Some(at(100)),
            ..old
        };
        assert_eq!(
            decide(Some(rotated), old.expires_at, LIFE),
            Refresh::ExpiredAbsolute
        );
    }

    #[test]
    fn ended_sessions_and_unknown_tokens_get_nothing() {
        let ended = Found {
            ended_at: Some(at(150)),
            rotated_at: Some(at(100)),
            ..live()
        };
        assert_eq!(decide(Some(ended), at(200), LIFE), Refresh::Ended);
        assert_eq!(decide(None, at(200), LIFE), Refresh::Unknown);
    }
}
