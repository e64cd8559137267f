//! When to compact a node's log (SPEC §1.10: log size and restart time
//! follow the work in flight plus a retention of finished outcomes, never
//! history).
//!
//! The node counts the records it asks the driver to append. Once at least
//! `after_records_min` were appended since the last compaction, and at
//! least twice as many as the last snapshot held (so rewriting costs at
//! most half of what was appended: compaction stays a constant factor of
//! the write load however large the live state is), the node emits a
//! snapshot for the driver to rewrite the log with. One compaction at a
//! time: the next waits until the driver reports this one done.

/// Default of `--compact-after-records`: a compaction every 50,000
/// appended records at least (about 17,000 transactions at a coordinator).
pub const COMPACT_AFTER_RECORDS_DEFAULT: u64 = 50_000;

#[derive(Clone, Debug)]
pub struct CompactionPolicy {
    after_records_min: u64,
    since: u64,
    last_snapshot: u64,
    in_flight: bool,
}

impl CompactionPolicy {
    /// `after_records_min` = `u64::MAX` never compacts.
    pub fn new(after_records_min: u64) -> CompactionPolicy {
        CompactionPolicy {
            after_records_min: after_records_min.max(1),
            since: 0,
            last_snapshot: 0,
            in_flight: false,
        }
    }

    /// `n` more records were handed to the driver to append.
    pub fn appended(&mut self, n: u64) {
        self.since = self.since.saturating_add(n);
    }

    /// Whether a compaction should start now.
    pub fn due(&self) -> bool {
        !self.in_flight
            && self.since >= self.after_records_min
            && self.since >= self.last_snapshot.saturating_mul(2)
    }

    /// A snapshot went to the driver; `snapshot_len` is its size in
    /// entries (a record that batches many outcomes counts each).
    pub fn started(&mut self, snapshot_len: u64) {
        self.in_flight = true;
        self.since = 0;
        self.last_snapshot = snapshot_len;
    }

    /// The driver rewrote the log (or the node restarted).
    pub fn finished(&mut self) {
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_the_minimum_and_twice_the_last_snapshot_one_at_a_time() {
        let mut p = CompactionPolicy::new(10);
        p.appended(9);
        assert!(!p.due());
        p.appended(1);
        assert!(p.due());
        p.started(8);
        p.appended(100);
        assert!(!p.due(), "one in flight");
        p.finished();
        assert!(p.due());
        p.started(60);
        p.finished();
        p.appended(100);
        assert!(!p.due(), "below twice the last snapshot");
        p.appended(20);
        assert!(p.due());
        assert!(!CompactionPolicy::new(u64::MAX).due());
    }
}
