//! A node's simulated disk: the log (a [`concord_store::MemLog`] of encoded
//! records), what of it is durable, and the fsync in flight.
//!
//! Group commit is modelled the way a real log does it: at most one fsync
//! is in flight per node; it covers every record appended *before it was
//! issued* (never the ones appended while it runs: those wait for the next
//! one), and when it completes every forced write it covers is reported
//! durable, in append order. A lazy record becomes durable only when a
//! later fsync covers it, or by luck when a crash keeps it (a crash keeps
//! the durable records plus a prefix of the rest, never a gap).
//!
//! The disk keeps a typed mirror of the records and an index of the first
//! record per (xid, kind) for the checkers; recovery decodes the bytes the
//! `MemLog` kept and checks they equal the mirror, so the store's crash
//! semantics and the record codec are exercised on every restart. It must
//! never decide anything by itself: how many unsynced records a crash keeps
//! and how long an fsync takes come from the caller (the seeded RNG).

use concord_proto::codec::{decode, encode};
use concord_proto::{CoordinatorRecord, Decision, ParticipantRecord, PersistTicket, Xid};
use concord_store::{LogStore, MemLog};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

/// The kind of a record, for the checkers' index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    Begin,
    Ready,
    Commit,
    Abort,
    End,
    /// A participant's one-phase commit record (also indexed as READY and
    /// COMMIT: it is both).
    OnePhase,
}

/// A log record the simulated disk can store and index.
pub trait SimRecord: Serialize + DeserializeOwned + Clone + PartialEq + Debug {
    /// Which transactions the record is about and what it says of each.
    fn keys(&self) -> Vec<(Xid, RecordKind)>;
}

fn decision_kind(decision: Decision) -> RecordKind {
    match decision {
        Decision::Commit => RecordKind::Commit,
        Decision::Abort => RecordKind::Abort,
    }
}

impl SimRecord for CoordinatorRecord {
    fn keys(&self) -> Vec<(Xid, RecordKind)> {
        match self {
            CoordinatorRecord::Epoch { .. } => vec![],
            CoordinatorRecord::Begin { xid, .. } => vec![(*xid, RecordKind::Begin)],
            CoordinatorRecord::Decision { xid, decision, .. } => {
                vec![(*xid, decision_kind(*decision))]
            }
            CoordinatorRecord::End { xid } => vec![(*xid, RecordKind::End)],
            CoordinatorRecord::Peer { .. } | CoordinatorRecord::Audit(_) => vec![],
        }
    }
}

impl SimRecord for ParticipantRecord {
    fn keys(&self) -> Vec<(Xid, RecordKind)> {
        match self {
            ParticipantRecord::Ready { xid, .. } | ParticipantRecord::SubtreeReady { xid, .. } => {
                vec![(*xid, RecordKind::Ready)]
            }
            ParticipantRecord::OnePhase { xid, .. } => vec![
                (*xid, RecordKind::Ready),
                (*xid, RecordKind::Commit),
                (*xid, RecordKind::OnePhase),
            ],
            ParticipantRecord::Outcome { xid, decision } => {
                vec![(*xid, decision_kind(*decision))]
            }
            ParticipantRecord::Finished { outcomes } => outcomes
                .iter()
                .map(|(xid, decision)| (*xid, decision_kind(*decision)))
                .collect(),
            // The simulator's operators never decide heuristically.
            ParticipantRecord::Heuristic { .. }
            | ParticipantRecord::Resource { .. }
            | ParticipantRecord::Peer { .. }
            | ParticipantRecord::Started { .. }
            | ParticipantRecord::PeerHint { .. } => vec![],
        }
    }
}

#[derive(Debug)]
pub struct SimDisk<R> {
    log: MemLog,
    mirror: Vec<R>,
    /// `mirror[..durable]` survives any crash.
    durable: usize,
    /// First index of each (xid, kind) among the records.
    first: BTreeMap<(Xid, RecordKind), usize>,
    /// Forced writes waiting for an fsync: (record index, ticket).
    waiting: VecDeque<(usize, PersistTicket)>,
    fsync_in_flight: bool,
    /// A compaction in progress: the snapshot, and how many records the log
    /// held when it was asked for (records after that are queued behind
    /// it, as in the group-commit writer: a crash loses them).
    rewrite: Option<(Vec<R>, usize)>,
    /// Bumped by every completed rewrite, so that an fsync issued before
    /// it (whose indices no longer mean anything) is recognised as stale.
    generation: u64,
    /// Every (xid, kind) that was ever durable, for end-of-run checks that
    /// must hold even after compaction dropped the record.
    ever_durable: BTreeSet<(Xid, RecordKind)>,
}

