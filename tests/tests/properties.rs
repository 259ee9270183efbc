//! Property tests over every decision that is pure code, with `proptest`:
//! the relay's settle, the consumer's plan (and its isolation of a bad event
//! in a batch), task's triage, CreateTask's miss decision, the revocation
//! rule, and the replica's version guard, whose SQL is checked against its
//! pure rule on a real database. Each replica case is a random schedule of
//! deliveries, duplicates, reorders, redeliveries, crashes between apply and
//! ack, and deletions; the replica it leaves must hold each member's newest
//! state. 10,000 cases per pure property; the SQL one runs fewer, each on
//! real PostgreSQL.
use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use memberflow_outbox::{
    consumer::plan::{Outcome, Plan, plan},
    settle::{Delivery, RowState, settle},
    write::Outbox,
};
use memberflow_runtime::db::Fault;
use memberflow_tests::env::TestEnv;
use proptest::prelude::*;
use task::{
    ConsistencyMode,
    miss::{Policy, Seen, Step, decide},
    replica::{self, MemberEvent, ReplicaEvent, replaces},
};
use uuid::Uuid;

/// Cases per pure property.
const CASES: u32 = 10_000;
/// Cases of the SQL property, each a schedule applied on real PostgreSQL.
const SQL_CASES: u32 = 200;

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        Just(Delivery::Confirmed),
        Just(Delivery::Unroutable),
        Just(Delivery::Nacked),
        Just(Delivery::Unconfirmed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Every row gets exactly one fate; only confirmed rows are deleted; a
    /// row is blamed or parked only when it alone was unroutable (others of
    /// its batch routed), and parked exactly at its last allowed attempt;
    /// nothing routable at all is the topology's fault and blames no row.
    #[test]
    fn settle_gives_each_row_one_fate_and_blames_only_a_row_at_fault(
        rows in prop::collection::vec((0..10i32, delivery()), 0..40),
        park_after in -1..8i32,
    ) {
        let states: Vec<RowState> = rows
            .iter()
            .enumerate()
            .map(|(i, (attempts, _))| RowState { id: i as i64, attempts: *attempts })
            .collect();
        let answers: Vec<Delivery> = rows.iter().map(|(_, d)| *d).collect();
        let s = settle(&states, &answers, park_after);
        let routed = answers.contains(&Delivery::Confirmed);
        prop_assert_eq!(
            s.topology_fault,
            !routed && answers.contains(&Delivery::Unroutable)
        );
        for (row, answer) in states.iter().zip(&answers) {
            let fates = [&s.delete, &s.blame, &s.park, &s.keep]
                .iter()
                .filter(|f| f.contains(&row.id))
                .count();
            prop_assert_eq!(fates, 1, "row {} has one fate", row.id);
            prop_assert_eq!(s.delete.contains(&row.id), *answer == Delivery::Confirmed);
            let at_fault = routed && *answer == Delivery::Unroutable;
            let last = row.attempts + 1 >= park_after.max(1);
            prop_assert_eq!(s.park.contains(&row.id), at_fault && last);
            prop_assert_eq!(s.blame.contains(&row.id), at_fault && !last);
        }
    }

    /// A committed batch is acked; a transient fault is retried however
    /// long; an unreachable database is retried until the bound, then the
    /// batch is given back; a permanent fault isolates a batch and
    /// dead-letters only a single event.
    #[test]
    fn the_consumer_plan_follows_its_rule(
        len in 1..500usize,
        kind in 0..4u8,
        for_ms in 0..20_000u64,
        bound_ms in 0..10_000u64,
    ) {
        let bound = Duration::from_millis(bound_ms);
        let outcome = match kind {
            0 => Outcome::Committed,
            1 => Outcome::Failed { fault: Fault::Transient, reason: "t".into() },
            2 => Outcome::Failed { fault: Fault::Permanent, reason: "p".into() },
            _ => Outcome::Unreachable { for_: Duration::from_millis(for_ms), reason: "u".into() },
        };
        let expected = match kind {
            0 => Plan::Ack,
            1 => Plan::Retry,
            2 if len > 1 => Plan::Isolate,
            2 => Plan::DeadLetter("p".into()),
            _ if Duration::from_millis(for_ms) >= bound => Plan::GiveBack,
            _ => Plan::Retry,
        };
        prop_assert_eq!(plan(len, &outcome, bound), expected);
    }

    /// The consumer's loop over the plan, as a model: a batch holding bad
    /// events (which fail every transaction they are in, permanently) amid
    /// transient faults ends with every good event committed exactly once,
    /// every bad one dead-lettered exactly once, and nothing else.
    #[test]
    fn isolation_dead_letters_exactly_the_bad_events(
        bad in prop::collection::vec(any::<bool>(), 1..60),
        transient in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let mut transient = transient.into_iter();
        let mut parts = std::collections::VecDeque::new();
        parts.push_back(0..bad.len());
        let (mut committed, mut dead) = (vec![0u32; bad.len()], vec![0u32; bad.len()]);
        while let Some(part) = parts.front().cloned() {
            let outcome = if transient.next().unwrap_or(false) {
                Outcome::Failed { fault: Fault::Transient, reason: "t".into() }
            } else if bad[part.clone()].iter().any(|b| *b) {
                Outcome::Failed { fault: Fault::Permanent, reason: "bad".into() }
            } else {
                Outcome::Committed
            };
            match plan(part.len(), &outcome, Duration::from_secs(5)) {
                Plan::Ack => {
                    part.clone().for_each(|i| committed[i] += 1);
                    parts.pop_front();
                }
                Plan::Retry => {}
                Plan::Isolate => {
                    parts.pop_front();
                    for i in part.rev() {
                        parts.push_front(i..i + 1);
                    }
                }
                Plan::DeadLetter(_) => {
                    dead[part.start] += 1;
                    parts.pop_front();
                }
                Plan::GiveBack => prop_assert!(false, "no unreachable outcome here"),
            }
        }
        for (i, b) in bad.iter().enumerate() {
            prop_assert_eq!((committed[i], dead[i]), if *b { (0, 1) } else { (1, 0) });
        }
    }

    /// Whatever bytes arrive under whatever routing key, triage answers
    /// (apply, unknown or poison) and never panics.
    #[test]
    fn triage_never_panics(
        key in prop_oneof![
            Just("member.created".to_owned()),
            Just("member.updated".to_owned()),
            Just("member.deleted".to_owned()),
            Just("member.sessions_revoked".to_owned()),
            Just("member.session_ended".to_owned()),
            "[a-z.]{0,20}",
        ],
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = task::consumer::plan::triage(&key, &body);
        let _ = auth::erasure::receipts::triage("member.erased", &body);
    }

    /// CreateTask never serves a replica row older than the version the
    /// caller has seen, in either mode.
    #[test]
    fn a_miss_never_serves_a_copy_older_than_the_caller_saw(
        read_through in any::<bool>(),
        wait_ms in 0..100u64,
        min_version in -2..20i64,
        held in prop::option::of(-2..20i64),
        wait_over in any::<bool>(),
    ) {
        let policy = Policy {
            mode: if read_through { ConsistencyMode::ReadThrough } else { ConsistencyMode::NotReady },
            wait: Duration::from_millis(wait_ms),
        };
        let step = decide(policy, min_version, Seen::Replica { version: held, wait_over });
        let fresh = held.is_some_and(|v| v >= min_version.max(1));
        prop_assert_eq!(step == Step::Serve, fresh);
        if !fresh && read_through {
            prop_assert_eq!(step, Step::Fetch);
        }
    }

    /// A token is refused exactly when it predates the revocation: an older
    /// version claim, whatever its `iat` and the revocation's `not_before`
    /// (two clocks); and a later revocation refuses at least what an
    /// earlier one did.
    #[test]
    fn revocation_refuses_exactly_the_older_tokens(
        token_version in 0..20i64,
        token_iat in 0..10_000i64,
        revoked_version in 0..20i64,
        not_before in prop::option::of(0..10_000i64),
        later_by in 0..5i64,
    ) {
        use memberflow_contract::token::{SessionsRevoked, Verified};
        let at = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
        let token = Verified {
            member_id: Uuid::nil(),
            version: token_version,
            issued_at: at(token_iat),
            session: None,
        };
        let r = SessionsRevoked { not_before: not_before.map(at), version: revoked_version };
        // By version alone: `iat` and `not_before` come from two clocks.
        let older = token_version < revoked_version;
        prop_assert_eq!(token.revoked_by(&r), older);
        let later = SessionsRevoked {
            not_before: Some(at(not_before.unwrap_or(0) + later_by)),
            version: revoked_version + later_by,
        };
        prop_assert!(!token.revoked_by(&r) || token.revoked_by(&later));
    }
}

