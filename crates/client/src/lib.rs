//! concord-client: the Rust SDK applications link to run global
//! transactions through a coordinator, and to look at participants.
//!
//! It depends on the wire types (`concord-api`) and the transport
//! (`concord-net`) only: no server, storage or benchmark code comes along.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::Client;
//! let client = Client::connect("127.0.0.1:7100").await?;
//! let result = client.transfer(("bank-a", "acct-0"), ("bank-b", "acct-1"), 25).await?;
//! println!("{} {}", result.xid, result.outcome);
//! let accounts = concord_client::accounts("127.0.0.1:7101").await?;
//! println!("total {}", accounts.total());
//! # Ok(()) }
//! ```
//!
//! One [`Client`] is one connection to a coordinator at a time. Requests
//! are pipelined: many tasks may share a client (`&self` methods) and their
//! replies are matched by request id. If the connection is lost while a
//! transaction is running, the call fails with
//! [`ClientError::OutcomeUnknown`] carrying the xid: the transaction may
//! still commit, and `status(xid)` on a new connection tells. A client never
//! retries a transaction by itself.
//!
//! # Idle connections and heartbeats
//! Servers close connections that read nothing for their
//! `--server-idle-timeout-ms`, and declare a connection dead after
//! `--dead-after-missed` silent heartbeat intervals. A client waiting a long
//! time for an outcome must not be closed under its pending request, so
//! the client keeps its connection visibly alive:
//! * it answers every heartbeat frame ([`KIND_HEARTBEAT`]) the server sends
//!   (servers heartbeat a connection they wrote nothing to for their
//!   heartbeat interval), so a heartbeating server always hears from it
//!   within one of its own intervals;
//! * it sends its own heartbeat after [`ClientOptions::heartbeat_interval`]
//!   without writing, for servers with heartbeats off but an idle timeout.
//!
//! A connection that is closed while no request is pending on it (the
//! server restarted, a middlebox, [`ClientOptions::idle_timeout`]) is not
//! an error: the next request reconnects first. Only requests in flight on
//! a connection that breaks fail, because only they may have had an
//! effect.

pub mod pg;

use bytes::BytesMut;
pub use concord_api::tree::Tree;
use concord_api::{decode_reply, KIND_REPLY, KIND_REQUEST, REPLY_BYTES_MAX};
pub use concord_api::{
    AccountsReport, BranchRequest, CoordinatorState, CoordinatorStatus, OperatorRequest, Outcome,
    Refusal, Reply, Request, ServerStats, TimelineEntry, TimelineEvent, TimelineView,
    TimeoutsReport,
};
use concord_net::{encode_frame, ConnectErrorKind, Frame, FrameCodec, KIND_HEARTBEAT};
use concord_participant::kv::{encode_work, KvOp};
pub use concord_proto::Shape;
pub use concord_proto::{AuditAction, AuditRecord, AuditResult};
use concord_proto::{TxnState, Xid};
use futures::StreamExt;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;

/// A frame carrying a client request.
fn request_frame(request: &Request) -> Frame {
    Frame::new(KIND_REQUEST, concord_proto::codec::encode(request))
}

/// How long [`Client::connect`] waits for the TCP handshake by default.
pub const CONNECT_TIMEOUT_MS: u64 = 3000;

/// Default [`ClientOptions::heartbeat_interval`]: the servers' default
/// heartbeat interval, well inside their default idle timeout (30 s) and
/// dead-peer time (5 s).
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// Default of [`ClientOptions::requests_pending_max`]. It also bounds a
/// connection's queue of frames to write.
pub const REQUESTS_PENDING_MAX: usize = 65_536;

/// Replies one request gets at most (`Begun`, then the outcome).
const REPLIES_PER_REQUEST_MAX: usize = 2;

/// Pending output above this many bytes is written before more is taken
/// from the queue.
const WRITE_COALESCE_BYTES_MAX: usize = 256 << 10;

