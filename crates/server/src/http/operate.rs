//! The operator routes of the HTTP API (SPEC §8): retry now, a heuristic
//! decision of one branch, and the audit trail. Like every route they
//! only translate: the coordinator node checks the operator token
//! (`X-Concord-Operator-Token`), the typed-out xid and whether the action
//! is needed, and records it.

use super::problem::ApiError;
use super::routes::{body_bytes, json, parse, xid_of, Api};
use crate::wire::{Reply, Request};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use concord_api::http::{
    AuditBody, AuditEntryBody, HeuristicBody, InDoubtBody, InDoubtBranchBody, OperatorBody, Problem,
};
use concord_api::{OperatorRequest, Refusal};
use concord_proto::{AuditAction, Xid};
use std::sync::Arc;
use std::time::Duration;

/// The header that carries the operator token.
pub const OPERATOR_TOKEN_HEADER: &str = "x-concord-operator-token";

/// How long an action may take here: a heuristic decision waits up to 30 s
/// for the participant, plus two forced writes.
const OPERATOR_WAIT: Duration = Duration::from_secs(40);

/// Send the decision again now to every branch that has not acknowledged
/// it (a COMMIT being delivered, or a one-phase branch asked what it did).
/// Recorded in the audit trail before and after.
#[utoipa::path(post, path = "/v1/transactions/{xid}/retry", tag = "operations",
    params(
        ("xid" = String, Path, description = "The transaction"),
        ("X-Concord-Operator-Token" = String, Header,
            description = "The coordinator's --operator-token-file token"),
    ),
    request_body = OperatorBody,
    responses(
        (status = 200, description = "Done: its audit entry", body = AuditEntryBody),
        (status = 400, description = "The confirmation is not the xid, or who/why is missing",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only (no operator token configured) or a wrong \
            token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not in flight here", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Nothing to retry (still deciding, or the COMMIT record \
            is being written)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn retry(
    State(api): State<Arc<Api>>,
    Path(xid): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let body: OperatorBody = parse(&body_bytes(body)?)?;
    let asked = (body.confirm, body.operator, body.reason);
    act(&api, request(xid, AuditAction::RetryNow, asked, &headers)).await
}

/// Decide one participant's in-doubt branch without its coordinator: only
/// where the protocol cannot finish it by itself (this coordinator has not
/// decided it, and the participant has been waiting past the time its
/// decision should take). A contrary decision from its coordinator later
/// is reported, not carried out: the branches then disagree.
#[utoipa::path(post, path = "/v1/transactions/{xid}/branches/{participant}/heuristic",
    tag = "operations",
    params(
        ("xid" = String, Path, description = "The transaction"),
        ("participant" = String, Path, description = "The branch's participant"),
        ("X-Concord-Operator-Token" = String, Header,
            description = "The coordinator's --operator-token-file token"),
    ),
    request_body = HeuristicBody,
    responses(
        (status = 200, description = "Carried out: its audit entry", body = AuditEntryBody),
        (status = 400, description = "The confirmation is not the xid, or who/why is missing",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only or a wrong token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such participant", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Not needed or not allowed: the protocol finishes it, or \
            the branch is not in doubt (the audit trail keeps a refusal by the participant)",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn heuristic(
    State(api): State<Arc<Api>>,
    Path((xid, participant)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let body: HeuristicBody = parse(&body_bytes(body)?)?;
    let action = AuditAction::Heuristic {
        participant,
        decision: body.decision.into(),
    };
    let asked = (body.confirm, body.operator, body.reason);
    act(&api, request(xid, action, asked, &headers)).await
}

/// The audit trail of operator actions, oldest first, and whether this
/// coordinator takes them.
#[utoipa::path(get, path = "/v1/audit", tag = "operations",
    responses(
        (status = 200, description = "The trail", body = AuditBody),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn audit(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let request = Request::Audit {
        request_id: api.request_id(),
    };
    match super::routes::one_reply(&api, request).await? {
        Reply::Audit {
            writable, entries, ..
        } => Ok(json(
            StatusCode::OK,
            &AuditBody {
                writable,
                entries: entries.iter().map(AuditEntryBody::of).collect(),
            },
        )),
        other => Err(unexpected(other)),
    }
}

/// A participant's branches in doubt, asked of it through this
/// coordinator: those of any coordinator, including one that is gone
/// (what a heuristic decision is for).
#[utoipa::path(get, path = "/v1/participants/{participant}/in-doubt", tag = "participants",
    params(("participant" = String, Path, description = "A configured participant")),
    responses(
        (status = 200, description = "Its branches in doubt", body = InDoubtBody),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "Not a participant of this coordinator (or an HTTP \
            service)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The participant could not be asked", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn in_doubt(
    State(api): State<Arc<Api>>,
    Path(participant): Path<String>,
) -> Result<Response, ApiError> {
    let mut replies = api.submit(Request::InDoubtAt {
        request_id: api.request_id(),
        participant,
    })?;
    let reply = match tokio::time::timeout(OPERATOR_WAIT, replies.recv()).await {
        Ok(Some(reply)) => reply,
        _ => return Err(ApiError::unavailable("the coordinator did not answer", 1)),
    };
    match reply {
        Reply::InDoubt {
            participant,
            branches,
            ..
        } => Ok(json(
            StatusCode::OK,
            &InDoubtBody {
                participant,
                branches: branches.iter().map(InDoubtBranchBody::of).collect(),
            },
        )),
        Reply::Refused {
            refusal: Refusal::NotFound,
            message,
            ..
        } => Err(ApiError::not_found(message)),
        Reply::Refused { message, .. } | Reply::Error { message, .. } => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, message))
        }
        other => Err(unexpected(other)),
    }
}

/// The node's request for `action` on `xid`: the confirmation, who and
/// why from the body, the token from its header (the time is the
/// server's, filled in when it arrives).
fn request(
    xid: Xid,
    action: AuditAction,
    (confirm, operator, reason): (String, String, String),
    headers: &HeaderMap,
) -> OperatorRequest {
    let token = headers
        .get(OPERATOR_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_string();
    OperatorRequest {
        xid,
        action,
        confirm,
        operator,
        reason,
        token,
        at_unix_ms: 0,
    }
}

async fn act(api: &Api, action: OperatorRequest) -> Result<Response, ApiError> {
    let xid: Xid = action.xid;
    let mut replies = api.submit(Request::Operator {
        request_id: api.request_id(),
        action,
    })?;
    let reply = match tokio::time::timeout(OPERATOR_WAIT, replies.recv()).await {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            return Err(ApiError::unavailable(
                "the coordinator stopped during the action; its audit trail (GET /v1/audit) \
                 says how far it got",
                5,
            ))
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "no answer within 40 s; the audit trail (GET /v1/audit) says how far it got",
                1,
            ))
        }
    };
    match reply {
        Reply::Operator { entry, .. } => {
            let body = AuditEntryBody::of(&entry);
            if body.ok == Some(true) {
                Ok(json(StatusCode::OK, &body))
            } else {
                let detail = format!(
                    "not done (audit entry #{}): {}",
                    entry.seq,
                    body.result.as_deref().unwrap_or("no result")
                );
                Err(ApiError::new(StatusCode::CONFLICT, detail).with_xid(xid))
            }
        }
        Reply::Refused {
            refusal, message, ..
        } => {
            let status = match refusal {
                Refusal::ReadOnly | Refusal::BadToken => StatusCode::FORBIDDEN,
                Refusal::BadRequest => StatusCode::BAD_REQUEST,
                Refusal::NotFound => StatusCode::NOT_FOUND,
                Refusal::NotNeeded => StatusCode::CONFLICT,
                Refusal::Unreachable => StatusCode::BAD_GATEWAY,
            };
            Err(ApiError::new(status, message).with_xid(xid))
        }
        Reply::Error { message, .. } => Err(ApiError::bad_request(message).with_xid(xid)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: Reply) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "unexpected answer from the coordinator: {}",
            reply.request_id()
        ),
    )
}
