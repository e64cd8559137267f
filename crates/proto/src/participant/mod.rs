//! The participant of 2PC as a sans-IO state machine.
//!
//! States per branch (SPEC §1): INITIAL → (resource prepares) → READY
//! (READY record forced, then VOTE READY) → COMMITTED (outcome forced, then
//! ACK) or ABORTED. The resource (the actual data: the key-value store, a
//! database) sits outside: the core asks it to prepare, commit or abort with
//! actions and hears back with `on_prepared`.
//!
//! A READY participant never decides on its own: when its timer fires it
//! sends INQUIRE to the coordinator, with backoff, until it learns the
//! outcome. While the coordinator does not answer (from the second INQUIRE
//! on) it also asks its peers (the participant list of the PREPARE) for
//! their STATE: cooperative
//! termination (SPEC §1.6). A peer's COMMITTED or ABORTED is an outcome the
//! coordinator decided (or can no longer contradict); READY says nothing,
//! so with every peer READY or silent the branch stays blocked. It is a
//! query of states, never a new vote. Finished branches are remembered (bounded by
//! `finished_max`, but never for less than [`FINISHED_MS_MIN`]) so that
//! duplicates and late messages get the same answer:
//! a late PREPARE after an ABORT gets VOTE ABORT, a repeated COMMIT gets the
//! ACK again.

use crate::gate::{Durability, Gate, PersistTicket};
use crate::ids::{
    Epoch, LatencyPhase, NodeId, Time, TimerKey, TimerKind, Xid, FINISHED_MS_MIN,
    PEER_ABORT_AGE_MS_MAX, WORK_BYTES_MAX,
};
use crate::message::{Body, Decision, Message, TxnState, Vote};
use crate::mutant::{self, Mutant};
use crate::record::ParticipantRecord;
use std::collections::{HashMap, HashSet, VecDeque};
use subtree::Subtree;

mod subtree;

#[derive(Clone, Debug)]
pub struct ParticipantConfig {
    /// This participant's id: sent as `from`, and how the coordinator
    /// names it in participant lists.
    pub id: NodeId,
    /// Time in READY past the PREPARE deadline before the first INQUIRE;
    /// doubles after each one up to `inquire_ms_max`, and never stops.
    pub inquire_ms_initial: u64,
    pub inquire_ms_max: u64,
    /// How many finished branches are remembered for answering duplicates.
    /// Only branches finished at least [`FINISHED_MS_MIN`] ago are ever
    /// forgotten, so memory may exceed this under load.
    pub finished_max: usize,
    /// Wait before trying a failed resource commit or abort again; doubles
    /// after each failure up to `apply_retry_ms_max`, and never gives up (a
    /// decided branch cannot be undone).
    pub apply_retry_ms_initial: u64,
    pub apply_retry_ms_max: u64,
    /// Admission: a PREPARE for a new branch while this many are live
    /// (preparing, READY, or carrying out their decision) gets VOTE ABORT
    /// "busy": memory, locks and the log's queue stay bounded.
    pub branches_in_flight_max: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantAction {
    /// Append `record`; for `Durability::Forced(t)` sync, then call
    /// `on_durable(t)`.
    Persist {
        record: ParticipantRecord,
        durability: Durability,
    },
    Send {
        to: NodeId,
        message: Message,
    },
    /// Call `on_timer(key)` at `at` (or later); a stale firing is ignored.
    SetTimer {
        key: TimerKey,
        at: Time,
    },
    /// Resource: check `work` and take what it needs (locks, reservations)
    /// so that a later commit cannot fail; answer with `on_prepared`. On
    /// failure the resource must hold nothing for `xid`.
    Prepare {
        xid: Xid,
        work: Vec<u8>,
    },
    /// Resource: make the prepared work of `xid` visible and release it;
    /// answer with `on_committed`. It runs before the COMMITTED record is
    /// persisted, so it must be idempotent (after a crash the branch is in
    /// doubt again and may be committed a second time). A failure is
    /// transient: the commit is asked for again, with backoff, until it
    /// succeeds, and the branch holds its locks until then.
    Commit {
        xid: Xid,
    },
    /// Resource: drop the prepared work of `xid` (no-op if it holds none);
    /// answer with `on_aborted`. Failures are retried like a commit's.
    Abort {
        xid: Xid,
    },
    /// Resource, at recovery: `xid` is in doubt; take again what its
    /// prepare took (locks), from the work in the READY record.
    Restore {
        xid: Xid,
        work: Vec<u8>,
    },
    Notice(ParticipantNotice),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantNotice {
    TimeoutFired {
        xid: Xid,
        phase: &'static str,
        timeout_ms: u64,
        attempt: u32,
    },
    Outcome {
        xid: Xid,
        decision: Decision,
    },
    Ignored {
        xid: Xid,
        kind: &'static str,
        from: NodeId,
        why: &'static str,
    },
    /// A message that only a broken coordinator could send (COMMIT after we
    /// aborted, ABORT after we committed). Never acted upon.
    Violation {
        xid: Xid,
        detail: String,
    },
    Recovered {
        in_doubt: usize,
        finished: usize,
    },
    /// The resource failed to carry out `decision`; it is asked again in
    /// `retry_in_ms` (attempt `attempt` failed).
    ApplyFailed {
        xid: Xid,
        decision: Decision,
        attempt: u32,
        error: String,
        retry_in_ms: u64,
    },
    /// Hierarchical 2PC: the children's votes did not all come within the
    /// branch's deadline, so the subtree aborts (for the timeout policy:
    /// the silent children's next caps back off).
    ChildrenSilent {
        xid: Xid,
        silent: Vec<NodeId>,
        timeout_ms: u64,
    },
    /// Hierarchical 2PC: a child voted ABORT `elapsed_us` after its
    /// PREPARE went out (for the timeout policy: one that took all the
    /// time it was given ran out of it below, and is backed off).
    ChildAborted {
        xid: Xid,
        child: NodeId,
        elapsed_us: u64,
    },
    /// A decision (or an answer saying one) contrary to the heuristic
    /// decision an operator made for this branch: the heuristic stands,
    /// the contrary one is not carried out, and the transaction's
    /// branches now disagree (a heuristic mixed outcome) until people
    /// mend it.
    HeuristicConflict {
        xid: Xid,
        heuristic: Decision,
        decided: Decision,
        from: NodeId,
    },
    /// A measured exchange with the coordinator, or (phase `Prepare`)
    /// with a child of a sub-coordinator (for the timeout policy).
    LatencySample {
        xid: Xid,
        peer: NodeId,
        phase: LatencyPhase,
        elapsed_us: u64,
    },
}

/// One branch the participant is working on (not yet finished).
#[derive(Debug)]
struct Branch {
    state: BranchState,
    epoch: Epoch,
    coordinator: NodeId,
    participants: Vec<NodeId>,
    work: Vec<u8>,
    /// Absolute time by which the vote must be cast.
    deadline: Time,
    timer_at: Option<Time>,
    inquire_ms: u64,
    inquiries: u32,
    /// When VOTE READY first left, and how often it was sent (a duplicate
    /// PREPARE repeats it): the vote → decision sample needs exactly one.
    voted_at: Option<Time>,
    votes: u32,
    /// When the PREPARE arrived (`None` for a branch recovered from the
    /// log): peers are told how old it is when asked.
    prepared_at: Option<Time>,
    /// The latest answer to our INQUIRE from each node asked (the
    /// coordinator and peers), in the order first heard: what `status`
    /// shows for a blocked branch.
    answers: Vec<(NodeId, TxnState)>,
    /// The coordinator answered since our last INQUIRE: it is reachable,
    /// so the next round asks only it (peers are asked only while it is
    /// silent: a busy coordinator's UNKNOWN must not turn into load on
    /// every participant).
    coordinator_answered: bool,
    /// Peers were asked at least once.
    peers_asked: bool,
    /// One-phase commit: this branch is the whole transaction and decides
    /// it (its forced `OnePhase` record is the commit point). Also the
    /// last member of a linear chain, which decides for the chain.
    one_phase: bool,
    /// Linear 2PC: this branch's place in the chain (`None` otherwise, and
    /// for a member recovered from its READY record, which then acts as a
    /// plain in-doubt branch whose coordinator is the decider).
    chain: Option<ChainPlace>,
    /// Hierarchical 2PC: this branch is the sub-coordinator of these
    /// children (`None` for a leaf).
    subtree: Option<Subtree>,
}

/// Where a branch of a linear transaction sits (see `Body::Chain`).
#[derive(Debug, Clone)]
struct ChainPlace {
    /// Its index in the chain (the branch's `participants`).
    me: usize,
    /// Who sent the CHAIN PREPARE: the member before it, or the
    /// coordinator for the first. The decision (or the abort) goes back
    /// there.
    back_to: NodeId,
    /// The works of the members after it, passed on with the chain once
    /// its READY record is durable.
    rest: Vec<Vec<u8>>,
}

impl Branch {
    /// A linear chain's member: the "coordinator" it asks is its decider,
    /// one of the participants (never so in a centralized transaction).
    /// Also true for a member recovered from its READY record.
    fn asks_a_member(&self) -> bool {
        self.participants.contains(&self.coordinator)
    }

    /// A branch in `state` that has heard and sent nothing yet.
    fn new(
        state: BranchState,
        epoch: Epoch,
        coordinator: NodeId,
        participants: Vec<NodeId>,
        work: Vec<u8>,
        deadline: Time,
        inquire_ms: u64,
    ) -> Branch {
        Branch {
            state,
            epoch,
            coordinator,
            participants,
            work,
            deadline,
            timer_at: None,
            inquire_ms,
            inquiries: 0,
            voted_at: None,
            votes: 0,
            prepared_at: None,
            answers: Vec::new(),
            coordinator_answered: false,
            peers_asked: false,
            one_phase: false,
            chain: None,
            subtree: None,
        }
    }
}

/// What a READY branch that does not know its outcome has heard so far
/// (`concord accounts`, `concord status --participant`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    pub xid: Xid,
    pub coordinator: NodeId,
    /// The other participants, asked while the coordinator is silent.
    pub peers: Vec<NodeId>,
    /// Whether the peers were asked yet.
    pub peers_asked: bool,
    /// INQUIREs sent so far (0: still within the time the decision
    /// should take).
    pub inquiries: u32,
    /// The latest answer of each node that answered; a node missing here
    /// has not answered (unreachable, or the answer was lost).
    pub answers: Vec<(NodeId, TxnState)>,
}

impl InDoubt {
    /// One line saying why the branch is still waiting.
    pub fn why(&self) -> String {
        if self.inquiries == 0 {
            return format!(
                "READY, waiting for the decision of {} (not overdue yet)",
                self.coordinator
            );
        }
        let heard = |node: &NodeId| {
            self.answers
                .iter()
                .find(|(n, _)| n == node)
                .map(|(_, s)| format!("{s:?}").to_uppercase())
                .unwrap_or_else(|| "no answer".into())
        };
        let mut why = format!(
            "READY and blocked: coordinator {}: {}",
            self.coordinator,
            heard(&self.coordinator)
        );
        if self.peers_asked && !self.peers.is_empty() {
            let peers: Vec<String> = self
                .peers
                .iter()
                .map(|p| format!("{p}: {}", heard(p)))
                .collect();
            why.push_str(&format!(
                "; peers asked: {}; none knows the outcome (READY or no answer), so it \
                 waits for the coordinator",
                peers.join(", ")
            ));
        }
        why.push_str(&format!("; asked {} times", self.inquiries));
        why
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    /// The resource is preparing. `abort_requested`: an ABORT came first.
    Preparing {
        abort_requested: bool,
    },
    /// A sub-coordinator whose own part is prepared, waiting for its
    /// children's votes.
    Gathering,
    /// The READY record is being forced.
    ReadyPending,
    Ready,
    /// The decision is known and the resource is carrying it out (or will
    /// try again after a failure): the branch keeps its locks.
    Applying {
        decision: Decision,
    },
    /// The resource committed; the COMMITTED record is being forced.
    Committing,
    /// The decider of a linear chain: its one-phase record (COMMIT) is
    /// durable and sent back down the chain; it waits, holding its locks,
    /// until the first member confirms (ACK, or asked: COMMITTED) that
    /// every branch committed, so that it can never forget a decision a
    /// member may still ask for. Then it applies its own commit.
    Decided,
    /// A sub-coordinator that knows COMMIT and passed it down: its own
    /// part is applied once every READY child ACKed.
    Relaying,
}

/// A resource commit or abort that has not succeeded yet.
#[derive(Debug)]
struct Apply {
    decision: Decision,
    /// Attempts asked for so far.
    attempts: u32,
    /// Wait after the next failure.
    retry_ms: u64,
    /// When the retry timer is due (a failure happened).
    retry_at: Option<Time>,
}

#[derive(Debug)]
enum Resume {
    /// The READY record is durable: VOTE READY may leave.
    VoteReady(Xid),
    /// The COMMITTED record is durable: the ACK may leave.
    Ack(Xid),
    /// An operator's heuristic decision is durable: the resource may
    /// carry it out.
    Heuristic(Xid, Decision),
    /// A unilateral abort, made because someone asked about an xid this
    /// participant never prepared, is durable: the answers may leave.
    AnswerAborted(Xid),
    /// The one-phase record is durable: the branch is committed, the ACK
    /// may leave and the resource may apply it.
    OnePhaseCommitted(Xid),
    /// A one-phase branch's abort is durable: its VOTE ABORT may leave
    /// (if `to`). A sub-coordinator's own abort: also the ABORTs to its
    /// `kids` (who may tell their peers ABORTED on it).
    VoteAbort {
        xid: Xid,
        to: Option<NodeId>,
        epoch: Epoch,
        reason: String,
        kids: Vec<NodeId>,
    },
}

pub struct Participant {
    config: ParticipantConfig,
    branches: HashMap<Xid, Branch>,
    finished: HashMap<Xid, Decision>,
    /// Finished xids, oldest first, with when they finished.
    /// (The decision is kept here too, so a snapshot is one pass with no
    /// lookups.)
    finished_order: VecDeque<(Xid, Time, Decision)>,
    gate: Gate<Resume>,
    /// INQUIREs about xids being aborted unilaterally, answered ABORTED
    /// once that abort is durable: (asker, epoch) per xid.
    answers_waiting: HashMap<Xid, Vec<(NodeId, Epoch)>>,
    /// Finished xids this participant aborted on its own (it voted ABORT)
    /// with nothing in its log. Harmless while nobody acts on it (the
    /// coordinator aborts anyway), but before a peer is told ABORTED the
    /// abort is forced, or a crash plus a duplicate PREPARE could still
    /// get VOTE READY.
    undurable_aborts: HashSet<Xid>,
    /// Resource commits and aborts asked for and not yet succeeded: those
    /// of branches in `Applying`, and aborts that release a prepare nobody
    /// waits for (an ABORT that came while preparing, a late prepare).
    applying: HashMap<Xid, Apply>,
    /// Branches that voted READ-ONLY (nothing written, nothing held), with
    /// when, oldest first: a duplicate PREPARE gets the same vote, and a
    /// peer that asks is told READY ("I said yes, I do not know the
    /// outcome"), never ABORTED, since the coordinator may have committed
    /// without us. Kept like `finished`, in memory only.
    read_only: HashMap<Xid, Time>,
    read_only_order: VecDeque<(Xid, Time)>,
    /// When this life began, if an earlier one existed. A READ-ONLY vote
    /// leaves nothing in the log, so after a restart "no record of the
    /// xid" no longer means "never prepared" for a PREPARE that may have
    /// come before the restart: see `may_abort_unknown`.
    life_began: Option<Time>,
    /// Hierarchical 2PC: the most a child may be given to vote (its
    /// measured timeout, set by the node layer through
    /// `set_child_timeout_ms` before it feeds a TREE PREPARE); a child
    /// without one gets the time left less the margin.
    child_timeouts: HashMap<NodeId, u64>,
    /// Operators' heuristic decisions (SPEC §8), with the audit record
    /// each names: from the forced `Heuristic` record on, what the branch
    /// does, whatever its coordinator says later. Rare, and kept for the
    /// process's life (and across compactions) so that a contrary
    /// decision is always reported.
    heuristic: HashMap<Xid, (Decision, String)>,
    actions: Vec<ParticipantAction>,
}

/// Most outcomes one `Finished` record of a compacted log holds (about
/// 20 bytes each: ~1.3 MB, far below any store's record size limit).
pub const FINISHED_PER_RECORD_MAX: usize = 65_536;

/// The inquire timer of `xid`.
fn inquire_timer(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Inquire)
}

/// The timer that retries a failed resource commit or abort of `xid`.
fn apply_timer(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Apply)
}

