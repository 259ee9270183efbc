//! The fault schedule, drawn from the seed alone: what happens when, and
//! for how long. A pure function, so a seed replays the same schedule (the
//! clients' timing still varies from run to run); [`super::run`] carries it
//! out. One fault at a time, each healed before the next, and the last
//! healed before the run's end.
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// A service instance: which service, and which of its two instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instance {
    Auth(usize),
    Task(usize),
}

/// A link a proxy stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    AuthDb(usize),
    AuthBroker(usize),
    TaskBroker(usize),
    TaskDb(usize),
    /// task's link to auth (read-through).
    TaskAuth(usize),
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart when it heals.
    Kill(Instance),
    /// SIGSTOP, then SIGCONT.
    Pause(Instance),
    /// Every connection reset, new ones refused.
    Cut(Link),
    /// Nothing forwarded, every socket kept open.
    Blackhole(Link),
    /// `pg_ctlcluster … restart`.
    PostgresRestart,
    /// `rabbitmqctl stop_app`, then `start_app`.
    BrokerRestart,
    /// A trigger on task's `members` raising 40001 (serialization_failure).
    TaskDbSqlstate,
    /// Every chunk held this long, each way ([`crate::proxy::TcpProxy::slow`]).
    Slow(Link, Duration),
    /// This share (percent) of SignUp, UpdateProfile and CreateTask calls
    /// made with a deadline of [`CANCEL_DEADLINE_MS`]: cut mid-flight.
    Cancels(u32),
    /// The instance restarted under `faketime` with its wall clock moved
    /// this many seconds (its monotonic clock untouched), then restarted
    /// without.
    Skew(Instance, i64),
}

/// The deadlines of a cancelled call, in milliseconds: short enough to cut
/// most calls mid-flight, long enough that some finish.
pub const CANCEL_DEADLINE_MS: std::ops::RangeInclusive<u64> = 1..=15;

/// The skew the tokens tolerate (5 s of leeway on `exp` and `iat`) with a
/// margin: most skews stay within it.
pub const SMALL_SKEW_SECS: i64 = 3;

/// A skew past the leeway, put on a task instance only (see
/// `docs/nemesis.md`: its clock judges tokens' expiry, not their issue).
pub const LARGE_SKEW_SECS: i64 = 30;

/// A fault at `at` from the start, healed `lasts` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
    pub lasts: Duration,
}

/// Instances of each service.
pub const INSTANCES: usize = 2;

/// The longest a fault lasts before it heals, in milliseconds.
pub const LONGEST_MS: u64 = 4_000;

fn instance(rng: &mut StdRng) -> Instance {
    let i = rng.random_range(0..INSTANCES);
    if rng.random_bool(0.5) {
        Instance::Auth(i)
    } else {
        Instance::Task(i)
    }
}

fn link(rng: &mut StdRng) -> Link {
    let i = rng.random_range(0..INSTANCES);
    match rng.random_range(0..5) {
        0 => Link::AuthDb(i),
        1 => Link::AuthBroker(i),
        2 => Link::TaskBroker(i),
        3 => Link::TaskDb(i),
        _ => Link::TaskAuth(i),
    }
}

/// A small skew either way on any instance, or now and then a large one
/// forward on a task instance.
fn skew(rng: &mut StdRng) -> Fault {
    if rng.random_bool(0.2) {
        return Fault::Skew(
            Instance::Task(rng.random_range(0..INSTANCES)),
            LARGE_SKEW_SECS,
        );
    }
    let secs = rng.random_range(1..=SMALL_SKEW_SECS);
    let secs = if rng.random_bool(0.5) { secs } else { -secs };
    Fault::Skew(instance(rng), secs)
}

