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
    let mut text = routes::ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"));
    text.push('\n');
    text
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

    /// Read the token from `path` (its first line, trimmed), refusing an
    /// empty one.
    pub fn token_from_file(path: &std::path::Path) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --api-token-file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            anyhow::bail!("--api-token-file {} holds no token", path.display());
        }
        Ok(token)
    }
}

/// With `config`, start the HTTP listener of a server in `role` and make
/// `incoming` take its requests too; the task to stop at shutdown.
pub(crate) async fn attach(
    config: Option<&HttpConfig>,
    role: Role,
    incoming: crate::conn::Incoming,
) -> anyhow::Result<(crate::conn::Incoming, Option<tokio::task::JoinHandle<()>>)> {
    match config {
        Some(config) => {
            let (requests, task) = start(config.clone(), role).await?;
            Ok((incoming.with_local(requests), Some(task)))
        }
        None => Ok((incoming, None)),
    }
}

/// Bind the API's listener (before the driver runs, so that a port in use
/// fails start-up) and return the receiver the driver takes requests
/// from, and the task that serves connections.
pub(crate) async fn start(
    config: HttpConfig,
    role: Role,
) -> anyhow::Result<(mpsc::Receiver<Inbound>, tokio::task::JoinHandle<()>)> {
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
    let (to_driver, from_http) = mpsc::channel(QUEUED_MAX);
    let api = Arc::new(routes::Api::new(to_driver, config.token.clone()));
    let router = match role {
        Role::Coordinator => routes::router(api),
        Role::Participant => routes::participant_router(api),
    }
    .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        config.body_read_timeout,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(config.body_bytes_max));
    let task = tokio::spawn(accept_loop(listener, router, config));
    Ok((from_http, task))
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