/// One member's history: versions 1..=n, each with its own content; the
/// last may be the deletion.
#[derive(Debug, Clone)]
struct History {
    member: Uuid,
    versions: Vec<(String, bool)>,
}

fn history() -> impl Strategy<Value = History> {
    (prop::collection::vec("[a-z]{1,6}", 1..5), any::<bool>()).prop_map(|(names, deleted)| {
        let n = names.len();
        History {
            member: Uuid::now_v7(),
            versions: names
                .into_iter()
                .enumerate()
                .map(|(i, name)| (name, deleted && i + 1 == n))
                .collect(),
        }
    })
}

fn event(member: Uuid, version: i64, name: &str, deleted: bool) -> ReplicaEvent {
    let occurred_at: DateTime<Utc> = Utc.timestamp_opt(1_800_000_000 + version, 0).unwrap();
    MemberEvent {
        event_id: Uuid::now_v7(),
        member_id: member,
        nickname: if deleted {
            String::new()
        } else {
            name.to_owned()
        },
        region: if deleted {
            String::new()
        } else {
            "Asia/Seoul".to_owned()
        },
        version,
        occurred_at,
        sessions_not_before: None,
        sessions_version: 0,
        deleted,
        access: task::domain::Access::member(),
    }
    .into()
}

/// What the consumer does with a batch it was handed.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Applied and acked.
    Ack,
    /// Applied, then the instance died before the ack: redelivered.
    CrashAfterCommit,
    /// Died before the commit: nothing applied, redelivered.
    CrashBeforeCommit,
}

