//! The 2PC messages of SPEC §1 exchanged between coordinator and participants.
//!
//! Every message carries the xid, the coordinator's epoch and the sender's
//! address (so a reply never depends on which connection a message came in
//! on). The vote is `Vote::Ready` / `Vote::Abort` and the decision
//! `Decision::Commit` / `Decision::Abort`: two types on purpose, so a vote can
//! never be mistaken for a decision.

use crate::ids::{Epoch, NodeId, Xid};
use crate::tree::TreeEntry;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub xid: Xid,
    pub epoch: Epoch,
    pub from: NodeId,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Phase 1, coordinator → participant: can you commit `work`? The
    /// participant list goes along (cooperative termination needs it).
    /// `deadline_ms` is the time left to vote; the participant never takes
    /// longer than that.
    Prepare {
        participants: Vec<NodeId>,
        work: Vec<u8>,
        deadline_ms: u64,
    },
    /// Participant → coordinator: the vote on phase 1.
    Vote(Vote),
    /// Phase 2, coordinator → participant: the global decision.
    Decision(Decision),
    /// Participant → coordinator: the decision is carried out and its
    /// outcome record is durable.
    Ack,
    /// "What was decided?" — from a READY participant after a timeout or a
    /// restart, to the coordinator or (cooperative termination, SPEC §1.6)
    /// to a peer. `prepared_ms_ago`: how long ago the asker received its
    /// PREPARE (`None` after a restart, when it no longer knows). A peer
    /// that has no record of the xid uses it to tell "never prepared" (it
    /// may abort unilaterally) from "finished and forgotten" (it must not
    /// answer at all): see `PEER_ABORT_AGE_MS_MAX`.
    Inquire { prepared_ms_ago: Option<u64> },
    /// The answer to INQUIRE.
    State(TxnState),
    /// One-phase commit, coordinator → the single participant of a
    /// transaction: prepare `work` and, if it can, commit it at once. The
    /// participant decides: its forced one-phase record is the commit
    /// point, and it answers ACK (committed) or VOTE ABORT. The coordinator
    /// forces nothing. `deadline_ms` as in PREPARE.
    OnePhase { work: Vec<u8>, deadline_ms: u64 },
    /// Coordinator → the branch of a one-phase commit, after its timeout:
    /// what did you do? `sent_ms_ago`: how long ago ONE-PHASE COMMIT left.
    /// The branch answers STATE COMMITTED or ABORTED (a branch that never
    /// got it, or is still preparing, aborts it first, durably), READY
    /// while its record is being forced, or UNKNOWN when the question comes
    /// too late to tell "never got it" from "committed and forgot" (see
    /// `PEER_ABORT_AGE_MS_MAX`). Not INQUIRE: a peer's INQUIRE must not
    /// be answered ABORTED for an xid a READ-ONLY vote before a restart
    /// may have let commit, but here the asker is the one who decides
    /// what a READ-ONLY single branch means (nothing changed either way).
    OnePhaseStatus { sent_ms_ago: u64 },
    /// Linear 2PC (SPEC §1.7): PREPARE travelling along `chain`, the
    /// participants in order. `works` are the works of the receiver and of
    /// everyone after it, the receiver's first; every member before it has
    /// voted READY (the votes so far: a VOTE ABORT stops the chain). The
    /// receiver prepares, forces its READY record (naming the last member,
    /// the decider, as the one to ask) and passes the rest on; the last
    /// member decides, and its forced one-phase record is the commit point.
    /// The decision travels back as COMMIT (or VOTE ABORT) from each
    /// member to the one before it; the first tells the coordinator (ACK
    /// or VOTE ABORT) and the decider (ACK: every branch is committed).
    Chain {
        chain: Vec<NodeId>,
        works: Vec<Vec<u8>>,
        deadline_ms: u64,
    },
    /// A member of a linear chain, READY and without the decision, asks
    /// the chain's decider (answered like ONE-PHASE STATUS). A decider
    /// forgets a decision only after the whole chain confirmed it
    /// committed, so no member can be in doubt about one it forgot: with
    /// no record, the chain never reached it, and it aborts (durably)
    /// before answering ABORTED.
    ChainInquire,
    /// Hierarchical 2PC (SPEC §1.7): PREPARE to a sub-coordinator, with
    /// the subtree below it (`tree`, flat: see [`crate::tree`]). The
    /// receiver prepares its own `work` and sends each child its PREPARE
    /// (or TREE PREPARE) with a shorter deadline, collects their votes,
    /// forces its READY record naming the children that voted READY, and
    /// only then votes READY itself. A VOTE ABORT or a silent child
    /// aborts the subtree. In phase 2 it passes the decision down and
    /// ACKs only once every READY child has ACKed; its children ask it,
    /// with CHAIN INQUIRE, when in doubt.
    TreePrepare {
        participants: Vec<NodeId>,
        work: Vec<u8>,
        tree: Vec<TreeEntry>,
        deadline_ms: u64,
    },
}