impl<R: SimRecord> SimDisk<R> {
    /// A disk holding `records`, all durable (a freshly set-up node).
    pub fn with_durable(records: Vec<R>) -> SimDisk<R> {
        let mut disk = SimDisk {
            log: MemLog::new(),
            mirror: Vec::new(),
            durable: 0,
            first: BTreeMap::new(),
            waiting: VecDeque::new(),
            fsync_in_flight: false,
            rewrite: None,
            generation: 0,
            ever_durable: BTreeSet::new(),
        };
        for record in records {
            disk.append(record);
        }
        disk.log.sync().expect("MemLog never fails");
        disk.durable = disk.mirror.len();
        disk
    }

    /// Append `record` (not durable yet); returns its index.
    pub fn append(&mut self, record: R) -> usize {
        let index = self.mirror.len();
        let bytes = encode(&record);
        self.log.append(&[&bytes]).expect("MemLog never fails");
        for key in record.keys() {
            self.first.entry(key).or_insert(index);
        }
        self.mirror.push(record);
        index
    }

    /// Append `record` and make everything durable at once: only for a
    /// node that is starting (nothing of it waits for an fsync yet), as the
    /// server writes its start record synchronously before it serves.
    pub fn append_synced(&mut self, record: R) {
        self.append(record);
        self.log.sync().expect("MemLog never fails");
        self.mark_durable(self.mirror.len());
    }

    /// A forced write of the record at `index` waits for an fsync.
    pub fn wait_for_fsync(&mut self, index: usize, ticket: PersistTicket) {
        self.waiting.push_back((index, ticket));
    }

    /// If forced writes wait and no fsync runs, issue one: it will cover
    /// the records appended so far. Returns what it covers (`upto`).
    pub fn issue_fsync(&mut self) -> Option<usize> {
        // While a rewrite runs, later records wait for it (it syncs what
        // came before it itself).
        if self.fsync_in_flight || self.waiting.is_empty() || self.rewrite.is_some() {
            return None;
        }
        self.fsync_in_flight = true;
        Some(self.mirror.len())
    }

    /// The fsync issued with `upto` completed: those records are durable.
    /// Returns the tickets of the forced writes it made durable, in order.
    pub fn fsync_done(&mut self, upto: usize) -> Vec<PersistTicket> {
        self.fsync_in_flight = false;
        self.mark_durable(upto.min(self.mirror.len()));
        let mut done = Vec::new();
        while let Some(&(index, ticket)) = self.waiting.front() {
            if index >= self.durable {
                break;
            }
            self.waiting.pop_front();
            done.push(ticket);
        }
        done
    }

    /// Records a crash may lose.
    pub fn unsynced(&self) -> usize {
        self.mirror.len() - self.durable
    }

    /// Records `..upto` are durable now.
    fn mark_durable(&mut self, upto: usize) {
        if upto > self.durable {
            for record in &self.mirror[self.durable..upto] {
                self.ever_durable.extend(record.keys());
            }
            self.durable = upto;
        }
    }

    /// The generation of the log (see [`rewrite_done`](Self::rewrite_done)).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a compaction is running.
    pub fn rewriting(&self) -> bool {
        self.rewrite.is_some()
    }

    /// A compaction starts: the log is to be replaced by `snapshot` once
    /// the records appended so far are written. Until
    /// [`rewrite_done`](Self::rewrite_done), a crash keeps the old log (and
    /// loses what was appended after this call).
    pub fn rewrite_begin(&mut self, snapshot: Vec<R>) {
        debug_assert!(self.rewrite.is_none(), "one compaction at a time");
        self.rewrite = Some((snapshot, self.mirror.len()));
    }

    /// The compaction completed: the log is the snapshot (durable), then
    /// the records appended since it began (not durable). The forced writes
    /// from before it are durable (the writer synced them first): their
    /// tickets are returned.
    pub fn rewrite_done(&mut self) -> Vec<PersistTicket> {
        let Some((snapshot, start)) = self.rewrite.take() else {
            return Vec::new();
        };
        self.mark_durable(start);
        let mut done = Vec::new();
        let mut later = VecDeque::new();
        for (index, ticket) in self.waiting.drain(..) {
            if index < start {
                done.push(ticket);
            } else {
                later.push_back((index - start + snapshot.len(), ticket));
            }
        }
        let after: Vec<R> = self.mirror.split_off(start);
        // The new log: the snapshot, synced, then what was queued behind it.
        self.log = MemLog::new();
        self.mirror.clear();
        self.first.clear();
        self.durable = 0;
        for record in snapshot {
            self.append(record);
        }
        self.log.sync().expect("MemLog never fails");
        self.mark_durable(self.mirror.len());
        for record in after {
            self.append(record);
        }
        self.waiting = later;
        self.fsync_in_flight = false;
        self.generation += 1;
        done
    }

