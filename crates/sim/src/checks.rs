//! The invariants, one function each, named for the rule they check.
//!
//! Continuous checks run at the moment something happens (a decision is
//! applied, a COMMIT decision is logged, a message is sent, an outcome is
//! reported, a participant raises a violation); final checks run once the
//! liveness phase has gone quiet. Each one, when broken, names itself,
//! the seed and the xid through [`World::fail`].
//!
//! The checkers read the world; they must never change what the nodes do.
//! Their memory (the [`Ghost`]) survives crashes, since it is what an
//! all-seeing observer saw, not what any node remembers.

use crate::disk::RecordKind;
use crate::ids::NodeId;
use crate::report::ClientOutcome;
use crate::workload::Intent;
use crate::world::World;
use concord_api::{PeerBody, PeerEnvelope};
use concord_participant::kv::{read_only, KvOp, KvStore, KvView};
use concord_proto::{Body, Decision, Epoch, Message, TxnState, Vote, Xid};

/// A branch's state before a message from an older epoch (see
/// `World::check_epoch`).
pub(crate) struct EpochState {
    xid: Xid,
    message_epoch: Epoch,
    branch_epoch: Epoch,
    state: TxnState,
}
use std::collections::{BTreeMap, BTreeSet};

/// What the all-seeing observer remembers.
#[derive(Debug, Default)]
pub struct Ghost {
    /// Per xid, which participants applied COMMIT and which ABORT (an
    /// outcome record appended, or the resource told to commit/abort).
    pub applied: BTreeMap<Xid, Applied>,
    /// What the coordinator reported to clients, per xid.
    pub reported: BTreeMap<Xid, ClientOutcome>,
    /// Xids the coordinator can never commit: it decided ABORT (a record
    /// appended) or answered ABORTED to an INQUIRE (presumed abort).
    pub coordinator_aborted: BTreeSet<Xid>,
    /// Per participant: the branches that voted READY and have not applied
    /// a decision yet, with the accounts their locks cover.
    pub holding: BTreeMap<usize, BTreeMap<Xid, BTreeSet<String>>>,
    /// Per xid, the participants that voted READ-ONLY.
    pub read_only: BTreeMap<Xid, BTreeSet<usize>>,
}

#[derive(Debug, Default)]
pub struct Applied {
    pub commit: BTreeSet<usize>,
    pub abort: BTreeSet<usize>,
}

impl World {
    // ----- continuous -----------------------------------------------------

    /// Participant `p` carried out `decision` for `xid`.
    pub(crate) fn decision_applied(&mut self, p: usize, xid: Xid, decision: Decision) {
        if let Some(held) = self.ghost.holding.get_mut(&p) {
            held.remove(&xid);
        }
        if decision == Decision::Commit {
            self.check_no_overdraft(p, xid);
        }
        self.check_termination_agrees(p, xid, decision);
        let applied = self.ghost.applied.entry(xid).or_default();
        match decision {
            Decision::Commit => applied.commit.insert(p),
            Decision::Abort => applied.abort.insert(p),
        };
        self.check_atomicity_of(xid);
        if decision == Decision::Commit
            && self.ghost.reported.get(&xid) == Some(&ClientOutcome::Aborted)
        {
            let detail = format!("p{p} committed a transaction the client was told aborted");
            self.fail("client_outcomes", Some(xid), detail);
        }
    }

    /// No overdraft: no committed balance is ever below zero, and a branch
    /// the workload built to fail its prepare (an overdraft, an unknown
    /// account) never commits.
    fn check_no_overdraft(&mut self, p: usize, xid: Xid) {
        let negative = self.participant(p).and_then(|node| {
            node.resource()
                .kv()
                .balances()
                .iter()
                .find(|(_, b)| **b < 0)
                .map(|(a, b)| (a.clone(), *b))
        });
        if let Some((account, balance)) = negative {
            let detail = format!("p{p} {account} is {balance} after committing");
            return self.fail("no_overdraft", Some(xid), detail);
        }
        let intent = self
            .client_of
            .get(&xid)
            .map(|c| self.clients[*c].plan.intent);
        if let Some(intent @ (Intent::Overdraft | Intent::UnknownAccount)) = intent {
            let detail =
                format!("p{p} committed a {intent:?} transaction, whose prepare must fail");
            self.fail("no_overdraft", Some(xid), detail);
        }
    }

