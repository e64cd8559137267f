//! concord-api: the request, reply and report types that concord's servers,
//! its client SDK, the CLI and (later) the HTTP API and console share.
//!
//! These are plain data: what a client asks a coordinator or participant,
//! what it gets back, and the decoders for bodies that came from the
//! network. Framing (which frame kind carries what) is described here with
//! the kind numbers, but frames themselves are built by the transport users
//! (`concord-net` knows nothing of these types, and this crate nothing of
//! sockets or servers).
//!
//! | kind | body | direction |
//! |---|---|---|
//! | [`KIND_PEER`] | a [`PeerEnvelope`]: the sender's id and address, and a 2PC [`Message`] or a hello | coordinator ⇄ participant (and peer ⇄ peer) |
//! | [`KIND_REQUEST`] | a client [`Request`] | client → coordinator or participant |
//! | [`KIND_REPLY`] | a client [`Reply`] | coordinator or participant → client, on the connection the request came in on |
//!
//! Nothing in this crate may panic on bytes that came from the network.

pub mod http;
pub mod tree;

use concord_proto::codec::{decode, DecodeError};
use concord_proto::{AuditAction, AuditRecord, Decision, Message, NodeId, Shape, TxnState, Xid};
use serde::{Deserialize, Serialize};

/// Between nodes: a [`PeerEnvelope`].
pub const KIND_PEER: u8 = 1;

/// What travels between nodes: who sent it, where it can be answered, and
/// what it says. The protocol names nodes by id; `reply_to` is how each
/// node's directory learns (and re-learns, after a move) where an id can
/// be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEnvelope {
    /// The sender's id; equals `message.from` for a message.
    pub from: NodeId,
    /// The sender's address for answers (its advertised address).
    pub reply_to: String,
    /// The sender's incarnation (a participant's `Started` record, a
    /// coordinator's epoch): a higher one means a later life, so a delayed
    /// frame from an earlier life never moves the sender back to an address
    /// it has left.
    pub incarnation: u64,
    /// Where other nodes this message names can be reached, as far as the
    /// sender knows: a PREPARE carries the addresses of the other
    /// participants, so that cooperative termination (SPEC §1.6) can ask
    /// them when the coordinator is down. Hints only: a receiver learns
    /// them like any address, never over what it heard from a later life.
    /// Empty for every other frame.
    pub peers: Vec<PeerHint>,
    pub body: PeerBody,
}

/// One directory hint of a [`PeerEnvelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    pub id: NodeId,
    pub addr: std::sync::Arc<str>,
    /// The incarnation that address was heard from (0: configured).
    pub incarnation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerBody {
    /// A 2PC message.
    Message(Message),
    /// "I am `from`, at `reply_to`": sent by a node when it starts to the
    /// peers it knows of (and again until it hears from each), so that a
    /// node restarted on a new address is found again. Answered with
    /// [`PeerBody::Welcome`]. Carries no protocol state.
    Hello,
    /// The answer to a hello; not answered.
    Welcome,
}
/// A client request ([`Request`]).
pub const KIND_REQUEST: u8 = 2;
/// A reply to a client request ([`Reply`]).
pub const KIND_REPLY: u8 = 3;

/// Largest reply body a client accepts. Replies can be bigger than peer
/// messages (a participant with many accounts), so clients read with this
/// bound instead of the servers' `frame_bytes_max`.
pub const REPLY_BYTES_MAX: usize = 16 << 20;

/// Most xids one `ListInFlight` reply carries.
pub const IN_FLIGHT_LISTED_MAX: usize = 10_000;

/// One branch of a global transaction as a client names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRequest {
    /// The participant's name as configured at the coordinator
    /// (`--participant NAME=ADDR`); its address is accepted too.
    pub participant: String,
    /// Opaque work for the participant's resource (for the built-in
    /// key-value resource: [`concord_participant::kv::encode_work`]).
    pub work: Vec<u8>,
}

