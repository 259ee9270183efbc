//! Consistency tokens: read-your-writes across the replication hop.
//!
//! auth answers each write (SignUp, UpdateProfile) with an opaque token
//! naming the member and the version the write produced; the access token
//! carries the version at login. task, asked for a member at that version,
//! waits briefly for its replica to reach it rather than act on an older
//! copy. A token is not a credential: it only tells task how fresh its copy
//! must be, and must name the caller.
use uuid::Uuid;

/// "I have seen `member_id` at `version`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub member_id: Uuid,
    pub version: i64,
}

/// Why a consistency token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a consistency token from auth")]
pub struct Malformed;

const PREFIX: &str = "c1.";

impl ConsistencyToken {
    /// The opaque text form clients pass back.
    pub fn encode(self) -> String {
        format!("{PREFIX}{}.{}", self.member_id.simple(), self.version)
    }

    /// Parses [`Self::encode`]'s form.
    pub fn parse(raw: &str) -> Result<Self, Malformed> {
        let rest = raw.strip_prefix(PREFIX).ok_or(Malformed)?;
        let (id, version) = rest.split_once('.').ok_or(Malformed)?;
        let member_id = Uuid::parse_str(id).map_err(|_| Malformed)?;
        let version: i64 = version.parse().map_err(|_| Malformed)?;
        if version < 1 {
            return Err(Malformed);
        }
        Ok(Self { member_id, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let t = ConsistencyToken {
            member_id: Uuid::now_v7(),
            version: 7,
        };
        assert_eq!(ConsistencyToken::parse(&t.encode()), Ok(t));
        for bad in [
            "",
            "c1.",
            "c1.xyz.1",
            &format!("c1.{}.0", t.member_id.simple()),
            "v2.a.b",
        ] {
            assert_eq!(ConsistencyToken::parse(bad), Err(Malformed), "{bad}");
        }
    }
}