    /// Isolation: participant `p` voted READY on `xid`, so it holds locks on
    /// the accounts `xid` changes there until a decision is applied. No other
    /// undecided branch at `p` may hold a lock on any of them.
    pub(crate) fn check_isolation_at_vote(&mut self, p: usize, xid: Xid) {
        let Some(&c) = self.client_of.get(&xid) else {
            return;
        };
        // A vote repeated for a finished branch (a duplicate PREPARE) holds
        // nothing: only a branch that is READY now holds locks.
        let ready_now = self
            .participant(p)
            .is_some_and(|node| node.core().state_of(xid) == TxnState::Ready);
        if !ready_now {
            return;
        }
        let accounts: BTreeSet<String> = self.clients[c]
            .plan
            .branches
            .iter()
            .filter(|(q, _)| *q == p)
            // Only what it changes: a balance check takes no lock once
            // it has passed (see `kv::read_only`).
            .flat_map(|(_, ops)| ops.iter().filter(|o| o.delta != 0))
            .map(|o| o.account.clone())
            .collect();
        let held = self.ghost.holding.entry(p).or_default();
        let conflict =
            held.iter()
                .filter(|(other, _)| **other != xid)
                .find_map(|(other, theirs)| {
                    theirs
                        .intersection(&accounts)
                        .next()
                        .map(|a| (*other, a.clone()))
                });
        held.insert(xid, accounts);
        if let Some((other, account)) = conflict {
            let detail = format!("p{p}: READY on {account} while {other:?} still holds it");
            self.fail("isolation", Some(xid), detail);
        }
    }

    /// Isolation across restarts: an in-doubt branch keeps its locks. Run
    /// when participant `p` has just recovered.
    pub(crate) fn check_locks_restored(&mut self, p: usize) {
        let Some(node) = self.participant(p) else {
            return;
        };
        let in_doubt: BTreeSet<Xid> = node.core().in_doubt().into_iter().collect();
        let locks = node.resource().kv().locks().clone();
        let Some(held) = self.ghost.holding.get_mut(&p) else {
            return;
        };
        // Only in-doubt branches hold anything after a restart (a branch
        // whose outcome record survived the crash is finished, whether or
        // not the crash came before the node reported it).
        held.retain(|xid, _| in_doubt.contains(xid));
        let lost = held.iter().find_map(|(xid, accounts)| {
            let missing = accounts.iter().find(|a| locks.get(*a) != Some(xid))?;
            Some((*xid, missing.clone()))
        });
        if let Some((xid, account)) = lost {
            let detail = format!("p{p} restarted in doubt but lost its lock on {account}");
            self.fail("isolation", Some(xid), detail);
        }
    }

    /// What the epoch invariant compares: for a message to participant `p`
    /// from an older epoch than its branch has seen, the branch's state
    /// before the message.
    pub(crate) fn epoch_state(&self, p: usize, envelope: &PeerEnvelope) -> Option<EpochState> {
        let PeerBody::Message(message) = &envelope.body else {
            return None;
        };
        if matches!(message.body, Body::Inquire { .. }) {
            return None; // anyone may ask, from any epoch
        }
        let core = self.participant(p)?.core();
        let epoch = core.epoch_of(message.xid)?;
        (message.epoch < epoch).then(|| EpochState {
            xid: message.xid,
            message_epoch: message.epoch,
            branch_epoch: epoch,
            state: core.state_of(message.xid),
        })
    }

