//! The routes of the HTTP API and their translation to driver requests.
//!
//! Every handler builds one [`Request`], sends it to the driver with a
//! reply channel of its own, and turns the replies into JSON. Bodies are
//! read as bytes and parsed here, so that each kind of bad input gets its
//! own problem: 413 for a body over the limit, 400 naming the field for
//! malformed JSON or an unknown field.

use super::problem::ApiError;
use crate::conn::{self, Inbound, NotTaken};
use crate::peers::{Asked, Peers};
use crate::wire::{Reply, Request};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use concord_api::http::{
    BeginBody, BranchBody, CommitBody, ListQuery, OpenedBody, OutcomeBody, ParticipantBody,
    Problem, RegisterBody, RegisteredBody, TimelineBody, TransactionBody, TxnListBody, TxnQuery,
    TxnStateName, TxnSummaryBody, WAIT_MS_DEFAULT, WAIT_MS_MAX,
};
use concord_api::tree::Tree;
use concord_api::{BranchRequest, CoordinatorState, Outcome};
use concord_participant::kv::{encode_work, merge_per_participant, KvOp};
use concord_proto::{Shape, Xid};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// What the handlers share.
pub struct Api {
    to_driver: mpsc::Sender<Inbound>,
    token: Option<String>,
    next_request: AtomicU64,
    /// With a shared store: the other logs, for lookups by xid.
    peers: Option<Arc<Peers>>,
}

impl Api {
    pub fn new(
        to_driver: mpsc::Sender<Inbound>,
        token: Option<String>,
        peers: Option<Arc<Peers>>,
    ) -> Api {
        Api {
            to_driver,
            token,
            next_request: AtomicU64::new(1),
            peers,
        }
    }

    pub(super) fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Hand `request` to the driver; its replies come out of the receiver.
    pub(super) fn submit(
        &self,
        request: Request,
    ) -> Result<mpsc::UnboundedReceiver<Reply>, ApiError> {
        conn::submit_local(&self.to_driver, request).map_err(|why| match why {
            NotTaken::Busy => ApiError::unavailable(
                "the coordinator has too many HTTP requests queued; retry later",
                1,
            ),
            NotTaken::Closed => ApiError::unavailable("the coordinator is shutting down", 5),
        })
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let protected = Router::new()
        .route("/v1/transactions", post(begin).get(list))
        .route("/v1/transactions/{xid}", get(transaction))
        .route("/v1/transactions/{xid}/branches", post(register))
        .route("/v1/transactions/{xid}/commit", post(commit))
        .route("/v1/transactions/{xid}/abort", post(abort))
        .route("/v1/transactions/{xid}/timeline", get(timeline))
        .route("/v1/participants", get(participants))
        .route("/v1/transactions/{xid}/retry", post(super::operate::retry))
        .route(
            "/v1/transactions/{xid}/branches/{participant}/heuristic",
            post(super::operate::heuristic),
        )
        .route("/v1/audit", get(super::operate::audit))
        .route(
            "/v1/participants/{participant}/in-doubt",
            get(super::operate::in_doubt),
        )
        .route("/openapi.json", get(openapi_json))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&api), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The console's assets: no data in them, so no token.
        .route("/", get(crate::console::index))
        .route("/console.js", get(crate::console::script))
        .route("/operator.js", get(crate::console::operator_script))
        .route("/console.css", get(crate::console::styles))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// A participant's HTTP listener: metrics and liveness only.
pub fn participant_router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// Prometheus metrics in the OpenMetrics text format, rendered by the
/// driver from the node's own counters (`crate::metrics`). No token.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "The metrics (OpenMetrics text format)", body = String,
            content_type = "application/openmetrics-text"),
        (status = 503, description = "The event loop did not answer", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn metrics(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    api.to_driver
        .try_send(Inbound::Scrape(tx))
        .map_err(|_| ApiError::unavailable("the server is busy or stopping; scrape again", 1))?;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(text)) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response()),
        _ => Err(ApiError::unavailable(
            "the event loop did not answer within 5 s",
            1,
        )),
    }
}

