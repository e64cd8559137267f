//! The JSON bodies of the coordinator's HTTP API (`/v1`, SPEC §4), shared
//! by the server, the tests and (later) the console. Requests refuse
//! unknown fields, so a typo is a 400 naming the field instead of a
//! silently ignored setting. States are stable snake_case enums; xids are
//! the 32-hex-digit strings the CLI prints.

use crate::{BranchView, CoordinatorState, CoordinatorStatus};
use concord_proto::Shape;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use utoipa::ToSchema;

/// `POST /v1/transactions`: a one-shot transaction with its branches, or,
/// without branches, an open-ended one (then `lifetime_ms` applies and
/// the other fields must be left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BeginBody {
    #[serde(default)]
    pub branches: Vec<BranchBody>,
    /// Open-ended only: abort it unless committed or aborted within this
    /// (default 60,000, at most 3,600,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<u64>,
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

/// One branch: key-value operations on a concord participant (`ops`), or
/// the work an HTTP participant is sent in its `prepare` call (`work`,
/// any JSON), never both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchBody {
    pub participant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<KvOpBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub work: Option<serde_json::Value>,
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
    /// Open-ended: taking branches until committed or aborted (or its
    /// lifetime runs out: then aborted).
    Open,
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
            CoordinatorState::Open => TxnStateName::Open,
        }
    }
}

/// `POST /v1/transactions/{xid}/branches`: branches for an open
/// transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    pub branches: Vec<BranchBody>,
}

/// The answer to a registration: how many branches the transaction has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredBody {
    pub xid: String,
    pub branches: usize,
}

/// `POST /v1/transactions/{xid}/commit` (the body may be left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    /// How long to wait for the outcome before answering 202 (default
    /// [`WAIT_MS_DEFAULT`]).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The answer to opening a transaction (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpenedBody {
    pub xid: String,
    /// `open`.
    pub state: TxnStateName,
    /// Aborted unless committed or aborted within this.
    pub lifetime_ms: u64,
    /// The coordinator's `--name`: the second part of a PostgreSQL gid
    /// (`cc1:<coordinator>:<participant>:<xid>:<branch>:<hold_s>`).
    pub coordinator: String,
    pub status_url: String,
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
    /// The branch's state as the coordinator sees it.
    pub state: BranchStateName,
    /// The COMMIT on its way to it, while it has not acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryBody>,
}

/// A branch's state, as a stable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BranchStateName {
    /// Asked to prepare; no vote yet.
    Preparing,
    /// Voted READY; the decision is not acknowledged yet.
    Ready,
    /// Voted READY, COMMIT not acknowledged for longer than
    /// `--attention-after`: still re-sent, see `delivery`.
    NeedsAttention,
    /// Acknowledged COMMIT.
    Committed,
    /// The transaction aborted (its reason names who voted ABORT).
    Aborted,
    /// The coordinator does not track it (below a sub-coordinator, or a
    /// recovered transaction's branch).
    Unknown,
}

/// [`DeliveryView`](crate::DeliveryView) as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryBody {
    /// COMMIT messages sent so far (in this coordinator's life).
    pub attempts: u32,
    /// Milliseconds since the first was sent.
    pub pending_ms: u64,
    /// What the transport last reported, if anything.
    pub last_error: Option<String>,
    pub needs_attention: bool,
}

