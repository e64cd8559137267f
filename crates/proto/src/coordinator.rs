//! The coordinator of centralized 2PC as a sans-IO state machine.
//!
//! States per transaction (SPEC §1): WAIT (PREPARE sent, collecting votes)
//! → COMMIT (decision record being forced, then sent, collecting ACKs) → END.
//! ABORT is decided on the first VOTE ABORT or when the WAIT timer fires;
//! with presumed abort the ABORT record is not forced, ABORTs are not ACKed
//! and the transaction is forgotten at once: an INQUIRE about an xid the
//! coordinator does not know is answered ABORTED.
//!
//! The driver feeds events (`begin`, `on_message`, `on_timer`, `on_durable`)
//! with the current time and drains [`CoordinatorAction`]s with
//! `drain_actions`. The timeouts come in from outside (`begin`'s
//! `prepare_timeout_ms`, the resend bounds in the config) so a driver can
//! compute them from measured latency.

use crate::gate::{Durability, Gate, PersistTicket};
use crate::ids::{
    Epoch, LatencyPhase, NodeId, Time, TimerKey, TimerKind, Xid, FINISHED_MS_MIN, PARTICIPANTS_MAX,
    WORK_BYTES_MAX,
};
use crate::message::{Body, Decision, Message, Shape, TxnState, Vote};
use crate::mutant::{self, Mutant};
use crate::record::CoordinatorRecord;
use crate::tree::TreeEntry;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// This coordinator's id, sent as `from` and written into every
    /// participant's READY record (participants inquire of it by id).
    pub id: NodeId,
    /// First delay before re-sending an un-ACKed COMMIT; doubles after each
    /// resend up to `resend_ms_max`, and resending never stops.
    pub resend_ms_initial: u64,
    pub resend_ms_max: u64,
    /// One-phase commit for single-branch transactions: the branch is
    /// asked to prepare and commit in one step and decides itself, so the
    /// coordinator forces nothing and the transaction takes one round
    /// trip. Off, a single branch goes through both phases like any other.
    pub one_phase: bool,
    /// Participants that cannot commit in one phase (HTTP services, whose
    /// contract is prepare/commit/abort): a single branch on one of them
    /// goes through both phases.
    pub two_phase_only: Vec<NodeId>,
}