/// `Authorization: Bearer <token>` when a token is configured, compared in
/// constant time (no timing leak of how much of a guess was right).
async fn authorize(State(api): State<Arc<Api>>, request: HttpRequest, next: Next) -> Response {
    let Some(token) = &api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this route needs Authorization: Bearer <token> (the server's --api-token-file)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = serde_json::Value)))]
async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready when the driver answers a request within a second: the log is
/// recovered and the event loop is turning.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The coordinator's event loop answers", body = serde_json::Value),
        (status = 503, description = "It did not answer within 1 s, or its store is unavailable", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let request_id = api.request_id();
    // An error answer is not ready either: the coordinator's store is
    // unavailable and it decides nothing (see `run_coordinator_until`).
    let answered = match api.submit(Request::ListInFlight { request_id }) {
        Ok(mut rx) => matches!(
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await,
            Ok(Some(Reply::InFlight { .. }))
        ),
        Err(_) => false,
    };
    if answered {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        ApiError::unavailable(
            "the coordinator's event loop did not answer within 1 s, or its store is \
             unavailable (it decides nothing until the store is back)",
            1,
        )
        .into_response()
    }
}

/// Each configured participant with its latency estimates per phase and
/// the timeout a transaction begun now would get from them (as `concord
/// status --timeouts`).
#[utoipa::path(get, path = "/v1/participants", tag = "participants",
    responses(
        (status = 200, description = "The participants, in configured order",
            body = Vec<ParticipantBody>),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The coordinator did not answer", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn participants(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let request_id = api.request_id();
    let mut replies = api.submit(Request::Timeouts { request_id })?;
    match tokio::time::timeout(Duration::from_secs(5), replies.recv()).await {
        Ok(Some(Reply::Timeouts { report, .. })) => {
            let mut out: Vec<ParticipantBody> = Vec::new();
            for phase in report.phases {
                match out.iter_mut().find(|p| p.participant == phase.peer_id) {
                    Some(p) => p.phases.push(phase),
                    None => out.push(ParticipantBody {
                        participant: phase.peer_id.clone(),
                        phases: vec![phase],
                    }),
                }
            }
            Ok(json(StatusCode::OK, &out))
        }
        _ => Err(ApiError::unavailable("the coordinator did not answer", 1)),
    }
}

/// This API's OpenAPI 3.1 document (also `docs/openapi.json`).
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        super::openapi_document(),
    )
        .into_response()
}

/// The OpenAPI document, generated from the routes' annotations and the
/// JSON types of `concord_api::http`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "concord coordinator HTTP API",
        description = "Distributed transactions (two-phase commit) over HTTP/JSON. Errors are \
            RFC 9457 application/problem+json. xids are 32 hex digits; states are stable \
            snake_case names.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(healthz, readyz, metrics, begin, list, transaction, register, commit, abort, timeline,
        participants, super::operate::retry, super::operate::heuristic, super::operate::audit,
        super::operate::in_doubt),
    components(schemas(
        concord_api::http::ParticipantPrepareCall,
        concord_api::http::ParticipantVoteAnswer,
        concord_api::http::ParticipantVote,
        concord_api::http::ParticipantDecisionCall,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "transactions", description = "Run transactions and look at them"),
        (name = "participants", description = "The participants and their timeouts"),
        (name = "operations", description = "Liveness, readiness, metrics, and operator \
            actions with their audit trail"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme (`--api-token-file`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route (the API is under /v1; see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method",
    )
}

pub(super) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// The body as bytes, or the problem: 413 over the limit, 400 otherwise.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than the server's --http-body-bytes-max",
        ),
        status => ApiError::new(status, format!("cannot read the request body: {e}")),
    })
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

fn status_url(xid: Xid) -> String {
    format!("/v1/transactions/{xid}")
}

