//! The Rust client: run global transactions through a coordinator, and
//! look at participants.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord::client::ClientError> {
//! use concord::client::Client;
//! let client = Client::connect("127.0.0.1:7100").await?;
//! let result = client.transfer(("bank-a", "acct-0"), ("bank-b", "acct-1"), 25).await?;
//! println!("{} {}", result.xid, result.outcome);
//! let accounts = concord::client::accounts("127.0.0.1:7101").await?;
//! println!("total {}", accounts.total());
//! # Ok(()) }
//! ```
//!
//! One [`Client`] is one connection to a coordinator. Requests are
//! pipelined: many tasks may share a client (`&self` methods) and their
//! replies are matched by request id. If the connection is lost while a
//! transaction is running, the call fails with
//! [`ClientError::OutcomeUnknown`] carrying the xid: the transaction may
//! still commit, and `status(xid)` on a new connection tells. A client never
//! retries a transaction by itself.

use crate::conn::write_frames;
use crate::wire::{
    self, AccountsReport, BranchRequest, CoordinatorStatus, Outcome, Reply, Request, KIND_REPLY,
};
use concord_net::{Frame, FrameCodec, KIND_HEARTBEAT};
use concord_participant::kv::{encode_work, KvOp};
use concord_proto::{TxnState, Xid};
use futures::StreamExt;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// How long [`Client::connect`] waits for the TCP handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 3000;

/// The result of a global transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub xid: Xid,
    pub outcome: Outcome,
}