/// A client request. Every variant carries the client's `request_id`,
/// echoed in the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Coordinator: run a global transaction. Answered first with
    /// [`Reply::Begun`] (the xid), then with [`Reply::Outcome`], or with a
    /// single [`Reply::Error`] if it could not start.
    Begin {
        request_id: u64,
        branches: Vec<BranchRequest>,
        /// Phase-1 timeout for this transaction; the server's default when
        /// `None`.
        prepare_timeout_ms: Option<u64>,
        /// How its messages flow: centralized, linear in the order of
        /// `branches` (the last one decides), or hierarchical.
        shape: Shape,
        /// Hierarchical only: each branch's parent in the tree, in the
        /// order of `branches` (0: the coordinator; `k`: branch `k - 1`,
        /// which comes earlier). Empty: every branch the coordinator's own
        /// (a flat tree). See `concord_proto::tree`.
        parents: Vec<u32>,
        /// A retry with the same key (and the same request) joins the
        /// transaction the first one began instead of starting another.
        idempotency_key: Option<String>,
    },
    /// Coordinator: what it knows about `xid`.
    Status { request_id: u64, xid: Xid },
    /// Coordinator: xids of transactions not yet ended, oldest first.
    ListInFlight { request_id: u64 },
    /// Participant: committed balances, in-doubt xids and held locks.
    Accounts { request_id: u64 },
    /// PostgreSQL participant: what its last reconciliation found in
    /// `pg_prepared_xacts`, with the gids it cannot resolve.
    Prepared { request_id: u64 },
    /// Participant: its state of one branch. Unlike a peer INQUIRE this
    /// has no side effect (an INQUIRE about an unknown xid makes the
    /// participant abort it unilaterally).
    BranchState { request_id: u64, xid: Xid },
    /// Coordinator or participant: the latency estimates per peer and
    /// phase, and the timeouts they set (SPEC §3).
    Timeouts { request_id: u64 },
    /// Coordinator or participant: counters of its log and network since
    /// it started (for `concord bench`: fsyncs and messages per
    /// transaction).
    Stats { request_id: u64 },
    /// Coordinator: begin an open-ended transaction (no branches yet).
    /// Answered with [`Reply::Opened`]. Not committed or aborted within
    /// its lifetime (the server's default when `None`), it is aborted.
    Open {
        request_id: u64,
        lifetime_ms: Option<u64>,
        idempotency_key: Option<String>,
    },
    /// Coordinator: add branches to an open transaction. Answered with
    /// [`Reply::Registered`], or [`Reply::NotOpen`].
    Register {
        request_id: u64,
        xid: Xid,
        branches: Vec<BranchRequest>,
    },
    /// Coordinator: run the two phases over an open transaction's
    /// branches. Answered as a [`Request::Begin`] (Begun, then Outcome); a
    /// repeat joins the first. [`Reply::NotOpen`] if it never was open
    /// here (or is no longer remembered).
    Commit { request_id: u64, xid: Xid },
    /// Coordinator: abort an open transaction. Answered with the outcome
    /// (a repeat too), or [`Reply::NotOpen`] once it is committing.
    Abort { request_id: u64, xid: Xid },
    /// Coordinator: the timeline of `xid`. Answered with
    /// [`Reply::Timeline`].
    Timeline { request_id: u64, xid: Xid },
    /// Coordinator: the transactions it knows of, newest first, that
    /// match `filter`; at most `limit`, after `cursor` (a previous page's
    /// `next_cursor`). Answered with [`Reply::List`].
    List {
        request_id: u64,
        filter: ListFilter,
        cursor: Option<String>,
        limit: usize,
    },
    /// Coordinator: an operator action (SPEC §8). Answered with
    /// [`Reply::Operator`] once both of its audit records are durable, or
    /// [`Reply::Refused`] (and nothing done, nothing recorded).
    Operator {
        request_id: u64,
        action: OperatorRequest,
    },
    /// Coordinator: its audit trail, oldest first. Answered with
    /// [`Reply::Audit`].
    Audit { request_id: u64 },
    /// Participant, from a coordinator carrying out an operator's
    /// heuristic decision: decide the in-doubt branch `xid` `decision`.
    /// Answered with [`Reply::Heuristic`] once it is carried out, or
    /// [`Reply::Refused`]. `audit` names the coordinator's audit record.
    Heuristic {
        request_id: u64,
        xid: Xid,
        decision: Decision,
        audit: String,
    },
    /// Participant: its branches in doubt (READY, outcome unknown), with
    /// their coordinator and why each still waits. Answered with
    /// [`Reply::InDoubt`].
    InDoubt { request_id: u64 },
    /// Coordinator: ask participant `participant` for its branches in
    /// doubt (`Request::InDoubt`), for the operator's view of what the
    /// protocol may not finish by itself. Answered with [`Reply::InDoubt`].
    InDoubtAt {
        request_id: u64,
        participant: String,
    },
}

