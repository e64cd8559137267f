//! The JSON bodies of the coordinator's HTTP API (`/v1`, SPEC §4), shared
//! by the server, the tests and (later) the console. Requests refuse
//! unknown fields, so a typo is a 400 naming the field instead of a
//! silently ignored setting. States are stable snake_case enums; xids are
//! the 32-hex-digit strings the CLI prints.

use crate::{BranchView, CoordinatorState, CoordinatorStatus};
use concord_proto::Shape;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/transactions`: a one-shot transaction with its branches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BeginBody {
    pub branches: Vec<BranchBody>,
    /// How the messages flow (default centralized).
    #[serde(default)]
    pub shape: Option<ShapeName>,
    /// The tree of a hierarchical transaction, as `concord txn --tree`
    /// takes it (`"bank-a(bank-b,bank-c)"`); implies hierarchical.
    #[serde(default)]
    pub tree: Option<String>,
    /// Phase-1 timeout for this transaction (default: measured).
    #[serde(default)]
    pub prepare_timeout_ms: Option<u64>,
    /// How long the request waits for the outcome before answering 202
    /// with the status URL (default [`WAIT_MS_DEFAULT`]).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// What a request waits for its outcome by default.
pub const WAIT_MS_DEFAULT: u64 = 10_000;
/// The longest a request may wait for its outcome.
pub const WAIT_MS_MAX: u64 = 60_000;

/// One branch: key-value operations on one participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchBody {
    pub participant: String,
    pub ops: Vec<KvOpBody>,
}

/// Add `delta` to `account` (negative: take it out; the branch votes
/// ABORT if the account would go below zero or does not exist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvOpBody {
    pub account: String,
    pub delta: i64,
}

/// The three shapes by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShapeName {
    Centralized,
    Linear,
    Hierarchical,
}

impl From<ShapeName> for Shape {
    fn from(s: ShapeName) -> Shape {
        match s {
            ShapeName::Centralized => Shape::Centralized,
            ShapeName::Linear => Shape::Linear,
            ShapeName::Hierarchical => Shape::Hierarchical,
        }
    }
}

impl From<Shape> for ShapeName {
    fn from(s: Shape) -> ShapeName {
        match s {
            Shape::Centralized => ShapeName::Centralized,
            Shape::Linear => ShapeName::Linear,
            Shape::Hierarchical => ShapeName::Hierarchical,
        }
    }
}

/// A transaction's state at the coordinator, as a stable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnStateName {
    /// PREPARE sent, collecting votes.
    Preparing,
    /// Every vote was READY; the COMMIT record is being forced.
    Committing,
    /// Committed (the decision is durable); not every participant has
    /// acknowledged yet.
    CommittedWaitingForAcks,
    /// Committed and acknowledged by every participant.
    Committed,
    Aborted,
    /// One-phase commit: the single branch decides.
    OnePhase,
    /// No record: ABORTED if it ever began here (presumed abort).
    NoRecord,
    /// The request's wait ran out before the outcome (202): ask the
    /// status URL.
    Pending,
}

impl From<CoordinatorState> for TxnStateName {
    fn from(s: CoordinatorState) -> TxnStateName {
        match s {
            CoordinatorState::Wait => TxnStateName::Preparing,
            CoordinatorState::Committing => TxnStateName::Committing,
            CoordinatorState::CommittedWaitingForAcks => TxnStateName::CommittedWaitingForAcks,
            CoordinatorState::Committed => TxnStateName::Committed,
            CoordinatorState::Aborted => TxnStateName::Aborted,
            CoordinatorState::OnePhase => TxnStateName::OnePhase,
            CoordinatorState::NoRecord => TxnStateName::NoRecord,
        }
    }
}

/// The answer to `POST /v1/transactions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutcomeBody {
    pub xid: String,
    /// `committed`, `aborted`, or `pending` (202: still running when the
    /// wait ran out).
    pub state: TxnStateName,
    /// Why it aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where to ask for its state.
    pub status_url: String,
}

/// `GET /v1/transactions/{xid}`: the coordinator's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransactionBody {
    pub xid: String,
    pub state: TxnStateName,
    /// Age, resends, the abort reason, in words.
    pub detail: String,
    /// `None` when this coordinator's life did not begin it.
    pub shape: Option<ShapeName>,
    /// The tree or chain in one line, as `concord status` prints it.
    pub layout: Option<String>,
    /// Its branches; for `no_record` none (any participant may have been
    /// one).
    pub branches: Vec<TxnBranchBody>,
}

/// One branch of [`TransactionBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnBranchBody {
    pub participant: String,
    pub addr: String,
    /// In a tree, the participant's sub-coordinator.
    pub parent: Option<String>,
    /// The coordinator's view (`None` where it does not track the branch:
    /// finished, or below a sub-coordinator).
    pub voted_ready: Option<bool>,
    pub acked: Option<bool>,
}

impl From<&BranchView> for TxnBranchBody {
    fn from(b: &BranchView) -> TxnBranchBody {
        TxnBranchBody {
            participant: b.id.clone(),
            addr: b.addr.clone(),
            parent: b.parent.clone(),
            voted_ready: b.voted_ready,
            acked: b.acked,
        }
    }
}

impl From<&CoordinatorStatus> for TransactionBody {
    fn from(s: &CoordinatorStatus) -> TransactionBody {
        let no_record = s.state == CoordinatorState::NoRecord;
        TransactionBody {
            xid: s.xid.to_string(),
            state: s.state.into(),
            detail: s.detail.clone(),
            shape: s.shape.map(ShapeName::from),
            layout: s.layout(),
            branches: if no_record {
                Vec::new()
            } else {
                s.branches.iter().map(TxnBranchBody::from).collect()
            },
        }
    }
}

/// `GET /v1/participants`: one participant, its latency estimates and the
/// timeouts they set, per phase (`prepare`, `decision`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParticipantBody {
    pub participant: String,
    pub phases: Vec<crate::PhaseEstimate>,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` for plain HTTP
    /// statuses).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What exactly was wrong, for a person.
    pub detail: String,
    /// The xid concerned, when there is one: a client that lost its
    /// answer can always ask about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<String>,
}