/// The schedule for `secs` seconds of load from `seed`: a quiet first
/// second, then faults of 1 to 4 s with 1 to 3 s of calm between them.
pub fn plan(seed: u64, secs: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let end = Duration::from_secs(secs);
    let mut at = Duration::from_secs(1);
    let mut plan = Vec::new();
    loop {
        let lasts = Duration::from_millis(rng.random_range(1_000..=LONGEST_MS));
        if at + lasts >= end {
            return plan;
        }
        let fault = match rng.random_range(0..100) {
            0..15 => Fault::Kill(instance(&mut rng)),
            15..30 => Fault::Pause(instance(&mut rng)),
            30..44 => Fault::Cut(link(&mut rng)),
            44..58 => Fault::Blackhole(link(&mut rng)),
            58..64 => Fault::PostgresRestart,
            64..70 => Fault::BrokerRestart,
            70..76 => Fault::TaskDbSqlstate,
            76..85 => Fault::Slow(
                link(&mut rng),
                Duration::from_millis(rng.random_range(1..=5)),
            ),
            85..93 => Fault::Cancels(rng.random_range(20..=80)),
            _ => skew(&mut rng),
        };
        plan.push(Planned { at, fault, lasts });
        at += lasts + Duration::from_millis(rng.random_range(1_000..=3_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_of_healed_non_overlapping_faults() {
        for seed in 0..200 {
            let p = plan(seed, 60);
            assert_eq!(p, plan(seed, 60), "a seed replays");
            assert!(!p.is_empty());
            for w in p.windows(2) {
                assert!(w[0].at + w[0].lasts < w[1].at, "one at a time");
            }
            let last = p.last().unwrap();
            assert!(last.at + last.lasts < Duration::from_secs(60));
        }
        assert_ne!(plan(1, 60), plan(2, 60));
    }

    #[test]
    fn a_long_schedule_draws_every_kind() {
        let p = plan(7, 3_600);
        let has = |f: fn(&Fault) -> bool| p.iter().any(|x| f(&x.fault));
        assert!(has(|f| matches!(f, Fault::Kill(Instance::Auth(_)))));
        assert!(has(|f| matches!(f, Fault::Kill(Instance::Task(_)))));
        assert!(has(|f| matches!(f, Fault::Pause(_))));
        assert!(has(|f| matches!(f, Fault::Cut(Link::TaskAuth(_)))));
        assert!(has(|f| matches!(f, Fault::Blackhole(Link::AuthDb(_)))));
        assert!(has(|f| matches!(f, Fault::PostgresRestart)));
        assert!(has(|f| matches!(f, Fault::BrokerRestart)));
        assert!(has(|f| matches!(f, Fault::TaskDbSqlstate)));
        assert!(has(|f| matches!(f, Fault::Slow(Link::AuthDb(_), _))));
        assert!(has(|f| matches!(f, Fault::Slow(Link::TaskBroker(_), _))));
        assert!(has(|f| matches!(f, Fault::Slow(Link::TaskAuth(_), _))));
        assert!(has(|f| matches!(f, Fault::Cancels(_))));
        assert!(has(
            |f| matches!(f, Fault::Skew(Instance::Auth(_), s) if *s < 0)
        ));
        assert!(has(
            |f| matches!(f, Fault::Skew(Instance::Task(_), s) if *s > 0)
        ));
        assert!(has(|f| matches!(
            f,
            Fault::Skew(Instance::Task(_), LARGE_SKEW_SECS)
        )));
    }

    #[test]
    fn new_faults_stay_in_their_bounds() {
        for seed in 0..200 {
            for p in plan(seed, 600) {
                match p.fault {
                    Fault::Slow(_, d) => {
                        assert!((1..=5).contains(&d.as_millis()), "{d:?}");
                    }
                    Fault::Cancels(share) => assert!((20..=80).contains(&share)),
                    Fault::Skew(Instance::Auth(_), s) => {
                        assert!(s != 0 && s.abs() <= SMALL_SKEW_SECS, "{s}");
                    }
                    Fault::Skew(Instance::Task(_), s) => {
                        assert!(
                            s == LARGE_SKEW_SECS || (s != 0 && s.abs() <= SMALL_SKEW_SECS),
                            "{s}"
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn the_old_faults_keep_most_of_the_schedule() {
        let p = plan(7, 3_600);
        let new = p
            .iter()
            .filter(|x| {
                matches!(
                    x.fault,
                    Fault::Slow(..) | Fault::Cancels(_) | Fault::Skew(..)
                )
            })
            .count();
        assert!(new * 100 < p.len() * 35, "{new} of {}", p.len());
    }
}