/// One branch in doubt at a participant ([`Reply::InDoubt`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InDoubtBranch {
    pub xid: Xid,
    /// The coordinator its READY record names.
    pub coordinator: NodeId,
    /// INQUIREs sent so far; 0: its decision is not overdue yet (an
    /// operator's heuristic decision is refused until it is).
    pub inquiries: u32,
    /// Why it still waits (who it asked, what they answered).
    pub why: String,
    /// How long it has held its locks, if it voted READY in this life.
    pub held_ms: Option<u64>,
}

/// An operator action as asked: what, on which transaction, by whom, why,
/// with the confirmation and the operator token (never shown by `Debug`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub xid: Xid,
    pub action: AuditAction,
    /// Must be the xid, typed out (the full 32 hex digits).
    pub confirm: String,
    pub operator: String,
    pub reason: String,
    /// The coordinator's `--operator-token-file` token.
    pub token: String,
    /// Filled in by the server when the request arrives (its wall clock),
    /// whatever the client sent: the node never reads a clock.
    pub at_unix_ms: u64,
}

impl std::fmt::Debug for OperatorRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRequest")
            .field("xid", &self.xid)
            .field("action", &self.action)
            .field("confirm", &self.confirm)
            .field("operator", &self.operator)
            .field("reason", &self.reason)
            .field("token", &"…")
            .field("at_unix_ms", &self.at_unix_ms)
            .finish()
    }
}

/// Why an operator action (or a heuristic decision at a participant) was
/// refused; nothing was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The coordinator has no operator token: it is read-only.
    ReadOnly,
    /// The token given is not the coordinator's.
    BadToken,
    /// The confirmation is not the xid, or the operator or reason is
    /// missing.
    BadRequest,
    /// No such transaction or participant.
    NotFound,
    /// The protocol can finish it (or it is finished): nothing for an
    /// operator to do.
    NotNeeded,
    /// The participant could not be asked.
    Unreachable,
}

/// What `Request::List` selects; every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Any of these states (empty: any state).
    pub states: Vec<CoordinatorState>,
    /// Prepared somewhere and not yet told the outcome: preparing,
    /// committing, committed but not acknowledged by every branch.
    pub in_doubt: bool,
    /// A branch flagged needs attention.
    pub needs_attention: bool,
    /// One of its branches is this participant.
    pub participant: Option<String>,
    /// Begun at least / at most this long ago.
    pub min_age_ms: Option<u64>,
    pub max_age_ms: Option<u64>,
    /// Its xid (32 lower-case hex digits) starts with these hex digits.
    pub xid_prefix: Option<String>,
}

/// Whether `xid`, written as 32 hex digits, starts with the hex digits
/// `prefix` (any case); false for a prefix that is not 1 to 32 hex digits.
pub fn xid_has_prefix(xid: Xid, prefix: &str) -> bool {
    let len = prefix.len();
    if len == 0 || len > 32 {
        return false;
    }
    match u128::from_str_radix(prefix, 16) {
        // The top 4·len bits of the 128 are the prefix's digits.
        Ok(value) if prefix.bytes().all(|b| b.is_ascii_hexdigit()) => {
            xid.0.checked_shr(128 - 4 * len as u32).unwrap_or(0) == value
        }
        _ => false,
    }
}

/// One transaction of a [`Reply::List`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnSummary {
    pub xid: Xid,
    pub state: CoordinatorState,
    /// Since it began, if this coordinator's life saw it begin.
    pub age_ms: Option<u64>,
    pub participants: Vec<String>,
    pub shape: Option<Shape>,
    pub needs_attention: bool,
    /// Why it aborted.
    pub reason: Option<String>,
}