    /// Epochs: no message from an older epoch changes any state. (With one
    /// coordinator an older epoch never carries a different decision, so
    /// only injected messages reach this; coordinator takeover will.)
    pub(crate) fn check_epoch(&mut self, p: usize, before: EpochState) {
        let Some(node) = self.participant(p) else {
            return;
        };
        let core = node.core();
        let (state, epoch) = (core.state_of(before.xid), core.epoch_of(before.xid));
        if state != before.state || epoch != Some(before.branch_epoch) {
            let detail = format!(
                "p{p}: a message of epoch {} moved a branch of epoch {} from {:?} to {state:?}",
                before.message_epoch, before.branch_epoch, before.state
            );
            self.fail("epoch", Some(before.xid), detail);
        }
    }

    /// Admission: a participant never has more branches in flight than
    /// its limit (so its memory, locks and log queue stay bounded).
    pub(crate) fn check_admission(&mut self, p: usize) {
        let Some(node) = self.participant(p) else {
            return;
        };
        let live = node.core().branches_in_flight();
        let limit = self.config.branches_in_flight_max;
        if live > limit {
            let detail = format!("p{p} has {live} branches in flight, over its limit of {limit}");
            self.fail("admission", None, detail);
        }
    }

    /// Termination never contradicts the coordinator: whatever a
    /// participant carries out (learnt from the coordinator or, by
    /// cooperative termination, from a peer) is what the coordinator
    /// decided, if it decided: no commit of an xid it aborted (or answered
    /// ABORTED for), no abort of one whose COMMIT record is durable.
    fn check_termination_agrees(&mut self, p: usize, xid: Xid, decision: Decision) {
        let contradicts = match decision {
            Decision::Commit => self.ghost.coordinator_aborted.contains(&xid),
            // Whoever decided: the coordinator, or the branch (one-phase)
            // or chain member (linear) whose one-phase record is durable.
            Decision::Abort => {
                self.coordinator_disk.was_durable(xid, RecordKind::Commit)
                    || self.one_phase_durable(xid)
            }
        };
        if contradicts {
            let detail =
                format!("p{p} carried out {decision:?}, the coordinator decided otherwise");
            self.fail("termination_agrees", Some(xid), detail);
        }
    }

    /// Atomicity: the decisions applied for one xid are all of one kind.
    fn check_atomicity_of(&mut self, xid: Xid) {
        let Some(applied) = self.ghost.applied.get(&xid) else {
            return;
        };
        if !applied.commit.is_empty() && !applied.abort.is_empty() {
            let detail = format!(
                "committed at {:?} but aborted at {:?}",
                names(&applied.commit),
                names(&applied.abort)
            );
            self.fail("atomicity", Some(xid), detail);
        }
    }

    /// The coordinator is about to log a record: a COMMIT decision is
    /// valid only if every participant's READY record is durable.
    pub(crate) fn coordinator_record_appended(
        &mut self,
        record: &concord_proto::CoordinatorRecord,
    ) {
        if let concord_proto::CoordinatorRecord::Decision {
            xid,
            decision,
            participants,
        } = record
        {
            match decision {
                Decision::Commit => self.validity_at_commit_decision(*xid, participants),
                Decision::Abort => {
                    self.ghost.coordinator_aborted.insert(*xid);
                }
            }
        }
    }