/// A schedule: repeatedly, a batch of pending deliveries (picked by the
/// indices, so in any order), some sent twice (a publisher retry), and what
/// became of it.
fn schedule() -> impl Strategy<Value = Vec<(Vec<usize>, Fate, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec(0..1000usize, 1..8),
            prop_oneof![
                6 => Just(Fate::Ack),
                1 => Just(Fate::CrashAfterCommit),
                1 => Just(Fate::CrashBeforeCommit),
            ],
            any::<bool>(),
        ),
        0..30,
    )
}

/// The replica as the pure rules make it: the inbox, then [`replaces`].
#[derive(Debug, Default)]
struct Model {
    inbox: std::collections::HashSet<Uuid>,
    rows: HashMap<Uuid, (i64, String, bool)>,
}

impl Model {
    fn apply(&mut self, batch: &[ReplicaEvent]) {
        let mut newest: HashMap<Uuid, &MemberEvent> = HashMap::new();
        for e in batch {
            let ReplicaEvent::Member(m) = e else { continue };
            if !self.inbox.insert(m.event_id) {
                continue;
            }
            let best = newest.entry(m.member_id).or_insert(m);
            if m.version > best.version {
                *best = m;
            }
        }
        for (member, e) in newest {
            let held = self.rows.get(&member).map(|r| r.0);
            if replaces(held, e.version) {
                self.rows
                    .insert(member, (e.version, e.nickname.clone(), e.deleted));
            }
        }
    }
}