impl Request {
    pub fn request_id(&self) -> u64 {
        match self {
            Request::Begin { request_id, .. }
            | Request::Status { request_id, .. }
            | Request::ListInFlight { request_id }
            | Request::Accounts { request_id }
            | Request::Prepared { request_id }
            | Request::BranchState { request_id, .. }
            | Request::Timeouts { request_id }
            | Request::Stats { request_id }
            | Request::Open { request_id, .. }
            | Request::Register { request_id, .. }
            | Request::Commit { request_id, .. }
            | Request::Abort { request_id, .. }
            | Request::Timeline { request_id, .. }
            | Request::List { request_id, .. }
            | Request::Operator { request_id, .. }
            | Request::Audit { request_id }
            | Request::Heuristic { request_id, .. }
            | Request::InDoubt { request_id }
            | Request::InDoubtAt { request_id, .. } => *request_id,
        }
    }

    /// Whether answering it changes nothing (a query).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status { .. }
                | Request::ListInFlight { .. }
                | Request::Accounts { .. }
                | Request::Prepared { .. }
                | Request::BranchState { .. }
                | Request::Timeouts { .. }
                | Request::Stats { .. }
                | Request::Timeline { .. }
                | Request::List { .. }
                | Request::Audit { .. }
                | Request::InDoubt { .. }
                | Request::InDoubtAt { .. }
        )
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Begin { .. } => "Begin",
            Request::Status { .. } => "Status",
            Request::ListInFlight { .. } => "ListInFlight",
            Request::Accounts { .. } => "Accounts",
            Request::Prepared { .. } => "Prepared",
            Request::BranchState { .. } => "BranchState",
            Request::Timeouts { .. } => "Timeouts",
            Request::Stats { .. } => "Stats",
            Request::Open { .. } => "Open",
            Request::Register { .. } => "Register",
            Request::Commit { .. } => "Commit",
            Request::Abort { .. } => "Abort",
            Request::Timeline { .. } => "Timeline",
            Request::List { .. } => "List",
            Request::Operator { .. } => "Operator",
            Request::Audit { .. } => "Audit",
            Request::Heuristic { .. } => "Heuristic",
            Request::InDoubt { .. } => "InDoubt",
            Request::InDoubtAt { .. } => "InDoubtAt",
        }
    }
}

/// A reply to a client [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The transaction started under `xid`; its [`Reply::Outcome`] follows.
    Begun {
        request_id: u64,
        xid: Xid,
    },
    /// The global decision. A commit is reported only once the COMMIT
    /// decision record is durable.
    Outcome {
        request_id: u64,
        xid: Xid,
        outcome: Outcome,
    },
    Status {
        request_id: u64,
        status: CoordinatorStatus,
    },
    InFlight {
        request_id: u64,
        xids: Vec<Xid>,
        /// More transactions are in flight than `xids` lists.
        truncated: bool,
    },
    Accounts {
        request_id: u64,
        accounts: AccountsReport,
    },
    Prepared {
        request_id: u64,
        report: PreparedStatus,
    },
    BranchState {
        request_id: u64,
        xid: Xid,
        state: TxnState,
        /// For a branch in doubt: why it still waits (who it asked and
        /// what they answered; see cooperative termination, SPEC §1.6).
        detail: Option<String>,
    },
    /// The request could not be carried out; `message` says why.
    Error {
        request_id: u64,
        message: String,
    },
    Timeouts {
        request_id: u64,
        report: TimeoutsReport,
    },
    Stats {
        request_id: u64,
        stats: ServerStats,
    },
    /// An open-ended transaction began: its xid, and when it is aborted
    /// unless committed or aborted before.
    Opened {
        request_id: u64,
        xid: Xid,
        lifetime_ms: u64,
        /// The coordinator's `--name` (PostgreSQL gids carry it).
        coordinator: String,
    },
    /// Branches were added: how many the transaction has now.
    Registered {
        request_id: u64,
        xid: Xid,
        branches: usize,
    },
    /// `None`: no timeline is kept for it (never seen in this life, or
    /// dropped at the bound).
    Timeline {
        request_id: u64,
        timeline: Option<TimelineView>,
    },
    /// A page of transactions; `next_cursor` asks for the next one.
    List {
        request_id: u64,
        transactions: Vec<TxnSummary>,
        next_cursor: Option<String>,
        /// Changes whenever anything the listing shows may have changed
        /// (but ages, which grow by themselves): the same version and the
        /// same query give the same page (HTTP's ETag).
        version: String,
    },
    /// `xid` is not open (any more): `state` says where it is.
    NotOpen {
        request_id: u64,
        xid: Xid,
        state: CoordinatorState,
        message: String,
    },
    /// An operator action done: its audit record, with the result.
    Operator {
        request_id: u64,
        entry: AuditRecord,
    },
    /// An operator action (or heuristic decision) refused, and why.
    Refused {
        request_id: u64,
        refusal: Refusal,
        message: String,
    },
    /// The audit trail, oldest first: one entry per action (its result
    /// `None` if the coordinator stopped before the action finished).
    Audit {
        request_id: u64,
        /// Whether operator actions are allowed (an operator token is
        /// configured).
        writable: bool,
        entries: Vec<AuditRecord>,
    },
    /// A heuristic decision carried out at a participant.
    Heuristic {
        request_id: u64,
        xid: Xid,
        decision: Decision,
    },
    /// A participant's branches in doubt, oldest xid first.
    InDoubt {
        request_id: u64,
        participant: String,
        branches: Vec<InDoubtBranch>,
    },
}

