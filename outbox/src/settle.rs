//! What the relay does with each row of a batch once the broker has
//! answered, apart from doing it: a pure function with unit tests.
//!
//! * A confirmed row is deleted, wherever it sits in the batch: there is no
//!   republish loop, and one bad row never holds back the rows behind it.
//! * A row that comes back unroutable while other rows of the same batch were
//!   routed is at fault itself: its attempt count rises, and at
//!   `relay.park_after_attempts` it is parked.
//! * When nothing in the batch was routed (before task has declared its
//!   queue, say), no row is blamed: the topology is at fault, every row stays.
//! * Nacked and unconfirmed rows are the broker's trouble, not the row's:
//!   they stay, unblamed, for the next batch.
//!
//! Per-member order: a retried row may reach the queue after a newer row of
//! its member; the consumer's version guard makes the older one a no-op, so
//! the replica still ends at the newest version.

/// What the broker said about one published row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Confirmed,
    /// Returned by the broker: no queue is bound for its routing key.
    Unroutable,
    Nacked,
    /// Not published or not confirmed before the batch's deadline.
    Unconfirmed,
}

/// A row as the settlement needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowState {
    pub id: i64,
    /// Failures counted so far.
    pub attempts: i32,
}

/// What to do with a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Confirmed: delete.
    pub delete: Vec<i64>,
    /// Failed on their own: count one more attempt.
    pub blame: Vec<i64>,
    /// Failed on their own for the last allowed time: park.
    pub park: Vec<i64>,
    /// Left as they are, for the next batch.
    pub keep: Vec<i64>,
    /// Nothing was routable: say so (once per interval), blame nobody.
    pub topology_fault: bool,
}

/// Settles `rows` by the broker's answers (same order and length).
pub fn settle(rows: &[RowState], answers: &[Delivery], park_after: i32) -> Settlement {
    debug_assert_eq!(rows.len(), answers.len());
    let routed = answers.contains(&Delivery::Confirmed);
    let mut s = Settlement {
        topology_fault: !routed && answers.contains(&Delivery::Unroutable),
        ..Settlement::default()
    };
    for (row, answer) in rows.iter().zip(answers) {
        match answer {
            Delivery::Confirmed => s.delete.push(row.id),
            Delivery::Unroutable if routed => {
                if row.attempts + 1 >= park_after.max(1) {
                    s.park.push(row.id);
                } else {
                    s.blame.push(row.id);
                }
            }
            Delivery::Unroutable | Delivery::Nacked | Delivery::Unconfirmed => s.keep.push(row.id),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use Delivery::*;

    fn rows(attempts: &[i32]) -> Vec<RowState> {
        attempts
            .iter()
            .enumerate()
            .map(|(i, &attempts)| RowState {
                id: i as i64 + 1,
                attempts,
            })
            .collect()
    }

    #[test]
    fn confirmed_rows_are_deleted_wherever_they_sit() {
        let s = settle(&rows(&[0, 0, 0]), &[Unconfirmed, Confirmed, Confirmed], 5);
        assert_eq!(s.delete, vec![2, 3]);
        assert_eq!(s.keep, vec![1]);
        assert!(!s.topology_fault);
    }

    #[test]
    fn an_unroutable_row_among_routed_ones_is_blamed_then_parked() {
        let s = settle(&rows(&[0, 0, 0]), &[Unroutable, Confirmed, Confirmed], 5);
        assert_eq!((s.blame, s.park, s.delete), (vec![1], vec![], vec![2, 3]));
        let s = settle(&rows(&[4, 0]), &[Unroutable, Confirmed], 5);
        assert_eq!((s.blame, s.park), (vec![], vec![1]));
    }

    #[test]
    fn nothing_routable_is_a_topology_fault_that_blames_no_row() {
        let s = settle(&rows(&[4, 4]), &[Unroutable, Unroutable], 5);
        assert!(s.topology_fault);
        assert_eq!((s.blame, s.park, s.keep), (vec![], vec![], vec![1, 2]));
    }

    #[test]
    fn nacks_and_timeouts_are_not_the_rows_fault() {
        let s = settle(&rows(&[9, 9, 0]), &[Nacked, Unconfirmed, Confirmed], 5);
        assert_eq!((s.keep, s.park, s.blame), (vec![1, 2], vec![], vec![]));
        assert!(!s.topology_fault);
    }
}