/// What the driver must do. Actions are returned in the order they must be
/// carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Append `record` to the log; for `Durability::Forced(t)`, sync and then
    /// call `on_durable(t)`.
    Persist {
        record: CoordinatorRecord,
        durability: Durability,
    },
    Send {
        to: NodeId,
        message: Message,
    },
    /// Call `on_timer(key)` at `at` (or later). Setting a timer for a key
    /// replaces the earlier one; a stale firing is ignored by the core.
    SetTimer {
        key: TimerKey,
        at: Time,
    },
    /// The outcome of a transaction a client began: tell the client. A
    /// commit is reported only once the COMMIT record is durable.
    Outcome {
        xid: Xid,
        outcome: TxnOutcome,
    },
    /// Something worth a log line.
    Notice(CoordinatorNotice),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed,
    Aborted { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorNotice {
    /// A phase timer fired. `timeout_ms` is the value that was in force.
    TimeoutFired {
        xid: Xid,
        phase: &'static str,
        timeout_ms: u64,
        waiting_for: Vec<NodeId>,
    },
    Decided {
        xid: Xid,
        decision: Decision,
        reason: Option<String>,
    },
    Ended {
        xid: Xid,
    },
    /// A message was ignored (stale epoch, unknown xid, wrong state).
    Ignored {
        xid: Xid,
        kind: &'static str,
        from: NodeId,
        why: &'static str,
    },
    Recovered {
        epoch: Epoch,
        committing: usize,
        aborted: usize,
    },
    /// A measured exchange with `peer` (for the timeout policy).
    LatencySample {
        xid: Xid,
        peer: NodeId,
        phase: LatencyPhase,
        elapsed_us: u64,
    },
    /// A one-phase commit whose branch no longer knows what it did (it
    /// was asked too late to tell "never got it" from "committed long ago
    /// and forgot"): the coordinator stops asking. Nothing is held
    /// anywhere; the outcome is the branch's, and unknown here.
    OutcomeUnknown {
        xid: Xid,
        participant: NodeId,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeginError {
    #[error("transaction {0} already exists")]
    DuplicateXid(Xid),
    #[error("a transaction needs at least one branch")]
    NoBranches,
    #[error("{count} participants is more than the limit of {max}")]
    TooManyParticipants { count: usize, max: usize },
    #[error("participant {0} appears twice; merge its work into one branch")]
    DuplicateParticipant(NodeId),
    #[error("bad tree: {0}")]
    BadTree(String),
    #[error("work for {participant} is {len} bytes, more than the limit of {max}")]
    WorkTooLarge {
        participant: NodeId,
        len: usize,
        max: usize,
    },
}

/// Where an in-flight transaction stands at the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorPhase {
    /// PREPARE sent, collecting votes.
    Wait,
    /// Every vote was READY; the COMMIT record is being forced.
    Committing,
    /// COMMIT is durable and sent; collecting ACKs.
    Committed,
    /// One-phase commit: the single branch decides; waiting for its
    /// answer (asking it, after the timeout).
    Delegated,
}

/// A snapshot of one in-flight transaction for `concord status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnStatus {
    pub xid: Xid,
    pub phase: CoordinatorPhase,
    pub age_ms: u64,
    pub resends: u32,
    pub branches: Vec<BranchStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchStatus {
    pub participant: NodeId,
    pub voted_ready: bool,
    /// It voted READ-ONLY: no phase 2 (`voted_ready` and `acked` are set
    /// too).
    pub read_only: bool,
    pub acked: bool,
}

/// A transaction whose outcome the log holds, as found by recovery: the
/// node layer keeps these for `status` so that the log is replayed once,
/// here, with the protocol's own presumed-abort rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredOutcome {
    pub xid: Xid,
    pub decision: Decision,
    pub participants: Vec<NodeId>,
    /// An END record follows the decision: every participant ACKed.
    pub ended: bool,
    /// Begun and never decided before the restart: aborted by recovery.
    pub aborted_by_recovery: bool,
}

pub struct Coordinator {
    config: CoordinatorConfig,
    /// Filled by `recover`, taken once by the driver.
    recovered: Vec<RecoveredOutcome>,
    epoch: Epoch,
    txns: HashMap<Xid, Txn>,
    gate: Gate<Resume>,
    actions: Vec<CoordinatorAction>,
}

/// What a durable forced write lets the coordinator go on with.
#[derive(Debug)]
enum Resume {
    /// The COMMIT decision record of this xid is durable.
    CommitDecided(Xid),
    /// This instance's epoch record is durable: recovered decisions may be
    /// re-sent.
    EpochRecorded,
}

#[derive(Debug)]
struct Txn {
    participants: Vec<NodeId>,
    phase: Phase,
    /// Per participant, in `participants` order.
    ready: Vec<bool>,
    /// Voted READ-ONLY (then `ready` and `acked` are set too): left out
    /// of the decision record and of phase 2.
    read_only: Vec<bool>,
    acked: Vec<bool>,
    timer_at: Option<Time>,
    /// The timeout in force, for the log line when it fires.
    timeout_ms: u64,
    /// First delay before re-sending an un-ACKed COMMIT (the config's
    /// value unless `begin_with_resend` gave one).
    resend_ms_initial: u64,
    began_at: Time,
    /// When COMMIT was first sent (the decision round's sample start).
    commit_sent_at: Option<Time>,
    /// A client waits for the outcome (false for recovered transactions).
    client_waits: bool,
    resends: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PREPARE sent, collecting votes.
    Wait,
    /// Every vote was READY; the COMMIT record is being forced.
    CommitPending,
    /// COMMIT is durable and sent; collecting ACKs.
    Committed,
    /// Recovered COMMIT, waiting for this instance's epoch record.
    RecoveredCommit,
    /// One-phase commit sent to the single branch, which decides: the
    /// coordinator never decides on its own here, and after the timeout
    /// asks the branch what it did.
    Delegated,
}

impl Coordinator {
    /// A fresh coordinator with an empty log. The driver should prefer
    /// [`Coordinator::recover`] with whatever the log holds (possibly
    /// nothing), which also records the epoch.
    pub fn new(config: CoordinatorConfig, now: Time) -> Coordinator {
        Coordinator::recover(config, std::iter::empty(), now)
    }

    /// Rebuild from the log after a (re)start: the epoch goes up by one and
    /// is forced; transactions with a durable COMMIT and no END get their
    /// COMMIT re-sent (site failure 4); transactions with a begin record and
    /// no decision are aborted (presumed abort, site failure 3), and their
    /// participants are told so.
    pub fn recover(
        config: CoordinatorConfig,
        records: impl IntoIterator<Item = CoordinatorRecord>,
        now: Time,
    ) -> Coordinator {
        Coordinator::recover_at_least(config, records, now, 0)
    }

    /// [`Coordinator::recover`] with an epoch of at least `epoch_floor`:
    /// the fencing token a shared store granted this instance. Two
    /// instances that took one log over one after the other then never
    /// share an epoch, even when the first one's epoch record never became
    /// durable (participants tell them apart only by it).
    pub fn recover_at_least(
        config: CoordinatorConfig,
        records: impl IntoIterator<Item = CoordinatorRecord>,
        now: Time,
        epoch_floor: Epoch,
    ) -> Coordinator {
        let mut last_epoch = 0;
        let mut begun: HashMap<Xid, Vec<NodeId>> = HashMap::new();
        let mut committed: HashMap<Xid, Vec<NodeId>> = HashMap::new();
        // Replay order matters: a later record supersedes an earlier one.
        let mut order: Vec<Xid> = Vec::new();
        // Outcomes in log order, by index for marking END.
        let mut outcomes: Vec<RecoveredOutcome> = Vec::new();
        let mut outcome_index: HashMap<Xid, usize> = HashMap::new();
        for record in records {
            match record {
                CoordinatorRecord::Epoch { epoch } => last_epoch = last_epoch.max(epoch),
                CoordinatorRecord::Begin { xid, participants } => {
                    order.push(xid);
                    begun.insert(xid, participants);
                }
                CoordinatorRecord::Decision {
                    xid,
                    decision,
                    participants,
                } => {
                    begun.remove(&xid);
                    outcome_index.insert(xid, outcomes.len());
                    outcomes.push(RecoveredOutcome {
                        xid,
                        decision,
                        participants: participants.clone(),
                        ended: false,
                        aborted_by_recovery: false,
                    });
                    // No one to tell: every branch voted READ-ONLY.
                    if decision == Decision::Commit && !participants.is_empty() {
                        order.push(xid);
                        committed.insert(xid, participants);
                    }
                }
                CoordinatorRecord::End { xid } => {
                    committed.remove(&xid);
                    if let Some(&i) = outcome_index.get(&xid) {
                        outcomes[i].ended = true;
                    }
                }
                // The node layer's directory.
                CoordinatorRecord::Peer { .. } | CoordinatorRecord::Audit(_) => {}
            }
        }
        let epoch = (last_epoch + 1).max(epoch_floor);
        let mut coordinator = Coordinator {
            recovered: Vec::new(),
            config,
            epoch,
            txns: HashMap::new(),
            gate: Gate::default(),
            actions: Vec::new(),
        };
        let ticket = coordinator.gate.park(Resume::EpochRecorded);
        coordinator.actions.push(CoordinatorAction::Persist {
            record: CoordinatorRecord::Epoch { epoch },
            durability: Durability::Forced(ticket),
        });
        let aborted = begun.len();
        let committing = committed.len();
        // Deterministic order for the simulator: the order records appeared.
        order.dedup();
        for xid in order {
            if let Some(participants) = begun.remove(&xid) {
                coordinator.record_and_send_abort(xid, &participants);
                outcomes.push(RecoveredOutcome {
                    xid,
                    decision: Decision::Abort,
                    participants,
                    ended: false,
                    aborted_by_recovery: true,
                });
                coordinator.push_notice(CoordinatorNotice::Decided {
                    xid,
                    decision: Decision::Abort,
                    reason: Some("coordinator restarted before deciding (presumed abort)".into()),
                });
            } else if let Some(participants) = committed
                .remove(&xid)
                .filter(|_| !mutant::active(Mutant::ForgetCommittedOnRecovery))
            {
                let n = participants.len();
                coordinator.txns.insert(
                    xid,
                    Txn {
                        participants,
                        phase: Phase::RecoveredCommit,
                        ready: vec![true; n],
                        read_only: vec![false; n],
                        acked: vec![false; n],
                        timer_at: None,
                        timeout_ms: coordinator.config.resend_ms_initial,
                        resend_ms_initial: coordinator.config.resend_ms_initial,
                        began_at: now,
                        commit_sent_at: None,
                        client_waits: false,
                        resends: 0,
                    },
                );
            }
        }
        coordinator.push_notice(CoordinatorNotice::Recovered {
            epoch,
            committing,
            aborted,
        });
        coordinator.recovered = outcomes;
        coordinator
    }

    /// The outcomes recovery found in the log, oldest first (empty after
    /// the first call).
    pub fn take_recovered_outcomes(&mut self) -> Vec<RecoveredOutcome> {
        std::mem::take(&mut self.recovered)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// Transactions not yet ended (WAIT or COMMIT).
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    /// Whether `xid` is in flight here (not yet ended or aborted).
    pub fn is_in_flight(&self, xid: Xid) -> bool {
        self.txns.contains_key(&xid)
    }

    /// Start a global transaction: PREPARE goes to every participant with
    /// its work and `prepare_timeout_ms` as its deadline; the WAIT timer is
    /// set to the same value. An un-ACKed COMMIT is first re-sent after the
    /// config's `resend_ms_initial`.
    pub fn begin(
        &mut self,
        now: Time,
        xid: Xid,
        branches: Vec<(NodeId, Vec<u8>)>,
        prepare_timeout_ms: u64,
    ) -> Result<(), BeginError> {
        let resend_ms_initial = self.config.resend_ms_initial;
        self.begin_with_resend(now, xid, branches, prepare_timeout_ms, resend_ms_initial)
    }

    /// [`begin`](Self::begin) with this transaction's own first COMMIT
    /// resend delay (a driver computes it from the measured COMMIT → ACK
    /// time of the participants). It is bounded to
    /// `1..=config.resend_ms_max`; later resends double from it as usual.
    pub fn begin_with_resend(
        &mut self,
        now: Time,
        xid: Xid,
        branches: Vec<(NodeId, Vec<u8>)>,
        prepare_timeout_ms: u64,
        resend_ms_initial: u64,
    ) -> Result<(), BeginError> {
        let shape = Shape::Centralized;
        self.begin_shaped(
            now,
            xid,
            branches,
            prepare_timeout_ms,
            resend_ms_initial,
            shape,
        )
    }

    /// [`begin_with_resend`](Self::begin_with_resend) in a given shape. A
    /// linear transaction is delegated like a one-phase commit: the chain
    /// decides (its last member), the coordinator forces nothing, hears
    /// the outcome from the first member, and after the timeout asks the
    /// last one. A single branch is a one-phase commit in either shape
    /// (when `config.one_phase`).
    pub fn begin_shaped(
        &mut self,
        now: Time,
        xid: Xid,
        branches: Vec<(NodeId, Vec<u8>)>,
        prepare_timeout_ms: u64,
        resend_ms_initial: u64,
        shape: Shape,
    ) -> Result<(), BeginError> {
        let resend_ms_initial = resend_ms_initial.clamp(1, self.config.resend_ms_max.max(1));
        if self.txns.contains_key(&xid) {
            return Err(BeginError::DuplicateXid(xid));
        }
        if branches.is_empty() {
            return Err(BeginError::NoBranches);
        }
        if branches.len() > PARTICIPANTS_MAX {
            return Err(BeginError::TooManyParticipants {
                count: branches.len(),
                max: PARTICIPANTS_MAX,
            });
        }
        for (i, (participant, work)) in branches.iter().enumerate() {
            if branches[..i].iter().any(|(p, _)| p == participant) {
                return Err(BeginError::DuplicateParticipant(participant.clone()));
            }
            if work.len() > WORK_BYTES_MAX {
                return Err(BeginError::WorkTooLarge {
                    participant: participant.clone(),
                    len: work.len(),
                    max: WORK_BYTES_MAX,
                });
            }
        }
        let participants: Vec<NodeId> = branches.iter().map(|(p, _)| p.clone()).collect();
        if shape == Shape::Hierarchical {
            // Flat: every branch the coordinator's own child.
            let tree = branches
                .into_iter()
                .map(|(node, work)| TreeEntry {
                    node,
                    parent: 0,
                    work,
                })
                .collect();
            return self.begin_tree(now, xid, tree, prepare_timeout_ms, resend_ms_initial);
        }
        let one_phase = self.config.one_phase
            && branches.len() == 1
            && !self.config.two_phase_only.contains(&branches[0].0);
        let linear = shape == Shape::Linear && branches.len() >= 2;
        if linear {
            // No begin record, as for one-phase commit: the chain decides.
            let (order, works): (Vec<NodeId>, Vec<Vec<u8>>) = branches.into_iter().unzip();
            let first = order[0].clone();
            let message = self.message(
                xid,
                Body::Chain {
                    chain: order,
                    works,
                    deadline_ms: prepare_timeout_ms,
                },
            );
            self.actions
                .push(CoordinatorAction::Send { to: first, message });
        } else if one_phase {
            // No begin record: the branch decides, and there is nothing a
            // restarted coordinator could do for it (presumed abort would
            // even tell it ABORT after it committed).
            for (to, work) in branches {
                let message = self.message(
                    xid,
                    Body::OnePhase {
                        work,
                        deadline_ms: prepare_timeout_ms,
                    },
                );
                self.actions.push(CoordinatorAction::Send { to, message });
            }
        } else {
            self.actions.push(CoordinatorAction::Persist {
                record: CoordinatorRecord::Begin {
                    xid,
                    participants: participants.clone(),
                },
                durability: Durability::Lazy,
            });
            for (to, work) in branches {
                let message = self.message(
                    xid,
                    Body::Prepare {
                        participants: participants.clone(),
                        work,
                        deadline_ms: prepare_timeout_ms,
                    },
                );
                self.actions.push(CoordinatorAction::Send { to, message });
            }
        }
        let phase = if one_phase || linear {
            Phase::Delegated
        } else {
            Phase::Wait
        };
        self.start(
            now,
            xid,
            participants,
            phase,
            prepare_timeout_ms,
            resend_ms_initial,
        );
        Ok(())
    }

    /// Start a hierarchical transaction (SPEC §1.7) over `tree` (flat,
    /// see [`crate::tree`]): the coordinator is the tree's root and runs
    /// centralized 2PC with its children; each child that has children of
    /// its own gets TREE PREPARE with its subtree and is their
    /// sub-coordinator. A tree of one branch is a one-phase commit (when
    /// `config.one_phase`).
    pub fn begin_tree(
        &mut self,
        now: Time,
        xid: Xid,
        tree: Vec<TreeEntry>,
        prepare_timeout_ms: u64,
        resend_ms_initial: u64,
    ) -> Result<(), BeginError> {
        if tree.len() == 1 || tree.iter().all(|e| e.parent == 0) {
            let branches = tree.into_iter().map(|e| (e.node, e.work)).collect();
            return self.begin_shaped(
                now,
                xid,
                branches,
                prepare_timeout_ms,
                resend_ms_initial,
                Shape::Centralized,
            );
        }
        let resend_ms_initial = resend_ms_initial.clamp(1, self.config.resend_ms_max.max(1));
        if self.txns.contains_key(&xid) {
            return Err(BeginError::DuplicateXid(xid));
        }
        if tree.len() > PARTICIPANTS_MAX {
            return Err(BeginError::TooManyParticipants {
                count: tree.len(),
                max: PARTICIPANTS_MAX,
            });
        }
        crate::tree::check(&tree, "the coordinator", 0)
            .map_err(|e| BeginError::BadTree(e.to_string()))?;
        if let Some(e) = tree.iter().find(|e| e.work.len() > WORK_BYTES_MAX) {
            return Err(BeginError::WorkTooLarge {
                participant: e.node.clone(),
                len: e.work.len(),
                max: WORK_BYTES_MAX,
            });
        }
        let roots = crate::tree::children_of(&tree, 0);
        let participants: Vec<NodeId> = roots.iter().map(|&i| tree[i].node.clone()).collect();
        self.actions.push(CoordinatorAction::Persist {
            record: CoordinatorRecord::Begin {
                xid,
                participants: participants.clone(),
            },
            durability: Durability::Lazy,
        });
        for &i in &roots {
            let below = crate::tree::subtree(&tree, i);
            let (participants, work) = (participants.clone(), tree[i].work.clone());
            let body = Body::prepare_below(participants, work, below, prepare_timeout_ms);
            let message = self.message(xid, body);
            let to = tree[i].node.clone();
            self.actions.push(CoordinatorAction::Send { to, message });
        }
        self.start(
            now,
            xid,
            participants,
            Phase::Wait,
            prepare_timeout_ms,
            resend_ms_initial,
        );
        Ok(())
    }

    /// Track a transaction whose first messages are out.
    fn start(
        &mut self,
        now: Time,
        xid: Xid,
        participants: Vec<NodeId>,
        phase: Phase,
        prepare_timeout_ms: u64,
        resend_ms_initial: u64,
    ) {
        let n = participants.len();
        let at = now.plus_ms(prepare_timeout_ms);
        self.txns.insert(
            xid,
            Txn {
                participants,
                phase,
                ready: vec![false; n],
                read_only: vec![false; n],
                acked: vec![false; n],
                timer_at: Some(at),
                timeout_ms: prepare_timeout_ms,
                resend_ms_initial,
                began_at: now,
                commit_sent_at: None,
                client_waits: true,
                resends: 0,
            },
        );
        self.actions.push(CoordinatorAction::SetTimer {
            key: TimerKey::new(xid, TimerKind::Votes),
            at,
        });
    }

    /// A message from a participant.
    pub fn on_message(&mut self, now: Time, message: Message) {
        let Message {
            xid,
            epoch,
            from,
            body,
        } = message;
        let kind = body.kind();
        if let Body::Inquire { .. } = body {
            // Answered whatever the epoch: the answer is the truth as this
            // instance knows it, and presumed abort covers unknown xids.
            self.answer_inquire(xid, from);
            return;
        }
        if epoch != self.epoch {
            self.ignored(xid, kind, from, "epoch is not this coordinator's");
            return;
        }
        let Some(txn) = self.txns.get_mut(&xid) else {
            self.ignored(xid, kind, from, "unknown or finished transaction");
            return;
        };
        let Some(index) = txn.participants.iter().position(|p| *p == from) else {
            self.ignored(xid, kind, from, "sender is not a participant");
            return;
        };
        if txn.phase == Phase::Delegated {
            return self.on_delegated_answer(now, xid, from, body);
        }
        match body {
            Body::Vote(vote @ (Vote::Ready | Vote::ReadOnly)) => {
                if txn.phase != Phase::Wait || txn.ready[index] {
                    return; // duplicate or late vote: harmless
                }
                txn.ready[index] = true;
                let read_only = vote == Vote::ReadOnly;
                if read_only {
                    // A yes with no phase 2 for it.
                    txn.read_only[index] = true;
                    txn.acked[index] = true;
                }
                // PREPARE went out once, at begin.
                let elapsed_us = now.us_since(txn.began_at);
                let all_ready = txn.ready.iter().all(|r| *r);
                self.push_notice(CoordinatorNotice::LatencySample {
                    xid,
                    peer: from,
                    phase: LatencyPhase::Prepare,
                    elapsed_us,
                });
                let broken = if read_only {
                    mutant::active(Mutant::ReadOnlySkipsVotes)
                } else {
                    mutant::active(Mutant::CommitOnFirstReady)
                };
                if all_ready || broken {
                    self.decide_commit(xid);
                }
            }
            Body::Vote(Vote::Abort { reason }) => {
                if txn.phase != Phase::Wait && !mutant::active(Mutant::LateVoteAbortHonoured) {
                    // A VOTE ABORT after every vote was READY would mean a
                    // participant broke its promise; keep the commit.
                    self.ignored(xid, kind, from, "vote after the decision");
                    return;
                }
                let reason = format!("participant {from} voted ABORT: {reason}");
                self.decide_abort(xid, reason);
            }
            Body::Ack => {
                if txn.phase != Phase::Committed || txn.acked[index] {
                    return;
                }
                txn.acked[index] = true;
                // Karn: only while COMMIT was sent exactly once.
                let sample = match txn.commit_sent_at {
                    Some(sent) if txn.resends == 0 => Some(now.us_since(sent)),
                    _ => None,
                };
                if let Some(elapsed_us) = sample {
                    self.push_notice(CoordinatorNotice::LatencySample {
                        xid,
                        peer: from,
                        phase: LatencyPhase::Decision,
                        elapsed_us,
                    });
                }
                let Some(txn) = self.txns.get_mut(&xid) else {
                    return;
                };
                if txn.acked.iter().all(|a| *a) {
                    self.txns.remove(&xid);
                    self.actions.push(CoordinatorAction::Persist {
                        record: CoordinatorRecord::End { xid },
                        durability: Durability::Lazy,
                    });
                    self.push_notice(CoordinatorNotice::Ended { xid });
                }
            }
            _ => self.ignored(xid, kind, from, "not a message a coordinator handles"),
        }
    }

    /// A timer set with `SetTimer` is due.
    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        let xid = key.xid;
        let Some(txn) = self.txns.get_mut(&xid) else {
            return;
        };
        match txn.timer_at {
            Some(at) if now >= at => {}
            _ => return, // stale timer: a later one replaced it
        }
        let expected = match txn.phase {
            Phase::Wait | Phase::Delegated => Some(TimerKind::Votes),
            Phase::Committed => Some(TimerKind::Resend),
            Phase::CommitPending | Phase::RecoveredCommit => None,
        };
        if expected != Some(key.kind) {
            return; // a timer of another phase (or another role's)
        }
        txn.timer_at = None;
        match txn.phase {
            Phase::Wait => {
                let waiting_for: Vec<NodeId> = missing(&txn.participants, &txn.ready);
                let timeout_ms = txn.timeout_ms;
                let reason = format!(
                    "no vote within {timeout_ms} ms from {}",
                    waiting_for.join(", ")
                );
                self.push_notice(CoordinatorNotice::TimeoutFired {
                    xid,
                    phase: "WAIT (votes)",
                    timeout_ms,
                    waiting_for,
                });
                self.decide_abort(xid, reason);
            }
            Phase::Delegated if now.ms_since(txn.began_at) >= FINISHED_MS_MIN => {
                // Past the time a branch remembers what it did: an answer
                // could no longer be trusted to mean anything, and nothing
                // is held anywhere for it. Stop asking.
                let participant = txn.participants.last().cloned().unwrap_or_default();
                self.txns.remove(&xid);
                self.push_notice(CoordinatorNotice::OutcomeUnknown { xid, participant });
            }
            Phase::Delegated => {
                // The branch decides; never abort over its head. Ask it,
                // with backoff, until it says what it did.
                let timeout_ms = txn.timeout_ms;
                txn.resends += 1;
                txn.timeout_ms = txn
                    .resend_ms_initial
                    .saturating_mul(1 << txn.resends.min(16))
                    .min(self.config.resend_ms_max.max(1));
                let at = now.plus_ms(txn.timeout_ms);
                txn.timer_at = Some(at);
                // The decider: the single branch, or the chain's last.
                let waiting_for: Vec<NodeId> =
                    txn.participants.last().cloned().into_iter().collect();
                let body = Body::OnePhaseStatus {
                    sent_ms_ago: now.ms_since(txn.began_at),
                };
                let round = Round {
                    phase: "ONE-PHASE (asking the branch what it did)",
                    timer: TimerKind::Votes,
                    at,
                    timeout_ms,
                };
                self.send_round(xid, waiting_for, body, round);
            }
            Phase::Committed => {
                let waiting_for: Vec<NodeId> = missing(&txn.participants, &txn.acked);
                let timeout_ms = txn.timeout_ms;
                txn.resends += 1;
                txn.timeout_ms = (timeout_ms.saturating_mul(2)).min(self.config.resend_ms_max);
                let at = now.plus_ms(txn.timeout_ms);
                txn.timer_at = Some(at);
                let round = Round {
                    phase: "COMMIT (acks)",
                    timer: TimerKind::Resend,
                    at,
                    timeout_ms,
                };
                self.send_round(xid, waiting_for, Body::Decision(Decision::Commit), round);
            }
            Phase::CommitPending | Phase::RecoveredCommit => {}
        }
    }

    /// Why "retry now" has nothing to do for `xid`, if so: it is not in
    /// flight, still collecting votes, or its COMMIT record is still being
    /// written. `None`: there is a COMMIT to deliver or a one-phase branch
    /// to ask.
    pub fn retry_refusal(&self, xid: Xid) -> Option<String> {
        let Some(txn) = self.txns.get(&xid) else {
            return Some(format!(
                "{xid} is not in flight here: it finished (every branch acknowledged), or \
                 this coordinator never had it"
            ));
        };
        match txn.phase {
            Phase::Committed | Phase::Delegated => None,
            Phase::Wait if mutant::active(Mutant::RetryCommitsUndecided) => None,
            Phase::Wait => Some(format!(
                "{xid} is not decided yet: it is decided within its phase-1 timeout ({} ms), \
                 and a missing vote aborts it",
                txn.timeout_ms
            )),
            Phase::CommitPending | Phase::RecoveredCommit => Some(format!(
                "{xid}'s COMMIT record is being written: COMMIT goes out as soon as it is \
                 durable"
            )),
        }
    }

    /// Operator action "retry now" (SPEC §8): ask again at once what the
    /// next timer would ask (COMMIT to the branches that have not ACKed,
    /// or a one-phase branch what it did), as if that timer fired now. The
    /// backoff goes on from where it was. Returns who was asked, or why
    /// there is nothing to retry (see [`Coordinator::retry_refusal`]).
    pub fn retry_now(&mut self, now: Time, xid: Xid) -> Result<Vec<NodeId>, String> {
        if let Some(why) = self.retry_refusal(xid) {
            return Err(why);
        }
        let Some(txn) = self.txns.get_mut(&xid) else {
            return Err(format!("{xid} is not in flight here"));
        };
        let (kind, waiting_for) = match txn.phase {
            Phase::Delegated => (
                TimerKind::Votes,
                txn.participants.last().cloned().into_iter().collect(),
            ),
            Phase::Wait => {
                // Only a broken rule gets here (see `retry_refusal`).
                self.decide_commit(xid);
                return Ok(Vec::new());
            }
            _ => (TimerKind::Resend, missing(&txn.participants, &txn.acked)),
        };
        txn.timer_at = Some(now);
        self.on_timer(now, TimerKey::new(xid, kind));
        Ok(waiting_for)
    }

    /// The forced write named by `ticket` is on stable storage.
    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        match self.gate.release(ticket) {
            Some(Resume::CommitDecided(xid)) => {
                let Some(txn) = self.txns.get_mut(&xid) else {
                    return;
                };
                if txn.phase != Phase::CommitPending {
                    return;
                }
                let client_waits = txn.client_waits;
                self.start_commit_delivery(now, xid);
                if client_waits {
                    self.actions.push(CoordinatorAction::Outcome {
                        xid,
                        outcome: TxnOutcome::Committed,
                    });
                }
            }
            Some(Resume::EpochRecorded) => {
                let mut recovered: Vec<Xid> = self
                    .txns
                    .iter()
                    .filter(|(_, t)| t.phase == Phase::RecoveredCommit)
                    .map(|(x, _)| *x)
                    .collect();
                recovered.sort();
                for xid in recovered {
                    self.start_commit_delivery(now, xid);
                }
            }
            None => {}
        }
    }

    /// The protocol's part of a compacted log: this instance's epoch, a
    /// begin record for every transaction still collecting votes (recovery
    /// aborts those), and the COMMIT decision of every transaction not yet
    /// ended (recovery re-sends it). Everything else the log held (ended
    /// and aborted transactions) is dropped: presumed abort answers for it.
    /// Only valid if every record the coordinator emitted so far is written
    /// before this snapshot.
    pub fn snapshot_records(&self) -> Vec<CoordinatorRecord> {
        let mut records = vec![CoordinatorRecord::Epoch { epoch: self.epoch }];
        let mut live: Vec<(&Xid, &Txn)> = self.txns.iter().collect();
        live.sort_by_key(|(xid, txn)| (txn.began_at, **xid));
        for (xid, txn) in live {
            if txn.phase != Phase::Wait && mutant::active(Mutant::CompactionDropsUnended) {
                continue;
            }
            records.push(match txn.phase {
                Phase::Wait => CoordinatorRecord::Begin {
                    xid: *xid,
                    participants: txn.participants.clone(),
                },
                Phase::CommitPending | Phase::Committed | Phase::RecoveredCommit => {
                    CoordinatorRecord::Decision {
                        xid: *xid,
                        decision: Decision::Commit,
                        participants: txn.writers(),
                    }
                }
                // The branch decides; the log never held it.
                Phase::Delegated => continue,
            });
        }
        records
    }

    /// Take the actions produced so far, in order.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, CoordinatorAction> {
        self.actions.drain(..)
    }

    /// Status of an in-flight transaction; `None` once it ended or was
    /// aborted (the driver keeps recent outcomes for `concord status`).
    pub fn status(&self, now: Time, xid: Xid) -> Option<TxnStatus> {
        let txn = self.txns.get(&xid)?;
        Some(TxnStatus {
            xid,
            phase: match txn.phase {
                Phase::Wait => CoordinatorPhase::Wait,
                Phase::CommitPending => CoordinatorPhase::Committing,
                Phase::Committed | Phase::RecoveredCommit => CoordinatorPhase::Committed,
                Phase::Delegated => CoordinatorPhase::Delegated,
            },
            age_ms: now.ms_since(txn.began_at),
            resends: txn.resends,
            branches: txn
                .participants
                .iter()
                .enumerate()
                .map(|(i, p)| BranchStatus {
                    participant: p.clone(),
                    voted_ready: txn.ready[i],
                    read_only: txn.read_only[i],
                    acked: txn.acked[i],
                })
                .collect(),
        })
    }

    /// Xids of every transaction not yet ended, oldest first.
    pub fn in_flight_xids(&self) -> Vec<Xid> {
        let mut xids: Vec<(Time, Xid)> = self.txns.iter().map(|(x, t)| (t.began_at, *x)).collect();
        xids.sort();
        xids.into_iter().map(|(_, x)| x).collect()
    }

    fn decide_commit(&mut self, xid: Xid) {
        let Some(txn) = self.txns.get_mut(&xid) else {
            return;
        };
        let participants = txn.writers();
        if participants.is_empty() {
            // Every branch voted READ-ONLY: nothing anywhere to commit, so
            // no forced write and no phase 2. The lazy record only lets
            // `status` say COMMITTED after a restart (lost, the xid is
            // presumed aborted, which for reads means the same).
            self.txns.remove(&xid);
            self.actions.push(CoordinatorAction::Persist {
                record: CoordinatorRecord::Decision {
                    xid,
                    decision: Decision::Commit,
                    participants,
                },
                durability: Durability::Lazy,
            });
            self.push_notice(CoordinatorNotice::Decided {
                xid,
                decision: Decision::Commit,
                reason: Some("every branch voted READ-ONLY".into()),
            });
            self.actions.push(CoordinatorAction::Outcome {
                xid,
                outcome: TxnOutcome::Committed,
            });
            return;
        }
        txn.phase = Phase::CommitPending;
        txn.timer_at = None;
        let ticket = self.gate.park(Resume::CommitDecided(xid));
        self.actions.push(CoordinatorAction::Persist {
            record: CoordinatorRecord::Decision {
                xid,
                decision: Decision::Commit,
                participants,
            },
            durability: Durability::Forced(ticket),
        });
        self.push_notice(CoordinatorNotice::Decided {
            xid,
            decision: Decision::Commit,
            reason: None,
        });
    }

    /// Send COMMIT to every participant that has not ACKed and arm the
    /// resend timer. Runs only once the COMMIT record is durable.
    fn start_commit_delivery(&mut self, now: Time, xid: Xid) {
        let Some(txn) = self.txns.get_mut(&xid) else {
            return;
        };
        txn.phase = Phase::Committed;
        txn.commit_sent_at = Some(now);
        txn.timeout_ms = txn.resend_ms_initial;
        let at = now.plus_ms(txn.timeout_ms);
        txn.timer_at = Some(at);
        let targets: Vec<NodeId> = missing(&txn.participants, &txn.acked);
        for to in targets {
            let message = self.message(xid, Body::Decision(Decision::Commit));
            self.actions.push(CoordinatorAction::Send { to, message });
        }
        self.actions.push(CoordinatorAction::SetTimer {
            key: TimerKey::new(xid, TimerKind::Resend),
            at,
        });
    }

    fn decide_abort(&mut self, xid: Xid, reason: String) {
        let Some(txn) = self.txns.remove(&xid) else {
            return;
        };
        debug_assert!(
            txn.phase == Phase::Wait || mutant::active(Mutant::LateVoteAbortHonoured),
            "abort is decided only in WAIT"
        );
        // READ-ONLY voters are done: no ABORT for them.
        self.record_and_send_abort(xid, &txn.writers());
        self.push_notice(CoordinatorNotice::Decided {
            xid,
            decision: Decision::Abort,
            reason: Some(reason.clone()),
        });
        if txn.client_waits {
            self.actions.push(CoordinatorAction::Outcome {
                xid,
                outcome: TxnOutcome::Aborted { reason },
            });
        }
    }

    /// Presumed abort: the ABORT record is lazy and ABORTs are not ACKed; a
    /// participant that misses this ABORT learns it by inquiry.
    fn record_and_send_abort(&mut self, xid: Xid, participants: &[NodeId]) {
        self.actions.push(CoordinatorAction::Persist {
            record: CoordinatorRecord::Decision {
                xid,
                decision: Decision::Abort,
                participants: participants.to_vec(),
            },
            durability: Durability::Lazy,
        });
        for to in participants {
            let message = self.message(xid, Body::Decision(Decision::Abort));
            self.actions.push(CoordinatorAction::Send {
                to: to.clone(),
                message,
            });
        }
    }

    /// What the single branch of a one-phase transaction says it did: an
    /// ACK or STATE COMMITTED (its one-phase commit record is durable),
    /// VOTE ABORT or STATE ABORTED. Anything else (READY: still forcing
    /// its record; UNKNOWN) means ask again later.
    fn on_delegated_answer(&mut self, now: Time, xid: Xid, from: NodeId, body: Body) {
        let committed = match body {
            Body::Ack | Body::State(TxnState::Committed) | Body::Vote(Vote::ReadOnly) => true,
            Body::Vote(Vote::Abort { .. }) | Body::State(TxnState::Aborted) => false,
            Body::State(TxnState::Unknown) => {
                self.txns.remove(&xid);
                return self.push_notice(CoordinatorNotice::OutcomeUnknown {
                    xid,
                    participant: from,
                });
            }
            _ => return,
        };
        let Some(txn) = self.txns.remove(&xid) else {
            return;
        };
        // A READ-ONLY branch has nothing to commit: the record names no one.
        let read_only = body == Body::Vote(Vote::ReadOnly);
        if committed {
            // Lazy: the branch's record is the commit point. The END right
            // after it means a restart re-sends nothing (if only the
            // decision survives, the branch ACKs the repeated COMMIT).
            // A chain's round trip is everyone's: no sample of one peer.
            if txn.resends == 0 && txn.participants.len() == 1 {
                self.push_notice(CoordinatorNotice::LatencySample {
                    xid,
                    peer: from.clone(),
                    phase: LatencyPhase::Prepare,
                    elapsed_us: now.us_since(txn.began_at),
                });
            }
            self.actions.push(CoordinatorAction::Persist {
                record: CoordinatorRecord::Decision {
                    xid,
                    decision: Decision::Commit,
                    participants: if read_only {
                        Vec::new()
                    } else {
                        txn.participants.clone()
                    },
                },
                durability: Durability::Lazy,
            });
            self.actions.push(CoordinatorAction::Persist {
                record: CoordinatorRecord::End { xid },
                durability: Durability::Lazy,
            });
            self.push_notice(CoordinatorNotice::Decided {
                xid,
                decision: Decision::Commit,
                reason: Some(format!("one-phase commit decided by {from}")),
            });
            // The outcome before the END: the node records the outcome,
            // then marks it ended.
            self.actions.push(CoordinatorAction::Outcome {
                xid,
                outcome: TxnOutcome::Committed,
            });
            self.push_notice(CoordinatorNotice::Ended { xid });
        } else {
            let reason = match body {
                // A chain's abort names the member that stopped it.
                Body::Vote(Vote::Abort { reason }) if txn.participants.len() > 1 => {
                    format!("linear chain stopped at {reason}")
                }
                Body::Vote(Vote::Abort { reason }) => {
                    format!("participant {from} voted ABORT: {reason}")
                }
                _ => format!("participant {from} aborted its one-phase commit"),
            };
            self.actions.push(CoordinatorAction::Persist {
                record: CoordinatorRecord::Decision {
                    xid,
                    decision: Decision::Abort,
                    participants: txn.participants.clone(),
                },
                durability: Durability::Lazy,
            });
            self.push_notice(CoordinatorNotice::Decided {
                xid,
                decision: Decision::Abort,
                reason: Some(reason.clone()),
            });
            self.actions.push(CoordinatorAction::Outcome {
                xid,
                outcome: TxnOutcome::Aborted { reason },
            });
        }
    }

    fn answer_inquire(&mut self, xid: Xid, from: NodeId) {
        let state = match self.txns.get(&xid).map(|t| t.phase) {
            Some(Phase::Committed) | Some(Phase::RecoveredCommit) => TxnState::Committed,
            // Not decided, or the COMMIT record is not durable yet: saying
            // COMMITTED now could be undone by a crash.
            Some(Phase::Wait) | Some(Phase::CommitPending) | Some(Phase::Delegated) => {
                TxnState::Unknown
            }
            // Presumed abort: no record means aborted.
            None => TxnState::Aborted,
        };
        let message = self.message(xid, Body::State(state));
        self.actions
            .push(CoordinatorAction::Send { to: from, message });
    }

    /// One more round of asking after a timer fired: `body` to each of
    /// `to`, the next timer, and the notice saying so.
    fn send_round(&mut self, xid: Xid, to: Vec<NodeId>, body: Body, round: Round) {
        for peer in &to {
            let message = self.message(xid, body.clone());
            self.actions.push(CoordinatorAction::Send {
                to: peer.clone(),
                message,
            });
        }
        self.actions.push(CoordinatorAction::SetTimer {
            key: TimerKey::new(xid, round.timer),
            at: round.at,
        });
        self.push_notice(CoordinatorNotice::TimeoutFired {
            xid,
            phase: round.phase,
            timeout_ms: round.timeout_ms,
            waiting_for: to,
        });
    }

    fn message(&self, xid: Xid, body: Body) -> Message {
        Message {
            xid,
            epoch: self.epoch,
            from: self.config.id.clone(),
            body,
        }
    }

    fn ignored(&mut self, xid: Xid, kind: &'static str, from: NodeId, why: &'static str) {
        self.push_notice(CoordinatorNotice::Ignored {
            xid,
            kind,
            from,
            why,
        });
    }

    fn push_notice(&mut self, notice: CoordinatorNotice) {
        self.actions.push(CoordinatorAction::Notice(notice));
    }
}

/// A round of re-sending after a timeout (see `Coordinator::send_round`).
struct Round {
    phase: &'static str,
    timer: TimerKind,
    at: Time,
    /// The timeout that fired.
    timeout_ms: u64,
}

impl Txn {
    /// The participants that did not vote READ-ONLY: those phase 2 is
    /// for, and the only ones a decision record names.
    fn writers(&self) -> Vec<NodeId> {
        self.participants
            .iter()
            .zip(&self.read_only)
            .filter(|(_, ro)| !**ro)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// The participants whose flag (vote READY received, ACK received) is
/// still false, in participant-list order.
fn missing(participants: &[NodeId], done: &[bool]) -> Vec<NodeId> {
    participants
        .iter()
        .zip(done)
        .filter(|(_, done)| !**done)
        .map(|(p, _)| p.clone())
        .collect()
}