impl Reply {
    pub fn request_id(&self) -> u64 {
        match self {
            Reply::Begun { request_id, .. }
            | Reply::Outcome { request_id, .. }
            | Reply::Status { request_id, .. }
            | Reply::InFlight { request_id, .. }
            | Reply::Accounts { request_id, .. }
            | Reply::Prepared { request_id, .. }
            | Reply::BranchState { request_id, .. }
            | Reply::Error { request_id, .. }
            | Reply::Timeouts { request_id, .. }
            | Reply::Stats { request_id, .. }
            | Reply::Opened { request_id, .. }
            | Reply::Registered { request_id, .. }
            | Reply::NotOpen { request_id, .. }
            | Reply::Timeline { request_id, .. }
            | Reply::List { request_id, .. }
            | Reply::Operator { request_id, .. }
            | Reply::Refused { request_id, .. }
            | Reply::Audit { request_id, .. }
            | Reply::Heuristic { request_id, .. }
            | Reply::InDoubt { request_id, .. } => *request_id,
        }
    }

    /// Whether this reply ends its request (every reply but `Begun`).
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Begun { .. })
    }
}

/// The outcome of a global transaction as told to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Committed,
    Aborted { reason: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Committed => write!(f, "committed"),
            Outcome::Aborted { reason } => write!(f, "aborted: {reason}"),
        }
    }
}

/// Where a transaction stands at the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorState {
    /// PREPARE sent, collecting votes.
    Wait,
    /// Every vote was READY; the COMMIT record is being forced.
    Committing,
    /// COMMIT is durable and sent; waiting for ACKs.
    CommittedWaitingForAcks,
    /// Committed and every participant acknowledged (END).
    Committed,
    Aborted,
    /// The coordinator has no record of it. With presumed abort this means
    /// ABORTED if the transaction ever existed (or the record was older
    /// than the coordinator's memory of recent outcomes).
    NoRecord,
    /// One-phase commit: the single branch decides; waiting for its
    /// answer.
    OnePhase,
    /// Open-ended: begun, taking branches, not yet committed or aborted.
    Open,
}

impl std::fmt::Display for CoordinatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CoordinatorState::Wait => "WAIT (collecting votes)",
            CoordinatorState::Committing => "COMMIT (forcing the decision record)",
            CoordinatorState::CommittedWaitingForAcks => "COMMITTED (waiting for ACKs)",
            CoordinatorState::Committed => "COMMITTED (ended)",
            CoordinatorState::Aborted => "ABORTED",
            CoordinatorState::NoRecord => "NO RECORD (presumed aborted)",
            CoordinatorState::OnePhase => "ONE-PHASE (the single branch decides)",
            CoordinatorState::Open => "OPEN (taking branches; not committed yet)",
        })
    }
}

/// One transaction's timeline at the coordinator (`concord timeline`,
/// `GET /v1/transactions/{xid}/timeline`). Times are the coordinator's
/// monotonic clock in µs; `now_us` is that clock when the view was taken,
/// so `now - (now_us - at_us)` is an entry's wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineView {
    pub xid: Xid,
    pub now_us: u64,
    /// When it began (its first entry), if this life saw the begin.
    pub began_us: Option<u64>,
    pub entries: Vec<TimelineEntry>,
    /// Entries not kept (over the per-transaction bound).
    pub dropped: u64,
    /// Ended or aborted: nothing more will be added.
    pub finished: bool,
}

