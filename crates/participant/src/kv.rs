//! The built-in key-value resource: named accounts with integer balances.
//!
//! A branch's work is a list of [`KvOp`]s (add `delta` to `account`).
//! Prepare checks every account exists, is not locked by another
//! transaction and would not go negative, then locks the accounts until
//! the decision (VOTE ABORT otherwise, with the reason). The store keeps no
//! files of its own: its state is derived from the participant's log —
//! the seed record, and the work of every READY record whose outcome is
//! COMMIT — so it is exactly as durable as the protocol's forced writes.

use crate::resource::{Answer, Resource};
use concord_proto::codec::{decode, encode};
use concord_proto::mutant::{self, Mutant};
use concord_proto::{Decision, ParticipantRecord, Xid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Longest account name accepted.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 128;

/// One change in a branch: add `delta` (may be negative) to `account`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOp {
    pub account: String,
    pub delta: i64,
}

/// The key-value resource's own log records, carried in
/// `ParticipantRecord::Resource`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRecord {
    /// Accounts created on first start.
    Seed { accounts: Vec<(String, i64)> },
    /// Written by compaction: every committed balance at that point. It
    /// replaces whatever came before it.
    Snapshot { balances: Vec<(String, i64)> },
}

/// Whether `ops` change nothing: every delta is 0 (a balance check, which
/// prepare validates like any other op: the account exists, is not locked
/// by another transaction, is not overdrawn). Such a branch takes no
/// locks, since nothing it read can be changed by its own commit, and
/// votes READ-ONLY.
pub fn read_only(ops: &[KvOp]) -> bool {
    ops.iter().all(|op| op.delta == 0)
}

/// A branch's work as it travels in PREPARE and sits in the READY record:
/// the operations, and an opaque `memo` the application may attach (an
/// order reference, a description). The memo is kept durably with the
/// READY record and otherwise ignored; `concord bench --payload-bytes`
/// uses it to size records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWork {
    pub ops: Vec<KvOp>,
    pub memo: Vec<u8>,
}

/// Work of `ops` with no memo.
pub fn encode_work(ops: &[KvOp]) -> Vec<u8> {
    encode_work_with_memo(ops, &[])
}

pub fn encode_work_with_memo(ops: &[KvOp], memo: &[u8]) -> Vec<u8> {
    // Encode from borrowed parts: the same bytes as `KvWork`, no copies.
    encode(&(ops, memo))
}

/// Several branches' work for one participant as one branch: the
/// operations in order and the memos joined. One work is returned as it
/// is (whatever the resource); several must all be key-value work, or all
/// PostgreSQL work (gids and statements in order): the kinds with a known
/// way to merge.
pub fn merge_works(mut works: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
    if works.len() == 1 {
        return Ok(works.pop().unwrap_or_default());
    }
    let mut merged = KvWork::default();
    for work in &works {
        let work = match decode_kv_work(work) {
            Ok(work) => work,
            // PostgreSQL work merges too (its own format, JSON).
            Err(_) if works.iter().all(|w| crate::pg::PgWork::is_pg_work(w)) => {
                return crate::pg::PgWork::merge(&works)
            }
            Err(e) => return Err(e),
        };
        merged.ops.extend(work.ops);
        merged.memo.extend(work.memo);
    }
    Ok(encode_work_with_memo(&merged.ops, &merged.memo))
}

/// One work per participant (`(participant, work)` pairs), in the order
/// they first appear, merged with [`merge_works`] as the coordinator
/// merges them: for a tree, whose nodes have one branch each.
pub fn merge_per_participant(
    branches: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut grouped: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (participant, work) in branches {
        match grouped.iter_mut().find(|(p, _)| *p == participant) {
            Some((_, works)) => works.push(work),
            None => grouped.push((participant, vec![work])),
        }
    }
    grouped
        .into_iter()
        .map(|(participant, works)| {
            let work = merge_works(works)
                .map_err(|e| format!("branches for {participant} cannot be merged: {e}"))?;
            Ok((participant, work))
        })
        .collect()
}

