//! The consumer's decisions, apart from their effects: what to do with a
//! delivery a handler has sorted, and with a batch once applying it has
//! succeeded or failed. The loop in [`super`] only carries these out, so
//! every rule here has a unit test that needs neither a broker nor a
//! database. What a delivery *is* (its [`Triage`]) is each handler's own
//! rule.
use memberflow_infra::pg::Fault;
use std::time::Duration;

/// What one delivery is, from its routing key and body alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage<E> {
    /// A valid event, to apply.
    Apply(E),
    /// A kind of event this version does not know, from a newer publisher:
    /// acked and counted, so a new kind never poisons an older consumer.
    Unknown(String),
    /// Can never be applied: dead-lettered with this reason.
    Poison(Poison),
}

impl<E> Triage<E> {
    /// `Apply` for a decoded event, `Poison` for a decoding failure.
    pub fn decoded(decoded: Result<E, Poison>) -> Self {
        match decoded {
            Ok(event) => Self::Apply(event),
            Err(poison) => Self::Poison(poison),
        }
    }
}

/// Why a message is poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("body is not a valid protobuf event: {0}")]
    Undecodable(String),
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the triage panicked: {0}")]
    Panicked(String),
}

/// A [`Poison::Invalid`].
pub fn invalid(field: &'static str, reason: &'static str) -> Poison {
    Poison::Invalid { field, reason }
}

/// How applying a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transaction committed.
    Committed,
    /// The database reported a fault; `reason` is the error's cause chain.
    Failed { fault: Fault, reason: String },
    /// The database could not be reached: no connection could be had, or
    /// the apply got no answer within its bound (a blackholed route, a hung
    /// proxy, while this instance's broker heartbeats keep flowing). `for_`
    /// is how long this part has been failing so.
    Unreachable { for_: Duration, reason: String },
    /// The handler panicked: a bug that this part's events trigger. It
    /// would panic again on every redelivery, so it is poison, not a fault
    /// of the link: isolated like a permanent fault, and the event that
    /// panics alone is dead-lettered with the panic's message.
    Panicked { message: String },
}

/// What to do with a batch after trying to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Ack every delivery of the batch.
    Ack,
    /// Wait out the backoff and apply the same batch again. Nothing is acked,
    /// rejected or requeued, so the delivery count does not move however long
    /// the fault lasts; a shutdown meanwhile leaves the batch for redelivery.
    Retry,
    /// Apply each event in a transaction of its own, to find the bad one.
    Isolate,
    /// Dead-letter this single event, with the reason.
    DeadLetter(String),
    /// Give every unacknowledged delivery back to the broker (close the
    /// channel), so another instance applies them, and stay detached until
    /// the database answers again.
    GiveBack,
}

/// The rule: commit → ack; a fault the database reports → retry the batch
/// as it is if transient; a permanent one → isolate, and dead-letter only an
/// event that fails alone; an unreachable database → retry, but once that
/// has lasted `give_back_after` (`amqp.apply_timeout_ms`), give the batch
/// back; a panic → as a permanent fault. A fault the database reports is every instance's, so the batch
/// waits where it is; an unreachable database may be this instance's link
/// alone, and waiting on it would hold the batch from every other instance
/// for as long as it lasts.
pub fn plan(batch_len: usize, outcome: &Outcome, give_back_after: Duration) -> Plan {
    match outcome {
        Outcome::Committed => Plan::Ack,
        Outcome::Unreachable { for_, .. } if *for_ >= give_back_after => Plan::GiveBack,
        Outcome::Unreachable { .. } => Plan::Retry,
        Outcome::Failed {
            fault: Fault::Transient,
            ..
        } => Plan::Retry,
        Outcome::Failed {
            fault: Fault::Permanent,
            ..
        }
        | Outcome::Panicked { .. }
            if batch_len > 1 =>
        {
            Plan::Isolate
        }
        Outcome::Panicked { message } => Plan::DeadLetter(format!("the apply panicked: {message}")),
        Outcome::Failed {
            fault: Fault::Permanent,
            reason,
        } => Plan::DeadLetter(reason.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(fault: Fault) -> Outcome {
        Outcome::Failed {
            fault,
            reason: "boom".into(),
        }
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[test]
    fn a_committed_batch_is_acked() {
        assert_eq!(plan(1, &Outcome::Committed, BOUND), Plan::Ack);
        assert_eq!(plan(200, &Outcome::Committed, BOUND), Plan::Ack);
    }

    #[test]
    fn transient_faults_retry_the_batch_whatever_its_size_and_however_long() {
        assert_eq!(plan(1, &failed(Fault::Transient), BOUND), Plan::Retry);
        assert_eq!(plan(200, &failed(Fault::Transient), BOUND), Plan::Retry);
    }

    fn unreachable(secs: u64) -> Outcome {
        Outcome::Unreachable {
            for_: Duration::from_secs(secs),
            reason: "no answer".into(),
        }
    }

    #[test]
    fn an_unreachable_database_is_retried_then_the_batch_given_back() {
        assert_eq!(plan(1, &unreachable(2), BOUND), Plan::Retry);
        assert_eq!(plan(200, &unreachable(4), BOUND), Plan::Retry);
        assert_eq!(plan(1, &unreachable(5), BOUND), Plan::GiveBack);
        assert_eq!(plan(200, &unreachable(60), BOUND), Plan::GiveBack);
    }

    #[test]
    fn permanent_faults_isolate_then_dead_letter_the_one_that_fails_alone() {
        assert_eq!(plan(2, &failed(Fault::Permanent), BOUND), Plan::Isolate);
        assert_eq!(
            plan(1, &failed(Fault::Permanent), BOUND),
            Plan::DeadLetter("boom".into())
        );
    }

    #[test]
    fn a_panic_isolates_the_batch_and_dead_letters_the_event_that_panics_alone() {
        let panicked = Outcome::Panicked {
            message: "index out of bounds".into(),
        };
        assert_eq!(plan(5, &panicked, BOUND), Plan::Isolate);
        assert_eq!(
            plan(1, &panicked, BOUND),
            Plan::DeadLetter("the apply panicked: index out of bounds".into())
        );
    }
}
