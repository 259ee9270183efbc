//! auth's events on the shared outbox writer (`memberflow_outbox::write`):
//! [`Enqueue`] writes each kind in the transaction of its change, and
//! [`sign_up`] writes a signup and its event in one statement. Committing
//! through the outbox wakes the relay, so no caller can forget to.
use chrono::Utc;
pub use memberflow_outbox::write::{NewEvent, Outbox, RowAndEvent, Tx};
use uuid::Uuid;

use super::{EventKind, encode};
use crate::domain::{Member, NewMember};

/// Inserts a new member at version 1 and its `member.created` event in one
/// statement, so one round trip commits both or neither (a taken email fails
/// the whole statement), then wakes the relay. Returns the member and the
/// event id.
pub async fn sign_up(
    outbox: &Outbox,
    new: &NewMember,
    password_hash: &str,
) -> sqlx::Result<(Member, Uuid)> {
    let member = Member::signed_up(Uuid::now_v7(), new, Utc::now());
    let event = changed(EventKind::Created, &member);
    let written = SIGN_UP
        .execute(
            outbox,
            |q| {
                q.bind(member.id)
                    .bind(member.email.as_str())
                    .bind(password_hash)
                    .bind(member.nickname.as_str())
                    .bind(member.region.as_str())
                    .bind(member.version)
                    .bind(member.created_at)
            },
            &event,
        )
        .await?;
    // The insert has no ON CONFLICT: a taken email is an error, so a
    // statement that succeeded wrote the member and its event.
    debug_assert!(written, "a signup writes its event");
    Ok((member, event.event_id))
}

/// [`sign_up`]'s statement: the member, then its event from the row, in
/// one round trip.
static SIGN_UP: std::sync::LazyLock<RowAndEvent> =
    std::sync::LazyLock::new(|| RowAndEvent::new(&super::SPEC, SIGN_UP_ROW_SQL, 7));

/// Writes each kind of auth event in an outbox transaction.
pub trait Enqueue {
    /// Writes the `kind` event for `member` as it is now. Returns the event
    /// id.
    fn enqueue(
        &mut self,
        kind: EventKind,
        member: &Member,
    ) -> impl Future<Output = sqlx::Result<Uuid>> + Send;

    /// Writes the MemberSessionEnded event for `ended`, a session of
    /// `member`. Returns the event id.
    fn enqueue_session_ended(
        &mut self,
        member: &Member,
        ended: &crate::sessions::store::Ended,
    ) -> impl Future<Output = sqlx::Result<Uuid>> + Send;

    /// Writes the MemberDeleted event of `tombstone`. Returns the event id.
    fn enqueue_deleted(
        &mut self,
        tombstone: &crate::repo::Tombstone,
    ) -> impl Future<Output = sqlx::Result<Uuid>> + Send;
}

impl Enqueue for Tx {
    async fn enqueue(&mut self, kind: EventKind, member: &Member) -> sqlx::Result<Uuid> {
        self.write(changed(kind, member)).await
    }

    async fn enqueue_session_ended(
        &mut self,
        member: &Member,
        ended: &crate::sessions::store::Ended,
    ) -> sqlx::Result<Uuid> {
        self.write(session_ended(member, ended)).await
    }

    async fn enqueue_deleted(&mut self, tombstone: &crate::repo::Tombstone) -> sqlx::Result<Uuid> {
        self.write(deleted(tombstone)).await
    }
}

/// The member row of a signup, at version 1.
const SIGN_UP_ROW_SQL: &str =
    "INSERT INTO members (id, email, password_hash, nickname, region, version,
                          created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
     RETURNING id";

/// The `kind` event for `member` as it is after the change.
pub fn changed(kind: EventKind, member: &Member) -> NewEvent {
    NewEvent::build(
        kind.routing_key(),
        member.id,
        member.version,
        member.updated_at,
        |id| encode(kind, id, member),
    )
}

/// The MemberSessionEnded event for `ended`. It rides at the member's
/// current version (it makes no new one) and takes its time from the ending.
pub fn session_ended(member: &Member, ended: &crate::sessions::store::Ended) -> NewEvent {
    NewEvent::build(
        super::SESSION_ENDED_ROUTING_KEY,
        member.id,
        member.version,
        ended.ended_at,
        |id| super::encode_session_ended(id, ended),
    )
}

/// The MemberDeleted event for `tombstone`.
pub fn deleted(tombstone: &crate::repo::Tombstone) -> NewEvent {
    let t = tombstone;
    NewEvent::build(
        EventKind::Deleted.routing_key(),
        t.id,
        t.version,
        t.deleted_at,
        |id| super::encode_deleted(id, t.id, t.version, t.deleted_at),
    )
}