/// Run a one-shot transaction and wait for its outcome up to `wait_ms`
/// (then 202 with where to ask). An aborted transaction is a 200 with
/// `state: aborted` and the reason: the request was carried out. With an
/// `Idempotency-Key`, a retry of the same request (after a lost
/// connection, say) joins the transaction the first one began and gets
/// its xid and outcome; the same key with a different request is a 400.
#[utoipa::path(post, path = "/v1/transactions", tag = "transactions",
    request_body = BeginBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "At most 255 bytes; remembered for the coordinator's recent outcomes, \
            in memory (a restart forgets it)")),
    responses(
        (status = 200, description = "The outcome: committed or aborted", body = OutcomeBody),
        (status = 201, description = "Open-ended (begun without branches): its xid; register \
            branches, then commit or abort it", body = OpenedBody),
        (status = 202, description = "Still running when the wait ran out: ask `status_url`",
            body = OutcomeBody),
        (status = 400, description = "Malformed JSON, an unknown field, a bad tree, an unknown \
            participant", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is over --http-body-bytes-max", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "At the admission limit, or stopping; see Retry-After",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn begin(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: BeginBody = parse(&body_bytes(body)?)?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key: not visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    if body.branches.is_empty() {
        if body.shape.is_some() || body.tree.is_some() || body.prepare_timeout_ms.is_some() {
            return Err(ApiError::bad_request(
                "an open-ended transaction (no branches) takes only lifetime_ms: its branches \
                 are registered later, and it runs centralized",
            ));
        }
        return open(&api, body.lifetime_ms, idempotency_key).await;
    }
    if body.lifetime_ms.is_some() {
        return Err(ApiError::bad_request(
            "lifetime_ms: only for an open-ended transaction (one begun without branches)",
        ));
    }
    let tree = match &body.tree {
        Some(text) => {
            Some(Tree::parse(text).map_err(|e| ApiError::bad_request(format!("tree: {e}")))?)
        }
        None => None,
    };
    let shape = match (&tree, body.shape) {
        (Some(_), Some(s)) if Shape::from(s) != Shape::Hierarchical => {
            return Err(ApiError::bad_request(
                "tree: a tree is for shape hierarchical",
            ))
        }
        (Some(_), _) => Shape::Hierarchical,
        (None, s) => s.map(Shape::from).unwrap_or_default(),
    };
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(WAIT_MS_DEFAULT).min(WAIT_MS_MAX));
    let works = branch_works(body.branches)?.into_iter();
    // A tree has one branch per node: merge first, as the client does
    // (otherwise the coordinator merges branches of one participant).
    let (works, parents) = match shape {
        Shape::Hierarchical => {
            let merged = merge_per_participant(works).map_err(ApiError::bad_request)?;
            concord_api::tree::plan(merged, tree.as_ref(), &encode_work(&[]))
                .map_err(|e| ApiError::bad_request(format!("tree: {e}")))?
        }
        _ => (works.collect(), Vec::new()),
    };
    let request_id = api.request_id();
    let replies = api.submit(Request::Begin {
        request_id,
        branches: works
            .into_iter()
            .map(|(participant, work)| BranchRequest { participant, work })
            .collect(),
        prepare_timeout_ms: body.prepare_timeout_ms,
        shape,
        parents,
        idempotency_key,
    })?;
    await_outcome(replies, wait).await
}

/// Wait for the replies of a begin or commit: the xid at once (within
/// [`BEGUN_WAIT`]), then the outcome up to `wait` (else 202 with the status
/// URL).
async fn await_outcome(
    mut replies: mpsc::UnboundedReceiver<Reply>,
    wait: Duration,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let mut begun = None;
    loop {
        // The xid is always waited for (the coordinator sends it at once,
        // before anything can go wrong), so even `wait_ms: 0` names the
        // transaction it started; only the outcome's wait is `wait_ms`.
        let deadline = match begun {
            None => started + BEGUN_WAIT,
            Some(_) => started + wait,
        };
        let reply = match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(reply) => reply,
            Err(_) => {
                let Some(xid) = begun else {
                    return Err(ApiError::unavailable(
                        "the coordinator did not answer the begin within 5 s; it may still \
                         start it (retry with the same Idempotency-Key to find out)",
                        1,
                    ));
                };
                return Ok(outcome(
                    StatusCode::ACCEPTED,
                    xid,
                    TxnStateName::Pending,
                    None,
                ));
            }
        };
        match reply {
            Some(Reply::Begun { xid, .. }) => begun = Some(xid),
            Some(Reply::Outcome {
                xid, outcome: o, ..
            }) => {
                return Ok(match o {
                    Outcome::Committed => {
                        outcome(StatusCode::OK, xid, TxnStateName::Committed, None)
                    }
                    Outcome::Aborted { reason } => {
                        outcome(StatusCode::OK, xid, TxnStateName::Aborted, Some(reason))
                    }
                })
            }
            Some(Reply::Error { message, .. }) => return Err(refused(message)),
            Some(Reply::NotOpen {
                xid,
                state,
                message,
                ..
            }) => return Err(not_open(xid, state, message)),
            Some(other) => {
                tracing::warn!(?other, "unexpected reply to an HTTP begin");
            }
            None => {
                // The driver dropped the request: it is stopping. The xid,
                // if there is one, is what to ask about after the restart.
                let error = ApiError::unavailable(
                    "the coordinator stopped before the outcome; ask the status URL after it \
                     restarts",
                    5,
                );
                return Err(match begun {
                    Some(xid) => error.with_xid(xid),
                    None => error,
                });
            }
        }
    }
}