/// Connection settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Send a heartbeat after this long without writing (`None`: only
    /// answer the server's). Keep it below the server's idle timeout and
    /// dead-peer time.
    pub heartbeat_interval: Option<Duration>,
    /// Close the connection after this long with no request pending; the
    /// next request reconnects. `None` keeps it open.
    pub idle_timeout: Option<Duration>,
    /// Fail the requests in flight when nothing (not even a heartbeat) was
    /// read for this long: the server is presumed dead. Only meaningful
    /// against servers with heartbeats on; `None` waits forever.
    pub dead_after: Option<Duration>,
    /// Requests one connection may have waiting for replies; beyond it a
    /// request fails with [`ClientError::Busy`] before anything is sent.
    pub requests_pending_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            heartbeat_interval: Some(Duration::from_millis(HEARTBEAT_INTERVAL_MS)),
            idle_timeout: None,
            dead_after: None,
            requests_pending_max: REQUESTS_PENDING_MAX,
        }
    }
}

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
    /// The TCP connect failed; `kind` tells refused, timed out and
    /// unreachable apart.
    #[error("cannot connect to {addr}: {what}: {source}")]
    Connect {
        addr: String,
        what: &'static str,
        kind: ConnectErrorKind,
        #[source]
        source: io::Error,
    },
    /// The server refused the request; the message says why.
    #[error("{0}")]
    Rejected(String),
    /// The transaction began but the connection was lost before its
    /// outcome arrived: it may have committed or aborted.
    #[error("outcome of transaction {xid} unknown: {why}; the coordinator knows it: `concord status --coordinator {addr} {xid}`")]
    OutcomeUnknown {
        xid: Xid,
        /// The coordinator's address, to ask.
        addr: String,
        why: String,
    },
    #[error("connection to {addr} lost: {why}")]
    ConnectionLost { addr: String, why: String },
    #[error("protocol error from {addr}: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Too much is already waiting on this connection; nothing was sent,
    /// so retrying later is safe.
    #[error("busy: {0}")]
    Busy(String),
}

/// Requests waiting for replies, and why the connection closed (once it
/// has): one lock, so a request can never be registered after the
/// connection gave up and then wait forever.
#[derive(Default)]
struct Shared {
    pending: HashMap<u64, mpsc::Sender<Reply>>,
    closed: Option<String>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One TCP connection of a client: its outgoing queue, its pending
/// requests, and the task that owns the socket (aborted on drop).
struct Connection {
    frames: mpsc::Sender<Frame>,
    shared: SharedRef,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    fn is_closed(&self) -> bool {
        lock(&self.shared).closed.is_some() || self.frames.is_closed()
    }

    fn closed_why(&self) -> String {
        lock(&self.shared)
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }
}

/// A connection to a coordinator (or, for [`accounts`] and
/// [`branch_state`], to a participant).
pub struct Client {
    addr: String,
    options: ClientOptions,
    /// The current connection; replaced (under this lock, so concurrent
    /// callers share one reconnect) when it closed with nothing pending.
    conn: tokio::sync::Mutex<Arc<Connection>>,
    next_request_id: AtomicU64,
    /// Called with each transaction's xid as soon as it has begun, before
    /// its outcome (see [`Client::on_begun`]).
    on_begun: Option<BegunHook>,
}

/// See [`Client::on_begun`].
pub type BegunHook = Arc<dyn Fn(Xid) + Send + Sync>;

impl Client {
    /// Connect to the server at `addr` ("127.0.0.1:7100") with the default
    /// [`ClientOptions`].
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connect with explicit options.
    pub async fn connect_with(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let conn = open(addr, &options).await?;
        Ok(Client {
            addr: addr.into(),
            options,
            conn: tokio::sync::Mutex::new(Arc::new(conn)),
            next_request_id: AtomicU64::new(1),
            on_begun: None,
        })
    }

    /// Call `hook` with every transaction's xid the moment the coordinator
    /// has begun it, before its outcome: whatever happens next (a timeout,
    /// a lost connection), the caller knows which transaction to ask
    /// about.
    pub fn on_begun(mut self, hook: BegunHook) -> Client {
        self.on_begun = Some(hook);
        self
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
        self.transact_shaped(branches, prepare_timeout_ms, Shape::Centralized)
            .await
    }