/// The whole work, memo included.
pub fn decode_kv_work(work: &[u8]) -> Result<KvWork, String> {
    decode::<KvWork>("key-value work", work).map_err(|e| e.to_string())
}

/// The operations of a branch's work.
pub fn decode_work(work: &[u8]) -> Result<Vec<KvOp>, String> {
    decode_kv_work(work).map(|w| w.ops)
}

/// The seed record for `--seed-accounts N --balance B`: `acct-0` …
/// `acct-{N-1}`, each with balance B.
pub fn seed_record(count: usize, balance: i64) -> ParticipantRecord {
    let accounts = (0..count).map(|i| (format!("acct-{i}"), balance)).collect();
    ParticipantRecord::Resource {
        body: encode(&KvRecord::Seed { accounts }),
    }
}

/// Add one op's delta. Wrapping on purpose: `prepare` checked that the
/// branch's *net* change per account fits, but its ops one by one may
/// overflow on the way (+i64::MAX then -i64::MAX); two's-complement
/// addition reaches the same, correct end balance in any order, and a
/// commit or a replay must never panic halfway.
fn apply(balances: &mut BTreeMap<String, i64>, op: KvOp) {
    let balance = balances.entry(op.account).or_insert(0);
    *balance = balance.wrapping_add(op.delta);
}

#[derive(Debug, Default)]
pub struct KvStore {
    balances: BTreeMap<String, i64>,
    /// account → the transaction holding its lock (from READY to decision).
    locks: HashMap<String, Xid>,
    prepared: HashMap<Xid, Vec<KvOp>>,
    seeded: bool,
}