    /// Whether a record of `kind` about `xid` was durable at any time (a
    /// compaction may have dropped it since, with its effect kept).
    pub fn was_durable(&self, xid: Xid, kind: RecordKind) -> bool {
        self.ever_durable.contains(&(xid, kind)) || self.has_durable(xid, kind)
    }

    /// Power loss: keep the durable records and the first `keep_unsynced`
    /// of the others; forget the fsync in flight and the waiting writes.
    /// A compaction in progress is lost with the records queued behind it.
    pub fn crash(&mut self, keep_unsynced: usize) {
        if let Some((_, start)) = self.rewrite.take() {
            // The old log as it was when the compaction was asked for: the
            // durable prefix synced, the rest not; the queued records are
            // gone.
            self.mirror.truncate(start);
            self.first.retain(|_, index| *index < start);
            let records = std::mem::take(&mut self.mirror);
            let durable = self.durable.min(records.len());
            self.log = MemLog::new();
            self.first.clear();
            for (i, record) in records.into_iter().enumerate() {
                if i == durable {
                    self.log.sync().expect("MemLog never fails");
                }
                self.append(record);
            }
            if durable == self.mirror.len() {
                self.log.sync().expect("MemLog never fails");
            }
        }
        let kept = self.durable + keep_unsynced.min(self.unsynced());
        // MemLog counts as synced only what was synced through it; ours is
        // the finer model (an fsync covers only what preceded it), so say
        // how many of MemLog's unsynced records survive.
        let memlog_keep = kept - self.log.synced_count();
        self.log.crash(memlog_keep);
        self.mirror.truncate(kept);
        self.first.retain(|_, index| *index < kept);
        // What survived is durable now (it is all there is).
        self.mark_durable(kept);
        self.waiting.clear();
        self.fsync_in_flight = false;
    }

    /// What recovery reads after a restart: the MemLog's surviving bytes,
    /// decoded. Fails if they are not exactly the records the mirror says
    /// survived (a store or codec bug).
    pub fn recover(&self) -> Result<Vec<R>, String> {
        let bytes = self.log.records();
        let mut records = Vec::with_capacity(bytes.len());
        for (i, b) in bytes.iter().enumerate() {
            let record: R =
                decode("log record", b).map_err(|e| format!("record {i} of the log: {e}"))?;
            records.push(record);
        }
        if records != self.mirror {
            return Err(format!(
                "recovered {} records, expected {}: the log does not hold what was kept",
                records.len(),
                self.mirror.len()
            ));
        }
        Ok(records)
    }

    /// Every record appended (durable or not), as the node sees its log.
    pub fn records(&self) -> &[R] {
        &self.mirror
    }

    /// The records that survive any crash.
    pub fn durable_records(&self) -> &[R] {
        &self.mirror[..self.durable]
    }

    /// Whether a record of `kind` about `xid` is durable.
    pub fn has_durable(&self, xid: Xid, kind: RecordKind) -> bool {
        self.first
            .get(&(xid, kind))
            .is_some_and(|index| *index < self.durable)
    }

    /// Whether a record of `kind` about `xid` was appended (durable or not).
    pub fn has(&self, xid: Xid, kind: RecordKind) -> bool {
        self.first.contains_key(&(xid, kind))
    }

    /// Forced writes still waiting to become durable.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(x: u128) -> CoordinatorRecord {
        CoordinatorRecord::End { xid: Xid(x) }
    }

    #[test]
    fn fsync_covers_only_what_preceded_it() {
        let mut disk = SimDisk::with_durable(vec![end(1)]);
        let a = disk.append(end(2));
        disk.wait_for_fsync(a, PersistTicket(1));
        let upto = disk.issue_fsync().expect("issued");
        assert_eq!(disk.issue_fsync(), None, "one fsync at a time");
        let b = disk.append(end(3));
        disk.wait_for_fsync(b, PersistTicket(2));
        assert_eq!(disk.fsync_done(upto), vec![PersistTicket(1)]);
        assert!(disk.has_durable(Xid(2), RecordKind::End));
        assert!(!disk.has_durable(Xid(3), RecordKind::End));
        let upto = disk
            .issue_fsync()
            .expect("next fsync for the waiting write");
        assert_eq!(disk.fsync_done(upto), vec![PersistTicket(2)]);
    }

    #[test]
    fn crash_keeps_durable_plus_a_prefix_and_recovery_decodes_it() {
        let mut disk = SimDisk::with_durable(vec![end(1)]);
        disk.append(end(2));
        disk.append(end(3));
        disk.append(end(4));
        disk.crash(1);
        assert_eq!(disk.recover().expect("recovers"), vec![end(1), end(2)]);
        assert!(disk.has_durable(Xid(2), RecordKind::End));
        assert!(!disk.has(Xid(3), RecordKind::End));
        disk.append(end(5));
        disk.crash(0);
        assert_eq!(disk.recover().expect("recovers"), vec![end(1), end(2)]);
    }
}