    /// Run a global transaction in `shape`: [`Shape::Linear`] sends it
    /// along the branches in the order given, the last one deciding
    /// (about 2n messages instead of 4n, and no forced write at the
    /// coordinator).
    pub async fn transact_shaped(
        &self,
        branches: Vec<BranchRequest>,
        prepare_timeout_ms: Option<u64>,
        shape: Shape,
    ) -> Result<TxnResult, ClientError> {
        self.transact_planned(branches, prepare_timeout_ms, shape, Vec::new())
            .await
    }

    /// Run a hierarchical transaction over `tree` (or, without one, a
    /// balanced binary tree over the branches in the order given: the
    /// first is the root, node `k`'s children are `2k + 1` and `2k + 2`).
    /// Every branch's participant must be in the tree; a participant of
    /// the tree without a branch takes part with empty key-value work (it
    /// only passes messages on).
    pub async fn transact_tree(
        &self,
        branches: Vec<BranchRequest>,
        prepare_timeout_ms: Option<u64>,
        tree: Option<&Tree>,
    ) -> Result<TxnResult, ClientError> {
        // One branch per participant: a tree node has exactly one.
        let merged = concord_participant::kv::merge_per_participant(
            branches.into_iter().map(|b| (b.participant, b.work)),
        )
        .map_err(ClientError::Invalid)?;
        let (planned, parents) = concord_api::tree::plan(merged, tree, &encode_work(&[]))
            .map_err(|e| ClientError::Invalid(format!("{e} (--tree)")))?;
        let ordered = planned
            .into_iter()
            .map(|(participant, work)| BranchRequest { participant, work })
            .collect();
        let shape = Shape::Hierarchical;
        self.transact_planned(ordered, prepare_timeout_ms, shape, parents)
            .await
    }

    async fn transact_planned(
        &self,
        branches: Vec<BranchRequest>,
        prepare_timeout_ms: Option<u64>,
        shape: Shape,
        parents: Vec<u32>,
    ) -> Result<TxnResult, ClientError> {
        let request_id = self.next_id();
        self.outcome_of(
            Request::Begin {
                request_id,
                branches,
                prepare_timeout_ms,
                shape,
                parents,
                idempotency_key: None,
            },
            None,
        )
        .await
    }

    /// Begin an open-ended transaction (SPEC §4): its xid, to hand to the
    /// services that do the work and register their branches. It is
    /// aborted unless committed or aborted within `lifetime_ms` (the
    /// server's default, 60 s, when `None`). With `idempotency_key`, a
    /// retry gets the same xid.
    pub async fn open(
        &self,
        lifetime_ms: Option<u64>,
        idempotency_key: Option<String>,
    ) -> Result<Xid, ClientError> {
        self.open_txn(lifetime_ms, idempotency_key)
            .await
            .map(|txn| txn.xid)
    }