impl Participant {
    pub fn new(config: ParticipantConfig) -> Participant {
        Participant {
            config,
            branches: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            gate: Gate::default(),
            answers_waiting: HashMap::new(),
            undurable_aborts: HashSet::new(),
            applying: HashMap::new(),
            read_only: HashMap::new(),
            read_only_order: VecDeque::new(),
            life_began: None,
            child_timeouts: HashMap::new(),
            heuristic: HashMap::new(),
            actions: Vec::new(),
        }
    }

    /// Rebuild from the log after a (re)start (site failures 1 and 2). A
    /// READY record without an outcome is in doubt: the resource is asked to
    /// restore its locks and the coordinator is asked at once. A branch
    /// with no READY record is simply unknown: presumed abort.
    pub fn recover(
        config: ParticipantConfig,
        records: impl IntoIterator<Item = ParticipantRecord>,
        now: Time,
    ) -> Participant {
        let mut participant = Participant::new(config);
        // READY records, with the children a sub-coordinator's names.
        type Ready = (Epoch, NodeId, Vec<NodeId>, Vec<u8>, Option<Vec<NodeId>>);
        let mut ready: HashMap<Xid, Ready> = HashMap::new();
        // One-phase commits whose resource commit may not have run.
        let mut one_phase: HashMap<Xid, (Epoch, NodeId, Vec<u8>, Vec<NodeId>)> = HashMap::new();
        let mut order: Vec<Xid> = Vec::new();
        // The driver writes this life's `Started` record before recovery,
        // so a second one, or any protocol record, means an earlier life.
        let mut lives = 0;
        let mut earlier_life = false;
        for record in records {
            earlier_life |= matches!(
                record,
                ParticipantRecord::Ready { .. }
                    | ParticipantRecord::SubtreeReady { .. }
                    | ParticipantRecord::Outcome { .. }
                    | ParticipantRecord::Finished { .. }
            );
            match record {
                ParticipantRecord::Ready {
                    xid,
                    coordinator,
                    epoch,
                    participants,
                    work,
                } => {
                    if !ready.contains_key(&xid) {
                        order.push(xid);
                    }
                    ready.insert(xid, (epoch, coordinator, participants, work, None));
                }
                ParticipantRecord::SubtreeReady {
                    xid,
                    coordinator,
                    epoch,
                    participants,
                    work,
                    children,
                } => {
                    if !ready.contains_key(&xid) {
                        order.push(xid);
                    }
                    let entry = (epoch, coordinator, participants, work, Some(children));
                    ready.insert(xid, entry);
                }
                ParticipantRecord::OnePhase {
                    xid,
                    coordinator,
                    epoch,
                    work,
                    chain,
                } => {
                    if !one_phase.contains_key(&xid) {
                        order.push(xid);
                    }
                    one_phase.insert(xid, (epoch, coordinator, work, chain));
                }
                ParticipantRecord::Outcome { xid, decision } => {
                    ready.remove(&xid);
                    one_phase.remove(&xid);
                    participant.remember(now, xid, decision);
                }
                ParticipantRecord::Finished { outcomes } => {
                    for (xid, decision) in outcomes {
                        ready.remove(&xid);
                        one_phase.remove(&xid);
                        participant.remember(now, xid, decision);
                    }
                }
                ParticipantRecord::Heuristic {
                    xid,
                    decision,
                    audit,
                } => {
                    participant.heuristic.insert(xid, (decision, audit));
                }
                ParticipantRecord::Started { .. } => lives += 1,
                ParticipantRecord::Resource { .. }
                | ParticipantRecord::Peer { .. }
                | ParticipantRecord::PeerHint { .. } => {}
            }
        }
        if earlier_life || lives >= 2 {
            participant.life_began = Some(now);
        }
        let in_doubt = ready.len();
        for xid in order {
            if let Some((epoch, coordinator, work, chain)) = one_phase.remove(&xid) {
                // Committed by its own record: carry it out, ask no one. A
                // chain's decider first waits for the chain to confirm
                // (asking its first member at once).
                participant.actions.push(ParticipantAction::Restore {
                    xid,
                    work: work.clone(),
                });
                let inquire_ms = participant.config.inquire_ms_initial;
                let decider = chain.len() >= 2;
                let place = decider.then(|| ChainPlace {
                    me: chain.len() - 1,
                    back_to: coordinator.clone(),
                    rest: Vec::new(),
                });
                let (state, participants) = if decider {
                    (BranchState::Decided, chain)
                } else {
                    let applying = BranchState::Applying {
                        decision: Decision::Commit,
                    };
                    (applying, vec![participant.config.id.clone()])
                };
                let branch = Branch::new(
                    state,
                    epoch,
                    coordinator,
                    participants,
                    work,
                    now,
                    inquire_ms,
                );
                participant.branches.insert(
                    xid,
                    Branch {
                        one_phase: true,
                        chain: place,
                        timer_at: decider.then_some(now),
                        ..branch
                    },
                );
                if decider {
                    participant.actions.push(ParticipantAction::SetTimer {
                        key: inquire_timer(xid),
                        at: now,
                    });
                } else {
                    participant.start_apply(xid, Decision::Commit);
                }
                continue;
            }
            let Some((epoch, coordinator, participants, work, children)) = ready.remove(&xid)
            else {
                continue;
            };
            participant.actions.push(ParticipantAction::Restore {
                xid,
                work: work.clone(),
            });
            let inquire_ms = participant.config.inquire_ms_initial;
            if let Some((decision, _)) = participant.heuristic.get(&xid).cloned() {
                // Decided by an operator: carry it out, ask no one.
                let state = BranchState::Applying { decision };
                let branch = Branch::new(
                    state,
                    epoch,
                    coordinator,
                    participants,
                    work,
                    now,
                    inquire_ms,
                );
                participant.branches.insert(xid, branch);
                participant.start_apply(xid, decision);
                continue;
            }
            let branch = Branch::new(
                BranchState::Ready,
                epoch,
                coordinator,
                participants,
                work,
                now,
                inquire_ms,
            );
            participant.branches.insert(
                xid,
                Branch {
                    timer_at: Some(now),
                    subtree: children.map(|c| Subtree::recovered(c, inquire_ms)),
                    ..branch
                },
            );
            participant.actions.push(ParticipantAction::SetTimer {
                key: inquire_timer(xid),
                at: now,
            });
        }
        let finished = participant.finished.len();
        participant
            .actions
            .push(ParticipantAction::Notice(ParticipantNotice::Recovered {
                in_doubt,
                finished,
            }));
        participant
    }

    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// Change the delay past the PREPARE deadline before a READY branch
    /// first inquires (a driver computes it from the measured vote →
    /// decision time). It applies to branches whose PREPARE arrives from
    /// now on; branches already known keep theirs. Bounded to
    /// `1..=config.inquire_ms_max`.
    pub fn set_inquire_ms_initial(&mut self, inquire_ms: u64) {
        self.config.inquire_ms_initial = inquire_ms.clamp(1, self.config.inquire_ms_max.max(1));
    }