/// One entry of a [`TimelineView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_us: u64,
    pub event: TimelineEvent,
    /// The participant sent to or heard from.
    pub peer: Option<String>,
    /// The message or log record (`PREPARE`, `VOTE READY`, `COMMIT
    /// record`…).
    pub message: Option<String>,
    /// For a sent message: 1 for the first send, 2 for the first resend…
    pub attempt: Option<u32>,
    /// The timeout's estimate, the abort's reason, the error…
    pub detail: String,
}

/// What a timeline entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimelineEvent {
    Begun,
    Sent,
    Received,
    Timeout,
    Logged,
    Durable,
    DeliveryFailed,
    Decided,
    NeedsAttention,
    AttentionCleared,
    Ended,
    /// An operator's action (retry now, a heuristic decision).
    Operator,
}

/// The coordinator's view of one transaction (`concord status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    pub xid: Xid,
    pub state: CoordinatorState,
    /// Human-readable details: age, resends, abort reason.
    pub detail: String,
    /// The transaction's branches; for [`CoordinatorState::NoRecord`],
    /// every configured participant (any of them may have been one). A
    /// tree's nodes come parents first, a chain's members in chain order.
    pub branches: Vec<BranchView>,
    /// How its messages flow; `None` when this coordinator's life did not
    /// begin it (recovered from the log, or no record).
    pub shape: Option<Shape>,
}

impl CoordinatorStatus {
    /// How the transaction ran, in one line: the tree, or the chain and
    /// its decider (`None` if the coordinator does not know).
    pub fn layout(&self) -> Option<String> {
        let names = || self.branches.iter().map(|b| b.id.as_str());
        Some(match self.shape? {
            Shape::Centralized => format!(
                "centralized: the coordinator talks to {}",
                names().collect::<Vec<_>>().join(", ")
            ),
            Shape::Linear => format!(
                "linear: chain {} ({} decides)",
                names().collect::<Vec<_>>().join(" → "),
                names().next_back().unwrap_or("?")
            ),
            Shape::Hierarchical => {
                let nodes: Vec<(String, Option<String>)> = self
                    .branches
                    .iter()
                    .map(|b| (b.id.clone(), b.parent.clone()))
                    .collect();
                format!("hierarchical: tree {}", tree::Tree::from_parents(&nodes))
            }
        })
    }

    /// How far below the coordinator branch `i` sits (0: it talks to the
    /// coordinator), for indenting; bounded by the branch count.
    pub fn depth_of(&self, i: usize) -> usize {
        let mut depth = 0;
        let mut at = self.branches.get(i);
        while let Some(parent) = at.and_then(|b| b.parent.as_deref()) {
            if depth >= self.branches.len() {
                break;
            }
            depth += 1;
            at = self.branches.iter().find(|b| b.id == parent);
        }
        depth
    }
}

/// One branch as the coordinator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    /// The participant's id (its configured name, or its address).
    pub id: String,
    /// Configured name, or the address if it has none.
    pub name: String,
    pub addr: String,
    /// `None` when the coordinator does not track it (finished, or no
    /// record).
    pub voted_ready: Option<bool>,
    pub acked: Option<bool>,
    /// In a tree, the id of this branch's sub-coordinator (`None`: the
    /// coordinator talks to it directly).
    pub parent: Option<String>,
    /// The COMMIT being delivered to it, while it has not acknowledged.
    #[serde(default)]
    pub delivery: Option<DeliveryView>,
}

/// A decision on its way to one branch (SPEC §8: retried for as long as it
/// takes; flagged *needs attention* after `--attention-after`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// COMMIT messages sent to it so far (in this coordinator's life).
    pub attempts: u32,
    /// Since the first was sent.
    pub pending_ms: u64,
    /// What the transport last reported (an HTTP status, a refused
    /// connection), if anything.
    pub last_error: Option<String>,
    pub needs_attention: bool,
}

/// Latency estimates and the timeouts they set (`concord status
/// --timeouts`): at a coordinator one entry per configured participant and
/// phase (`prepare`, `decision`); at a participant one per coordinator it
/// has measured (`vote→decision`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsReport {
    /// "coordinator" or "participant".
    pub role: String,
    pub phases: Vec<PhaseEstimate>,
}

