//! The timer table of one node: at most one pending timer per
//! [`TimerKey`] (xid, kind); setting a key again replaces its time. The
//! cores ignore stale firings anyway; this keeps the table small and the
//! firing order deterministic (by time, then key), so the simulator and the
//! servers fire the same timers in the same order.

use concord_proto::{Time, TimerKey};
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct Timers {
    by_time: BTreeSet<(Time, TimerKey)>,
    by_key: HashMap<TimerKey, Time>,
}

impl Timers {
    pub fn set(&mut self, key: TimerKey, at: Time) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Time> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Remove and return every timer due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Time) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::{TimerKind, Xid};

    fn key(x: u128, kind: TimerKind) -> TimerKey {
        TimerKey::new(Xid(x), kind)
    }

    #[test]
    fn timers_replace_and_pop_in_order() {
        let mut timers = Timers::default();
        timers.set(key(1, TimerKind::Votes), Time(50));
        timers.set(key(2, TimerKind::Votes), Time(20));
        timers.set(key(1, TimerKind::Votes), Time(10)); // replaces 50
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.next_due(), Some(Time(10)));
        assert_eq!(timers.pop_due(Time(15)), vec![key(1, TimerKind::Votes)]);
        assert_eq!(timers.pop_due(Time(100)), vec![key(2, TimerKind::Votes)]);
        assert_eq!(timers.next_due(), None);
    }

    #[test]
    fn two_kinds_of_one_xid_do_not_collide() {
        // A sub-coordinator of hierarchical 2PC waits for its children's
        // votes and for its parent's decision on the same xid.
        let mut timers = Timers::default();
        timers.set(key(7, TimerKind::Votes), Time(30));
        timers.set(key(7, TimerKind::Inquire), Time(40));
        assert_eq!(timers.len(), 2);
        assert_eq!(
            timers.pop_due(Time(100)),
            vec![key(7, TimerKind::Votes), key(7, TimerKind::Inquire)]
        );
    }
}
