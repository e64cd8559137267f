//! `concord bench --api http`: the workload's transactions sent to the
//! coordinator's HTTP API (`POST /v1/transactions`) over one keep-alive
//! HTTP/1.1 connection per task (hyper's client connection: no pool, so
//! the comparison with the binary protocol is about the API, not about a
//! client library's pooling). Answers are mapped to the binary client's
//! result and errors so the tally is the same.

use concord_api::http::{BeginBody, BranchBody, KvOpBody, OutcomeBody, ShapeName, TxnStateName};
use concord_api::tree::Tree;
use concord_api::Outcome;
use concord_client::{ClientError, TxnResult};
use concord_participant::kv::KvOp;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// One keep-alive connection to the API; reopened after it breaks.
pub struct Conn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub async fn open(addr: &str) -> anyhow::Result<Conn> {
        let mut conn = Conn {
            addr: addr.to_string(),
            sender: None,
        };
        conn.connect()
            .await
            .map_err(|e| anyhow::anyhow!("HTTP API at {addr}: {e}"))?;
        Ok(conn)
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// One transaction: its outcome, or the error as the binary client
    /// would say it.
    pub async fn transact(&mut self, body: &BeginBody) -> Result<TxnResult, ClientError> {
        let lost = |why: String, addr: &str| ClientError::ConnectionLost {
            addr: addr.to_string(),
            why,
        };
        if !matches!(&self.sender, Some(s) if !s.is_closed()) {
            self.connect().await.map_err(|e| lost(e, &self.addr))?;
        }
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let request = hyper::Request::post("/v1/transactions")
            .header(hyper::header::HOST, self.addr.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let Some(sender) = self.sender.as_mut() else {
            return Err(lost("not connected".into(), &self.addr));
        };
        let answer = match sender.send_request(request).await {
            Ok(answer) => answer,
            Err(e) => {
                self.sender = None;
                return Err(lost(e.to_string(), &self.addr));
            }
        };
        let status = answer.status();
        let bytes = match answer.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(lost(e.to_string(), &self.addr));
            }
        };
        if status == hyper::StatusCode::SERVICE_UNAVAILABLE {
            return Err(ClientError::Busy(String::from_utf8_lossy(&bytes).into()));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(ClientError::Rejected(format!("HTTP {status}: {text}")));
        }
        let outcome: OutcomeBody =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                addr: self.addr.clone(),
                detail: format!("not an outcome: {e}"),
            })?;
        let xid = outcome
            .xid
            .parse()
            .map_err(|detail| ClientError::Protocol {
                addr: self.addr.clone(),
                detail,
            })?;
        match outcome.state {
            TxnStateName::Committed => Ok(TxnResult {
                xid,
                outcome: Outcome::Committed,
            }),
            TxnStateName::Aborted => Ok(TxnResult {
                xid,
                outcome: Outcome::Aborted {
                    reason: outcome.reason.unwrap_or_default(),
                },
            }),
            other => Err(ClientError::OutcomeUnknown {
                xid,
                addr: self.addr.clone(),
                why: format!("answered {other:?}"),
            }),
        }
    }
}

/// The workload's branches as the API's JSON body.
pub fn begin_body(
    plan: &[(String, Vec<KvOp>)],
    shape: concord_proto::Shape,
    tree: Option<&Tree>,
) -> BeginBody {
    BeginBody {
        branches: plan
            .iter()
            .map(|(participant, ops)| BranchBody {
                participant: participant.clone(),
                ops: ops
                    .iter()
                    .map(|o| KvOpBody {
                        account: o.account.clone(),
                        delta: o.delta,
                    })
                    .collect(),
                work: None,
            })
            .collect(),
        shape: Some(ShapeName::from(shape)),
        tree: tree.map(|t| t.to_string()),
        prepare_timeout_ms: None,
        wait_ms: None,
        lifetime_ms: None,
    }
}
