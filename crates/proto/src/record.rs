//! Durable log records of SPEC §1 "Logs". The store treats them as opaque
//! bytes; recovery replays them in order.

use crate::ids::{Epoch, NodeId, Xid};
use crate::message::Decision;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorRecord {
    /// Written (forced) at every start: the epoch this instance runs with.
    Epoch { epoch: Epoch },
    /// Begin record with the participant list. Not forced: with presumed
    /// abort a lost begin record only means participants learn ABORTED by
    /// inquiry instead of by an ABORT message.
    Begin { xid: Xid, participants: Vec<NodeId> },
    /// The decision. COMMIT is forced before any COMMIT is sent; ABORT is
    /// not forced (presumed abort).
    Decision {
        xid: Xid,
        decision: Decision,
        participants: Vec<NodeId>,
    },
    /// Every participant acknowledged the COMMIT; not forced.
    End { xid: Xid },
    /// Participant `id`, configured at `configured`, was heard from at
    /// `addr`: the durable part of the coordinator's directory. With the
    /// coordinator's own id, where it last started (a different address at
    /// the next start means it moved, and says hello). At start
    /// the latest one for an id is used while the configuration still says
    /// `configured` (the operator has not changed it since). Not forced;
    /// the protocol core ignores it.
    Peer {
        id: NodeId,
        addr: String,
        /// The peer's incarnation when it was heard there (see
        /// `ParticipantRecord::Started`).
        incarnation: u64,
        configured: String,
    },
    // Variants are only ever added at the end (the log holds their index).
    /// An operator action (SPEC §8), forced: once with `result: None`
    /// before anything is done, so that no action goes unrecorded, and
    /// again with the same `seq` and its result. Kept across compactions;
    /// the protocol core ignores it.
    Audit(AuditRecord),
}

/// One operator action as the coordinator's log keeps it: who, when, why,
/// on what, and (in the second record) what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Numbers the actions of one coordinator, from 1.
    pub seq: u64,
    /// Wall-clock time the request came (milliseconds since the Unix
    /// epoch, by the coordinator's clock): for people, never for ordering.
    pub at_unix_ms: u64,
    /// Who asked, as they named themselves.
    pub operator: String,
    /// Why, in their words.
    pub reason: String,
    pub xid: Xid,
    pub action: AuditAction,
    /// `None` in the first record; the outcome in the second.
    pub result: Option<AuditResult>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// Send the decision again now to every branch that has not
    /// acknowledged it.
    RetryNow,
    /// Carry out `decision` on `participant`'s in-doubt branch without its
    /// coordinator's decision.
    Heuristic {
        participant: NodeId,
        decision: Decision,
    },
}

impl AuditAction {
    /// "retry now", "heuristic commit of bank-a".
    pub fn describe(&self) -> String {
        match self {
            AuditAction::RetryNow => "retry now".into(),
            AuditAction::Heuristic {
                participant,
                decision,
            } => format!(
                "heuristic {} of {participant}'s branch",
                match decision {
                    Decision::Commit => "commit",
                    Decision::Abort => "abort",
                }
            ),
        }
    }
}

/// What an operator action did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditResult {
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// Forced before VOTE READY: everything needed to commit later, across
    /// restarts.
    Ready {
        xid: Xid,
        coordinator: NodeId,
        epoch: Epoch,
        participants: Vec<NodeId>,
        work: Vec<u8>,
    },
    /// The outcome. COMMIT is forced before the ACK; ABORT is not forced.
    /// After a `OnePhase` record the COMMIT is lazy (the one-phase record
    /// already decided it).
    Outcome { xid: Xid, decision: Decision },
    /// A record that belongs to the resource (for example the key-value
    /// resource's seed accounts, or its snapshot); the protocol ignores it.
    Resource { body: Vec<u8> },
    /// Written only by compaction: these branches finished with these
    /// decisions (oldest first), and their effects are already in the
    /// resource snapshot before this record. Recovery remembers the
    /// outcomes (duplicates get the same answer); the resource applies
    /// nothing for them. One record for all of them, so that a snapshot of
    /// many finished branches costs one encode and one log record.
    Finished { outcomes: Vec<(Xid, Decision)> },
    /// Where node `id` (a coordinator) was last heard from: the durable
    /// part of the participant's directory, so that after a restart an
    /// in-doubt branch can inquire of its coordinator (named by id in the
    /// READY record) even before that coordinator has sent anything. Not
    /// forced; the latest record for an id wins. The protocol core and the
    /// resource ignore it.
    Peer {
        id: NodeId,
        addr: String,
        /// The peer's incarnation when it was heard there.
        incarnation: u64,
    },
    /// Forced before this participant sends anything after a start: its
    /// incarnation (one more than the last), sent with every frame so that
    /// peers can tell its current address from one a delayed frame of an
    /// earlier life claims, and the address it started at (a different one
    /// than last time means it moved, and says hello). The protocol core
    /// and the resource ignore it.
    Started { incarnation: u64, addr: String },
    /// Where another participant (a peer, not a coordinator) was, as a
    /// PREPARE, a CHAIN PREPARE or a coordinator's welcome said, or as the
    /// peer's own hello after it moved: so that an in-doubt branch can run
    /// cooperative termination, and a linear chain's member reach its
    /// decider, after a restart, when the coordinator may be down. Lazy,
    /// except for a moved peer's hello (forced before the welcome); the
    /// latest record for an id wins; not greeted at start. The protocol
    /// core and the resource ignore it.
    PeerHint {
        id: NodeId,
        addr: String,
        incarnation: u64,
    },
    // Variants are only ever added at the end: the log holds their
    // index (postcard), and logs written by an earlier build must still
    // decode.
    /// One-phase commit: forced once the resource prepared the single
    /// branch of a transaction, and its commit point (the branch decides;
    /// the coordinator logs nothing that matters). Holds what a READY
    /// record holds, so that recovery can commit it (not ask anyone) if
    /// no outcome record follows.
    OnePhase {
        xid: Xid,
        coordinator: NodeId,
        epoch: Epoch,
        work: Vec<u8>,
        /// Linear 2PC: the chain this branch ends (it is the decider);
        /// empty for a one-phase commit. Recovery of a decider whose
        /// chain has not confirmed waits for that confirmation first.
        chain: Vec<NodeId>,
    },
    /// Hierarchical 2PC: a sub-coordinator's READY record, forced once
    /// its own part is prepared and every child voted, before its VOTE
    /// READY. Like `Ready`, plus the children that voted READY: after a
    /// restart in doubt, the decision it learns goes on to them, and a
    /// COMMIT is ACKed upward only once each of them ACKed it.
    SubtreeReady {
        xid: Xid,
        coordinator: NodeId,
        epoch: Epoch,
        participants: Vec<NodeId>,
        work: Vec<u8>,
        children: Vec<NodeId>,
    },
    /// An operator's heuristic decision (SPEC §8) for an in-doubt branch,
    /// forced before the resource is asked to carry it out: from here on
    /// the branch is decided `decision` as if its coordinator had said so,
    /// across restarts, and a later contrary decision is reported as a
    /// heuristic conflict (not carried out). `audit` names the
    /// coordinator's audit record ("coordinator-id#seq").
    Heuristic {
        xid: Xid,
        decision: Decision,
        audit: String,
    },
}