impl KvStore {
    /// Rebuild committed balances from the participant's log. Locks of
    /// in-doubt branches are taken back later through `Resource::restore`.
    pub fn replay<'a>(
        records: impl IntoIterator<Item = &'a ParticipantRecord>,
    ) -> Result<KvStore, String> {
        Self::replay_as(records, false)
    }

    /// The balances the log commits to: [`KvStore::replay`] plus the
    /// one-phase commits whose outcome record is not there yet (their
    /// one-phase record already decided them; recovery carries them out).
    /// For checks of a log from outside; a node recovers with `replay`.
    pub fn replay_decided<'a>(
        records: impl IntoIterator<Item = &'a ParticipantRecord>,
    ) -> Result<KvStore, String> {
        Self::replay_as(records, true)
    }

    fn replay_as<'a>(
        records: impl IntoIterator<Item = &'a ParticipantRecord>,
        with_one_phase: bool,
    ) -> Result<KvStore, String> {
        let mut store = KvStore::default();
        let mut ready_work: HashMap<Xid, &'a [u8]> = HashMap::new();
        // One-phase records in log order (some may have an outcome since).
        let mut one_phase: Vec<Xid> = Vec::new();
        for record in records {
            match record {
                ParticipantRecord::Resource { body } => {
                    match decode("key-value record", body)
                        .map_err(|e| format!("key-value log record: {e}"))?
                    {
                        KvRecord::Seed { accounts } => {
                            for (account, balance) in accounts {
                                store.balances.entry(account).or_insert(balance);
                            }
                        }
                        KvRecord::Snapshot { balances } => {
                            store.balances = balances.into_iter().collect();
                            ready_work.clear();
                            one_phase.clear();
                        }
                    }
                    store.seeded = true;
                }
                // Compaction's marker: its effect is in the snapshot.
                ParticipantRecord::Finished { outcomes } => {
                    for (xid, _) in outcomes {
                        ready_work.remove(xid);
                    }
                }
                // A one-phase record decides COMMIT, but like a READY
                // record its effect counts from the outcome record on:
                // without one, recovery restores and commits it through the
                // resource (so a snapshot never holds a commit the node has
                // not seen succeed).
                ParticipantRecord::Ready { xid, work, .. }
                | ParticipantRecord::SubtreeReady { xid, work, .. } => {
                    ready_work.insert(*xid, work);
                }
                ParticipantRecord::OnePhase { xid, work, .. } => {
                    ready_work.insert(*xid, work);
                    one_phase.push(*xid);
                }
                // The directory's; nothing for the balances. (An
                // operator's heuristic decision, like a READY record,
                // counts from the outcome record it leads to.)
                ParticipantRecord::Heuristic { .. }
                | ParticipantRecord::Peer { .. }
                | ParticipantRecord::Started { .. }
                | ParticipantRecord::PeerHint { .. } => {}
                ParticipantRecord::Outcome { xid, decision } => {
                    let work = ready_work.remove(xid);
                    if *decision == Decision::Commit {
                        let work = work.ok_or_else(|| {
                            format!("log has COMMIT for {xid} without its READY record")
                        })?;
                        for op in decode_work(work)? {
                            apply(&mut store.balances, op);
                        }
                    }
                }
            }
        }
        if with_one_phase {
            for xid in one_phase {
                if let Some(work) = ready_work.remove(&xid) {
                    for op in decode_work(work)? {
                        apply(&mut store.balances, op);
                    }
                }
            }
        }
        Ok(store)
    }

    /// Whether the log already holds a seed record (seeding happens once).
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// Committed balances.
    pub fn balances(&self) -> &BTreeMap<String, i64> {
        &self.balances
    }

    /// Accounts locked right now, with the transaction holding each.
    pub fn locks(&self) -> &HashMap<String, Xid> {
        &self.locks
    }

    pub fn total(&self) -> i64 {
        self.balances.values().sum()
    }

    fn check(&self, xid: Xid, ops: &[KvOp]) -> Result<(), String> {
        let mut needed: BTreeMap<&str, i64> = BTreeMap::new();
        for op in ops {
            if op.account.len() > ACCOUNT_NAME_BYTES_MAX {
                return Err(format!(
                    "account name of {} bytes is over the limit",
                    op.account.len()
                ));
            }
            if !self.balances.contains_key(&op.account) {
                return Err(format!("unknown account {}", op.account));
            }
            if let Some(holder) = self.locks.get(&op.account) {
                if *holder != xid && !mutant::active(Mutant::SkipLockConflict) {
                    return Err(format!(
                        "account {} is locked by transaction {holder}",
                        op.account
                    ));
                }
            }
            let sum = needed.entry(&op.account).or_insert(0);
            *sum = sum
                .checked_add(op.delta)
                .ok_or_else(|| format!("amount overflow on {}", op.account))?;
        }
        for (account, delta) in needed {
            let balance = self.balances.get(account).copied().unwrap_or(0);
            match balance.checked_add(delta) {
                Some(after) if after >= 0 || mutant::active(Mutant::SkipFundsCheck) => {}
                Some(_) => {
                    return Err(format!(
                        "insufficient funds in {account}: balance {balance}, change {delta}"
                    ))
                }
                None => return Err(format!("amount overflow on {account}")),
            }
        }
        Ok(())
    }

    fn lock(&mut self, xid: Xid, ops: Vec<KvOp>) {
        for op in &ops {
            self.locks.insert(op.account.clone(), xid);
        }
        self.prepared.insert(xid, ops);
    }

    fn release(&mut self, xid: Xid) -> Option<Vec<KvOp>> {
        let ops = self.prepared.remove(&xid)?;
        for op in &ops {
            if self.locks.get(&op.account) == Some(&xid) {
                self.locks.remove(&op.account);
            }
        }
        Some(ops)
    }
}

/// Read access to a key-value store inside another resource (a test
/// wrapper around it, say), for reports and the simulator's checks.
pub trait KvView {
    fn kv(&self) -> &KvStore;
}

impl KvView for KvStore {
    fn kv(&self) -> &KvStore {
        self
    }
}

impl KvStore {
    fn try_prepare(&mut self, xid: Xid, work: &[u8]) -> Result<(), String> {
        let ops = decode_work(work)?;
        self.check(xid, &ops)?;
        if !read_only(&ops) {
            self.lock(xid, ops);
        }
        Ok(())
    }
}