/// The branches of a request as the node takes them: key-value `ops`
/// encoded, an HTTP participant's `work` as its JSON bytes.
fn branch_works(branches: Vec<BranchBody>) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    branches
        .into_iter()
        .map(|branch| {
            let work = match branch.work {
                Some(_) if !branch.ops.is_empty() => {
                    return Err(ApiError::bad_request(format!(
                        "branches: the branch of {} has both ops (key-value) and work (HTTP \
                         participant); give one",
                        branch.participant
                    )))
                }
                Some(work) => serde_json::to_vec(&work).map_err(|e| {
                    ApiError::bad_request(format!("branches: work of {}: {e}", branch.participant))
                })?,
                None => {
                    let ops: Vec<KvOp> = branch
                        .ops
                        .into_iter()
                        .map(|o| KvOp {
                            account: o.account,
                            delta: o.delta,
                        })
                        .collect();
                    encode_work(&ops)
                }
            };
            Ok((branch.participant, work))
        })
        .collect()
}

/// An error reply from the node: busy (an admission limit: 503 with
/// Retry-After) or a request it cannot carry out (400).
fn refused(message: String) -> ApiError {
    if message.starts_with("busy") || message.starts_with("store unavailable") {
        ApiError::unavailable(message, 1)
    } else {
        ApiError::bad_request(message)
    }
}

/// Not open: 404 without a record, else 409 (a wrong state).
fn not_open(xid: Xid, state: CoordinatorState, message: String) -> ApiError {
    let status = match state {
        CoordinatorState::NoRecord => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    ApiError::new(status, message).with_xid(xid)
}

/// One reply to a request that gets exactly one.
pub(super) async fn one_reply(api: &Api, request: Request) -> Result<Reply, ApiError> {
    let mut replies = api.submit(request)?;
    match tokio::time::timeout(Duration::from_secs(5), replies.recv()).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(ApiError::unavailable("the coordinator is stopping", 5)),
        Err(_) => Err(ApiError::unavailable(
            "the coordinator did not answer within 5 s",
            1,
        )),
    }
}

/// Open an open-ended transaction: 201 with its xid.
async fn open(
    api: &Api,
    lifetime_ms: Option<u64>,
    idempotency_key: Option<String>,
) -> Result<Response, ApiError> {
    let request = Request::Open {
        request_id: api.request_id(),
        lifetime_ms,
        idempotency_key,
    };
    match one_reply(api, request).await? {
        Reply::Opened {
            xid,
            lifetime_ms,
            coordinator,
            ..
        } => {
            let url = status_url(xid);
            let mut response = json(
                StatusCode::CREATED,
                &OpenedBody {
                    xid: xid.to_string(),
                    state: TxnStateName::Open,
                    lifetime_ms,
                    coordinator,
                    status_url: url.clone(),
                },
            );
            if let Ok(value) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        other => Err(refusal(other)),
    }
}

/// A reply that is not the one a handler hoped for, as its problem: a
/// refusal (busy, invalid), not open, or a reply no request expects.
fn refusal(reply: Reply) -> ApiError {
    match reply {
        Reply::Error { message, .. } => refused(message),
        Reply::NotOpen {
            xid,
            state,
            message,
            ..
        } => not_open(xid, state, message),
        reply => {
            tracing::warn!(?reply, "unexpected reply to an HTTP request");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unexpected reply from the coordinator",
            )
        }
    }
}