    /// The delay a branch prepared now would wait past its deadline before
    /// its first INQUIRE.
    pub fn inquire_ms_initial(&self) -> u64 {
        self.config.inquire_ms_initial
    }

    /// Branches that voted READY and do not know the outcome yet.
    pub fn in_doubt(&self) -> Vec<Xid> {
        let mut xids: Vec<Xid> = self
            .branches
            .iter()
            .filter(|(_, b)| matches!(b.state, BranchState::Ready))
            .map(|(x, _)| *x)
            .collect();
        xids.sort();
        xids
    }

    /// When the oldest READY branch still without its outcome prepared, as
    /// far as this life knows (a branch recovered in doubt after a restart
    /// does not know when it prepared, and is not counted).
    pub fn oldest_in_doubt_since(&self) -> Option<Time> {
        self.branches
            .values()
            .filter(|b| matches!(b.state, BranchState::Ready))
            .filter_map(|b| b.prepared_at)
            .min()
    }

    /// The coordinator of the unfinished branch `xid` (the one whose
    /// PREPARE it answers, or whose READY record it recovered).
    pub fn coordinator_of(&self, xid: Xid) -> Option<&NodeId> {
        self.branches.get(&xid).map(|b| &b.coordinator)
    }

    /// What the in-doubt branch `xid` has heard while waiting for its
    /// outcome; `None` unless it is READY without an outcome.
    pub fn in_doubt_report(&self, xid: Xid) -> Option<InDoubt> {
        let branch = self.branches.get(&xid)?;
        if branch.state != BranchState::Ready {
            return None;
        }
        Some(InDoubt {
            xid,
            coordinator: branch.coordinator.clone(),
            peers: self.peers_of(branch).cloned().collect(),
            inquiries: branch.inquiries,
            peers_asked: branch.peers_asked,
            answers: branch.answers.clone(),
        })
    }

