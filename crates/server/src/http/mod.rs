//! The coordinator's HTTP/JSON API (`concord serve --http-listen`, SPEC
//! §4): axum routes that turn each HTTP request into the same
//! [`Request`](crate::wire::Request)s the binary protocol carries and hand
//! them to the coordinator's driver, so the node layer decides everything
//! exactly as for the Rust client (and as the simulator tests it). Nothing
//! here decides; it parses, forwards and formats.
//!
//! Connections are served by hyper directly rather than `axum::serve`, for
//! the limits a public port needs: a header-read timeout (a slow-headers
//! client is dropped), a body-read timeout, a body size limit (413), and a
//! cap on open connections (beyond it new ones are closed at once, so
//! memory stays bounded and the ones already open keep being served).

mod operate;
mod problem;
mod routes;

use crate::conn::Inbound;
use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

/// The API's OpenAPI 3.1 document as pretty JSON (what `/openapi.json`
/// serves, `concord openapi` prints, and `docs/openapi.json` holds).
pub fn openapi_document() -> String {
    use utoipa::OpenApi;
    let document = serde_json::to_value(routes::ApiDoc::openapi()).map(|mut document| {
        // utoipa 5 cannot express callbacks yet (its field is a TODO), so
        // the HTTP participant contract is added to the generated JSON.
        if let Some(begin) = document.pointer_mut("/paths/~1v1~1transactions/post") {
            begin["callbacks"] = participant_callbacks();
        }
        document
    });
    let mut text = document
        .and_then(|d| serde_json::to_string_pretty(&d))
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"));
    text.push('\n');
    text
}

/// The calls the coordinator makes to an HTTP participant (one registered
/// with `--http-participant NAME=URL`; `{URL}` below), as OpenAPI
/// callbacks of `POST /v1/transactions`.
fn participant_callbacks() -> serde_json::Value {
    let schema = |name: &str| serde_json::json!({"$ref": format!("#/components/schemas/{name}")});
    let traceparent = serde_json::json!({
        "name": "traceparent", "in": "header", "required": true,
        "description": "W3C trace context; the trace id is the xid",
        "schema": {"type": "string"}
    });
    let call = |summary: &str, description: &str, body: &str, ok: serde_json::Value| {
        serde_json::json!({"post": {
            "summary": summary,
            "description": description,
            "parameters": [traceparent.clone()],
            "requestBody": {"required": true,
                "content": {"application/json": {"schema": schema(body)}}},
            "responses": {
                "200": ok,
                "default": {"description": "Anything but a 2xx (or no answer in time) is a \
                    failure: for prepare a VOTE ABORT; for commit and abort the call is \
                    retried with capped exponential backoff and jitter for as long as it \
                    takes, and after --attention-after the branch is flagged needs attention \
                    with this answer as its last error."}
            }
        }})
    };
    serde_json::json!({
        "participantPrepare": {"{URL}/prepare": call(
            "Phase 1: prepare the branch's work and vote",
            "A READY answer promises that the service's part is durable and that it will be \
             applied if COMMIT comes, across restarts; what the work needs stays held until \
             the decision. A duplicate (same xid and branch) gets the same answer. A READY \
             service that hears no decision must ask GET /v1/transactions/{xid} now and then \
             (ABORT is sent once, and can overtake a slow prepare): committed* means commit, \
             aborted or 404 (no record: presumed abort) means abort; 503 means ask again \
             (with several instances over a shared store, ask any, best with ?log= this \
             call's coordinator).",
            "ParticipantPrepareCall",
            serde_json::json!({"description": "The vote", "content": {"application/json":
                {"schema": schema("ParticipantVoteAnswer")}}}),
        )},
        "participantCommit": {"{URL}/commit": call(
            "Phase 2: apply a READY branch",
            "Answer 2xx once the branch is applied and durable. A duplicate, or an xid the \
             service does not know (finished and forgotten), is answered 2xx too.",
            "ParticipantDecisionCall",
            serde_json::json!({"description": "Applied (or nothing to do)"}),
        )},
        "participantAbort": {"{URL}/abort": call(
            "Phase 2: undo a prepared branch",
            "Answer 2xx once what prepare held is released. An unknown xid (never prepared \
             here, or its vote was ABORT) is answered 2xx.",
            "ParticipantDecisionCall",
            serde_json::json!({"description": "Undone (or nothing to do)"}),
        )},
    })
}

