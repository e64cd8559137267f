//! What one instance over a shared store knows about where each log runs,
//! for `GET /v1/transactions/{xid}` at any instance: the coordinators this
//! process runs (its own log and any it adopted), reached through their
//! drivers' request channels, and the owner table as last scanned, with
//! the HTTP address of each log's holder. Whom to ask, and what the
//! answers mean, is decided by [`concord_node::locate`]; this carries it
//! out: a status request to a driver here, a forwarded GET there.

use crate::conn::{self, Inbound, NotTaken};
use crate::wire::{Reply, Request};
use concord_api::CoordinatorStatus;
use concord_node::locate::Served;
use concord_proto::Xid;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The header that marks a lookup one instance forwarded to another: the
/// instance asked answers from its own logs only and never forwards again.
pub const FORWARDED: &str = "concord-forwarded";
/// How long an instance asked about a log may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest status body taken from another instance.
const BODY_BYTES_MAX: usize = 4 << 20;
/// How long a lookup waits for a scan younger than itself (scans come
/// every quarter lease).
const SCAN_WAIT: Duration = Duration::from_secs(5);

/// A scan of the owner table, and when it was sent.
pub(crate) struct Scanned {
    pub sent: Instant,
    pub rows: Vec<Served>,
}

/// The answer of one log's coordinator, with what to show for a record.
pub(crate) enum Asked {
    /// Here: its status.
    Here(Box<CoordinatorStatus>),
    /// There: the JSON body the instance answered.
    There(Bytes),
    NoRecord,
    Unknown(String),
}

/// See the module comment. Shared by the instance's loop (lives, scans)
/// and its HTTP API (lookups).
pub(crate) struct Peers {
    me: String,
    lives: Mutex<BTreeMap<String, mpsc::Sender<Inbound>>>,
    scans: watch::Sender<Option<Arc<Scanned>>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Peers {
    pub fn new(me: &str) -> Arc<Peers> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(ASK_TIMEOUT));
        connector.set_nodelay(true);
        Arc::new(Peers {
            me: me.to_string(),
            lives: Mutex::new(BTreeMap::new()),
            scans: watch::Sender::new(None),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// A coordinator over `log` takes requests on `to_driver` from now on;
    /// it is unregistered when the guard drops.
    pub fn register(self: &Arc<Self>, log: &str, to_driver: mpsc::Sender<Inbound>) -> Registered {
        if let Ok(mut lives) = self.lives.lock() {
            lives.insert(log.to_string(), to_driver.clone());
        }
        Registered {
            peers: Arc::clone(self),
            log: log.to_string(),
            to_driver,
        }
    }

    /// The logs run here.
    pub fn here(&self) -> Vec<String> {
        self.lives
            .lock()
            .map(|lives| lives.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A scan sent at `sent` read `rows`.
    pub fn scanned(&self, sent: Instant, rows: Vec<Served>) {
        self.scans
            .send_replace(Some(Arc::new(Scanned { sent, rows })));
    }

    /// The last scan.
    pub fn last_scan(&self) -> Option<Arc<Scanned>> {
        self.scans.borrow().clone()
    }

    /// Wait for a scan sent at `after` or later (`None`: none came in
    /// time).
    pub async fn scan_after(&self, after: Instant) -> Option<Arc<Scanned>> {
        let mut scans = self.scans.subscribe();
        let wait = async {
            let scan = scans
                .wait_for(|s| s.as_ref().is_some_and(|s| s.sent >= after))
                .await
                .ok()?;
            scan.clone()
        };
        tokio::time::timeout(SCAN_WAIT, wait).await.ok().flatten()
    }

    /// Ask the coordinator over `log`, run here, about `xid`.
    pub async fn ask_here(&self, log: &str, xid: Xid, request_id: u64) -> Asked {
        let sender = self
            .lives
            .lock()
            .ok()
            .and_then(|lives| lives.get(log).cloned());
        let Some(sender) = sender else {
            return Asked::Unknown(format!("log {log} stopped here meanwhile"));
        };
        let request = Request::Status { request_id, xid };
        let mut rx = match conn::submit_local(&sender, request) {
            Ok(rx) => rx,
            Err(NotTaken::Busy) => {
                return Asked::Unknown(format!("the coordinator over log {log} is busy"))
            }
            Err(NotTaken::Closed) => {
                return Asked::Unknown(format!("the coordinator over log {log} is stopping"))
            }
        };
        match tokio::time::timeout(ASK_TIMEOUT, rx.recv()).await {
            Ok(Some(Reply::Status { status, .. })) => {
                if status.state == concord_api::CoordinatorState::NoRecord {
                    Asked::NoRecord
                } else {
                    Asked::Here(Box::new(status))
                }
            }
            Ok(Some(Reply::Error { message, .. })) => {
                Asked::Unknown(format!("log {log}: {message}"))
            }
            _ => Asked::Unknown(format!("the coordinator over log {log} did not answer")),
        }
    }

    /// Ask the instance serving HTTP at `http` about `xid`, for `log` only.
    pub async fn ask_there(&self, http: &str, log: &str, xid: Xid, token: Option<&str>) -> Asked {
        let uri = format!(
            "http://{http}/v1/transactions/{xid}?log={}",
            query_escape(log)
        );
        let mut request = hyper::Request::get(uri).header(FORWARDED, "1");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match request.body(Empty::<Bytes>::new()) {
            Ok(request) => request,
            Err(e) => return Asked::Unknown(format!("cannot ask the instance at {http}: {e}")),
        };
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), BODY_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(ASK_TIMEOUT, call).await {
            Ok(Ok((status, body))) if status == hyper::StatusCode::OK => Asked::There(body),
            Ok(Ok((status, _))) if status == hyper::StatusCode::NOT_FOUND => Asked::NoRecord,
            Ok(Ok((status, body))) => Asked::Unknown(format!(
                "the instance at {http} (log {log}) answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Ok(Err(e)) => Asked::Unknown(format!("the instance at {http} (log {log}): {e}")),
            Err(_) => Asked::Unknown(format!(
                "the instance at {http} (log {log}) did not answer within {} s",
                ASK_TIMEOUT.as_secs()
            )),
        }
    }
}

/// A log name in a query string: names are `[A-Za-z0-9._-]` by the
/// node's rules, but escape anything else rather than trust that here.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Unregisters a life's request channel when it ends, however it ends.
pub(crate) struct Registered {
    peers: Arc<Peers>,
    log: String,
    to_driver: mpsc::Sender<Inbound>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut lives) = self.peers.lives.lock() {
            // A later life of the same log may have registered meanwhile.
            if lives
                .get(&self.log)
                .is_some_and(|tx| tx.same_channel(&self.to_driver))
            {
                lives.remove(&self.log);
            }
        }
    }
}
