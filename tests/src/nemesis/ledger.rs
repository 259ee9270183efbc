//! The ledger: every operation the clients issued, with its arguments, its
//! answer or error, and when it started and ended, one JSON line each. The
//! checker reads it to know what was acknowledged; a violation prints the
//! lines of the member it concerns.
use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use uuid::Uuid;

/// How an operation ended, as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Acknowledged: it happened.
    Ok,
    /// Refused for good (INVALID_ARGUMENT, ALREADY_EXISTS, …): it did not
    /// happen.
    Refused(String),
    /// A timeout, a cut call (CANCELLED, DEADLINE_EXCEEDED: the client's
    /// deadline passed mid-flight, see [`super::faults::Fault::Cancels`]) or
    /// UNAVAILABLE: it may or may not have happened, and at most once.
    Ambiguous(String),
}

impl Answer {
    /// Sorts a gRPC status: what the client cannot tell apart from a
    /// success that got lost is ambiguous.
    pub fn of(status: &tonic::Status) -> Self {
        use tonic::Code::*;
        let text = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Unavailable | DeadlineExceeded | Unknown | Internal | Cancelled | Aborted
            | ResourceExhausted => Self::Ambiguous(text),
            _ => Self::Refused(text),
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == Self::Ok
    }

    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Ambiguous(_))
    }
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its place in the ledger.
    pub n: usize,
    pub client: usize,
    pub op: &'static str,
    pub member: Option<Uuid>,
    /// What it asked for (a nickname, a request id, …).
    pub args: String,
    pub answer: Answer,
    /// What it got back that the checker needs (a task id, a token's
    /// index).
    pub result: String,
    /// Milliseconds since the run began.
    pub start_ms: u128,
    pub end_ms: u128,
}

impl Entry {
    /// The entry as one JSON line.
    pub fn line(&self) -> String {
        serde_json::json!({
            "n": self.n,
            "client": self.client,
            "op": self.op,
            "member": self.member.map(|m| m.to_string()),
            "args": self.args,
            "answer": match &self.answer {
                Answer::Ok => "ok".to_owned(),
                Answer::Refused(e) => format!("refused: {e}"),
                Answer::Ambiguous(e) => format!("ambiguous: {e}"),
            },
            "result": self.result,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
        })
        .to_string()
    }
}

/// The shared ledger, kept in memory and written to a file as it grows.
#[derive(Clone, Debug)]
pub struct Ledger {
    began: Instant,
    inner: Arc<Mutex<(Vec<Entry>, std::fs::File)>>,
    pub path: PathBuf,
}

impl Ledger {
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::create(&path)?;
        Ok(Self {
            began: Instant::now(),
            inner: Arc::new(Mutex::new((Vec::new(), file))),
            path,
        })
    }

    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> u128 {
        self.began.elapsed().as_millis()
    }

    /// Records one operation; returns its number.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        client: usize,
        op: &'static str,
        member: Option<Uuid>,
        args: String,
        answer: Answer,
        result: String,
        start_ms: u128,
    ) -> usize {
        let end_ms = self.now_ms();
        let mut guard = self.inner.lock().expect("ledger poisoned");
        let n = guard.0.len();
        let entry = Entry {
            n,
            client,
            op,
            member,
            args,
            answer,
            result,
            start_ms,
            end_ms,
        };
        let _ = writeln!(guard.1, "{}", entry.line());
        guard.0.push(entry);
        n
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.lock().expect("ledger poisoned").0.clone()
    }
}