    /// [`Client::open`], with what a PostgreSQL branch's gid needs (see
    /// [`pg`]).
    pub async fn open_txn(
        &self,
        lifetime_ms: Option<u64>,
        idempotency_key: Option<String>,
    ) -> Result<OpenTxn, ClientError> {
        let request_id = self.next_id();
        let request = Request::Open {
            request_id,
            lifetime_ms,
            idempotency_key,
        };
        match self.call(request).await? {
            Reply::Opened {
                xid,
                lifetime_ms,
                coordinator,
                ..
            } => Ok(OpenTxn {
                xid,
                lifetime_ms,
                coordinator,
            }),
            Reply::Error { message, .. } if message.starts_with("busy") => {
                Err(ClientError::Busy(message))
            }
            Reply::Error { message, .. } => Err(ClientError::Rejected(message)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Add branches to the open transaction `xid`: how many it has now.
    pub async fn register(
        &self,
        xid: Xid,
        branches: Vec<BranchRequest>,
    ) -> Result<usize, ClientError> {
        let request_id = self.next_id();
        let request = Request::Register {
            request_id,
            xid,
            branches,
        };
        match self.call(request).await? {
            Reply::Registered { branches, .. } => Ok(branches),
            Reply::NotOpen { message, .. } | Reply::Error { message, .. } => {
                Err(ClientError::Rejected(message))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Commit the open transaction `xid` (both phases over its branches)
    /// and wait for the outcome. Calling it again (after a lost
    /// connection, say) joins the first commit: it never runs twice.
    pub async fn commit(&self, xid: Xid) -> Result<TxnResult, ClientError> {
        let request_id = self.next_id();
        self.outcome_of(Request::Commit { request_id, xid }, Some(xid))
            .await
    }

    /// Abort the open transaction `xid` (a repeat answers the same).
    pub async fn abort(&self, xid: Xid) -> Result<TxnResult, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Abort { request_id, xid }).await? {
            Reply::Outcome { xid, outcome, .. } => Ok(TxnResult { xid, outcome }),
            Reply::NotOpen { message, .. } | Reply::Error { message, .. } => {
                Err(ClientError::Rejected(message))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Send `request` (a begin or a commit) and follow its replies to the
    /// outcome; `known` is the xid when the caller already has it.
    async fn outcome_of(
        &self,
        request: Request,
        known: Option<Xid>,
    ) -> Result<TxnResult, ClientError> {
        let (mut replies, conn) = self.start(request).await?;
        let mut xid = known;
        loop {
            match replies.recv().await {
                Some(Reply::Begun { xid: begun, .. }) => {
                    if let Some(hook) = &self.on_begun {
                        hook(begun);
                    }
                    xid = Some(begun);
                }
                Some(Reply::Outcome { xid, outcome, .. }) => return Ok(TxnResult { xid, outcome }),
                Some(Reply::Error { message, .. } | Reply::NotOpen { message, .. }) => {
                    return Err(ClientError::Rejected(message))
                }
                Some(other) => return Err(self.unexpected(&other)),
                None => {
                    let why = conn.closed_why();
                    return Err(match xid {
                        Some(xid) => ClientError::OutcomeUnknown {
                            xid,
                            addr: self.addr.clone(),
                            why,
                        },
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
        self.transfer_shaped(from, to, amount, prepare_timeout_ms, Shape::Centralized)
            .await
    }

    /// [`Client::transfer_with_timeout`] in `shape` (linear: from `from`'s
    /// participant to `to`'s, the latter deciding).
    pub async fn transfer_shaped(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        amount: i64,
        prepare_timeout_ms: Option<u64>,
        shape: Shape,
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
        self.transact_shaped(branches, prepare_timeout_ms, shape)
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

    /// The timeline of `xid` at the coordinator; `None` if it keeps none.
    pub async fn timeline(&self, xid: Xid) -> Result<Option<TimelineView>, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Timeline { request_id, xid }).await? {
            Reply::Timeline { timeline, .. } => Ok(timeline),
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

    /// A PostgreSQL participant's last reconciliation: prepared
    /// transactions held, waiting and not its own to resolve, with ages.
    pub async fn prepared(&self) -> Result<concord_api::PreparedStatus, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Prepared { request_id }).await? {
            Reply::Prepared { report, .. } => Ok(report),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The latency estimates and the timeouts they set (SPEC §3): at a
    /// coordinator per participant and phase, at a participant per
    /// coordinator.
    pub async fn timeouts(&self) -> Result<TimeoutsReport, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Timeouts { request_id }).await? {
            Reply::Timeouts { report, .. } => Ok(report),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The server's log and network counters since it started (coordinator
    /// or participant).
    pub async fn stats(&self) -> Result<ServerStats, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Stats { request_id }).await? {
            Reply::Stats { stats, .. } => Ok(stats),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ask a participant (this client must be connected to one) for its
    /// state of `xid`; no side effect.
    pub async fn branch_state(&self, xid: Xid) -> Result<TxnState, ClientError> {
        Ok(self.branch_report(xid).await?.0)
    }

    /// A participant's state of `xid`, and for a branch in doubt why it
    /// still waits.
    pub async fn branch_report(&self, xid: Xid) -> Result<(TxnState, Option<String>), ClientError> {
        let request_id = self.next_id();
        match self.call(Request::BranchState { request_id, xid }).await? {
            Reply::BranchState { state, detail, .. } => Ok((state, detail)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// An operator action at the coordinator (SPEC §8): its audit record
    /// with the result, or the refusal. A refusal is `Err(Refused)`, any
    /// other failure the usual error.
    pub async fn operator(&self, action: OperatorRequest) -> Result<AuditRecord, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Operator { request_id, action }).await? {
            Reply::Operator { entry, .. } => Ok(entry),
            Reply::Refused { message, .. } => Err(ClientError::Rejected(message)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The coordinator's audit trail of operator actions, oldest first,
    /// and whether it takes operator actions at all.
    pub async fn audit(&self) -> Result<(bool, Vec<AuditRecord>), ClientError> {
        let request_id = self.next_id();
        match self.call(Request::Audit { request_id }).await? {
            Reply::Audit {
                writable, entries, ..
            } => Ok((writable, entries)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ask a participant to carry out an operator's heuristic `decision`
    /// on its in-doubt branch `xid` (what a coordinator does for
    /// `Request::Operator`). The reply as it came: `Reply::Heuristic`
    /// done, or `Reply::Refused` with why.
    pub async fn heuristic(
        &self,
        xid: Xid,
        decision: concord_proto::Decision,
        audit: String,
    ) -> Result<Reply, ClientError> {
        let request_id = self.next_id();
        let request = Request::Heuristic {
            request_id,
            xid,
            decision,
            audit,
        };
        match self.call(request).await? {
            reply @ (Reply::Heuristic { .. } | Reply::Refused { .. }) => Ok(reply),
            other => Err(self.unexpected(&other)),
        }
    }

    /// A participant's branches in doubt, with their coordinators and why
    /// each waits (this client must be connected to a participant).
    pub async fn in_doubt(&self) -> Result<Reply, ClientError> {
        let request_id = self.next_id();
        match self.call(Request::InDoubt { request_id }).await? {
            reply @ Reply::InDoubt { .. } => Ok(reply),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Through a coordinator: participant `participant`'s branches in
    /// doubt (including those whose coordinator is gone).
    pub async fn in_doubt_at(
        &self,
        participant: &str,
    ) -> Result<(String, Vec<concord_api::InDoubtBranch>), ClientError> {
        let request_id = self.next_id();
        let request = Request::InDoubtAt {
            request_id,
            participant: participant.into(),
        };
        match self.call(request).await? {
            Reply::InDoubt {
                participant,
                branches,
                ..
            } => Ok((participant, branches)),
            Reply::Refused { message, .. } => Err(ClientError::Rejected(message)),
            other => Err(self.unexpected(&other)),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The current connection, or a new one if it closed while idle.
    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut conn = self.conn.lock().await;
        if conn.is_closed() {
            tracing::debug!(
                addr = %self.addr,
                "previous connection closed while idle ({}); reconnecting",
                conn.closed_why()
            );
            *conn = Arc::new(open(&self.addr, &self.options).await?);
        }
        Ok(Arc::clone(&conn))
    }

    /// Send `request` and return the channel its replies arrive on, with the
    /// connection it went out on (whose close reason explains a lost reply).
    async fn start(
        &self,
        request: Request,
    ) -> Result<(mpsc::Receiver<Reply>, Arc<Connection>), ClientError> {
        let conn = self.connection().await?;
        let (tx, rx) = mpsc::channel(REPLIES_PER_REQUEST_MAX);
        {
            let mut shared = lock(&conn.shared);
            if let Some(why) = &shared.closed {
                // Closed between the check above and now: nothing was sent,
                // so this is safe to report (and to retry by the caller).
                return Err(ClientError::ConnectionLost {
                    addr: self.addr.clone(),
                    why: why.clone(),
                });
            }
            let max = self.options.requests_pending_max.max(1);
            if shared.pending.len() >= max {
                return Err(ClientError::Busy(format!(
                    "{} requests are already waiting for replies on the connection to {} \
                     (limit {max}); retry when some have finished",
                    shared.pending.len(),
                    self.addr
                )));
            }
            shared.pending.insert(request.request_id(), tx);
        }
        // Never full: every frame in it belongs to a pending request, and
        // those are bounded above.
        if conn.frames.try_send(request_frame(&request)).is_err() {
            return Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                why: "the connection's writer stopped".into(),
            });
        }
        Ok((rx, conn))
    }

    /// A request with exactly one reply; a `Reply::Error` becomes
    /// `ClientError::Rejected`.
    async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let (mut replies, conn) = self.start(request).await?;
        match replies.recv().await {
            Some(Reply::Error { message, .. }) => Err(ClientError::Rejected(message)),
            Some(reply) => Ok(reply),
            None => Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                why: conn.closed_why(),
            }),
        }
    }

    fn unexpected(&self, reply: &Reply) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            detail: format!("unexpected reply {reply:?}"),
        }
    }
}

/// Connect to `addr` and start the task that owns the connection.
async fn open(addr: &str, options: &ClientOptions) -> Result<Connection, ClientError> {
    let connect_error = |kind: ConnectErrorKind, source: io::Error| ClientError::Connect {
        addr: addr.into(),
        what: match kind {
            ConnectErrorKind::Refused => "connection refused (is the server running?)",
            ConnectErrorKind::Timeout => "connect timed out",
            ConnectErrorKind::Unreachable => "network unreachable",
            ConnectErrorKind::Other => "connect failed",
        },
        kind,
        source,
    };
    let stream = match tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(connect_error(ConnectErrorKind::classify(&source), source)),
        Err(_) => {
            return Err(connect_error(
                ConnectErrorKind::Timeout,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", options.connect_timeout),
                ),
            ))
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "cannot set TCP_NODELAY: {e}");
    }
    let (frames, frames_rx) = mpsc::channel(options.requests_pending_max.max(1));
    let shared: SharedRef = Arc::default();
    let task = tokio::spawn(run_connection(
        stream,
        frames_rx,
        Arc::clone(&shared),
        addr.to_string(),
        options.clone(),
    ));
    Ok(Connection {
        frames,
        shared,
        task,
    })
}

/// Own one client connection: write queued requests (coalesced), read and
/// dispatch replies, answer the server's heartbeats, send our own when
/// idle, and close on the idle timeout. On exit the close reason is
/// recorded and every pending request is woken ("connection lost").
async fn run_connection(
    stream: TcpStream,
    mut frames: mpsc::Receiver<Frame>,
    shared: SharedRef,
    addr: String,
    options: ClientOptions,
) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(REPLY_BYTES_MAX));
    // Check the timers at a quarter of the shortest one.
    let tick = [
        options.heartbeat_interval,
        options.idle_timeout,
        options.dead_after,
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|d| (d / 4).max(Duration::from_millis(1)));
    let mut ticker = tick.map(|t| {
        let mut i = tokio::time::interval_at(Instant::now() + t, t);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let mut buffer = BytesMut::new();
    let mut last_write = Instant::now();
    let mut last_read = Instant::now();
    let mut last_busy = Instant::now();
    let why = loop {
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    let _ = write_half.shutdown().await;
                    break "client dropped".to_string();
                };
                last_busy = Instant::now();
                encode_frame(frame.kind, &frame.body, &mut buffer);
                while buffer.len() < WRITE_COALESCE_BYTES_MAX {
                    match frames.try_recv() {
                        Ok(frame) => encode_frame(frame.kind, &frame.body, &mut buffer),
                        Err(_) => break,
                    }
                }
            }
            frame = reader.next() => {
                last_read = Instant::now();
                let frame = match frame {
                    None => break "the server closed the connection".to_string(),
                    Some(Err(e)) => break e.to_string(),
                    Some(Ok(frame)) => frame,
                };
                match frame.kind {
                    // Answer at once: a heartbeating server hears from us
                    // within one of its intervals however long we wait.
                    KIND_HEARTBEAT => encode_frame(KIND_HEARTBEAT, &[], &mut buffer),
                    KIND_REPLY => match decode_reply(&frame.body) {
                        Ok(reply) => {
                            last_busy = last_read;
                            dispatch(&shared, reply, &addr);
                        }
                        Err(e) => break format!("protocol error: {e}"),
                    },
                    other => break format!("protocol error: unexpected frame kind {other}"),
                }
            }
            _ = tick_of(&mut ticker) => {
                let now = Instant::now();
                let pending = !lock(&shared).pending.is_empty();
                if pending {
                    last_busy = now;
                }
                if let Some(dead) = options.dead_after {
                    if pending && now - last_read >= dead {
                        break format!("nothing received from the server for {:?} (presumed dead)", now - last_read);
                    }
                }
                if let Some(idle) = options.idle_timeout {
                    if !pending && now - last_busy >= idle {
                        let _ = write_half.shutdown().await;
                        break format!("closed after {idle:?} idle");
                    }
                }
                if let Some(hb) = options.heartbeat_interval {
                    if buffer.is_empty() && now - last_write >= hb {
                        encode_frame(KIND_HEARTBEAT, &[], &mut buffer);
                    }
                }
            }
        }
        if !buffer.is_empty() {
            if let Err(e) = write_half.write_all(&buffer).await {
                break format!("write failed: {e}");
            }
            buffer.clear();
            last_write = Instant::now();
        }
    };
    tracing::debug!(%addr, "client connection ended: {why}");
    let mut shared = lock(&shared);
    shared.closed = Some(why);
    // Dropping the senders wakes every waiter with "connection lost".
    shared.pending.clear();
}

fn dispatch(shared: &SharedRef, reply: Reply, addr: &str) {
    let mut shared = lock(shared);
    let id = reply.request_id();
    let is_final = reply.is_final();
    match shared.pending.get(&id) {
        Some(tx) => {
            if tx.try_send(reply).is_err() {
                // More replies than a request can have, or its caller is
                // gone: nothing to keep.
                tracing::debug!(%addr, request_id = id, "reply dropped");
            }
            if is_final {
                shared.pending.remove(&id);
            }
        }
        None => tracing::debug!(%addr, request_id = id, "reply for no pending request"),
    }
}

async fn tick_of(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Key-value branches from `(participant, account, delta)` triples, one
/// branch per participant (operations on the same participant merged).
/// An open transaction ([`Client::open_txn`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTxn {
    pub xid: Xid,
    /// Aborted unless committed or aborted within this.
    pub lifetime_ms: u64,
    /// The coordinator's `--name`.
    pub coordinator: String,
}

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

/// [`Client::timeline`] over a fresh connection.
pub async fn timeline(
    coordinator_addr: &str,
    xid: Xid,
) -> Result<Option<TimelineView>, ClientError> {
    Client::connect(coordinator_addr).await?.timeline(xid).await
}

/// A participant's state of one branch.
pub async fn branch_state(participant_addr: &str, xid: Xid) -> Result<TxnState, ClientError> {
    Ok(branch_report(participant_addr, xid).await?.0)
}

/// [`Client::branch_report`] over a fresh connection.
pub async fn branch_report(
    participant_addr: &str,
    xid: Xid,
) -> Result<(TxnState, Option<String>), ClientError> {
    Client::connect(participant_addr)
        .await?
        .branch_report(xid)
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

    /// A server that accepts and never answers: requests pile up.
    async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn bounds_a_connection_with_too_many_requests_waiting_answers_busy_and_sends_nothing() {
        let (addr, server) = silent_server().await;
        let options = ClientOptions {
            requests_pending_max: 3,
            ..ClientOptions::default()
        };
        let client = Arc::new(Client::connect_with(&addr, options).await.expect("connect"));
        let mut waiting = Vec::new();
        for i in 0..3u128 {
            let client = Arc::clone(&client);
            waiting.push(tokio::spawn(async move { client.status(Xid(i)).await }));
        }
        // Let the three register.
        for _ in 0..100 {
            if lock(&client.connection().await.expect("conn").shared)
                .pending
                .len()
                == 3
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Without the bound this request would wait forever: time out.
        let fourth = tokio::time::timeout(Duration::from_secs(5), client.status(Xid(9))).await;
        match fourth.expect("the fourth request must be refused at once, not wait") {
            Err(ClientError::Busy(message)) => {
                assert!(message.contains("limit 3"), "{message}")
            }
            other => panic!("expected busy, got {other:?}"),
        }
        for task in waiting {
            task.abort();
        }
        server.abort();
    }
}
