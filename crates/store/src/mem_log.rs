//! `MemLog`: an in-memory [`LogStore`] for the deterministic simulator.
//!
//! It models exactly what the durability contract promises and no more: it
//! remembers which records were synced, and [`MemLog::crash`] throws away
//! the unsynced ones the way a power loss may. It must stay cheap and
//! deterministic: no clock, no randomness, no IO. The simulator decides how
//! many unsynced records survive, from its seed.

use crate::{LogStore, StoreError};

/// An in-memory log: the records and how many of them are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemLog {
    records: Vec<Vec<u8>>,
    /// `records[..synced]` would survive a crash.
    synced: usize,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// A log holding `records`, all durable: the state after recovery.
    pub fn from_records(records: Vec<Vec<u8>>) -> MemLog {
        let synced = records.len();
        MemLog { records, synced }
    }

    /// Simulate a power loss: keep the synced records plus the first
    /// `keep_unsynced` of the unsynced ones (a crash keeps a prefix of the
    /// writes in flight, never a gap). What survives is on "disk", so it
    /// all counts as synced afterwards.
    pub fn crash(&mut self, keep_unsynced: usize) {
        let kept = self.synced + keep_unsynced.min(self.unsynced_count());
        self.records.truncate(kept);
        self.synced = kept;
    }

    /// What recovery would return now (after a process crash; call
    /// [`crash`](Self::crash) first to model a machine crash).
    pub fn records(&self) -> Vec<Vec<u8>> {
        self.records.clone()
    }

    /// Number of records appended (synced or not).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of records that survive any crash.
    pub fn synced_count(&self) -> usize {
        self.synced
    }

    /// Number of records a crash may lose.
    pub fn unsynced_count(&self) -> usize {
        self.records.len() - self.synced
    }
}

impl LogStore for MemLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.records.extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.synced = self.records.len();
        Ok(())
    }

    fn rewrite(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.records = records.iter().map(|r| r.to_vec()).collect();
        self.synced = self.records.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_records_and_a_prefix_of_the_unsynced() {
        let mut log = MemLog::new();
        log.append(&[b"a", b"b"]).expect("append");
        log.sync().expect("sync");
        log.append(&[b"c", b"d", b"e"]).expect("append");
        log.crash(2);
        assert_eq!(
            log.records(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(log.unsynced_count(), 0);
        log.crash(100);
        assert_eq!(log.len(), 4);
    }
}