    /// The other participants of `branch` (those cooperative termination
    /// asks), in the order of its participant list.
    fn peers_of<'a>(&'a self, branch: &'a Branch) -> impl Iterator<Item = &'a NodeId> + 'a {
        branch
            .participants
            .iter()
            .filter(move |p| **p != self.config.id && **p != branch.coordinator)
    }

    /// Branches whose resource commit or abort has not succeeded yet
    /// (including aborts that only release a prepare).
    pub fn applying(&self) -> Vec<Xid> {
        let mut xids: Vec<Xid> = self.applying.keys().copied().collect();
        xids.sort();
        xids
    }

    /// Whether `xid` is a branch of a linear chain: its COMMITTED record
    /// gates the COMMIT it passes back, so nothing should delay its fsync.
    pub fn in_chain(&self, xid: Xid) -> bool {
        self.branches
            .get(&xid)
            .is_some_and(|b| b.chain.is_some() || b.asks_a_member())
    }

    /// Branches in flight (preparing, READY, or carrying out their
    /// decision): what the admission limit counts.
    pub fn branches_in_flight(&self) -> usize {
        self.branches.len()
    }

    /// The newest coordinator epoch a live branch of `xid` has seen.
    pub fn epoch_of(&self, xid: Xid) -> Option<Epoch> {
        self.branches.get(&xid).map(|b| b.epoch)
    }

    /// What this participant knows of `xid`, as it would answer INQUIRE.
    pub fn state_of(&self, xid: Xid) -> TxnState {
        if self.read_only.contains_key(&xid) && !self.finished.contains_key(&xid) {
            // Voted yes with nothing to change; the outcome is not ours.
            return TxnState::Ready;
        }
        if let Some(decision) = self.finished.get(&xid) {
            return match decision {
                Decision::Commit => TxnState::Committed,
                Decision::Abort => TxnState::Aborted,
            };
        }
        let branch = self.branches.get(&xid);
        match branch.map(|b| b.state) {
            // Abort decided: the coordinator can never commit it.
            Some(BranchState::Applying {
                decision: Decision::Abort,
            }) => TxnState::Aborted,
            // One-phase (or a chain's decider): our own durable record
            // decided COMMIT.
            Some(BranchState::Applying {
                decision: Decision::Commit,
            }) if branch.is_some_and(|b| b.one_phase) => TxnState::Committed,
            Some(BranchState::Decided) => TxnState::Committed,
            // The COMMIT reached us (it is durable above): passing it on.
            Some(BranchState::Relaying) => TxnState::Committed,
            // Not COMMITTED until our own record is durable.
            Some(BranchState::Ready)
            | Some(BranchState::Applying { .. })
            | Some(BranchState::Committing) => TxnState::Ready,
            Some(BranchState::Preparing { .. })
            | Some(BranchState::Gathering)
            | Some(BranchState::ReadyPending) => TxnState::Initial,
            None => TxnState::Unknown,
        }
    }

    pub fn on_message(&mut self, now: Time, message: Message) {
        let Message {
            xid,
            epoch,
            from,
            body,
        } = message;
        let kind = body.kind();
        if let Some(branch) = self.branches.get_mut(&xid) {
            if epoch < branch.epoch
                && !matches!(body, Body::Inquire { .. })
                && !mutant::active(Mutant::AdoptOlderEpoch)
            {
                self.ignored(xid, kind, from, "older epoch than this branch has seen");
                return;
            }
            if epoch > branch.epoch && from == branch.coordinator {
                // A newer coordinator instance took the transaction over.
                branch.epoch = epoch;
            }
        }
        if let Some((chosen, _)) = self.heuristic.get(&xid) {
            let chosen = *chosen;
            let decided = match &body {
                Body::Decision(d) => Some(*d),
                Body::State(TxnState::Committed) => Some(Decision::Commit),
                Body::State(TxnState::Aborted) => Some(Decision::Abort),
                // An operator's decision is not the transaction's: a peer
                // must never follow it.
                Body::Inquire { .. } => {
                    let message = self.message(xid, epoch, Body::State(TxnState::Unknown));
                    self.actions
                        .push(ParticipantAction::Send { to: from, message });
                    return;
                }
                _ => None,
            };
            if let Some(decided) = decided.filter(|d| *d != chosen) {
                self.actions.push(ParticipantAction::Notice(
                    ParticipantNotice::HeuristicConflict {
                        xid,
                        heuristic: chosen,
                        decided,
                        from,
                    },
                ));
                return;
            }
        }
        match body {
            Body::Prepare {
                participants,
                work,
                deadline_ms,
            } => self.on_prepare(
                now,
                xid,
                epoch,
                from,
                participants,
                work,
                deadline_ms,
                false,
                false,
            ),
            Body::OnePhase { work, deadline_ms } => {
                let participants = vec![self.config.id.clone()];
                self.on_prepare(
                    now,
                    xid,
                    epoch,
                    from,
                    participants,
                    work,
                    deadline_ms,
                    true,
                    true,
                )
            }
            Body::Chain {
                chain,
                works,
                deadline_ms,
            } => self.on_chain(now, xid, epoch, from, chain, works, deadline_ms),
            Body::TreePrepare {
                participants,
                work,
                tree,
                deadline_ms,
            } => self.on_tree_prepare(now, xid, epoch, from, participants, work, tree, deadline_ms),
            Body::Vote(vote) if self.is_child(xid, &from) => {
                self.on_child_vote(now, xid, from, vote)
            }
            Body::Ack if self.is_child(xid, &from) => self.on_child_ack(xid, from),
            // A child's READY for a subtree we already aborted.
            Body::Vote(Vote::Ready)
                if self.finished.get(&xid) == Some(&Decision::Abort)
                    && !self.branches.contains_key(&xid) =>
            {
                // Told only once that abort is durable: the child may pass
                // it on to its peers as ABORTED.
                if let Some(waiting) = self.answers_waiting.get_mut(&xid) {
                    waiting.push((from, epoch));
                } else if self.undurable_aborts.remove(&xid) {
                    self.abort_then_answer(now, xid, from, epoch);
                } else {
                    let message = self.message(xid, epoch, Body::Decision(Decision::Abort));
                    self.actions
                        .push(ParticipantAction::Send { to: from, message });
                }
            }
            Body::Vote(Vote::Abort { reason }) if self.chain_successor(xid) == Some(&from) => {
                self.on_chain_abort(xid, epoch, reason)
            }
            Body::Ack if self.awaits_chain_end(xid, &from) => self.chain_ended(xid),
            Body::Decision(decision) => self.on_decision(now, xid, epoch, from, decision),
            // An answer to our INQUIRE. Only a branch still in doubt acts on
            // it: for a finished branch a late answer says nothing new (an
            // ABORTED may just be presumed abort after the coordinator
            // forgot a transaction we long since committed).
            Body::State(state) if self.branches.contains_key(&xid) => {
                self.on_state(now, xid, epoch, from, state)
            }
            Body::State(_) => {}
            Body::Inquire { prepared_ms_ago } => {
                self.on_inquire(now, xid, epoch, from, prepared_ms_ago)
            }
            Body::OnePhaseStatus { sent_ms_ago } => {
                let young = sent_ms_ago <= PEER_ABORT_AGE_MS_MAX;
                self.on_one_phase_status(now, xid, epoch, from, young)
            }
            // A decider forgets a chain's decision only once the whole
            // chain committed, so for a member in doubt "no record" can
            // only mean "never decided": the age check is not needed.
            Body::ChainInquire => self.on_one_phase_status(now, xid, epoch, from, true),
            Body::Vote(_) | Body::Ack => {
                self.ignored(xid, kind, from, "not a message a participant handles")
            }
        }
    }

    /// Operator action (SPEC §8): decide the in-doubt branch `xid`
    /// `decision` without its coordinator, where the protocol cannot
    /// finish it by itself. Allowed only for a plain READY branch whose
    /// decision is overdue (it has had to ask for it); a branch still
    /// preparing, already decided, or with others depending on it (a
    /// chain in flight, a sub-coordinator, a one-phase branch, which
    /// decides itself) is refused with why. The `Heuristic` record is
    /// forced first; once it is durable the resource carries the decision
    /// out, and the `Outcome` notice says when it has.
    pub fn heuristic(&mut self, xid: Xid, decision: Decision, audit: String) -> Result<(), String> {
        if let Some(done) = self.finished.get(&xid) {
            let done = match done {
                Decision::Commit => "committed",
                Decision::Abort => "aborted",
            };
            return Err(format!(
                "{xid} is not in doubt here: this branch {done} already"
            ));
        }
        let Some(branch) = self.branches.get_mut(&xid) else {
            return Err(format!(
                "{xid} is not in doubt here: this participant has no branch of it (it never \
                 prepared it, or finished and forgot it)"
            ));
        };
        let refusal = match branch.state {
            BranchState::Ready if branch.one_phase => {
                Some("a one-phase branch decides itself: it is never in doubt".to_string())
            }
            BranchState::Ready if branch.subtree.is_some() => Some(
                "it is a sub-coordinator (its children wait for it): decide it at the \
                 transaction's coordinator"
                    .to_string(),
            ),
            BranchState::Ready if branch.chain.is_some() => Some(
                "it is a member of a linear chain still in flight: its decider decides it"
                    .to_string(),
            ),
            BranchState::Ready if branch.inquiries == 0 => Some(format!(
                "its decision is not overdue: it has not yet had to ask {} for it",
                branch.coordinator
            )),
            BranchState::Ready => None,
            BranchState::Preparing { .. } | BranchState::Gathering => {
                Some("it is still preparing: it has not voted".to_string())
            }
            BranchState::ReadyPending => {
                Some("its READY record is being written: it has not voted yet".to_string())
            }
            BranchState::Applying { decision } => Some(format!(
                "it is decided ({}) and being carried out",
                match decision {
                    Decision::Commit => "COMMIT",
                    Decision::Abort => "ABORT",
                }
            )),
            BranchState::Committing | BranchState::Decided | BranchState::Relaying => {
                Some("it is decided (COMMIT) and being carried out".to_string())
            }
        };
        if let Some(why) = refusal {
            return Err(format!(
                "{xid} cannot be decided by an operator here: {why}"
            ));
        }
        branch.state = BranchState::Applying { decision };
        branch.timer_at = None;
        self.heuristic.insert(xid, (decision, audit.clone()));
        let ticket = self.gate.park(Resume::Heuristic(xid, decision));
        self.actions.push(ParticipantAction::Persist {
            record: ParticipantRecord::Heuristic {
                xid,
                decision,
                audit,
            },
            durability: Durability::Forced(ticket),
        });
        Ok(())
    }

    /// The operator's heuristic decision for `xid`, if one was made here.
    pub fn heuristic_of(&self, xid: Xid) -> Option<Decision> {
        self.heuristic.get(&xid).map(|(d, _)| *d)
    }

    /// The resource's answer to `ParticipantAction::Prepare`.
    pub fn on_prepared(&mut self, now: Time, xid: Xid, result: Result<(), String>) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            // Aborted unilaterally while the resource was preparing (a
            // peer asked): release what the prepare took.
            if result.is_ok() && self.finished.get(&xid) == Some(&Decision::Abort) {
                self.start_apply(xid, Decision::Abort);
            }
            return;
        };
        let BranchState::Preparing { abort_requested } = branch.state else {
            return;
        };
        let prepared = result.is_ok();
        let failure = match result {
            _ if abort_requested => Some(None),
            Err(reason) => Some(Some(reason)),
            Ok(()) if now > branch.deadline => Some(Some(format!(
                "prepare finished {} ms after the deadline",
                now.ms_since(branch.deadline)
            ))),
            Ok(()) => None,
        };
        let inner = branch.subtree.is_some();
        match failure {
            None if inner => self.own_part_prepared(now, xid),
            None => self.force_ready(now, xid),
            Some(reason) if inner => {
                if prepared {
                    self.start_apply(xid, Decision::Abort);
                }
                // The children are told ABORT; the coordinator too unless
                // the abort came from it.
                let tell = reason.is_some();
                let reason = format!("{}: {}", self.config.id, reason.unwrap_or_default());
                self.abort_unvoted(now, xid, reason, tell);
            }
            Some(reason) => {
                let Some(branch) = self.branches.remove(&xid) else {
                    return;
                };
                if prepared {
                    // An ABORT arrived while preparing, or the prepare
                    // finished too late: release what it took.
                    self.start_apply(xid, Decision::Abort);
                }
                match reason {
                    Some(reason) => {
                        // In a chain the abort goes back to the member
                        // before, naming where the chain stopped; like a
                        // one-phase branch, this branch decides the abort.
                        let (to, reason) = match &branch.chain {
                            Some(place) => (
                                place.back_to.clone(),
                                format!("{}: {reason}", self.config.id),
                            ),
                            None => (branch.coordinator, reason),
                        };
                        let durable = branch.one_phase || branch.chain.is_some();
                        self.vote_abort(now, xid, to, branch.epoch, reason, durable)
                    }
                    None => self.remember(now, xid, Decision::Abort),
                }
            }
        }
    }

    /// Prepared (and, for a sub-coordinator, every child voted): force
    /// the READY record (a one-phase branch: its commit point); nothing
    /// leaves before it is durable.
    fn force_ready(&mut self, now: Time, xid: Xid) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        branch.state = BranchState::ReadyPending;
        let (record, resume, early) = if branch.one_phase {
            (
                ParticipantRecord::OnePhase {
                    xid,
                    coordinator: branch.coordinator.clone(),
                    epoch: branch.epoch,
                    work: branch.work.clone(),
                    chain: chain_of(branch),
                },
                Resume::OnePhaseCommitted(xid),
                Mutant::OnePhaseAckBeforeDurable,
            )
        } else {
            (
                ready_record(xid, branch),
                Resume::VoteReady(xid),
                Mutant::VoteBeforeReadyDurable,
            )
        };
        let ticket = self.gate.park(resume);
        self.actions.push(ParticipantAction::Persist {
            record,
            durability: Durability::Forced(ticket),
        });
        if mutant::active(early) {
            self.on_durable(now, ticket);
        }
    }

    /// The resource prepared `xid` and has nothing to change (the work
    /// only reads; it holds nothing): vote READ-ONLY. Nothing is written
    /// and no phase 2 follows; the branch is done here. A failed or late
    /// prepare goes through [`Participant::on_prepared`] instead.
    pub fn on_prepared_read_only(&mut self, now: Time, xid: Xid) {
        let Some(branch) = self.branches.get(&xid) else {
            return; // aborted meanwhile (a peer asked); it holds nothing
        };
        let BranchState::Preparing { abort_requested } = branch.state else {
            return;
        };
        if branch.chain.is_some() {
            // A chain member passes the chain on only from a durable
            // READY record: no READ-ONLY shortcut there.
            return self.on_prepared(now, xid, Ok(()));
        }
        if branch.subtree.is_some() {
            // A sub-coordinator's vote waits for its children's.
            if let Some(subtree) = self.branches.get_mut(&xid).and_then(|b| b.subtree.as_mut()) {
                subtree.own_read_only = true;
            }
            return self.on_prepared(now, xid, Ok(()));
        }
        if abort_requested || now > branch.deadline {
            // The coordinator aborted, or will have: the vote would be
            // ignored. Nothing to release either.
            return self.on_prepared(now, xid, Err("prepare finished after the deadline".into()));
        }
        let Some(branch) = self.branches.remove(&xid) else {
            return;
        };
        self.remember_read_only(now, xid);
        let message = self.message(xid, branch.epoch, Body::Vote(Vote::ReadOnly));
        self.actions.push(ParticipantAction::Send {
            to: branch.coordinator,
            message,
        });
    }

    fn remember_read_only(&mut self, now: Time, xid: Xid) {
        if self.read_only.insert(xid, now).is_none() {
            self.read_only_order.push_back((xid, now));
        }
        while self.read_only_order.len() > self.config.finished_max {
            match self.read_only_order.front() {
                Some(&(old, at)) if now.ms_since(at) >= FINISHED_MS_MIN => {
                    self.read_only_order.pop_front();
                    self.read_only.remove(&old);
                }
                _ => break,
            }
        }
    }

    /// Whether a peer's INQUIRE about an xid this participant has no
    /// record of may be answered by aborting it unilaterally: only if
    /// "no record" must mean "never prepared". That needs the asker's
    /// PREPARE to be young enough that we would still remember a finished
    /// branch (`PEER_ABORT_AGE_MS_MAX`), and, after a restart, to have
    /// been sent in this life: a READ-ONLY vote of an earlier life left no
    /// record, and the coordinator may have committed on it. The same
    /// margin covers the PREPARE's delivery delay.
    fn may_abort_unknown(&self, now: Time, prepared_ms_ago: Option<u64>) -> bool {
        let Some(age) = prepared_ms_ago else {
            return false;
        };
        let lived_since = match self.life_began {
            Some(began) if !mutant::active(Mutant::ReadOnlyForgottenAcrossRestart) => {
                now.ms_since(began) >= age.saturating_add(PEER_ABORT_AGE_MS_MAX)
            }
            _ => true,
        };
        age <= PEER_ABORT_AGE_MS_MAX && lived_since
    }

    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        match self.gate.release(ticket) {
            Some(Resume::VoteReady(xid)) => {
                let Some(branch) = self.branches.get_mut(&xid) else {
                    return; // aborted while the READY record was forced
                };
                if branch.state != BranchState::ReadyPending {
                    return;
                }
                branch.state = BranchState::Ready;
                branch.voted_at = Some(now);
                branch.votes = 1;
                // No point asking before the coordinator's own deadline.
                let at = branch.deadline.max(now).plus_ms(branch.inquire_ms);
                branch.timer_at = Some(at);
                let epoch = branch.epoch;
                let (to, body) = match branch.chain.as_mut() {
                    // Linear: our READY is the vote; pass the chain on
                    // with the time that is left.
                    Some(place) => (
                        branch.participants[place.me + 1].clone(),
                        Body::Chain {
                            chain: branch.participants.clone(),
                            works: std::mem::take(&mut place.rest),
                            deadline_ms: branch.deadline.ms_since(now).max(1),
                        },
                    ),
                    None => (branch.coordinator.clone(), Body::Vote(Vote::Ready)),
                };
                let message = self.message(xid, epoch, body);
                self.actions.push(ParticipantAction::Send { to, message });
                self.actions.push(ParticipantAction::SetTimer {
                    key: inquire_timer(xid),
                    at,
                });
            }
            Some(Resume::OnePhaseCommitted(xid)) => {
                let Some(branch) = self.branches.get_mut(&xid) else {
                    return;
                };
                if branch.state != BranchState::ReadyPending {
                    return;
                }
                let epoch = branch.epoch;
                if let Some(place) = &branch.chain {
                    // The chain's decider: COMMIT goes back down the chain;
                    // it applies its own part once the chain confirms.
                    let to = place.back_to.clone();
                    branch.state = BranchState::Decided;
                    let at = now.plus_ms(branch.inquire_ms);
                    branch.timer_at = Some(at);
                    let message = self.message(xid, epoch, Body::Decision(Decision::Commit));
                    self.actions.push(ParticipantAction::Send { to, message });
                    self.actions.push(ParticipantAction::SetTimer {
                        key: inquire_timer(xid),
                        at,
                    });
                    return;
                }
                // Decided: tell the coordinator now (the record is the
                // commit point), then let the resource apply it.
                branch.state = BranchState::Applying {
                    decision: Decision::Commit,
                };
                let to = branch.coordinator.clone();
                let message = self.message(xid, epoch, Body::Ack);
                self.actions.push(ParticipantAction::Send { to, message });
                self.start_apply(xid, Decision::Commit);
            }
            Some(Resume::VoteAbort {
                xid,
                to,
                epoch,
                reason,
                kids,
            }) => {
                if let Some(to) = to {
                    let message = self.message(xid, epoch, Body::Vote(Vote::Abort { reason }));
                    self.actions.push(ParticipantAction::Send { to, message });
                }
                for to in kids {
                    let message = self.message(xid, epoch, Body::Decision(Decision::Abort));
                    self.actions.push(ParticipantAction::Send { to, message });
                }
                self.answer_aborted(xid);
            }
            Some(Resume::AnswerAborted(xid)) => self.answer_aborted(xid),
            Some(Resume::Heuristic(xid, decision)) => self.start_apply(xid, decision),
            Some(Resume::Ack(xid)) => {
                let Some(branch) = self.branches.remove(&xid) else {
                    return;
                };
                self.remember(now, xid, Decision::Commit);
                let epoch = branch.epoch;
                match &branch.chain {
                    // Linear: COMMIT goes on back down the chain; the first
                    // member tells the coordinator and, since every branch
                    // after it committed before passing COMMIT back, tells
                    // the decider it may forget.
                    Some(place) if place.me > 0 => {
                        let message = self.message(xid, epoch, Body::Decision(Decision::Commit));
                        self.actions.push(ParticipantAction::Send {
                            to: place.back_to.clone(),
                            message,
                        });
                    }
                    Some(place) => {
                        let message = self.message(xid, epoch, Body::Ack);
                        self.actions.push(ParticipantAction::Send {
                            to: place.back_to.clone(),
                            message,
                        });
                        let message = self.message(xid, epoch, Body::Ack);
                        self.actions.push(ParticipantAction::Send {
                            to: branch.coordinator,
                            message,
                        });
                    }
                    // The ACK to the coordinator (for a chain member
                    // recovered from its READY record: to the decider,
                    // which from the first member takes it as the chain's
                    // confirmation).
                    None => {
                        let message = self.message(xid, epoch, Body::Ack);
                        self.actions.push(ParticipantAction::Send {
                            to: branch.coordinator,
                            message,
                        });
                    }
                }
                self.actions
                    .push(ParticipantAction::Notice(ParticipantNotice::Outcome {
                        xid,
                        decision: Decision::Commit,
                    }));
            }
            None => {}
        }
    }

    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        match key.kind {
            TimerKind::Inquire => {}
            TimerKind::Apply => return self.retry_apply(now, key.xid),
            // A sub-coordinator's.
            TimerKind::Votes => return self.votes_timer_fired(now, key.xid),
            TimerKind::Resend => return self.resend_timer_fired(now, key.xid),
            // Not a participant core's timer.
            TimerKind::Hello | TimerKind::Lifetime => return,
        }
        let xid = key.xid;
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        match branch.timer_at {
            Some(at) if now >= at => {}
            _ => return,
        }
        branch.timer_at = None;
        let decided = branch.state == BranchState::Decided;
        if !decided && branch.state != BranchState::Ready {
            return;
        }
        // Never decide alone: ask, again and again, with backoff.
        let timeout_ms = branch.inquire_ms;
        branch.inquiries += 1;
        let attempt = branch.inquiries;
        branch.inquire_ms = branch
            .inquire_ms
            .saturating_mul(2)
            .min(self.config.inquire_ms_max);
        let at = now.plus_ms(branch.inquire_ms);
        branch.timer_at = Some(at);
        let epoch = branch.epoch;
        let body = Body::Inquire {
            prepared_ms_ago: branch.prepared_at.map(|at| now.ms_since(at)),
        };
        let phase = if decided {
            // A chain's decider asks the first member whether the chain is
            // done (it committed: every branch did).
            let to = branch.participants[0].clone();
            let message = self.message(xid, epoch, body);
            self.actions.push(ParticipantAction::Send { to, message });
            "DECIDED (asking the chain's first member whether it is done)"
        } else {
            // The coordinator first; if it did not answer the last INQUIRE
            // it may be down, so ask the peers too (cooperative
            // termination).
            let cooperative = attempt >= 2 && !branch.coordinator_answered;
            branch.coordinator_answered = false;
            branch.peers_asked |= cooperative;
            // A linear chain's member asks its decider (the "coordinator"
            // it names, which is one of the participants) with CHAIN
            // INQUIRE.
            let to_coordinator = if branch.asks_a_member() {
                Body::ChainInquire
            } else {
                body.clone()
            };
            let coordinator = branch.coordinator.clone();
            let message = self.message(xid, epoch, to_coordinator);
            self.actions.push(ParticipantAction::Send {
                to: coordinator,
                message,
            });
            if cooperative {
                let branch = &self.branches[&xid];
                let peers: Vec<NodeId> = self.peers_of(branch).cloned().collect();
                for to in peers {
                    let message = self.message(xid, epoch, body.clone());
                    self.actions.push(ParticipantAction::Send { to, message });
                }
                "READY (asking the coordinator and the peers)"
            } else {
                "READY (waiting for the decision)"
            }
        };
        self.actions.push(ParticipantAction::SetTimer {
            key: inquire_timer(xid),
            at,
        });
        self.actions
            .push(ParticipantAction::Notice(ParticipantNotice::TimeoutFired {
                xid,
                phase,
                timeout_ms,
                attempt,
            }));
    }

    /// The protocol's part of a compacted log, to follow the resource's
    /// snapshot record: one `Finished` record with every remembered outcome
    /// (oldest first; so duplicates still get the same answer after a
    /// restart) and every branch whose commit is applied but not yet
    /// ACKed, then the READY record of every branch in doubt. What the log
    /// held for anything else (branches still preparing, forgotten ones) is
    /// dropped: presumed abort covers it. Only valid if every record the
    /// participant emitted so far is written before this snapshot.
    pub fn snapshot_records(&self) -> Vec<ParticipantRecord> {
        let mut outcomes: Vec<(Xid, Decision)> = self
            .finished_order
            .iter()
            .map(|(xid, _, decision)| (*xid, *decision))
            .collect();
        let mut ready = Vec::new();
        let mut live: Vec<(&Xid, &Branch)> = self.branches.iter().collect();
        live.sort_by_key(|(xid, _)| **xid);
        for (xid, branch) in live {
            if branch.one_phase {
                // Decided by its record (or about to be): keep the record,
                // so that recovery commits it rather than asking anyone.
                if matches!(
                    branch.state,
                    BranchState::ReadyPending
                        | BranchState::Decided
                        | BranchState::Applying {
                            decision: Decision::Commit
                        }
                ) {
                    ready.push(ParticipantRecord::OnePhase {
                        xid: *xid,
                        coordinator: branch.coordinator.clone(),
                        epoch: branch.epoch,
                        work: branch.work.clone(),
                        chain: chain_of(branch),
                    });
                }
                continue;
            }
            match branch.state {
                // Applying: decided but not carried out, so still in doubt
                // as far as the log goes; after a crash the decision is
                // learnt again and carried out then.
                // Relaying: its own commit waits for the children.
                BranchState::Ready
                | BranchState::ReadyPending
                | BranchState::Applying { .. }
                | BranchState::Relaying
                    if !mutant::active(Mutant::CompactionDropsInDoubt) =>
                {
                    ready.push(ready_record(*xid, branch))
                }
                // The resource already applied it; its COMMITTED record is
                // written before the snapshot.
                BranchState::Committing => outcomes.push((*xid, Decision::Commit)),
                BranchState::Preparing { .. }
                | BranchState::Gathering
                | BranchState::Ready
                | BranchState::ReadyPending
                | BranchState::Decided
                | BranchState::Relaying
                | BranchState::Applying { .. } => {}
            }
        }
        let mut records = Vec::with_capacity(ready.len() + 1);
        // In records of a bounded size: a log record has a size limit, and
        // under load the remembered outcomes run into the millions.
        for chunk in outcomes.chunks(FINISHED_PER_RECORD_MAX) {
            records.push(ParticipantRecord::Finished {
                outcomes: chunk.to_vec(),
            });
        }
        records.extend(ready);
        // After the READY records they decide (recovery reads them in
        // order either way), in xid order: a snapshot must not depend on
        // hashing.
        let mut heuristic: Vec<_> = self.heuristic.iter().collect();
        heuristic.sort_by_key(|(xid, _)| **xid);
        records.extend(heuristic.into_iter().map(|(xid, (decision, audit))| {
            ParticipantRecord::Heuristic {
                xid: *xid,
                decision: *decision,
                audit: audit.clone(),
            }
        }));
        records
    }

    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, ParticipantAction> {
        self.actions.drain(..)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_prepare(
        &mut self,
        now: Time,
        xid: Xid,
        epoch: Epoch,
        from: NodeId,
        participants: Vec<NodeId>,
        work: Vec<u8>,
        deadline_ms: u64,
        one_phase: bool,
        // The vote decides (one-phase) or stops a chain: an abort is made
        // durable before it leaves (see `vote_abort`).
        abort_durably: bool,
    ) {
        if let Some(decision) = self.finished.get(&xid).copied() {
            // Duplicate or late PREPARE: repeat the vote we gave (for a
            // one-phase commit, what we did).
            let body = match decision {
                Decision::Commit if one_phase => Body::Ack,
                Decision::Commit => Body::Vote(Vote::Ready),
                Decision::Abort => Body::Vote(Vote::Abort {
                    reason: "branch already aborted".into(),
                }),
            };
            let message = self.message(xid, epoch, body);
            self.actions
                .push(ParticipantAction::Send { to: from, message });
            return;
        }
        if self.read_only.contains_key(&xid) {
            let message = self.message(xid, epoch, Body::Vote(Vote::ReadOnly));
            self.actions
                .push(ParticipantAction::Send { to: from, message });
            return;
        }
        if let Some(branch) = self.branches.get_mut(&xid) {
            let decided = branch.state
                == BranchState::Applying {
                    decision: Decision::Commit,
                };
            if branch.one_phase && decided {
                // Committed; the resource is still applying it.
                let (epoch, to) = (branch.epoch, branch.coordinator.clone());
                let message = self.message(xid, epoch, Body::Ack);
                self.actions.push(ParticipantAction::Send { to, message });
                return;
            }
            if branch.state == BranchState::Ready {
                branch.votes += 1;
                let (epoch, to) = (branch.epoch, branch.coordinator.clone());
                let message = self.message(xid, epoch, Body::Vote(Vote::Ready));
                self.actions.push(ParticipantAction::Send { to, message });
            }
            // Preparing / ReadyPending: the vote goes out when ready.
            return;
        }
        let busy = self.branches.len() >= self.config.branches_in_flight_max
            && !mutant::active(Mutant::AdmitBeyondLimit);
        if busy || work.len() > WORK_BYTES_MAX || !participants.contains(&self.config.id) {
            let reason = if busy {
                format!(
                    "busy: {} branches in flight at {} (limit {}); retry later",
                    self.branches.len(),
                    self.config.id,
                    self.config.branches_in_flight_max
                )
            } else if work.len() > WORK_BYTES_MAX {
                format!("work of {} bytes is over the limit", work.len())
            } else {
                format!("{} is not in the participant list", self.config.id)
            };
            return self.vote_abort(now, xid, from, epoch, reason, abort_durably);
        }
        let branch = Branch::new(
            BranchState::Preparing {
                abort_requested: false,
            },
            epoch,
            from,
            participants,
            work.clone(),
            now.plus_ms(deadline_ms),
            self.config.inquire_ms_initial,
        );
        self.branches.insert(
            xid,
            Branch {
                prepared_at: Some(now),
                one_phase,
                ..branch
            },
        );
        self.actions.push(ParticipantAction::Prepare { xid, work });
    }

    fn on_decision(&mut self, now: Time, xid: Xid, epoch: Epoch, from: NodeId, decision: Decision) {
        if let Some(done) = self.finished.get(&xid).copied() {
            if decision == Decision::Abort {
                // The coordinator decided it too: it can never commit now.
                self.undurable_aborts.remove(&xid);
            }
            if done != decision {
                self.violation(xid, format!("{decision:?} from {from} after we {done:?}ed"));
            } else if decision == Decision::Commit {
                // ACK lost or decision repeated: ACK again (message loss 4).
                let message = self.message(xid, epoch, Body::Ack);
                self.actions
                    .push(ParticipantAction::Send { to: from, message });
            }
            return;
        }
        let Some(branch) = self.branches.get_mut(&xid) else {
            match decision {
                // We never voted READY on it or forgot it long after
                // finishing: either way its outcome record is durable.
                Decision::Commit if mutant::active(Mutant::ForgottenCommitNotAcked) => {}
                Decision::Commit => {
                    let message = self.message(xid, epoch, Body::Ack);
                    self.actions
                        .push(ParticipantAction::Send { to: from, message });
                }
                // ABORT before PREPARE (reordering): remember, so a late
                // PREPARE gets VOTE ABORT.
                Decision::Abort => self.remember(now, xid, Decision::Abort),
            }
            return;
        };
        // Karn: one VOTE READY and no INQUIRE, so the decision answers it.
        let sample = if let (Some(voted), 1, 0, BranchState::Ready) = (
            branch.voted_at,
            branch.votes,
            branch.inquiries,
            branch.state,
        ) {
            Some(ParticipantNotice::LatencySample {
                xid,
                peer: branch.coordinator.clone(),
                phase: LatencyPhase::VoteToDecision,
                elapsed_us: now.us_since(voted),
            })
        } else {
            None
        };
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        if branch.one_phase
            && decision == Decision::Abort
            && branch.state == BranchState::ReadyPending
        {
            // Its one-phase record is being forced: this branch decides,
            // and only a broken coordinator would abort over its head.
            return self.violation(xid, format!("ABORT from {from} during a one-phase commit"));
        }
        match (decision, branch.state) {
            // The decider has it already.
            (Decision::Commit, BranchState::Decided) => {}
            (Decision::Abort, BranchState::Decided) => {
                self.violation(
                    xid,
                    format!("ABORT from {from} after this chain decided COMMIT"),
                );
            }
            (Decision::Commit, BranchState::Ready) if branch.subtree.is_some() => {
                self.relay_decision(now, xid, Decision::Commit);
            }
            (Decision::Commit, BranchState::Ready) => {
                branch.state = BranchState::Applying {
                    decision: Decision::Commit,
                };
                branch.timer_at = None;
                self.start_apply(xid, Decision::Commit);
            }
            // Passing it on; our own commit follows the children's ACKs.
            (Decision::Commit, BranchState::Relaying) => {}
            (Decision::Abort, BranchState::Relaying) => {
                self.violation(xid, format!("ABORT from {from} after COMMIT"));
            }
            (Decision::Abort, BranchState::Gathering) => {
                self.abort_unvoted(now, xid, String::new(), false);
            }
            // ACK follows once the commit is applied and recorded.
            (
                Decision::Commit,
                BranchState::Applying {
                    decision: Decision::Commit,
                }
                | BranchState::Committing,
            ) => {}
            (
                Decision::Commit,
                BranchState::Applying {
                    decision: Decision::Abort,
                },
            ) => {
                self.violation(xid, format!("COMMIT from {from} after ABORT"));
            }
            (Decision::Commit, _) => {
                self.violation(
                    xid,
                    format!("COMMIT from {from} before our READY was durable"),
                );
            }
            (Decision::Abort, BranchState::Preparing { .. }) => {
                branch.state = BranchState::Preparing {
                    abort_requested: true,
                };
            }
            (Decision::Abort, BranchState::Ready | BranchState::ReadyPending) => {
                // The branch keeps its locks until the resource has
                // released them; then the outcome is recorded.
                branch.state = BranchState::Applying {
                    decision: Decision::Abort,
                };
                branch.timer_at = None;
                self.relay_decision(now, xid, Decision::Abort);
                self.start_apply(xid, Decision::Abort);
            }
            (
                Decision::Abort,
                BranchState::Applying {
                    decision: Decision::Abort,
                },
            ) => {} // already being carried out
            (
                Decision::Abort,
                BranchState::Committing
                | BranchState::Applying {
                    decision: Decision::Commit,
                },
            ) => {
                self.violation(xid, format!("ABORT from {from} after COMMIT"));
            }
        }
        if let Some(sample) = sample {
            self.actions.push(ParticipantAction::Notice(sample));
        }
    }

    /// The resource's answer to `ParticipantAction::Commit`. `Err` is a
    /// transient failure: the commit is asked for again after a backoff.
    pub fn on_committed(&mut self, now: Time, xid: Xid, result: Result<(), String>) {
        self.on_applied(now, xid, Decision::Commit, result);
    }

    /// The resource's answer to `ParticipantAction::Abort`, like
    /// [`Participant::on_committed`].
    pub fn on_aborted(&mut self, now: Time, xid: Xid, result: Result<(), String>) {
        self.on_applied(now, xid, Decision::Abort, result);
    }

    /// Ask the resource to carry out `decision` for `xid`, unless it is
    /// already doing so.
    fn start_apply(&mut self, xid: Xid, decision: Decision) {
        if self.applying.contains_key(&xid) {
            return;
        }
        self.applying.insert(
            xid,
            Apply {
                decision,
                attempts: 1,
                retry_ms: self.config.apply_retry_ms_initial.max(1),
                retry_at: None,
            },
        );
        self.actions.push(apply_action(xid, decision));
    }

    fn on_applied(&mut self, now: Time, xid: Xid, decision: Decision, result: Result<(), String>) {
        let Some(apply) = self.applying.get_mut(&xid) else {
            return; // an answer from before a restart, or a duplicate
        };
        if apply.decision != decision || apply.retry_at.is_some() {
            return; // not the answer to the attempt in flight
        }
        match result {
            Err(error) if !mutant::active(Mutant::AckBeforeApplied) => {
                if mutant::active(Mutant::AbandonFailedApply) {
                    return;
                }
                let retry_in_ms = apply.retry_ms;
                let attempt = apply.attempts;
                apply.retry_ms = apply
                    .retry_ms
                    .saturating_mul(2)
                    .min(self.config.apply_retry_ms_max.max(1));
                let at = now.plus_ms(retry_in_ms);
                apply.retry_at = Some(at);
                self.actions.push(ParticipantAction::SetTimer {
                    key: apply_timer(xid),
                    at,
                });
                self.actions
                    .push(ParticipantAction::Notice(ParticipantNotice::ApplyFailed {
                        xid,
                        decision,
                        attempt,
                        error,
                        retry_in_ms,
                    }));
            }
            _ => {
                self.applying.remove(&xid);
                self.applied(now, xid, decision);
            }
        }
    }

    fn retry_apply(&mut self, now: Time, xid: Xid) {
        let Some(apply) = self.applying.get_mut(&xid) else {
            return;
        };
        match apply.retry_at {
            Some(at) if now >= at => {}
            _ => return, // stale timer
        }
        apply.retry_at = None;
        apply.attempts += 1;
        let action = apply_action(xid, apply.decision);
        self.actions.push(action);
    }

    /// The resource carried out `decision` for `xid`: record it and, for a
    /// commit, ACK once the record is durable. An abort that only released
    /// a prepare has nothing more to do.
    fn applied(&mut self, now: Time, xid: Xid, decision: Decision) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        if branch.state != (BranchState::Applying { decision }) {
            return;
        }
        match decision {
            Decision::Commit if !branch.one_phase => {
                branch.state = BranchState::Committing;
                let ticket = self.gate.park(Resume::Ack(xid));
                self.actions.push(ParticipantAction::Persist {
                    record: ParticipantRecord::Outcome {
                        xid,
                        decision: Decision::Commit,
                    },
                    durability: Durability::Forced(ticket),
                });
            }
            // An abort (presumed abort: not forced, and no ACK; if lost,
            // recovery finds the READY record, inquires, and hears ABORTED
            // again), or a one-phase commit (its one-phase record decided
            // it: the outcome record only saves recovery from applying it
            // again).
            _ => {
                self.branches.remove(&xid);
                self.actions.push(ParticipantAction::Persist {
                    record: ParticipantRecord::Outcome { xid, decision },
                    durability: Durability::Lazy,
                });
                self.remember(now, xid, decision);
                self.actions
                    .push(ParticipantAction::Notice(ParticipantNotice::Outcome {
                        xid,
                        decision,
                    }));
            }
        }
    }

    /// An answer to our INQUIRE, from the coordinator or a peer, for a
    /// branch we still hold.
    fn on_state(&mut self, now: Time, xid: Xid, epoch: Epoch, from: NodeId, state: TxnState) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        if from != branch.coordinator && !branch.participants.contains(&from) {
            // Only the nodes we asked can answer (and `answers` stays
            // bounded by the participant list).
            self.ignored(
                xid,
                "STATE",
                from,
                "not this branch's coordinator or a peer",
            );
            return;
        }
        if branch.state == BranchState::Decided {
            // Our question to the chain's first member: COMMITTED, or no
            // record at all (it was READY, so it finished and forgot),
            // means every branch committed.
            if branch.participants.first() == Some(&from)
                && matches!(state, TxnState::Committed | TxnState::Unknown)
            {
                self.chain_ended(xid);
            }
            return;
        }
        match branch.answers.iter_mut().find(|(n, _)| *n == from) {
            Some(answer) => answer.1 = state,
            None => branch.answers.push((from.clone(), state)),
        }
        if from == branch.coordinator {
            branch.coordinator_answered = true;
        }
        match state {
            TxnState::Committed => self.on_decision(now, xid, epoch, from, Decision::Commit),
            // ABORTED: decided, or presumed by a coordinator that has no
            // record (it never decided COMMIT). INITIAL: a peer that had not
            // voted and, per SPEC §1.6, aborted on being asked (concord's
            // own peers answer ABORTED once that abort is durable).
            TxnState::Aborted | TxnState::Initial => {
                self.on_decision(now, xid, epoch, from, Decision::Abort)
            }
            TxnState::Ready if mutant::active(Mutant::WatchdogRevote) => {
                let branch = &self.branches[&xid];
                let all_ready = self.peers_of(branch).all(|p| {
                    branch
                        .answers
                        .iter()
                        .any(|(n, s)| n == p && *s == TxnState::Ready)
                });
                if all_ready {
                    self.on_decision(now, xid, epoch, from, Decision::Commit);
                }
            }
            // READY says nothing about the outcome, UNKNOWN means "not
            // decided yet": keep waiting, never guess.
            TxnState::Ready | TxnState::Unknown => {}
        }
    }

    /// A peer (cooperative termination) or anyone asks what we know.
    /// `prepared_ms_ago` is the asker's account of its PREPARE's age.
    fn on_inquire(
        &mut self,
        now: Time,
        xid: Xid,
        epoch: Epoch,
        from: NodeId,
        prepared_ms_ago: Option<u64>,
    ) {
        if let Some(waiting) = self.answers_waiting.get_mut(&xid) {
            // The unilateral abort is still being forced: answer with it.
            waiting.push((from, epoch));
            return;
        }
        let state = self.state_of(xid);
        let preparing = matches!(
            self.branches.get(&xid).map(|b| b.state),
            Some(BranchState::Preparing { .. } | BranchState::Gathering)
        );
        if preparing && mutant::active(Mutant::PreparingPeerKeepsVoting) {
            let message = self.message(xid, epoch, Body::State(TxnState::Initial));
            self.actions
                .push(ParticipantAction::Send { to: from, message });
            return;
        }
        if preparing {
            // Not voted yet: abort now, so that this branch never votes
            // READY (SPEC §1.6), tell the coordinator at once, and answer
            // once the abort is durable. The resource's prepare is released
            // when it returns.
            let reason = format!(
                "aborted unilaterally: peer {from} asked for its state before this branch was \
                 prepared"
            );
            self.abort_unvoted_and_answer(now, xid, from, epoch, reason, true);
            return;
        }
        // No record of it: never prepared, or finished and forgotten. Only
        // for a PREPARE young enough that we would still remember is it the
        // first (see `PEER_ABORT_AGE_MS_MAX`).
        let young = self.may_abort_unknown(now, prepared_ms_ago)
            || mutant::active(Mutant::ForgottenPeerAborts);
        let broken = mutant::active(Mutant::AnswerBeforePersist);
        if ((state == TxnState::Unknown && young) || self.undurable_aborts.remove(&xid)) && !broken
        {
            // We never voted on it (or voted ABORT and logged nothing):
            // abort unilaterally so that we never vote READY (SPEC §1.6),
            // and say so, but only once that abort is durable. A peer may
            // act on our ABORTED (cooperative termination); if we crashed
            // with the abort only in memory, a re-sent PREPARE after the
            // restart could get VOTE READY and the transaction commit
            // against what the peer was told.
            self.abort_then_answer(now, xid, from, epoch);
            return;
        }
        let answer = match state {
            // Only reached under the mutant: an abort kept in memory.
            TxnState::Unknown if young => {
                self.remember(now, xid, Decision::Abort);
                TxnState::Aborted
            }
            // The READY record is being forced: as good as READY (it
            // will vote READY, or crash and be in doubt).
            TxnState::Initial => TxnState::Ready,
            other => other,
        };
        let message = self.message(xid, epoch, Body::State(answer));
        self.actions
            .push(ParticipantAction::Send { to: from, message });
    }

    /// Linear 2PC: a CHAIN PREPARE from the member before (or the
    /// coordinator). Duplicates get the answer already given; a new one is
    /// prepared like any branch, with its place in the chain kept.
    #[allow(clippy::too_many_arguments)]
    fn on_chain(
        &mut self,
        now: Time,
        xid: Xid,
        epoch: Epoch,
        from: NodeId,
        chain: Vec<NodeId>,
        works: Vec<Vec<u8>>,
        deadline_ms: u64,
    ) {
        let me = chain.len().checked_sub(works.len());
        let placed = me.is_some_and(|m| chain.get(m) == Some(&self.config.id));
        let Some(me) = me.filter(|_| placed && chain.len() >= 2 && !works.is_empty()) else {
            let reason = format!("{} is not where the chain says", self.config.id);
            return self.vote_abort(now, xid, from, epoch, reason, true);
        };
        let decider = me + 1 == chain.len();
        if let Some(decision) = self.finished.get(&xid).copied() {
            if decision == Decision::Abort {
                // The member before acts on it: the abort must be durable
                // (a remembered one may be in memory only), so force it
                // again before the vote leaves.
                let reason = format!("{}: branch already aborted", self.config.id);
                return self.vote_abort(now, xid, from, epoch, reason, true);
            }
            let message = self.message(xid, epoch, Body::Decision(Decision::Commit));
            self.actions
                .push(ParticipantAction::Send { to: from, message });
            return;
        }
        if let Some(branch) = self.branches.get(&xid) {
            if branch.state == BranchState::Decided {
                let message = self.message(xid, epoch, Body::Decision(Decision::Commit));
                self.actions
                    .push(ParticipantAction::Send { to: from, message });
            }
            return; // in progress: the answer follows
        }
        let mut works = works;
        let rest = works.split_off(1);
        let work = works.pop().unwrap_or_default();
        let decider_id = chain[chain.len() - 1].clone();
        self.on_prepare(
            now,
            xid,
            epoch,
            from.clone(),
            chain,
            work,
            deadline_ms,
            decider,
            true,
        );
        if let Some(branch) = self.branches.get_mut(&xid) {
            branch.chain = Some(ChainPlace {
                me,
                back_to: from,
                rest,
            });
            if !decider {
                // In doubt, a member asks the one that decides.
                branch.coordinator = decider_id;
            }
        }
    }

    /// The member after this one in `xid`'s chain, while it holds one.
    fn chain_successor(&self, xid: Xid) -> Option<&NodeId> {
        let branch = self.branches.get(&xid)?;
        let place = branch.chain.as_ref()?;
        branch.participants.get(place.me + 1)
    }

    /// Whether `from` is the first member of a chain this participant
    /// decided and waits on.
    fn awaits_chain_end(&self, xid: Xid, from: &NodeId) -> bool {
        self.branches.get(&xid).is_some_and(|b| {
            b.state == BranchState::Decided && b.participants.first() == Some(from)
        })
    }

    /// The chain confirmed every branch committed: the decider applies its
    /// own part and may forget it after that.
    fn chain_ended(&mut self, xid: Xid) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        if branch.state != BranchState::Decided {
            return;
        }
        branch.state = BranchState::Applying {
            decision: Decision::Commit,
        };
        branch.timer_at = None;
        self.start_apply(xid, Decision::Commit);
    }

    /// The member after this one stopped the chain: it aborted durably, so
    /// nothing after it prepared and nothing can commit. Abort, and pass
    /// the abort back.
    fn on_chain_abort(&mut self, xid: Xid, epoch: Epoch, reason: String) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let Some(place) = branch.chain.clone() else {
            return;
        };
        if branch.state == BranchState::Ready {
            branch.state = BranchState::Applying {
                decision: Decision::Abort,
            };
            branch.timer_at = None;
            self.start_apply(xid, Decision::Abort);
        }
        let message = self.message(xid, epoch, Body::Vote(Vote::Abort { reason }));
        self.actions.push(ParticipantAction::Send {
            to: place.back_to,
            message,
        });
    }

    /// Vote ABORT on `xid` to `to`. In 2PC the abort stays in memory (the
    /// coordinator decides, and presumed abort covers a crash), unless a
    /// peer is later told ABORTED. A one-phase branch decides, so its
    /// abort is forced before the vote leaves: the client is told
    /// ABORTED on it, and after a crash a duplicate ONE-PHASE COMMIT must
    /// find the abort, not commit.
    fn vote_abort(
        &mut self,
        now: Time,
        xid: Xid,
        to: NodeId,
        epoch: Epoch,
        reason: String,
        one_phase: bool,
    ) {
        self.remember(now, xid, Decision::Abort);
        if !one_phase {
            self.undurable_aborts.insert(xid);
            let message = self.message(xid, epoch, Body::Vote(Vote::Abort { reason }));
            self.actions.push(ParticipantAction::Send { to, message });
            return;
        }
        self.force_abort(xid, Some(to), epoch, reason, Vec::new());
    }

    /// Force the abort of `xid`, then send VOTE ABORT to `to` (if any)
    /// and ABORT to `kids`, and answer whoever asked meanwhile.
    fn force_abort(
        &mut self,
        xid: Xid,
        to: Option<NodeId>,
        epoch: Epoch,
        reason: String,
        kids: Vec<NodeId>,
    ) {
        self.answers_waiting.entry(xid).or_default();
        let ticket = self.gate.park(Resume::VoteAbort {
            xid,
            to,
            epoch,
            reason,
            kids,
        });
        self.actions.push(ParticipantAction::Persist {
            record: ParticipantRecord::Outcome {
                xid,
                decision: Decision::Abort,
            },
            durability: Durability::Forced(ticket),
        });
    }

    /// The coordinator of a one-phase commit asks what this branch did
    /// (`Body::OnePhaseStatus`). Unlike a peer's INQUIRE, "no record"
    /// needs no care for READ-ONLY votes of an earlier life: the asker
    /// decides what a READ-ONLY single branch means, and nothing changed.
    /// Also a chain member's CHAIN INQUIRE to its decider. `never_got_it`:
    /// "no record" can only mean the request never arrived (not that it
    /// was committed and forgotten), so the xid may be aborted.
    fn on_one_phase_status(
        &mut self,
        now: Time,
        xid: Xid,
        epoch: Epoch,
        from: NodeId,
        never_got_it: bool,
    ) {
        if let Some(waiting) = self.answers_waiting.get_mut(&xid) {
            waiting.push((from, epoch));
            return;
        }
        let answer = if self.read_only.contains_key(&xid) && !self.finished.contains_key(&xid) {
            Body::Vote(Vote::ReadOnly)
        } else if let Some(branch) = self.branches.get(&xid) {
            match branch.state {
                // A sub-coordinator still gathering votes within its
                // deadline, asked by one of its own children: it is their
                // coordinator in WAIT, and a coordinator in WAIT answers
                // "not decided yet" (SPEC §1.4). Aborting here would turn
                // a child's question into a vote: a READY child asks once
                // its own (shorter) deadline and inquire delay have
                // passed, which can be before a sibling's vote arrives in
                // time for this branch. Past the deadline it can only
                // vote ABORT anyway, so it aborts below and the child
                // hears it (even if its own prepare never returns).
                BranchState::Preparing { .. } | BranchState::Gathering
                    if self.is_child(xid, &from)
                        && now < branch.deadline
                        && !mutant::active(Mutant::ChildQuestionAbortsGathering) =>
                {
                    Body::State(TxnState::Unknown)
                }
                BranchState::Preparing { .. } | BranchState::Gathering => {
                    // Not decided yet: abort, and say so once durable (the
                    // resource's prepare is released when it returns). A
                    // sub-coordinator asked by anyone but its coordinator
                    // tells its coordinator. (A chain's member learns it
                    // by asking, once the abort is durable.)
                    let tell = branch.subtree.is_some() && from != branch.coordinator;
                    let reason = format!("aborted: {from} asked before this branch voted");
                    return self.abort_unvoted_and_answer(now, xid, from, epoch, reason, tell);
                }
                // Its record is being forced: ask again.
                BranchState::ReadyPending => Body::State(TxnState::Ready),
                _ => Body::State(self.state_of(xid)),
            }
        } else {
            match self.finished.get(&xid) {
                Some(Decision::Commit) => Body::State(TxnState::Committed),
                Some(Decision::Abort) if !self.undurable_aborts.contains(&xid) => {
                    Body::State(TxnState::Aborted)
                }
                // Never got it (or an abort only in memory): abort it for
                // good, then answer. Too old to tell from a branch that
                // committed and was forgotten: UNKNOWN.
                Some(Decision::Abort) => {
                    self.undurable_aborts.remove(&xid);
                    return self.abort_then_answer(now, xid, from, epoch);
                }
                None if never_got_it => {
                    return self.abort_then_answer(now, xid, from, epoch);
                }
                None => Body::State(TxnState::Unknown),
            }
        };
        let message = self.message(xid, epoch, answer);
        self.actions
            .push(ParticipantAction::Send { to: from, message });
    }

    /// The abort of `xid` is durable: answer ABORTED to whoever asked.
    fn answer_aborted(&mut self, xid: Xid) {
        for (to, epoch) in self.answers_waiting.remove(&xid).unwrap_or_default() {
            let message = self.message(xid, epoch, Body::State(TxnState::Aborted));
            self.actions.push(ParticipantAction::Send { to, message });
        }
    }

    /// Abort the unvoted branch `xid` because `from` asked, and answer it
    /// ABORTED once that abort is durable (forced now, before the answer).
    /// One forced record either way: a sub-coordinator's own abort is
    /// already being forced for its children, and `from` waits for it.
    fn abort_unvoted_and_answer(
        &mut self,
        now: Time,
        xid: Xid,
        from: NodeId,
        epoch: Epoch,
        reason: String,
        tell_coordinator: bool,
    ) {
        self.abort_unvoted(now, xid, reason, tell_coordinator);
        self.undurable_aborts.remove(&xid);
        match self.answers_waiting.get_mut(&xid) {
            Some(waiting) => waiting.push((from, epoch)),
            None => self.abort_then_answer(now, xid, from, epoch),
        }
    }

    /// Abort `xid` unilaterally and answer `to` ABORTED once the abort
    /// record is durable.
    fn abort_then_answer(&mut self, now: Time, xid: Xid, to: NodeId, epoch: Epoch) {
        self.remember(now, xid, Decision::Abort);
        self.answers_waiting.insert(xid, vec![(to, epoch)]);
        let ticket = self.gate.park(Resume::AnswerAborted(xid));
        self.actions.push(ParticipantAction::Persist {
            record: ParticipantRecord::Outcome {
                xid,
                decision: Decision::Abort,
            },
            durability: Durability::Forced(ticket),
        });
    }

    /// Remember that `xid` finished with `decision`. Past `finished_max`
    /// the oldest entries are forgotten, but only once they are older than
    /// `FINISHED_MS_MIN`: forgetting a branch while a duplicate of its
    /// PREPARE may still arrive would prepare it again (and, if the
    /// coordinator still has it in flight, commit it twice).
    fn remember(&mut self, now: Time, xid: Xid, decision: Decision) {
        if self.finished.insert(xid, decision).is_none() {
            self.finished_order.push_back((xid, now, decision));
        }
        while self.finished_order.len() > self.config.finished_max {
            match self.finished_order.front() {
                Some(&(old, at, _)) if now.ms_since(at) >= FINISHED_MS_MIN => {
                    self.finished_order.pop_front();
                    self.finished.remove(&old);
                    self.undurable_aborts.remove(&old);
                }
                _ => break,
            }
        }
    }

    fn message(&self, xid: Xid, epoch: Epoch, body: Body) -> Message {
        Message {
            xid,
            epoch,
            from: self.config.id.clone(),
            body,
        }
    }

    fn ignored(&mut self, xid: Xid, kind: &'static str, from: NodeId, why: &'static str) {
        self.actions
            .push(ParticipantAction::Notice(ParticipantNotice::Ignored {
                xid,
                kind,
                from,
                why,
            }));
    }

    fn violation(&mut self, xid: Xid, detail: String) {
        self.actions
            .push(ParticipantAction::Notice(ParticipantNotice::Violation {
                xid,
                detail,
            }));
    }
}

/// The chain a decider's one-phase record names (empty for a one-phase
/// commit of a single branch).
fn chain_of(branch: &Branch) -> Vec<NodeId> {
    if branch.chain.is_some() {
        branch.participants.clone()
    } else {
        Vec::new()
    }
}

/// The READY record of `branch` (a sub-coordinator's names the children
/// that voted READY).
fn ready_record(xid: Xid, branch: &Branch) -> ParticipantRecord {
    let (coordinator, epoch) = (branch.coordinator.clone(), branch.epoch);
    let (participants, work) = (branch.participants.clone(), branch.work.clone());
    match &branch.subtree {
        Some(subtree) => ParticipantRecord::SubtreeReady {
            xid,
            coordinator,
            epoch,
            participants,
            work,
            children: subtree.ready_kids(),
        },
        None => ParticipantRecord::Ready {
            xid,
            coordinator,
            epoch,
            participants,
            work,
        },
    }
}

/// The resource action that carries out `decision` for `xid`.
fn apply_action(xid: Xid, decision: Decision) -> ParticipantAction {
    match decision {
        Decision::Commit => ParticipantAction::Commit { xid },
        Decision::Abort => ParticipantAction::Abort { xid },
    }
}