impl TimeoutsReport {
    /// The entry of `phase` for `peer`, given by name or address (labels
    /// are "name (addr)" or a bare address).
    pub fn find(&self, peer: &str, phase: &str) -> Option<&PhaseEstimate> {
        self.phases.iter().find(|e| {
            e.phase == phase
                && (e.peer == peer
                    || e.peer.starts_with(&format!("{peer} ("))
                    || e.peer.ends_with(&format!("({peer})")))
        })
    }
}

/// A PostgreSQL participant's last reconciliation (`concord status
/// --participant ADDR --prepared`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedStatus {
    /// A listing has succeeded since start.
    pub reconciled: bool,
    /// Prepared transactions in the whole PostgreSQL cluster.
    pub prepared: u64,
    pub max_prepared_transactions: u64,
    /// Held by this participant's branches (the protocol resolves them).
    pub held: u64,
    /// This participant's own, within their hold (their PREPARE may come).
    pub waiting: u64,
    /// Not this participant's to resolve.
    pub unresolvable: u64,
    /// Age of the oldest waiting or unresolvable one, by the database's
    /// clock.
    pub oldest_unresolved_ms: u64,
    /// The waiting and unresolvable ones (at most 100), oldest first.
    pub unresolved: Vec<UnresolvedGid>,
    /// Resolved by reconciliation since start.
    pub commits: u64,
    pub rollbacks: u64,
    /// Why the last listing failed, while it does.
    pub last_error: Option<String>,
}

/// One prepared transaction a participant does not resolve (yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnresolvedGid {
    pub gid: String,
    pub age_ms: u64,
    /// `waiting` (its own, within its hold), `participant NAME` (another
    /// concord participant's) or `foreign` (not a concord gid).
    pub owner: String,
}

/// A participant's resource state (`concord accounts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsReport {
    /// Committed balances, by account name.
    pub balances: Vec<(String, i64)>,
    /// Branches that voted READY and do not know the outcome yet.
    pub in_doubt: Vec<Xid>,
    /// Locked accounts with the transaction holding each.
    pub locks: Vec<(String, Xid)>,
    /// Why each branch in doubt still waits, in the order of `in_doubt`.
    pub waiting: Vec<(Xid, String)>,
}

impl AccountsReport {
    pub fn total(&self) -> i64 {
        self.balances.iter().map(|(_, b)| *b).sum()
    }

    pub fn balance(&self, account: &str) -> Option<i64> {
        self.balances
            .iter()
            .find(|(a, _)| a == account)
            .map(|(_, b)| *b)
    }
}

/// Counters of one server since it started (`Request::Stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// "coordinator" or "participant".
    pub role: String,
    /// False when the server runs with `--unsafe-no-fsync` (a benchmark
    /// baseline): then its "forced" records are NOT durable.
    pub fsync: bool,
    /// Log records appended, of them forced, and the batches and fsyncs
    /// they took (group commit: `log_syncs` ≤ `log_forced`; 0 fsyncs when
    /// `fsync` is false).
    pub log_records: u64,
    pub log_forced: u64,
    pub log_batches: u64,
    pub log_syncs: u64,
    pub log_bytes: u64,
    /// Application frames (heartbeats excluded) sent and received on every
    /// connection, peers and clients alike, and the write calls that
    /// carried the sent ones (coalescing: `net_writes` ≤ `net_frames_sent`).
    pub net_frames_sent: u64,
    pub net_frames_received: u64,
    pub net_writes: u64,
}

/// Estimates of one (peer, phase) for `status`, in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseEstimate {
    /// Configured name and address of the peer ("p0 (127.0.0.1:7101)").
    pub peer: String,
    /// The peer's id alone ("p0").
    pub peer_id: String,
    pub phase: String,
    pub samples: u64,
    pub srtt_us: Option<u64>,
    pub rttvar_us: Option<u64>,
    pub rto_us: Option<u64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub backoff_level: u32,
    /// The timeout a transaction begun now would get from this peer.
    pub timeout_ms: u64,
    /// How `timeout_ms` was computed, as logged when a timeout fires.
    pub basis: String,
}