    /// Validity: COMMIT is decided only if every participant of the xid
    /// durably voted READY, and the participant list is the one the client
    /// asked for.
    fn validity_at_commit_decision(&mut self, xid: Xid, participants: &[concord_proto::NodeId]) {
        // In a tree the record names the coordinator's own children.
        let mut asked: Vec<concord_proto::NodeId> = match self.client_of.get(&xid) {
            Some(&c) => {
                let plan = &self.clients[c].plan;
                plan.branches
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| plan.parents.get(*k).map_or(true, |&parent| parent == 0))
                    .map(|(_, (p, _))| NodeId::Participant(*p).name())
                    .collect()
            }
            None => {
                return self.fail(
                    "validity",
                    Some(xid),
                    "COMMIT decided for an xid no client began".into(),
                )
            }
        };
        let mut listed = participants.to_vec();
        asked.sort();
        listed.sort();
        // The record leaves out exactly the branches that voted READ-ONLY
        // (and a one-phase record names the one branch).
        let read_only = self.ghost.read_only.get(&xid);
        let left_out: Vec<&concord_proto::NodeId> =
            asked.iter().filter(|p| !listed.contains(p)).collect();
        let unasked = listed.iter().any(|p| !asked.contains(p));
        let silent = left_out.iter().any(|p| match NodeId::from_name(p) {
            Some(NodeId::Participant(i)) => !read_only.is_some_and(|r| r.contains(&i)),
            _ => true,
        });
        if unasked || silent {
            let detail = format!(
                "COMMIT names participants {listed:?}, the client asked {asked:?}, and \
                 {:?} voted READ-ONLY",
                read_only.map(names).unwrap_or_default()
            );
            return self.fail("validity", Some(xid), detail);
        }
        // Below a sub-coordinator's READY, every writer of its subtree
        // must be READY too.
        let below: Vec<usize> = participants
            .iter()
            .filter_map(|addr| match NodeId::from_name(addr) {
                Some(NodeId::Participant(i)) => Some(i),
                _ => None,
            })
            .flat_map(|i| self.subtree_of(xid, i).into_iter().filter(move |p| *p != i))
            .filter(|i| self.branch_writers(xid).contains(i))
            .collect();
        for i in below {
            if !self.participant_disks[i].has_durable(xid, RecordKind::Ready) {
                let detail = format!(
                    "COMMIT decided but p{i}, in a sub-coordinator's subtree, has no durable \
                     READY record"
                );
                return self.fail("validity", Some(xid), detail);
            }
        }
        for addr in participants {
            let Some(NodeId::Participant(i)) = NodeId::from_name(addr) else {
                let detail = format!("COMMIT names {addr}, which is no participant");
                return self.fail("validity", Some(xid), detail);
            };
            // A one-phase or linear commit is logged once its branches
            // committed, and compaction may have replaced their records
            // since.
            let delegated = self.one_phase_durable(xid);
            let disk = &self.participant_disks[i];
            let ready = disk.has_durable(xid, RecordKind::Ready)
                || (delegated && disk.was_durable(xid, RecordKind::Ready));
            if !ready {
                let detail = format!("COMMIT decided but p{i} has no durable READY record");
                return self.fail("validity", Some(xid), detail);
            }
        }
    }

    /// Persist-then-send (ARCHITECTURE principle 2): a message that promises
    /// something durable goes out only once that record is durable.
    pub(crate) fn persist_then_send(&mut self, from: NodeId, message: &Message) {
        let xid = message.xid;
        let missing = match (from, &message.body) {
            // A vote repeated for a branch that finished (and whose READY
            // record compaction replaced by its durable outcome) is backed
            // by that outcome.
            (NodeId::Participant(i), Body::Vote(Vote::Ready)) => {
                let disk = &self.participant_disks[i];
                (!disk.has_durable(xid, RecordKind::Ready)
                    && !disk.has_durable(xid, RecordKind::Commit))
                .then_some("VOTE READY sent before the READY record was durable")
            }
            // was_durable: a participant ACKs a re-sent COMMIT for a branch
            // it finished and compaction has since forgotten.
            (NodeId::Participant(i), Body::Ack) => (!self.participant_disks[i]
                .was_durable(xid, RecordKind::Commit))
            .then_some("ACK sent before the COMMIT outcome record was durable"),
            (NodeId::Coordinator, Body::Decision(Decision::Commit)) => {
                (!self.coordinator_disk.has_durable(xid, RecordKind::Commit))
                    .then_some("COMMIT sent before the COMMIT decision record was durable")
            }
            (NodeId::Coordinator, Body::State(TxnState::Committed)) => {
                (!self.coordinator_disk.has_durable(xid, RecordKind::Commit))
                    .then_some("STATE COMMITTED sent before the COMMIT record was durable")
            }
            // Linear 2PC: a member passes the chain on only once its
            // READY record is durable (that is its vote), and COMMIT
            // travels back only once the decider's one-phase record is.
            (NodeId::Participant(i), Body::Chain { .. }) => (!self.participant_disks[i]
                .has_durable(xid, RecordKind::Ready))
            .then_some("CHAIN PREPARE passed on before the READY record was durable"),
            // A chain's COMMIT travels back from its decider's record, a
            // tree's down from the coordinator's.
            (NodeId::Participant(_), Body::Decision(Decision::Commit)) => (!self
                .one_phase_durable(xid)
                && !self.coordinator_disk.was_durable(xid, RecordKind::Commit))
            .then_some("COMMIT passed on before its decider's or coordinator's record was durable"),
            (NodeId::Participant(i), Body::Vote(Vote::ReadOnly)) => {
                self.ghost.read_only.entry(xid).or_default().insert(i);
                // A sub-coordinator's READ-ONLY speaks for its subtree.
                let writers = self.branch_writers(xid);
                self.subtree_of(xid, i)
                    .iter()
                    .any(|p| writers.contains(p))
                    .then_some("VOTE READ-ONLY for a branch (or subtree) that changes balances")
            }
            _ => None,
        };
        if let Some(what) = missing {
            self.fail("persist_then_send", Some(xid), format!("{from}: {what}"));
        }
    }

    /// Answers persist first: a participant that tells anyone ABORTED acts
    /// on an abort that can never be undone: one the coordinator decided,
    /// or one in a participant's durable log (its own, or a peer's it
    /// learnt by cooperative termination: that peer never votes READY, so
    /// the transaction can never commit). Otherwise a crash could forget
    /// it and a late PREPARE get VOTE READY, while the asker (a peer
    /// running cooperative termination) already aborted on the answer.
    pub(crate) fn answers_persist_first(&mut self, from: NodeId, message: &Message) {
        let xid = message.xid;
        match (from, &message.body) {
            (NodeId::Coordinator, Body::State(TxnState::Aborted)) => {
                self.ghost.coordinator_aborted.insert(xid);
            }
            (NodeId::Participant(i), Body::State(TxnState::Aborted)) => {
                let durable = self
                    .participant_disks
                    .iter()
                    .any(|disk| disk.has_durable(xid, RecordKind::Abort));
                if !durable && !self.ghost.coordinator_aborted.contains(&xid) {
                    let detail = format!(
                        "p{i} answered ABORTED while no participant's abort was durable (and \
                         the coordinator never decided ABORT)"
                    );
                    self.fail("answers_persist_first", Some(xid), detail);
                }
            }
            _ => {}
        }
    }

    /// The coordinator told a client `told` about `xid`.
    pub(crate) fn outcome_reported(&mut self, xid: Xid, told: ClientOutcome) {
        if let Some(earlier) = self.ghost.reported.insert(xid, told) {
            let detail = format!("reported {told:?} after already reporting {earlier:?}");
            return self.fail("client_outcomes", Some(xid), detail);
        }
        if !self.client_of.contains_key(&xid) {
            let detail = format!("reported {told:?} for an xid no client began");
            return self.fail("client_outcomes", Some(xid), detail);
        }
        let committed_somewhere = self
            .ghost
            .applied
            .get(&xid)
            .map(|a| names(&a.commit))
            .filter(|c| !c.is_empty());
        if told == ClientOutcome::Committed && !self.commit_point_durable(xid) {
            let detail = "client told COMMITTED before the COMMIT record was durable";
            self.fail("durability", Some(xid), detail.into());
        } else if told == ClientOutcome::Aborted {
            if let Some(committed) = committed_somewhere {
                let detail = format!("client told ABORTED but {committed:?} committed");
                self.fail("client_outcomes", Some(xid), detail);
            }
        }
    }

    /// No participant ever sees a message only a broken coordinator sends.
    pub(crate) fn no_violation_notice(&mut self, p: usize, xid: Xid, detail: String) {
        self.fail(
            "no_violation_notice",
            Some(xid),
            format!("p{p} raised a protocol violation: {detail}"),
        );
    }

    // ----- at the end -------------------------------------------------------

    /// Every end-of-run invariant, most fundamental first; stops at the
    /// first one broken.
    pub(crate) fn check_final(&mut self) {
        let checks: [fn(&mut World); 7] = [
            World::check_atomicity,
            World::check_validity,
            World::check_client_outcomes,
            World::check_durability,
            World::check_termination,
            World::check_balances,
            World::check_conservation,
        ];
        for check in checks {
            if self.failure().is_some() {
                return;
            }
            check(self);
        }
    }

    /// Atomicity: no xid was committed by one participant and aborted by
    /// another (or by the same one).
    pub fn check_atomicity(&mut self) {
        let xids: Vec<Xid> = self.ghost.applied.keys().copied().collect();
        for xid in xids {
            self.check_atomicity_of(xid);
        }
    }

    /// Validity: a committed xid has a durable COMMIT decision at the
    /// coordinator and a durable READY at every one of its participants
    /// (durable at some point: compaction drops both once the transaction
    /// ended, keeping its effect).
    pub fn check_validity(&mut self) {
        let committed: Vec<Xid> = self
            .ghost
            .applied
            .iter()
            .filter(|(_, a)| !a.commit.is_empty())
            .map(|(x, _)| *x)
            .collect();
        for xid in committed {
            if !self.coordinator_disk.was_durable(xid, RecordKind::Commit)
                && !self.one_phase_durable(xid)
            {
                let detail = "committed by participants without a durable COMMIT decision";
                return self.fail("validity", Some(xid), detail.into());
            }
            for p in self.branch_writers(xid) {
                if !self.participant_disks[p].was_durable(xid, RecordKind::Ready) {
                    let detail = format!("committed, but p{p} has no durable READY record");
                    return self.fail("validity", Some(xid), detail);
                }
            }
        }
    }

    /// What clients were told agrees with what happened: told ABORTED
    /// means committed nowhere; what a client knows is what was reported.
    pub fn check_client_outcomes(&mut self) {
        for c in 0..self.clients.len() {
            let (xid, outcome) = (self.clients[c].xid, self.clients[c].outcome);
            let reported = self.ghost.reported.get(&xid).copied();
            let known = matches!(outcome, ClientOutcome::Committed | ClientOutcome::Aborted);
            if known && reported != Some(outcome) {
                let detail = format!("client knows {outcome:?}, coordinator reported {reported:?}");
                return self.fail("client_outcomes", Some(xid), detail);
            }
            if reported == Some(ClientOutcome::Aborted) {
                if let Some(a) = self.ghost.applied.get(&xid) {
                    if !a.commit.is_empty() {
                        let detail = format!("told ABORTED but {:?} committed", names(&a.commit));
                        return self.fail("client_outcomes", Some(xid), detail);
                    }
                }
            }
        }
    }

    /// Durability: a transaction reported committed is committed at every
    /// one of its participants, with a durable COMMIT outcome record.
    pub fn check_durability(&mut self) {
        let reported: Vec<Xid> = self
            .ghost
            .reported
            .iter()
            .filter(|(_, o)| **o == ClientOutcome::Committed)
            .map(|(x, _)| *x)
            .collect();
        for xid in reported {
            for p in self.branch_writers(xid) {
                let applied = self
                    .ghost
                    .applied
                    .get(&xid)
                    .is_some_and(|a| a.commit.contains(&p));
                if !applied || !self.participant_disks[p].was_durable(xid, RecordKind::Commit) {
                    let detail = format!("reported committed, but not durably committed at p{p}");
                    return self.fail("durability", Some(xid), detail);
                }
            }
        }
    }

    /// Termination: after the liveness phase nothing is left hanging: the
    /// world went quiet, every node is up, no participant is in doubt or
    /// holds a lock, the coordinator has nothing in flight, every forced
    /// write completed, and every transaction is committed at all of its
    /// participants or at none.
    pub fn check_termination(&mut self) {
        if !self.quiescent {
            let detail = format!(
                "the world did not go quiet within the liveness bound ({} events queued)",
                self.queued()
            );
            return self.fail("termination", None, detail);
        }
        let Some(coordinator) = self.coordinator() else {
            return self.fail("termination", None, "coordinator is down at the end".into());
        };
        if coordinator.in_flight() > 0 {
            let xids = coordinator.in_flight_xids();
            let detail = format!("coordinator still has {xids:?} in flight");
            return self.fail("termination", xids.first().copied(), detail);
        }
        // Needs attention (SPEC §8) is a flag on a delivery still going
        // on: with nothing in flight, none may be left raised.
        let flagged = self.coordinator_node().map_or(0, |n| n.needs_attention());
        if flagged > 0 {
            let detail =
                format!("{flagged} branches still flagged needs attention with nothing in flight");
            return self.fail("termination", None, detail);
        }
        for node in std::iter::once(NodeId::Coordinator)
            .chain((0..self.config.participants).map(NodeId::Participant))
        {
            if self.fsyncs_waiting(node) > 0 {
                let detail = format!("{node} has forced writes that never became durable");
                return self.fail("termination", None, detail);
            }
        }
        for p in 0..self.config.participants {
            let Some(node) = self.participant(p) else {
                return self.fail("termination", None, format!("p{p} is down at the end"));
            };
            let in_doubt = node.core().in_doubt();
            if let Some(xid) = in_doubt.first().copied() {
                let detail = format!("p{p} is still in doubt about {in_doubt:?}");
                return self.fail("termination", Some(xid), detail);
            }
            let applying = node.core().applying();
            if let Some(xid) = applying.first().copied() {
                let detail =
                    format!("p{p} still has resource commits or aborts to carry out: {applying:?}");
                return self.fail("termination", Some(xid), detail);
            }
            let mut locks: Vec<(String, Xid)> = node
                .resource()
                .kv()
                .locks()
                .iter()
                .map(|(a, x)| (a.clone(), *x))
                .collect();
            locks.sort();
            if let Some((_, xid)) = locks.first().cloned() {
                let detail = format!("p{p} still holds locks {locks:?}");
                return self.fail("termination", Some(xid), detail);
            }
        }
        let xids: Vec<Xid> = self
            .clients
            .iter()
            .filter(|c| c.submitted)
            .map(|c| c.xid)
            .collect();
        for xid in xids {
            let Some(applied) = self.ghost.applied.get(&xid) else {
                continue;
            };
            if applied.commit.is_empty() {
                continue;
            }
            let missing: Vec<usize> = self
                .branch_writers(xid)
                .into_iter()
                .filter(|p| !applied.commit.contains(p))
                .collect();
            if !missing.is_empty() {
                let detail = format!(
                    "committed at {:?} but never at {:?}",
                    names(&applied.commit),
                    missing
                );
                return self.fail("termination", Some(xid), detail);
            }
        }
    }

    /// The effect of every committed branch, and nothing else, is in each
    /// participant's balances, both in memory and as replayed from its
    /// durable log.
    pub fn check_balances(&mut self) {
        for p in 0..self.config.participants {
            let mut expected = self.initial_balances[p].clone();
            for (xid, applied) in &self.ghost.applied {
                if !applied.commit.contains(&p) {
                    continue;
                }
                let c = self.client_of[xid];
                for (who, ops) in &self.clients[c].plan.branches {
                    if *who == p {
                        for op in ops {
                            *expected.entry(op.account.clone()).or_insert(0) += op.delta;
                        }
                    }
                }
            }
            let in_memory = self.balances(p);
            if in_memory != expected {
                let detail = format!(
                    "p{p} balances {} differ from the committed transfers' {}",
                    show_diff(&in_memory, &expected),
                    show_diff(&expected, &in_memory)
                );
                return self.fail("durability", None, detail);
            }
            match KvStore::replay_decided(self.participant_durable_log(p)) {
                Ok(kv) if kv.balances() == &expected => {}
                Ok(kv) => {
                    let detail = format!(
                        "p{p} durable log replays to {} instead of {}",
                        show_diff(kv.balances(), &expected),
                        show_diff(&expected, kv.balances())
                    );
                    return self.fail("durability", None, detail);
                }
                Err(e) => return self.fail("log_recovery", None, format!("p{p}: {e}")),
            }
        }
    }

    /// Conservation: transfers move money, never create or destroy it.
    pub fn check_conservation(&mut self) {
        let seeded: i64 = self.initial_balances.iter().flat_map(|b| b.values()).sum();
        let now: i64 = (0..self.config.participants)
            .map(|p| self.balances(p).values().sum::<i64>())
            .sum();
        if now != seeded {
            let detail = format!("the balances add up to {now}, but {seeded} was seeded");
            self.fail("conservation", None, detail);
        }
    }

    /// Participant indexes of `xid`'s branches, as the client asked.
    fn branch_participants(&self, xid: Xid) -> Vec<usize> {
        self.branches_where(xid, |_| true)
    }

    /// Participant indexes of the branches of `xid` whose operations pass
    /// `keep`.
    fn branches_where(&self, xid: Xid, keep: impl Fn(&[KvOp]) -> bool) -> Vec<usize> {
        self.client_of
            .get(&xid)
            .map(|c| {
                self.clients[*c]
                    .plan
                    .branches
                    .iter()
                    .filter(|(_, ops)| keep(ops))
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Participant `p` and every participant below it in `xid`'s tree
    /// (just `p` outside hierarchical transactions).
    fn subtree_of(&self, xid: Xid, p: usize) -> Vec<usize> {
        let Some(plan) = self.client_of.get(&xid).map(|c| &self.clients[*c].plan) else {
            return vec![p];
        };
        let Some(root) = plan.branches.iter().position(|(q, _)| *q == p) else {
            return vec![p];
        };
        // Parents come before children: one pass collects the subtree.
        let mut inside = vec![false; plan.branches.len()];
        inside[root] = true;
        for k in root + 1..plan.branches.len() {
            if let Some(&parent) = plan.parents.get(k) {
                inside[k] = parent > 0 && inside[parent as usize - 1];
            }
        }
        (0..plan.branches.len())
            .filter(|&k| inside[k])
            .map(|k| plan.branches[k].0)
            .collect()
    }

    /// The participants whose branch of `xid` changes a balance (the rest
    /// only read, and may vote READ-ONLY: no records, no phase 2).
    fn branch_writers(&self, xid: Xid) -> Vec<usize> {
        self.branches_where(xid, |ops| !read_only(ops))
    }

    /// Whether some participant's one-phase record of `xid` (a one-phase
    /// commit's, or a linear chain's decider's) was ever durable.
    fn one_phase_durable(&self, xid: Xid) -> bool {
        (0..self.config.participants)
            .any(|p| self.participant_disks[p].was_durable(xid, RecordKind::OnePhase))
    }

    /// Whether what makes `xid` committed is durable: the coordinator's
    /// COMMIT record; for a one-phase commit, the branch's one-phase
    /// record; with every branch READ-ONLY, their votes (nothing changes).
    fn commit_point_durable(&self, xid: Xid) -> bool {
        if self.coordinator_disk.has_durable(xid, RecordKind::Commit) {
            return true;
        }
        if self.one_phase_durable(xid) {
            return true;
        }
        let all = self.branch_participants(xid);
        let read_only = self.ghost.read_only.get(&xid);
        !all.is_empty() && all.iter().all(|p| read_only.is_some_and(|r| r.contains(p)))
    }

    fn queued(&self) -> usize {
        self.queue_len()
    }
}

fn names(set: &BTreeSet<usize>) -> Vec<String> {
    set.iter().map(|p| format!("p{p}")).collect()
}

/// The entries of `a` that differ from `b`, for failure messages.
fn show_diff(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>) -> String {
    let diff: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{{{}}}", diff.join(", "))
}