/// Which server the HTTP listener belongs to: the coordinator serves the
/// whole API, a participant `/metrics` and `/healthz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Participant,
}

/// Settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: String,
    /// With a token, every route but `/healthz` and `/readyz` needs
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub body_bytes_max: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub connections_max: usize,
}

/// Largest request body by default.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// A client must have sent its request headers within this by default.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// And its body within this.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Open HTTP connections at most, by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// HTTP requests queued for the driver at most; beyond, 503.
const QUEUED_MAX: usize = 4096;

impl HttpConfig {
    pub fn new(listen: impl Into<String>) -> HttpConfig {
        HttpConfig {
            listen: listen.into(),
            token: None,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT),
            body_read_timeout: Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT),
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }

    /// Read a token (of the flag `flag`) from `path`: its first line,
    /// trimmed, refusing an empty one.
    pub fn token_from_file(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {flag} {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            anyhow::bail!("{flag} {} holds no token", path.display());
        }
        Ok(token)
    }
}

/// With `config`, start the HTTP listener of a server in `role` and make
/// `incoming` take its requests too; the task to stop at shutdown. With
/// `local` (or a listener), `incoming` also takes events from inside the
/// process (the HTTP participants' answers) sent on the returned sender.
pub(crate) async fn attach(
    config: Option<&HttpConfig>,
    role: Role,
    incoming: crate::conn::Incoming,
    local: bool,
    peers: Option<Arc<crate::peers::Peers>>,
) -> anyhow::Result<(
    crate::conn::Incoming,
    Option<tokio::task::JoinHandle<()>>,
    Option<mpsc::Sender<Inbound>>,
)> {
    if config.is_none() && !local {
        return Ok((incoming, None, None));
    }
    let (to_driver, from_inside) = mpsc::channel(QUEUED_MAX);
    let task = match config {
        Some(config) => Some(start(config.clone(), role, to_driver.clone(), peers).await?),
        None => None,
    };
    Ok((incoming.with_local(from_inside), task, Some(to_driver)))
}

/// Bind the API's listener (before the driver runs, so that a port in use
/// fails start-up); its handlers send the driver their requests on
/// `to_driver`. Returns the task that serves connections.
pub(crate) async fn start(
    config: HttpConfig,
    role: Role,
    to_driver: mpsc::Sender<Inbound>,
    peers: Option<Arc<crate::peers::Peers>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on --http-listen {}", config.listen))?;
    let local = listener.local_addr()?;
    if role == Role::Coordinator && config.token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            listen = %local,
            "the HTTP API listens beyond loopback without --api-token-file: anyone who can \
             reach {local} can begin transactions"
        );
    }
    tracing::info!(listen = %local, auth = config.token.is_some(), "HTTP API serving");
    let api = Arc::new(routes::Api::new(to_driver, config.token.clone(), peers));
    let router = match role {
        Role::Coordinator => routes::router(api),
        Role::Participant => routes::participant_router(api),
    }
    .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        config.body_read_timeout,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(config.body_bytes_max));
    Ok(tokio::spawn(accept_loop(listener, router, config)))
}

async fn accept_loop(listener: TcpListener, router: axum::Router, config: HttpConfig) {
    let slots = Arc::new(Semaphore::new(config.connections_max.max(1)));
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, never spin.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection refused: --http-connections-max reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let header_read_timeout = config.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    /// The committed document is the generated one: a route or JSON type
    /// changed without `docs/openapi.json` fails here.
    #[test]
    fn the_committed_openapi_document_is_current() {
        let committed = include_str!("../../../../docs/openapi.json");
        assert!(
            super::openapi_document() == committed,
            "docs/openapi.json is stale: run `cargo run --release -- openapi > docs/openapi.json`"
        );
    }
}