/// A [`PeerBody`] by reference, for [`encode_peer`].
#[derive(Clone, Copy, Debug)]
pub enum PeerBodyRef<'a> {
    Message(&'a Message),
    Hello,
    Welcome,
}

/// The body of a [`KIND_PEER`] frame from borrowed parts: the same bytes
/// as encoding a [`PeerEnvelope`], without copying the message (this runs
/// for every message a node sends).
pub fn encode_peer(
    from: &str,
    reply_to: &str,
    incarnation: u64,
    peers: &[PeerHint],
    message: PeerBodyRef<'_>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct EnvelopeRef<'a> {
        from: &'a str,
        reply_to: &'a str,
        incarnation: u64,
        peers: &'a [PeerHint],
        body: BodyRef<'a>,
    }
    #[derive(Serialize)]
    enum BodyRef<'a> {
        Message(&'a Message),
        Hello,
        Welcome,
    }
    let body = match message {
        PeerBodyRef::Message(message) => BodyRef::Message(message),
        PeerBodyRef::Hello => BodyRef::Hello,
        PeerBodyRef::Welcome => BodyRef::Welcome,
    };
    concord_proto::codec::encode(&EnvelopeRef {
        from,
        reply_to,
        incarnation,
        peers,
        body,
    })
}

/// Decode a peer frame's body (a [`KIND_PEER`] frame).
pub fn decode_peer(body: &[u8]) -> Result<PeerEnvelope, DecodeError> {
    decode("peer message", body)
}

/// Decode a client request body (a [`KIND_REQUEST`] frame).
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    decode("client request", body)
}

/// Decode a reply body (a [`KIND_REPLY`] frame).
pub fn decode_reply(body: &[u8]) -> Result<Reply, DecodeError> {
    decode("client reply", body)
}

#[cfg(test)]
mod xid_prefix_tests {
    use super::*;

    #[test]
    fn a_prefix_is_of_the_32_digit_form() {
        let xid = Xid(0x00ab_cdef_0000_0000_0000_0000_0000_0001);
        assert_eq!(xid.to_string(), "00abcdef000000000000000000000001");
        for yes in [
            "0",
            "00",
            "00ab",
            "00ABCD",
            "00abcdef000000000000000000000001",
        ] {
            assert!(xid_has_prefix(xid, yes), "{yes}");
        }
        for no in [
            "",
            "ab",
            "01",
            "00abce",
            "+0",
            "00abcdef0000000000000000000000011",
            "zz",
        ] {
            assert!(!xid_has_prefix(xid, no), "{no}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::codec::encode;

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        for body in [&[][..], &[0xff; 3][..], &[200, 1, 2, 3, 4, 5][..]] {
            assert!(decode_peer(body).is_err());
            assert!(decode_request(body).is_err());
            assert!(decode_reply(body).is_err());
        }
    }

    #[test]
    fn requests_round_trip() {
        let request = Request::Status {
            request_id: 3,
            xid: Xid(9),
        };
        assert_eq!(decode_request(&encode(&request)).expect("decodes"), request);
    }

    #[test]
    fn borrowed_peer_encoding_is_the_envelope_encoding() {
        let message = Message {
            xid: Xid(5),
            epoch: 2,
            from: "bank-a".into(),
            body: concord_proto::Body::Ack,
        };
        for body in [
            PeerBody::Message(message.clone()),
            PeerBody::Hello,
            PeerBody::Welcome,
        ] {
            let envelope = PeerEnvelope {
                from: "bank-a".into(),
                reply_to: "127.0.0.1:7101".into(),
                incarnation: 300,
                peers: vec![PeerHint {
                    id: "bank-b".into(),
                    addr: "127.0.0.1:7102".into(),
                    incarnation: 4,
                }],
                body: body.clone(),
            };
            let by_ref = match &body {
                PeerBody::Message(m) => PeerBodyRef::Message(m),
                PeerBody::Hello => PeerBodyRef::Hello,
                PeerBody::Welcome => PeerBodyRef::Welcome,
            };
            let borrowed = encode_peer("bank-a", "127.0.0.1:7101", 300, &envelope.peers, by_ref);
            assert_eq!(borrowed, encode(&envelope));
            assert_eq!(decode_peer(&borrowed).expect("decodes"), envelope);
        }
    }
}