/// Runs `schedule` over the messages of `histories` (each event published
/// once, some twice), applying through `apply`; then delivers whatever is
/// left until every message is acked. Returns the batches applied, in
/// order.
fn run(
    histories: &[History],
    schedule: &[(Vec<usize>, Fate, bool)],
    conflicts: bool,
) -> Vec<Vec<ReplicaEvent>> {
    let mut pending: Vec<ReplicaEvent> = histories
        .iter()
        .flat_map(|h| {
            h.versions
                .iter()
                .enumerate()
                .map(move |(i, (name, deleted))| event(h.member, i as i64 + 1, name, *deleted))
        })
        .collect();
    let mut applied = Vec::new();
    let mut steps = schedule.iter();
    while !pending.is_empty() {
        let (picks, step, duplicate) =
            steps
                .next()
                .cloned()
                .unwrap_or((vec![0, 1, 2, 3], Fate::Ack, false));
        let mut indices: Vec<usize> = picks.iter().map(|p| p % pending.len()).collect();
        indices.dedup();
        let mut seen = std::collections::HashSet::new();
        indices.retain(|i| seen.insert(*i));
        let batch: Vec<ReplicaEvent> = indices.iter().map(|&i| pending[i].clone()).collect();
        if duplicate {
            // The relay published it twice (a confirm lost): the copy waits.
            pending.push(batch[0].clone());
            if let (true, ReplicaEvent::Member(m)) = (conflicts, &batch[0]) {
                // A different state at the same version under a new id (a
                // forged or buggy event): the guard keeps whichever came
                // first.
                pending.push(
                    MemberEvent {
                        event_id: Uuid::now_v7(),
                        nickname: format!("{}-conflict", m.nickname),
                        region: "Asia/Seoul".into(),
                        deleted: false,
                        ..m.clone()
                    }
                    .into(),
                );
            }
        }
        match step {
            Fate::Ack => {
                applied.push(batch);
                let mut i = indices;
                i.sort_unstable_by(|a, b| b.cmp(a));
                for idx in i {
                    pending.remove(idx);
                }
            }
            Fate::CrashAfterCommit => applied.push(batch),
            Fate::CrashBeforeCommit => {}
        }
    }
    applied
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Whatever the schedule, the pure replica ends at each member's newest
    /// state (the tombstone, if deleted).
    #[test]
    fn any_schedule_leaves_the_newest_state(
        histories in prop::collection::vec(history(), 1..5),
        schedule in schedule(),
    ) {
        let mut model = Model::default();
        for batch in run(&histories, &schedule, false) {
            model.apply(&batch);
        }
        for h in &histories {
            let (name, deleted) = h.versions.last().unwrap();
            let newest = (
                h.versions.len() as i64,
                if *deleted { String::new() } else { name.clone() },
                *deleted,
            );
            prop_assert_eq!(model.rows.get(&h.member), Some(&newest));
        }
    }
}

/// The version guard's SQL (`replica::apply`) against its pure rule, on a
/// real database: the same schedules, plus conflicting copies (another
/// state at a version already sent, under a new id), the state compared
/// after every batch.
#[test]
fn the_version_guard_sql_matches_its_pure_rule() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut env = TestEnv::new();
    let pool = runtime.block_on(async {
        let settings =
            memberflow_runtime::db::DatabaseSettings::with_url(&env.database_url("task"));
        memberflow_runtime::db::ensure_database(&settings)
            .await
            .unwrap();
        let pool = env.pool("task").await;
        task::startup::MIGRATOR.run(&pool).await.unwrap();
        pool
    });
    let outbox = Outbox::without_wake(pool.clone(), &task::erasure::SPEC);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(SQL_CASES));
    runner
        .run(
            &(prop::collection::vec(history(), 1..4), schedule()),
            |(histories, schedule)| {
                let mut model = Model::default();
                for batch in run(&histories, &schedule, true) {
                    model.apply(&batch);
                    runtime.block_on(replica::apply(&outbox, &batch)).unwrap();
                    for h in &histories {
                        let row = runtime.block_on(replica::find(&pool, h.member)).unwrap();
                        let sql = row.map(|r| (r.version, r.nickname, r.deleted_at.is_some()));
                        prop_assert_eq!(sql.as_ref(), model.rows.get(&h.member));
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}