/// In memory, so every answer is [`Answer::Now`], and commit and abort
/// never fail (the durable effect is the participant's own COMMITTED
/// record, which `replay` applies).
impl Resource for KvStore {
    fn prepare(&mut self, xid: Xid, work: &[u8]) -> Answer {
        Answer::Now(self.try_prepare(xid, work))
    }

    fn commit(&mut self, xid: Xid) -> Answer {
        // A second commit of the same xid finds nothing prepared and
        // applies nothing: idempotent.
        if let Some(ops) = self.release(xid) {
            for op in ops {
                apply(&mut self.balances, op);
            }
        }
        Answer::Now(Ok(()))
    }

    fn abort(&mut self, xid: Xid) -> Answer {
        self.release(xid);
        Answer::Now(Ok(()))
    }

    fn is_read_only(&self, work: &[u8]) -> bool {
        // No operations reads nothing and writes nothing: a tree's node
        // that only passes messages on, for one.
        decode_work(work).is_ok_and(|ops| read_only(&ops))
    }

    fn snapshot(&self) -> Vec<u8> {
        let balances = self.balances.iter().map(|(a, b)| (a.clone(), *b)).collect();
        encode(&KvRecord::Snapshot { balances })
    }

    fn restore(&mut self, xid: Xid, work: &[u8]) {
        // The READY record was written only after prepare succeeded, so
        // its work decodes; if it did not, holding nothing is the only
        // choice, and the commit (if any) would apply nothing.
        // Nor does work that only reads (it took no locks at prepare).
        if let Ok(ops) = decode_work(work) {
            if !read_only(&ops) {
                self.lock(xid, ops);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_of_one_participant_merge_with_their_memos() {
        let op = |a: &str, d| KvOp {
            account: a.into(),
            delta: d,
        };
        let merged = merge_per_participant(vec![
            (
                "a".to_string(),
                encode_work_with_memo(&[op("x", -1)], b"m1"),
            ),
            ("b".to_string(), b"not kv".to_vec()),
            ("a".to_string(), encode_work_with_memo(&[op("y", 1)], b"m2")),
        ])
        .expect("mergeable");
        assert_eq!(merged.len(), 2);
        let a = decode_kv_work(&merged[0].1).expect("kv");
        assert_eq!(a.ops, vec![op("x", -1), op("y", 1)]);
        assert_eq!(a.memo, b"m1m2".to_vec());
        assert_eq!(
            merged[1],
            ("b".to_string(), b"not kv".to_vec()),
            "a lone work as is"
        );
        let err = merge_per_participant(vec![
            ("b".to_string(), b"not kv".to_vec()),
            ("b".to_string(), b"nor this".to_vec()),
        ])
        .expect_err("not key-value work");
        assert!(err.contains("branches for b"), "{err}");
    }

    /// The key-value store always answers at once.
    fn done(answer: Answer) -> Result<(), String> {
        match answer {
            Answer::Now(result) => result,
            Answer::Later => panic!("the key-value store answered later"),
        }
    }

    fn op(account: &str, delta: i64) -> KvOp {
        KvOp {
            account: account.into(),
            delta,
        }
    }

    fn seeded() -> KvStore {
        KvStore::replay(&[seed_record(3, 100)]).expect("seed replays")
    }

    #[test]
    fn vote_abort_on_unknown_account() {
        let mut kv = seeded();
        let err = done(kv.prepare(Xid(1), &encode_work(&[op("nope", 1)]))).unwrap_err();
        assert!(err.contains("unknown account nope"), "{err}");
        assert!(kv.locks().is_empty());
    }

    #[test]
    fn vote_abort_on_insufficient_funds() {
        let mut kv = seeded();
        let err = done(kv.prepare(Xid(1), &encode_work(&[op("acct-0", -101)]))).unwrap_err();
        assert!(err.contains("insufficient funds in acct-0"), "{err}");
    }

    #[test]
    fn vote_abort_on_lock_conflict_until_decision() {
        let mut kv = seeded();
        done(kv.prepare(Xid(1), &encode_work(&[op("acct-0", -10)]))).expect("first prepare");
        let err = done(kv.prepare(Xid(2), &encode_work(&[op("acct-0", 5)]))).unwrap_err();
        assert!(err.contains("locked by transaction"), "{err}");
        done(kv.commit(Xid(1))).expect("commit");
        assert_eq!(kv.balances()["acct-0"], 90);
        done(kv.commit(Xid(1))).expect("a second commit is a no-op");
        assert_eq!(kv.balances()["acct-0"], 90);
        done(kv.prepare(Xid(2), &encode_work(&[op("acct-0", 5)])))
            .expect("lock released by commit");
        done(kv.abort(Xid(2))).expect("abort");
        assert!(kv.locks().is_empty());
        assert_eq!(kv.total(), 290);
    }

    #[test]
    fn garbage_work_votes_abort() {
        let mut kv = seeded();
        assert!(done(kv.prepare(Xid(1), &[0xff, 0xff, 0xff])).is_err());
    }

    #[test]
    fn replay_applies_only_committed_work() {
        let ready = |x: u128, delta: i64| ParticipantRecord::Ready {
            xid: Xid(x),
            coordinator: "c".into(),
            epoch: 1,
            participants: vec!["p".into()],
            work: encode_work(&[op("acct-1", delta)]),
        };
        let log = vec![
            seed_record(2, 50),
            ready(1, 7),
            ready(2, 9),
            ParticipantRecord::Outcome {
                xid: Xid(1),
                decision: Decision::Commit,
            },
            ParticipantRecord::Outcome {
                xid: Xid(2),
                decision: Decision::Abort,
            },
            ready(3, 11),        // in doubt: not applied
            seed_record(2, 999), // a second seed never overwrites
        ];
        let kv = KvStore::replay(&log).expect("replays");
        assert_eq!(kv.balances()["acct-1"], 57);
        assert_eq!(kv.balances()["acct-0"], 50);
        assert!(kv.is_seeded());
    }

    #[test]
    fn work_with_memo_round_trips_and_keeps_ops() {
        let ops = vec![op("acct-0", -3), op("acct-1", 3)];
        let work = encode_work_with_memo(&ops, b"order 17");
        let decoded = decode_kv_work(&work).expect("kv work");
        assert_eq!(decoded.ops, ops);
        assert_eq!(decoded.memo, b"order 17");
        assert_eq!(decode_work(&encode_work(&ops)).expect("kv work"), ops);
    }

    #[test]
    fn a_snapshot_replaces_history_and_finished_markers_apply_nothing() {
        let seed = seed_record(2, 100);
        let work = encode_work(&[op("acct-0", -30), op("acct-1", 30)]);
        let history = vec![
            seed.clone(),
            ParticipantRecord::Ready {
                xid: Xid(1),
                coordinator: "c".into(),
                epoch: 1,
                participants: vec!["p".into()],
                work: work.clone(),
            },
            ParticipantRecord::Outcome {
                xid: Xid(1),
                decision: Decision::Commit,
            },
        ];
        let kv = KvStore::replay(&history).expect("replays");
        assert_eq!(kv.balances()["acct-0"], 70);
        // The compacted log: the snapshot, the finished marker, and then
        // what came after compaction.
        let compacted = vec![
            ParticipantRecord::Resource {
                body: kv.snapshot(),
            },
            ParticipantRecord::Finished {
                outcomes: vec![(Xid(1), Decision::Commit)],
            },
            ParticipantRecord::Ready {
                xid: Xid(2),
                coordinator: "c".into(),
                epoch: 1,
                participants: vec!["p".into()],
                work: encode_work(&[op("acct-1", -5)]),
            },
            ParticipantRecord::Outcome {
                xid: Xid(2),
                decision: Decision::Commit,
            },
        ];
        let again = KvStore::replay(&compacted).expect("replays");
        assert_eq!(again.balances()["acct-0"], 70, "commit 1 applied once");
        assert_eq!(again.balances()["acct-1"], 125);
        assert!(again.is_seeded());
    }
}
