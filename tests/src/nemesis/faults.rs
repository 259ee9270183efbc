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
}

/// A fault at `at` from the start, healed `lasts` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
    pub lasts: Duration,
}

/// Instances of each service.
pub const INSTANCES: usize = 2;

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

/// The schedule for `secs` seconds of load from `seed`: a quiet first
/// second, then faults of 1 to 4 s with 1 to 3 s of calm between them.
pub fn plan(seed: u64, secs: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let end = Duration::from_secs(secs);
    let mut at = Duration::from_secs(1);
    let mut plan = Vec::new();
    loop {
        let lasts = Duration::from_millis(rng.random_range(1_000..=4_000));
        if at + lasts >= end {
            return plan;
        }
        let fault = match rng.random_range(0..100) {
            0..20 => Fault::Kill(instance(&mut rng)),
            20..40 => Fault::Pause(instance(&mut rng)),
            40..60 => Fault::Cut(link(&mut rng)),
            60..80 => Fault::Blackhole(link(&mut rng)),
            80..87 => Fault::PostgresRestart,
            87..94 => Fault::BrokerRestart,
            _ => Fault::TaskDbSqlstate,
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
    }
}
