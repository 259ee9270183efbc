//! task's consumer of `member.events`: the shared consumer of
//! `memberflow_outbox` (acks after commit, retries, isolation, dead letters,
//! giving a batch back) with task's [`Replica`] handler, which sorts each
//! delivery ([`plan::triage`]) and applies batches to the replica.
pub mod plan;

use std::sync::Arc;

use memberflow_contract::topology::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE, QUEUE};
pub use memberflow_outbox::consumer::{Attachment, ConsumerStats};
use memberflow_outbox::{
    consumer::{Counts, Handler, QueueSpec, declare_queue},
    write::Outbox,
};
use uuid::Uuid;

use crate::{
    freshness::Freshness,
    metrics::TaskMetrics,
    replica::{self, ReplicaEvent},
};

/// The names of task's consumer.
pub const QUEUE_SPEC: QueueSpec = QueueSpec {
    exchange: EXCHANGE,
    binding_key: "member.*",
    queue: QUEUE,
    dead_letter_exchange: DEAD_LETTER_EXCHANGE,
    dead_letter_queue: DEAD_LETTER_QUEUE,
    connection_name: "task.consumer",
};

/// task's consumer.
pub type Consumer = memberflow_outbox::consumer::Consumer<Replica>;

/// Declares everything task consumes from (idempotent): for tools and
/// benchmarks that need the queue before task runs.
pub async fn declare_topology(
    channel: &lapin::Channel,
    delivery_limit: i64,
    group_size: Option<u32>,
) -> lapin::Result<()> {
    declare_queue(channel, &QUEUE_SPEC, delivery_limit, group_size).await
}

/// Applies member events to the replica, writes the erasure receipts of
/// deletions in the same transaction (through task's outbox), then records
/// each change's lag and wakes read-your-writes waiters.
#[derive(Debug, Clone)]
pub struct Replica {
    outbox: Outbox,
    metrics: TaskMetrics,
    freshness: Arc<Freshness>,
}

impl Replica {
    pub fn new(outbox: Outbox, metrics: TaskMetrics, freshness: Arc<Freshness>) -> Self {
        Self {
            outbox,
            metrics,
            freshness,
        }
    }
}

impl Handler for Replica {
    type Event = ReplicaEvent;

    fn triage(&self, kind: &str, body: &[u8]) -> plan::Triage {
        plan::triage(kind, body)
    }

    type Key = Uuid;

    fn ids(event: &ReplicaEvent) -> (Uuid, Uuid) {
        (event.event_id(), event.member_id())
    }

    async fn apply(&self, events: &[ReplicaEvent]) -> sqlx::Result<Counts> {
        let applied = replica::apply(&self.outbox, events).await?;
        for &(member, version, lag) in &applied.changed {
            self.metrics.replication_lag.observe(lag.max(0.0));
            self.freshness.observe_lag(lag);
            self.freshness.applied(member, version);
        }
        Ok(Counts {
            fresh: applied.fresh,
            applied: applied.changed.len() as u64 + applied.ended,
        })
    }
}