impl TxnResult {
    pub fn committed(&self) -> bool {
        self.outcome == Outcome::Committed
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {what}: {source}")]
    Connect {
        addr: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The server refused the request; the message says why.
    #[error("{0}")]
    Rejected(String),
    /// The transaction began but the connection was lost before its
    /// outcome arrived: it may have committed or aborted.
    #[error("outcome of transaction {xid} unknown: {why}; the coordinator knows it: `concord status --coordinator ADDR {xid}`")]
    OutcomeUnknown { xid: Xid, why: String },
    #[error("connection to {addr} lost: {why}")]
    ConnectionLost { addr: String, why: String },
    #[error("protocol error from {addr}: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Requests waiting for replies, and why the connection closed (once it
/// has): one lock, so a request can never be registered after the reader
/// gave up and then wait forever.
#[derive(Default)]
struct Shared {
    pending: HashMap<u64, mpsc::UnboundedSender<Reply>>,
    closed: Option<String>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection to a coordinator (or, for [`accounts`] and
/// [`branch_state`], to a participant).
pub struct Client {
    addr: String,
    frames: mpsc::UnboundedSender<Frame>,
    shared: SharedRef,
    next_request_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connect to the server at `addr` ("127.0.0.1:7100").
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let connect = TcpStream::connect(addr);
        let stream =
            match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => {
                    let what = match source.kind() {
                        io::ErrorKind::ConnectionRefused => {
                            "connection refused (is the server running?)"
                        }
                        _ => "connect failed",
                    };
                    return Err(ClientError::Connect {
                        addr: addr.into(),
                        what,
                        source,
                    });
                }
                Err(_) => {
                    return Err(ClientError::Connect {
                        addr: addr.into(),
                        what: "connect timed out",
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no answer within {CONNECT_TIMEOUT_MS} ms"),
                        ),
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (frames, frames_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(write_half, frames_rx, addr.to_string()));
        let shared: SharedRef = Arc::default();
        let reader = tokio::spawn(read_replies(
            FramedRead::new(read_half, FrameCodec::new(wire::REPLY_BYTES_MAX)),
            Arc::clone(&shared),
            addr.to_string(),
        ));
        Ok(Client {
            addr: addr.into(),
            frames,
            shared,
            next_request_id: AtomicU64::new(1),
            reader,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Run a global transaction with the coordinator's default phase-1
    /// timeout. Branches naming the same participant are merged by the
    /// coordinator when their work is key-value work.
    pub async fn transact(&self, branches: Vec<BranchRequest>) -> Result<TxnResult, ClientError> {
        self.transact_with_timeout(branches, None).await
    }

    /// Run a global transaction with its own phase-1 timeout.
    pub async fn transact_with_timeout(
        &self,
        branches: Vec<BranchRequest>,
        prepare_timeout_ms: Option<u64>,
    ) -> Result<TxnResult, ClientError> {
        let request_id = self.next_id();
        let mut replies = self.start(Request::Begin {
            request_id,
            branches,
            prepare_timeout_ms,
        })?;
        let mut xid = None;
        loop {
            match replies.recv().await {
                Some(Reply::Begun { xid: begun, .. }) => xid = Some(begun),
                Some(Reply::Outcome { xid, outcome, .. }) => return Ok(TxnResult { xid, outcome }),
                Some(Reply::Error { message, .. }) => return Err(ClientError::Rejected(message)),
                Some(other) => return Err(self.unexpected(&other)),
                None => {
                    let why = self.closed_why();
                    return Err(match xid {
                        Some(xid) => ClientError::OutcomeUnknown { xid, why },
                        None => ClientError::ConnectionLost {
                            addr: self.addr.clone(),
                            why,
                        },
                    });
                }
            }
        }
    }

    /// Move `amount` from one account to another, each named as
    /// `(participant, account)`; the two may be on the same participant.
    pub async fn transfer(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        amount: i64,
    ) -> Result<TxnResult, ClientError> {
        self.transfer_with_timeout(from, to, amount, None).await
    }

    /// [`transfer`](Self::transfer) with its own phase-1 timeout.
    pub async fn transfer_with_timeout(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        amount: i64,
        prepare_timeout_ms: Option<u64>,
    ) -> Result<TxnResult, ClientError> {
        if amount <= 0 {
            return Err(ClientError::Invalid(format!(
                "amount must be positive, got {amount}"
            )));
        }
        if from == to {
            return Err(ClientError::Invalid(format!(
                "from and to are the same account {}:{}",
                from.0, from.1
            )));
        }
        let branches = kv_branches(&[
            (from.0.to_string(), from.1.to_string(), -amount),
            (to.0.to_string(), to.1.to_string(), amount),
        ]);
        self.transact_with_timeout(branches, prepare_timeout_ms)
            .await
    }

    /// What the coordinator knows about `xid`.
    pub async fn status(&self, xid: Xid) -> Result<CoordinatorStatus, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Status { request_id, xid }).await? {
            Reply::Status { status, .. } => Ok(status),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Xids of transactions in flight at the coordinator, oldest first.
    pub async fn in_flight(&self) -> Result<Vec<Xid>, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::ListInFlight { request_id }).await? {
            Reply::InFlight { xids, .. } => Ok(xids),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ask a participant (this client must be connected to one) for its
    /// balances, in-doubt branches and locks.
    pub async fn accounts(&self) -> Result<AccountsReport, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Accounts { request_id }).await? {
            Reply::Accounts { accounts, .. } => Ok(accounts),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ask a participant (this client must be connected to one) for its
    /// state of `xid`; no side effect.
    pub async fn branch_state(&self, xid: Xid) -> Result<TxnState, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::BranchState { request_id, xid }).await? {
            Reply::BranchState { state, .. } => Ok(state),
            other => Err(self.unexpected(&other)),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Send `request` and return the channel its replies arrive on.
    fn start(&self, request: Request) -> Result<mpsc::UnboundedReceiver<Reply>, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut shared = lock(&self.shared);
            if let Some(why) = &shared.closed {
                return Err(ClientError::ConnectionLost {
                    addr: self.addr.clone(),
                    why: why.clone(),
                });
            }
            shared.pending.insert(request.request_id(), tx);
        }
        if self.frames.send(wire::request_frame(&request)).is_err() {
            return Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                why: "the connection's writer stopped".into(),
            });
        }
        Ok(rx)
    }

    /// A request with exactly one reply; a `Reply::Error` becomes
    /// `ClientError::Rejected`.
    async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let mut replies = self.start(request)?;
        match replies.recv().await {
            Some(Reply::Error { message, .. }) => Err(ClientError::Rejected(message)),
            Some(reply) => Ok(reply),
            None => Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                why: self.closed_why(),
            }),
        }
    }

    fn closed_why(&self) -> String {
        lock(&self.shared)
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    fn unexpected(&self, reply: &Reply) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            detail: format!("unexpected reply {reply:?}"),
        }
    }
}

async fn read_replies(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    shared: SharedRef,
    addr: String,
) {
    let why = loop {
        let frame = match reader.next().await {
            None => break "the server closed the connection".to_string(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(frame)) => frame,
        };
        match frame.kind {
            KIND_HEARTBEAT => continue,
            KIND_REPLY => {}
            other => break format!("protocol error: unexpected frame kind {other}"),
        }
        let reply = match wire::decode_reply(&frame.body) {
            Ok(reply) => reply,
            Err(e) => break format!("protocol error: {e}"),
        };
        let mut shared = lock(&shared);
        let id = reply.request_id();
        let is_final = reply.is_final();
        match shared.pending.get(&id) {
            Some(tx) => {
                let _ = tx.send(reply);
                if is_final {
                    shared.pending.remove(&id);
                }
            }
            None => tracing::debug!(%addr, request_id = id, "reply for no pending request"),
        }
    };
    tracing::debug!(%addr, "client connection ended: {why}");
    let mut shared = lock(&shared);
    shared.closed = Some(why);
    // Dropping the senders wakes every waiter with "connection lost".
    shared.pending.clear();
}

/// Key-value branches from `(participant, account, delta)` triples, one
/// branch per participant (operations on the same participant merged).
pub fn kv_branches(ops: &[(String, String, i64)]) -> Vec<BranchRequest> {
    let mut grouped: Vec<(String, Vec<KvOp>)> = Vec::new();
    for (participant, account, delta) in ops {
        let op = KvOp {
            account: account.clone(),
            delta: *delta,
        };
        match grouped.iter_mut().find(|(p, _)| p == participant) {
            Some((_, ops)) => ops.push(op),
            None => grouped.push((participant.clone(), vec![op])),
        }
    }
    grouped
        .into_iter()
        .map(|(participant, ops)| BranchRequest {
            participant,
            work: encode_work(&ops),
        })
        .collect()
}

/// A participant's balances, in-doubt branches and locks.
pub async fn accounts(participant_addr: &str) -> Result<AccountsReport, ClientError> {
    Client::connect(participant_addr).await?.accounts().await
}

/// A participant's state of one branch.
pub async fn branch_state(participant_addr: &str, xid: Xid) -> Result<TxnState, ClientError> {
    Client::connect(participant_addr)
        .await?
        .branch_state(xid)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_participant::kv::decode_work;

    #[test]
    fn kv_branches_merge_per_participant() {
        let branches = kv_branches(&[
            ("a".into(), "x".into(), -5),
            ("b".into(), "y".into(), 5),
            ("a".into(), "z".into(), 1),
        ]);
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0].participant, "a");
        let ops = decode_work(&branches[0].work).expect("kv work");
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1].account, "z");
    }
}
