//! HTTP participants (`--http-participant NAME=URL`): the transport that
//! carries the coordinator's 2PC messages to a service that speaks the
//! HTTP participant contract instead of concord's binary protocol.
//!
//! It only translates, in both directions, and decides nothing:
//! - PREPARE → `POST {url}/prepare`; the answer's vote comes back to the
//!   node as the participant's VOTE message.
//! - COMMIT → `POST {url}/commit`; a 2xx comes back as its ACK.
//! - ABORT → `POST {url}/abort`.
//! - A call that fails (no connection, a timeout, a non-2xx answer, a body
//!   that is not the contract's) goes to the node as a delivery failure
//!   ([`CoordinatorNode::on_delivery_failed`](concord_node::CoordinatorNode)):
//!   the node decides what it means (a failed PREPARE is a VOTE ABORT; a
//!   failed COMMIT is re-sent by the core's backoff, and is what *needs
//!   attention* reports as the last error).
//!
//! Every call carries the xid and branch (the service's idempotency key)
//! and a W3C `traceparent` whose trace id is the xid, so every call of one
//! transaction is in one trace. The contract is written out in the OpenAPI
//! document's callbacks (`docs/openapi.json`) and the README.

use crate::conn::Inbound;
use concord_api::http::rfc3339;
use concord_api::http::{
    ParticipantDecisionCall, ParticipantPrepareCall, ParticipantVote, ParticipantVoteAnswer,
};
use concord_api::{PeerBody, PeerEnvelope};
use concord_proto::{Body, Decision, Message, NodeId, Vote};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, Semaphore};

/// Calls in flight at most, over every HTTP participant. A message beyond
/// is dropped with a log line, like one a full TCP queue would not take:
/// the core's timers cover it (a PREPARE times out, a COMMIT is re-sent).
const CALLS_IN_FLIGHT_MAX: usize = 1024;
/// The longest answer body read from a service.
const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// How long a COMMIT or ABORT call may take before it counts as failed.
const DECISION_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a service's error body is kept in the last error.
const ERROR_BODY_CHARS_MAX: usize = 200;

/// The HTTP side of the coordinator's outbox.
#[derive(Clone)]
pub(crate) struct HttpParticipants {
    client: Client<HttpConnector, Full<Bytes>>,
    to_driver: mpsc::Sender<Inbound>,
    coordinator: Arc<str>,
    slots: Arc<Semaphore>,
}

/// The xid, a branch and what a call is for, as the node hears of a
/// failure.
#[derive(Debug)]
pub(crate) struct DeliveryFailure {
    pub to: NodeId,
    pub xid: concord_proto::Xid,
    pub kind: &'static str,
    pub error: String,
}

impl HttpParticipants {
    pub fn new(to_driver: mpsc::Sender<Inbound>, coordinator: &str) -> HttpParticipants {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpParticipants {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            to_driver,
            coordinator: Arc::from(coordinator),
            slots: Arc::new(Semaphore::new(CALLS_IN_FLIGHT_MAX)),
        }
    }