/// How a global transaction's messages flow (SPEC §1.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// The coordinator talks to every participant; about 4n messages.
    #[default]
    Centralized,
    /// A chain in the order of the branches, the last one deciding; about
    /// 2n messages.
    Linear,
    /// A tree: the coordinator talks to the roots, each inner node is the
    /// sub-coordinator of its children.
    Hierarchical,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Centralized => "centralized",
            Shape::Linear => "linear",
            Shape::Hierarchical => "hierarchical",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        [Shape::Centralized, Shape::Linear, Shape::Hierarchical]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

impl Message {
    /// Short name for logs and metrics ("VOTE READY", "COMMIT", ...).
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

impl Body {
    /// The PREPARE for a branch with the subtree `below` it: a plain
    /// PREPARE for a leaf, a TREE PREPARE for a sub-coordinator.
    pub fn prepare_below(
        participants: Vec<NodeId>,
        work: Vec<u8>,
        below: Vec<TreeEntry>,
        deadline_ms: u64,
    ) -> Body {
        if below.is_empty() {
            Body::Prepare {
                participants,
                work,
                deadline_ms,
            }
        } else {
            Body::TreePrepare {
                participants,
                work,
                tree: below,
                deadline_ms,
            }
        }
    }

    /// The nodes a PREPARE (or TREE PREPARE) names: the participant list
    /// and the subtree, for the hints that go along.
    pub fn named_nodes(&self) -> Vec<NodeId> {
        match self {
            Body::Prepare { participants, .. } => participants.clone(),
            Body::TreePrepare {
                participants, tree, ..
            } => participants
                .iter()
                .cloned()
                .chain(tree.iter().map(|e| e.node.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Body::Prepare { .. } => "PREPARE",
            Body::Vote(Vote::Ready) => "VOTE READY",
            Body::Vote(Vote::Abort { .. }) => "VOTE ABORT",
            Body::Vote(Vote::ReadOnly) => "VOTE READ-ONLY",
            Body::Decision(Decision::Commit) => "COMMIT",
            Body::Decision(Decision::Abort) => "ABORT",
            Body::Ack => "ACK",
            Body::Inquire { .. } => "INQUIRE",
            Body::State(_) => "STATE",
            Body::OnePhase { .. } => "ONE-PHASE COMMIT",
            Body::OnePhaseStatus { .. } => "ONE-PHASE STATUS",
            Body::Chain { .. } => "CHAIN PREPARE",
            Body::ChainInquire => "CHAIN INQUIRE",
            Body::TreePrepare { .. } => "TREE PREPARE",
        }
    }
}

/// A participant's phase-1 vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// My part is durable and I will commit if told to.
    Ready,
    /// I cannot commit; the reason is shown to the client.
    Abort { reason: String },
    /// I have nothing to change (the work only reads): I wrote nothing,
    /// hold nothing, and need no phase 2. The coordinator leaves me out of
    /// the decision record and of COMMIT/ABORT.
    ReadOnly,
}

/// The coordinator's global decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    Commit,
    Abort,
}

/// What a process knows about a transaction, as answered to INQUIRE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Initial,
    Ready,
    Committed,
    Aborted,
    /// Not decided yet (votes still being collected, or the decision is not
    /// durable yet): keep waiting, never guess.
    Unknown,
}