impl TxnBranchBody {
    fn of(b: &BranchView, txn: CoordinatorState) -> TxnBranchBody {
        let state = match (txn, b.voted_ready, b.acked) {
            (CoordinatorState::Aborted, _, _) => BranchStateName::Aborted,
            (_, _, Some(true)) => BranchStateName::Committed,
            _ if b.delivery.as_ref().is_some_and(|d| d.needs_attention) => {
                BranchStateName::NeedsAttention
            }
            (_, Some(true), _) => BranchStateName::Ready,
            (_, Some(false), _) => BranchStateName::Preparing,
            (_, None, _) => BranchStateName::Unknown,
        };
        TxnBranchBody {
            participant: b.id.clone(),
            addr: b.addr.clone(),
            parent: b.parent.clone(),
            voted_ready: b.voted_ready,
            acked: b.acked,
            state,
            delivery: b.delivery.as_ref().map(|d| DeliveryBody {
                attempts: d.attempts,
                pending_ms: d.pending_ms,
                last_error: d.last_error.clone(),
                needs_attention: d.needs_attention,
            }),
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
                s.branches
                    .iter()
                    .map(|b| TxnBranchBody::of(b, s.state))
                    .collect()
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

/// The HTTP participant contract: what the coordinator POSTs to a service
/// registered with `--http-participant NAME=URL`, at `URL/prepare`. The
/// xid and branch are the idempotency key: a duplicate must get the same
/// answer as the first call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParticipantPrepareCall {
    pub xid: String,
    /// The branch: the participant's NAME.
    pub branch: String,
    /// The coordinator's `--name`.
    pub coordinator: String,
    /// The branch's work as the application gave it (`work` of the
    /// branch in `POST /v1/transactions`).
    #[schema(value_type = Object)]
    pub work: serde_json::Value,
    /// Answer by then (RFC 3339): later, the coordinator has aborted.
    pub deadline: String,
    pub timeout_ms: u64,
}

/// What a service answers to `prepare` (200). `ready` promises that its
/// part is durable and that it will apply it if COMMIT comes, whatever
/// happens to it meanwhile (a restart included); it holds what the work
/// needs until the decision. `abort` may carry the reason, which the
/// application is shown. `read_only`: nothing to change, no phase 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantVoteAnswer {
    pub vote: ParticipantVote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A service's vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantVote {
    Ready,
    Abort,
    ReadOnly,
}

/// What the coordinator POSTs to `URL/commit` and `URL/abort`. A 2xx
/// answer means done (COMMIT: applied and durable); anything else is
/// retried with capped exponential backoff and jitter for as long as it
/// takes. An xid the service does not know means nothing to do (finished
/// and forgotten, or never prepared there): answer 2xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParticipantDecisionCall {
    pub xid: String,
    pub branch: String,
    pub coordinator: String,
}

/// `GET /v1/transactions/{xid}/timeline`: what happened to one
/// transaction at the coordinator, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineBody {
    pub xid: String,
    /// When it began (RFC 3339), if this coordinator's life saw it begin.
    pub began_at: Option<String>,
    pub entries: Vec<TimelineEntryBody>,
    /// Entries not kept (over the per-transaction bound of 128).
    pub dropped: u64,
    /// Nothing more will be added.
    pub finished: bool,
}

/// One entry of a [`TimelineBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntryBody {
    /// RFC 3339, milliseconds.
    pub at: String,
    /// Milliseconds since the transaction began (or since the first
    /// entry).
    pub offset_ms: f64,
    pub event: crate::TimelineEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl TimelineBody {
    /// `view`, taken when the wall clock said `now`.
    pub fn of(view: &crate::TimelineView, now: SystemTime) -> TimelineBody {
        let wall =
            |at_us: u64| rfc3339(now - Duration::from_micros(view.now_us.saturating_sub(at_us)));
        let origin = view
            .began_us
            .or_else(|| view.entries.first().map(|e| e.at_us))
            .unwrap_or(view.now_us);
        TimelineBody {
            xid: view.xid.to_string(),
            began_at: view.began_us.map(wall),
            entries: view
                .entries
                .iter()
                .map(|e| TimelineEntryBody {
                    at: wall(e.at_us),
                    offset_ms: e.at_us.saturating_sub(origin) as f64 / 1000.0,
                    event: e.event,
                    peer: e.peer.clone(),
                    message: e.message.clone(),
                    attempt: e.attempt,
                    detail: e.detail.clone(),
                })
                .collect(),
            dropped: view.dropped,
            finished: view.finished,
        }
    }
}

