//! SignUp: the member and its `member.created` event, in one statement.
use memberflow_runtime::unit;

use crate::{
    Error,
    domain::{Member, NewMember},
    outbox::write,
    password::Admitted,
    repo,
};

use super::{Auth, record_event};

impl Auth {
    /// Hashes the password (before any database work: it takes milliseconds
    /// of CPU), then writes the member and its event in one statement.
    pub async fn sign_up(self, new: NewMember, admitted: Admitted) -> Result<Member, Error> {
        let hash = self.hasher.hash_in(admitted, &new.password).await?;
        unit::caller_waits()?;
        let (member, event_id) = write::sign_up(&self.outbox, &new, &hash)
            .await
            .map_err(|e| {
                if repo::on_constraint(&e, repo::EMAIL_UNIQUE) {
                    Error::EmailTaken
                } else {
                    e.into()
                }
            })?;
        tracing::Span::current().record("member_id", tracing::field::display(member.id));
        record_event(event_id);
        Ok(member)
    }
}
