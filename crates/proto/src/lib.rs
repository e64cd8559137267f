//! concord-proto: the two-phase-commit protocol without any IO.
//!
//! This crate holds the protocol messages, the durable log records and the
//! sans-IO [`Coordinator`] and [`Participant`] state machines. They take
//! events (a message, a timer, "this record is durable", a resource's answer)
//! with the current time passed in, and return [`CoordinatorAction`]s /
//! [`ParticipantAction`]s for a driver to carry out.
//!
//! It must never touch sockets, files, threads, the clock or randomness: the
//! same code runs under the tokio driver and under the deterministic
//! simulator, and a simulated seed must replay exactly.
//!
//! Persist-then-send holds by construction: a message that depends on a
//! forced write (VOTE READY, a COMMIT decision, an ACK) is kept inside the
//! state machine (see [`gate`]) and only comes out of `on_durable` for the
//! ticket of that write.

pub mod codec;
pub mod coordinator;
pub mod gate;
pub mod ids;
pub mod message;
pub mod mutant;
pub mod participant;
pub mod record;
pub mod tree;

pub use coordinator::{
    BeginError, BranchStatus, Coordinator, CoordinatorAction, CoordinatorConfig, CoordinatorNotice,
    CoordinatorPhase, RecoveredOutcome, TxnOutcome, TxnStatus,
};
pub use gate::{Durability, PersistTicket};
pub use ids::{
    Epoch, LatencyPhase, NodeId, Time, TimerKey, TimerKind, Xid, FINISHED_MS_MIN, PARTICIPANTS_MAX,
    PEER_ABORT_AGE_MS_MAX, WORK_BYTES_MAX,
};
pub use message::{Body, Decision, Message, Shape, TxnState, Vote};
pub use participant::{Participant, ParticipantAction, ParticipantConfig, ParticipantNotice};
pub use record::{AuditAction, AuditRecord, AuditResult, CoordinatorRecord, ParticipantRecord};
pub use tree::{TreeEntry, TREE_DEPTH_MAX, TREE_FAN_OUT_MAX};