/// `at` in RFC 3339 (UTC, milliseconds).
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_788_000_000_123);
        assert_eq!(rfc3339(at), "2026-08-29T10:40:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}

/// `GET /v1/transactions/{xid}` query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TxnQuery {
    /// With several instances over a shared store: the coordinator (log)
    /// that began it, the `coordinator` of every participant call. The
    /// instance asked answers for that log only, asking its holder if
    /// that is another instance. Without it every log is asked.
    pub log: Option<String>,
}

/// `GET /v1/transactions` query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// A state (`open`, `preparing`, `committing`, `committed_waiting_for_acks`,
    /// `committed`, `aborted`, `one_phase`), or `in_doubt` (prepared somewhere,
    /// outcome not yet acknowledged by all) or `needs_attention`.
    pub state: Option<String>,
    /// Only transactions with a branch on this participant.
    pub participant: Option<String>,
    /// Begun at least this long ago.
    pub min_age_ms: Option<u64>,
    /// Begun at most this long ago.
    pub max_age_ms: Option<u64>,
    /// Only transactions whose xid starts with these hex digits.
    pub xid_prefix: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/transactions`: a page, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnListBody {
    pub transactions: Vec<TxnSummaryBody>,
    /// Ask again with `cursor=` this for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One transaction of a [`TxnListBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnSummaryBody {
    pub xid: String,
    pub state: TxnStateName,
    pub age_ms: Option<u64>,
    pub participants: Vec<String>,
    pub shape: Option<ShapeName>,
    pub needs_attention: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&crate::TxnSummary> for TxnSummaryBody {
    fn from(s: &crate::TxnSummary) -> TxnSummaryBody {
        TxnSummaryBody {
            xid: s.xid.to_string(),
            state: s.state.into(),
            age_ms: s.age_ms,
            participants: s.participants.clone(),
            shape: s.shape.map(ShapeName::from),
            needs_attention: s.needs_attention,
            reason: s.reason.clone(),
        }
    }
}

impl ListQuery {
    /// The node's filter; an unknown state is an error naming the known.
    pub fn filter(&self) -> Result<crate::ListFilter, String> {
        let mut filter = crate::ListFilter {
            participant: self.participant.clone(),
            min_age_ms: self.min_age_ms,
            max_age_ms: self.max_age_ms,
            ..crate::ListFilter::default()
        };
        if let Some(prefix) = &self.xid_prefix {
            let prefix = prefix.trim();
            if prefix.is_empty()
                || prefix.len() > 32
                || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!("xid_prefix: 1 to 32 hex digits, got {prefix:?}"));
            }
            filter.xid_prefix = Some(prefix.to_ascii_lowercase());
        }
        match self.state.as_deref() {
            None => {}
            Some("in_doubt") => filter.in_doubt = true,
            Some("needs_attention") => filter.needs_attention = true,
            Some(name) => {
                let state: TxnStateName = serde_json::from_value(serde_json::Value::String(
                    name.to_string(),
                ))
                .map_err(|_| {
                    format!(
                        "state: unknown state {name:?}; one of open, preparing, \
                                 committing, committed_waiting_for_acks, committed, aborted, \
                                 one_phase, in_doubt, needs_attention"
                    )
                })?;
                let state = match state {
                    TxnStateName::Open => CoordinatorState::Open,
                    TxnStateName::Preparing => CoordinatorState::Wait,
                    TxnStateName::Committing => CoordinatorState::Committing,
                    TxnStateName::CommittedWaitingForAcks => {
                        CoordinatorState::CommittedWaitingForAcks
                    }
                    TxnStateName::Committed => CoordinatorState::Committed,
                    TxnStateName::Aborted => CoordinatorState::Aborted,
                    TxnStateName::OnePhase => CoordinatorState::OnePhase,
                    TxnStateName::NoRecord | TxnStateName::Pending => {
                        return Err(format!(
                            "state: {name:?} is not a state a listed transaction has"
                        ))
                    }
                };
                filter.states.push(state);
            }
        }
        Ok(filter)
    }
}