    /// Carry `message` to the service `to` at `base` (its URL), in a task.
    pub fn send(&self, to: &NodeId, base: &str, message: &Message) {
        let call = match &message.body {
            Body::Prepare {
                work, deadline_ms, ..
            } => Call::Prepare {
                work: work_json(work),
                timeout_ms: *deadline_ms,
            },
            Body::Decision(Decision::Commit) => Call::Decision("commit"),
            Body::Decision(Decision::Abort) => Call::Decision("abort"),
            other => {
                // STATE answers to inquiries and the like: an HTTP service
                // asks GET /v1/transactions/{xid} instead.
                tracing::debug!(
                    participant = %to,
                    kind = other.kind(),
                    "not sent to an HTTP participant (no such call in its contract)"
                );
                return;
            }
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(
                participant = %to,
                xid = %message.xid,
                kind = message.kind(),
                "HTTP participant calls at their limit ({CALLS_IN_FLIGHT_MAX}): message dropped; \
                 the coordinator's timers cover it"
            );
            return;
        };
        let this = self.clone();
        let (to, base, message) = (
            to.clone(),
            base.trim_end_matches('/').to_string(),
            message.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            this.call(to, base, message, call).await;
        });
    }

    async fn call(&self, to: NodeId, base: String, message: Message, call: Call) {
        let xid = message.xid;
        let (path, body, timeout, kind) = match &call {
            Call::Prepare { work, timeout_ms } => {
                let deadline = SystemTime::now() + Duration::from_millis(*timeout_ms);
                let body = ParticipantPrepareCall {
                    xid: xid.to_string(),
                    branch: to.clone(),
                    coordinator: self.coordinator.to_string(),
                    work: work.clone(),
                    deadline: rfc3339(deadline),
                    timeout_ms: *timeout_ms,
                };
                (
                    "prepare",
                    serde_json::to_vec(&body),
                    Duration::from_millis((*timeout_ms).max(1)),
                    "PREPARE",
                )
            }
            Call::Decision(name) => {
                let body = ParticipantDecisionCall {
                    xid: xid.to_string(),
                    branch: to.clone(),
                    coordinator: self.coordinator.to_string(),
                };
                let kind = if *name == "commit" { "COMMIT" } else { "ABORT" };
                (
                    *name,
                    serde_json::to_vec(&body),
                    DECISION_CALL_TIMEOUT,
                    kind,
                )
            }
        };
        let url = format!("{base}/{path}");
        let answer = match body {
            Ok(body) => post(&self.client, &url, xid, body, timeout).await,
            Err(e) => Err(format!("cannot encode the call: {e}")),
        };
        let reply = match (answer, &call) {
            (Ok(bytes), Call::Prepare { .. }) => {
                match serde_json::from_slice::<ParticipantVoteAnswer>(&bytes) {
                    Ok(answer) => Ok(Some(Body::Vote(match answer.vote {
                        ParticipantVote::Ready => Vote::Ready,
                        ParticipantVote::ReadOnly => Vote::ReadOnly,
                        ParticipantVote::Abort => Vote::Abort {
                            reason: answer.reason.unwrap_or_else(|| format!("{to} voted ABORT")),
                        },
                    }))),
                    Err(e) => Err(format!(
                    "{url}: the answer is not {{\"vote\": \"ready\"|\"abort\"|\"read_only\"}}: {e}"
                )),
                }
            }
            (Ok(_), Call::Decision("commit")) => Ok(Some(Body::Ack)),
            (Ok(_), Call::Decision(_)) => Ok(None),
            (Err(e), _) => Err(e),
        };
        let event = match reply {
            Ok(Some(body)) => Inbound::Peer(PeerEnvelope {
                from: to.clone(),
                reply_to: base,
                incarnation: 0,
                peers: Vec::new(),
                body: PeerBody::Message(Message {
                    xid,
                    epoch: message.epoch,
                    from: to,
                    body,
                }),
            }),
            Ok(None) => return,
            Err(error) => Inbound::DeliveryFailed(DeliveryFailure {
                to,
                xid,
                kind,
                error,
            }),
        };
        // Waits when the driver is behind (backpressure on the calls);
        // fails only once the driver stopped.
        let _ = self.to_driver.send(event).await;
    }
}

enum Call {
    Prepare {
        work: serde_json::Value,
        timeout_ms: u64,
    },
    Decision(&'static str),
}

/// POST `body` to `url`; the answer's body on a 2xx, else what went wrong.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    xid: concord_proto::Xid,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, String> {
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("traceparent", traceparent(xid))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{url}: not a URL the coordinator can call: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes)
                .chars()
                .take(ERROR_BODY_CHARS_MAX)
                .collect();
            return Err(format!("{url}: HTTP {status}: {}", text.trim()));
        }
        Ok(bytes)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{url}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// A client error in words, with its cause (hyper's top-level message
/// alone is "client error (Connect)").
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A branch's work as JSON: the bytes the application gave (JSON, from
/// the HTTP API), or, if they are not JSON, as a string.
fn work_json(work: &[u8]) -> serde_json::Value {
    if work.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(work)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(work).into_owned()))
}

/// W3C trace context: version 00, the xid as the trace id (32 hex digits,
/// never all zero), a fresh span id, sampled.
fn traceparent(xid: concord_proto::Xid) -> String {
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{:032x}-{span:016x}-01", xid.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_xid() {
        let t = traceparent(concord_proto::Xid(0xabc));
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], format!("{:032x}", 0xabc));
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
    }

    #[test]
    fn work_that_is_not_json_goes_as_a_string() {
        assert_eq!(work_json(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(work_json(b"not json"), serde_json::json!("not json"));
        assert_eq!(work_json(b""), serde_json::Value::Null);
    }
}