pub(super) fn xid_of(text: &str) -> Result<Xid, ApiError> {
    text.parse()
        .map_err(|e: String| ApiError::bad_request(format!("xid: {e}")))
}

/// Add branches to an open transaction (the services that did the work
/// register their part).
#[utoipa::path(post, path = "/v1/transactions/{xid}/branches", tag = "transactions",
    params(("xid" = String, Path, description = "An open transaction's xid")),
    request_body = RegisterBody,
    responses(
        (status = 200, description = "Registered: how many branches it has now",
            body = RegisteredBody),
        (status = 400, description = "Malformed, an unknown participant or field", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No record of it", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Not open any more (committing, committed, aborted)",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn register(
    State(api): State<Arc<Api>>,
    Path(xid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let body: RegisterBody = parse(&body_bytes(body)?)?;
    let branches = branch_works(body.branches)?
        .into_iter()
        .map(|(participant, work)| BranchRequest { participant, work })
        .collect();
    let request = Request::Register {
        request_id: api.request_id(),
        xid,
        branches,
    };
    match one_reply(&api, request).await? {
        Reply::Registered { xid, branches, .. } => Ok(json(
            StatusCode::OK,
            &RegisteredBody {
                xid: xid.to_string(),
                branches,
            },
        )),
        other => Err(refusal(other).with_xid(xid)),
    }
}

/// Commit an open transaction: both phases over its branches. Waits for
/// the outcome up to `timeout_ms`, else 202 with the status URL. A retry
/// (after a reset, say) joins the first commit and gets its outcome: a
/// commit never runs twice.
#[utoipa::path(post, path = "/v1/transactions/{xid}/commit", tag = "transactions",
    params(("xid" = String, Path, description = "An open transaction's xid")),
    request_body(content = Option<CommitBody>, description = "May be left out"),
    responses(
        (status = 200, description = "The outcome", body = OutcomeBody),
        (status = 202, description = "Still running when the wait ran out", body = OutcomeBody),
        (status = 400, description = "Malformed, or no branches registered yet", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No record of it", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "At the admission limit (it stays open: retry)",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn commit(
    State(api): State<Arc<Api>>,
    Path(xid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let bytes = body_bytes(body)?;
    let body: CommitBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        CommitBody::default()
    } else {
        parse(&bytes)?
    };
    let wait = Duration::from_millis(body.timeout_ms.unwrap_or(WAIT_MS_DEFAULT).min(WAIT_MS_MAX));
    let replies = api.submit(Request::Commit {
        request_id: api.request_id(),
        xid,
    })?;
    await_outcome(replies, wait).await
}

/// Abort an open transaction (a repeat answers the same).
#[utoipa::path(post, path = "/v1/transactions/{xid}/abort", tag = "transactions",
    params(("xid" = String, Path, description = "An open transaction's xid")),
    responses(
        (status = 200, description = "Aborted", body = OutcomeBody),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No record of it", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Committing or committed: too late to abort",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn abort(State(api): State<Arc<Api>>, Path(xid): Path<String>) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let request = Request::Abort {
        request_id: api.request_id(),
        xid,
    };
    match one_reply(&api, request).await? {
        Reply::Outcome {
            xid,
            outcome: Outcome::Aborted { reason },
            ..
        } => Ok(outcome(
            StatusCode::OK,
            xid,
            TxnStateName::Aborted,
            Some(reason),
        )),
        other => Err(refusal(other).with_xid(xid)),
    }
}

/// What happened to one transaction at the coordinator: each message
/// sent (with its attempt) and received, each vote, timeout (with the
/// estimate behind it), log record and when it became durable, delivery
/// failures, the decision. Kept for the coordinator's most recent 10,000
/// transactions (the oldest finished are dropped first), 128 entries each.
#[utoipa::path(get, path = "/v1/transactions/{xid}/timeline", tag = "transactions",
    params(("xid" = String, Path, description = "The transaction id")),
    responses(
        (status = 200, description = "Its timeline", body = TimelineBody),
        (status = 400, description = "Not an xid", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No timeline kept for it", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn timeline(
    State(api): State<Arc<Api>>,
    Path(xid): Path<String>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let request = Request::Timeline {
        request_id: api.request_id(),
        xid,
    };
    match one_reply(&api, request).await? {
        Reply::Timeline {
            timeline: Some(view),
            ..
        } => Ok(json(
            StatusCode::OK,
            &TimelineBody::of(&view, std::time::SystemTime::now()),
        )),
        Reply::Timeline { timeline: None, .. } => Err(ApiError::not_found(
            "no timeline kept for this xid: it did not begin in this coordinator's life, or \
             its timeline was dropped for newer ones",
        )
        .with_xid(xid)),
        other => Err(refusal(other).with_xid(xid)),
    }
}

/// The transactions the coordinator knows of (open, in flight, and its
/// recent outcomes), newest first, filtered; in pages with a cursor.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions",
    params(ListQuery, ("If-None-Match" = Option<String>, Header,
        description = "The ETag of an earlier answer to the same query: 304 if nothing it \
            shows changed since (ages aside). No ETag for queries with an age bound.")),
    responses(
        (status = 200, description = "A page (with an ETag)", body = TxnListBody),
        (status = 304, description = "Unchanged since the ETag given"),
        (status = 400, description = "An unknown parameter or state, a bad cursor", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = query.filter().map_err(ApiError::bad_request)?;
    // An age bound can change the page with no event at all: no ETag.
    let tagged = filter.min_age_ms.is_none() && filter.max_age_ms.is_none();
    let request = Request::List {
        request_id: api.request_id(),
        filter,
        cursor: query.cursor,
        limit: query.limit.unwrap_or(concord_node::listing::LIMIT_DEFAULT),
    };
    match one_reply(&api, request).await? {
        Reply::List {
            transactions,
            next_cursor,
            version,
            ..
        } => {
            // Conditional polling: the same version, the same page (its
            // ages aside, which a client adds the time since to).
            let etag = format!("W/\"{version}\"");
            let unchanged = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
            if tagged && unchanged {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(value) = HeaderValue::from_str(&etag) {
                    response.headers_mut().insert(header::ETAG, value);
                }
                return Ok(response);
            }
            let mut response = json(
                StatusCode::OK,
                &TxnListBody {
                    transactions: transactions.iter().map(TxnSummaryBody::from).collect(),
                    next_cursor,
                },
            );
            if let (true, Ok(value)) = (tagged, HeaderValue::from_str(&etag)) {
                response.headers_mut().insert(header::ETAG, value);
            }
            Ok(response)
        }
        other => Err(refusal(other)),
    }
}

/// How long a begin waits for the coordinator to name the xid.
const BEGUN_WAIT: Duration = Duration::from_secs(5);

fn outcome(status: StatusCode, xid: Xid, state: TxnStateName, reason: Option<String>) -> Response {
    let url = status_url(xid);
    let mut response = json(
        status,
        &OutcomeBody {
            xid: xid.to_string(),
            state,
            reason,
            status_url: url.clone(),
        },
    );
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `GET /v1/transactions/{xid}` over a shared store: ask whom
/// [`concord_node::locate::plan`] says, all at once, and answer what
/// [`concord_node::locate::combine`] makes of the answers.
async fn located(
    api: &Api,
    peers: &Peers,
    xid: Xid,
    log: Option<&str>,
    forwarded: bool,
) -> Result<Response, ApiError> {
    use concord_node::locate::{self, Answer, Ask, Question, Scan, Verdict};
    let question = Question { log, forwarded };
    let arrived = tokio::time::Instant::now();
    let mut scan = peers.last_scan();
    let (lookup, asked, verdict) = loop {
        let here = peers.here();
        let lookup = locate::plan(
            peers.me(),
            &here,
            scan.as_deref().map(|s| Scan {
                rows: &s.rows,
                after_question: s.sent >= arrived,
            }),
            question,
        );
        let asks = lookup.ask.iter().map(|ask| async move {
            match ask {
                Ask::Here(log) => peers.ask_here(log, xid, api.request_id()).await,
                Ask::There { log, http } => {
                    peers.ask_there(http, log, xid, api.token.as_deref()).await
                }
            }
        });
        let asked: Vec<Asked> = futures::future::join_all(asks).await;
        let answers: Vec<Answer> = asked
            .iter()
            .map(|a| match a {
                Asked::Here(_) | Asked::There(_) => Answer::Record,
                Asked::NoRecord => Answer::NoRecord,
                Asked::Unknown(why) => Answer::Unknown(why.clone()),
            })
            .collect();
        match locate::combine(&lookup, &answers) {
            Verdict::Rescan => match peers.scan_after(arrived).await {
                Some(fresh) => scan = Some(fresh),
                None => {
                    let why = "the store's owner table was not read again in time".to_string();
                    break (lookup, asked, Verdict::CannotTell(why));
                }
            },
            verdict => break (lookup, asked, verdict),
        }
    };
    let logs = lookup.ask.len();
    match verdict {
        Verdict::Found(i) => Ok(match asked.into_iter().nth(i) {
            Some(Asked::Here(status)) => json(StatusCode::OK, &TransactionBody::from(&*status)),
            Some(Asked::There(body)) => (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            _ => return Err(ApiError::unavailable("the lookup lost its answer", 1)),
        }),
        Verdict::NoRecord => Err(ApiError::not_found(format!(
            "no record of this xid in {}: if it ever began it is ABORTED (presumed abort), \
             unless it committed and ended before that log's coordinator last restarted or was \
             taken over (a log keeps only what is in flight; the participants keep their \
             outcome for a while)",
            match log {
                Some(log) => format!("log {log}"),
                None => format!("any of the store's {logs} logs"),
            }
        ))
        .with_xid(xid)),
        Verdict::CannotTell(why) => Err(cannot_tell(xid, &why)),
        // The loop above asks again after a fresh scan; not reached.
        Verdict::Rescan => Err(cannot_tell(
            xid,
            "the store's owner table is being read again",
        )),
    }
}

/// 503: some log could not be asked; the caller asks again.
fn cannot_tell(xid: Xid, why: &str) -> ApiError {
    ApiError::unavailable(
        format!(
            "cannot tell yet whether transaction {xid} has a record: {why}; retry (a takeover \
             takes about a lease)"
        ),
        1,
    )
    .with_xid(xid)
}

/// The coordinator's view of one transaction; 404 when it has no record
/// (with presumed abort: ABORTED if it ever began here). With several
/// instances over a shared store, any instance answers for any xid: it
/// asks every log's current holder, and says 404 only when all of them
/// were asked and none has a record; if some log cannot be asked now (its
/// instance died and the takeover is under way) it says 503, retry.
#[utoipa::path(get, path = "/v1/transactions/{xid}", tag = "transactions",
    params(("xid" = String, Path, description = "The transaction id, 1 to 32 hex digits"),
        TxnQuery),
    responses(
        (status = 200, description = "Its state", body = TransactionBody),
        (status = 400, description = "Not an xid", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No record of it", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Cannot tell now (a shared store's log is being taken \
            over, or its instance did not answer): retry", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn transaction(
    State(api): State<Arc<Api>>,
    Path(xid): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TxnQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let xid = xid_of(&xid)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(peers) = &api.peers {
        // A forward always names its log: without one the header would
        // only narrow the answer to this instance's logs, so it is ignored.
        let forwarded = headers.contains_key(crate::peers::FORWARDED) && query.log.is_some();
        return located(&api, peers, xid, query.log.as_deref(), forwarded).await;
    }
    let request_id = api.request_id();
    let mut replies = api.submit(Request::Status { request_id, xid })?;
    match tokio::time::timeout(Duration::from_secs(5), replies.recv()).await {
        Ok(Some(Reply::Status { status, .. })) => {
            let body = TransactionBody::from(&status);
            if body.state == TxnStateName::NoRecord {
                return Err(ApiError::not_found(status.detail).with_xid(xid));
            }
            Ok(json(StatusCode::OK, &body))
        }
        Ok(Some(Reply::Error { message, .. })) => Err(ApiError::bad_request(message)),
        _ => Err(ApiError::unavailable("the coordinator did not answer", 1).with_xid(xid)),
    }
}