/// `POST /v1/transactions/{xid}/retry` and the heuristic route: an
/// operator action's confirmation, who and why. The operator token goes in
/// the `X-Concord-Operator-Token` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorBody {
    /// The transaction's xid typed out in full (32 hex digits).
    pub confirm: String,
    /// Who asks (kept in the audit trail).
    pub operator: String,
    /// Why (kept in the audit trail).
    pub reason: String,
}

/// `POST /v1/transactions/{xid}/branches/{participant}/heuristic`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeuristicBody {
    /// What to do with the in-doubt branch: `commit` or `abort`.
    pub decision: DecisionName,
    pub confirm: String,
    pub operator: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionName {
    Commit,
    Abort,
}

impl From<DecisionName> for concord_proto::Decision {
    fn from(d: DecisionName) -> Self {
        match d {
            DecisionName::Commit => concord_proto::Decision::Commit,
            DecisionName::Abort => concord_proto::Decision::Abort,
        }
    }
}

/// `GET /v1/audit`: whether operator actions are allowed here, and every
/// action so far, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditBody {
    /// False: the coordinator has no `--operator-token-file` (read-only).
    pub writable: bool,
    pub entries: Vec<AuditEntryBody>,
}

/// One operator action of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryBody {
    pub seq: u64,
    /// When it was asked (RFC 3339, by the coordinator's clock).
    pub at: String,
    pub operator: String,
    pub reason: String,
    pub xid: String,
    /// `retry_now`, `heuristic_commit` or `heuristic_abort`.
    pub action: String,
    /// The branch, for a heuristic decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// `None`: the coordinator stopped before the action finished (what
    /// it did is unknown; ask the participant).
    pub ok: Option<bool>,
    /// What it did, or why not.
    pub result: Option<String>,
}

impl AuditEntryBody {
    pub fn of(entry: &concord_proto::AuditRecord) -> AuditEntryBody {
        use concord_proto::{AuditAction, Decision};
        let (action, participant) = match &entry.action {
            AuditAction::RetryNow => ("retry_now", None),
            AuditAction::Heuristic {
                participant,
                decision: Decision::Commit,
            } => ("heuristic_commit", Some(participant.clone())),
            AuditAction::Heuristic {
                participant,
                decision: Decision::Abort,
            } => ("heuristic_abort", Some(participant.clone())),
        };
        AuditEntryBody {
            seq: entry.seq,
            at: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(entry.at_unix_ms)),
            operator: entry.operator.clone(),
            reason: entry.reason.clone(),
            xid: entry.xid.to_string(),
            action: action.into(),
            participant,
            ok: entry.result.as_ref().map(|r| r.ok),
            result: entry.result.as_ref().map(|r| r.detail.clone()),
        }
    }
}

/// `GET /v1/participants/{participant}/in-doubt`: the participant's
/// branches in doubt, whichever coordinator they belong to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InDoubtBody {
    pub participant: String,
    pub branches: Vec<InDoubtBranchBody>,
}

/// One branch of an [`InDoubtBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InDoubtBranchBody {
    pub xid: String,
    /// The coordinator its READY record names.
    pub coordinator: String,
    /// It has had to ask for its decision (an operator's heuristic
    /// decision is allowed only then).
    pub overdue: bool,
    pub inquiries: u32,
    /// Why it still waits.
    pub why: String,
    /// How long it has held its locks, if it voted READY in the
    /// participant's current life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
}

impl InDoubtBranchBody {
    pub fn of(branch: &crate::InDoubtBranch) -> InDoubtBranchBody {
        InDoubtBranchBody {
            xid: branch.xid.to_string(),
            coordinator: branch.coordinator.clone(),
            overdue: branch.inquiries > 0,
            inquiries: branch.inquiries,
            why: branch.why.clone(),
            held_ms: branch.held_ms,
        }
    }
}
