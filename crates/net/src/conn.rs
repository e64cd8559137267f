//! The peer connection manager: one long-lived TCP connection per peer
//! address, shared by every sender, plus the connections accepted by
//! listeners. Frames received on any of them arrive on one channel as
//! `(Peer, Frame)`.
//!
//! # Sending
//! Each dialed peer has one task that owns its connection and a bounded
//! queue. The task drains the queue into one buffer and writes it at once, so
//! frames sent concurrently by many callers are coalesced into few writes;
//! TCP_NODELAY is set on every socket so a lone small frame is not held back
//! by Nagle's algorithm.
//!
//! # Resets are repaired, not reported
//! A pooled connection can be closed under us at any time (the server's idle
//! timeout, a middlebox, a restart). When that happens the task reconnects at
//! once and writes again the frames it had not written yet; callers never see
//! the reset. This is safe only because everything concord sends is
//! idempotent, and it is why `Ok` from a send means "the kernel took the
//! bytes", never "the peer got it": a frame written just before the peer's
//! RST arrived is lost, and the protocol's own replies and re-sends cover
//! that. Callers *do* see connect failures (refused, timed out, unreachable),
//! and while a peer is in reconnect backoff its sends fail fast with
//! [`SendError::PeerDown`] instead of queueing behind a dead peer.
//!
//! # Backoff
//! A connect failure, or a connection that ends in failure before it carried
//! a single frame, counts as a consecutive failure; the next attempt waits
//! `min × 2^failures` (capped at `max`), with equal jitter (half fixed, half
//! random) so that many clients of a restarted server do not reconnect in
//! lockstep. Any connection that carried a frame resets the count.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::NetConfig;
use crate::error::{ConnectError, SendError};
use crate::frame::Frame;
use crate::session::{run_session, Outgoing, Role, SessionEnd};

/// Where a frame came from, or where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A connection this network dialed; the address is the one given to
    /// [`Network::send`]. Replies to it redial if needed.
    Dialed(SocketAddr),
    /// A connection a listener accepted: the remote address and a connection
    /// number unique within this network. Replies to it go over that very
    /// connection and fail once it is closed (it cannot be redialled).
    Accepted { remote: SocketAddr, conn: u64 },
}

impl Peer {
    /// The remote socket address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::Dialed(a) => *a,
            Peer::Accepted { remote, .. } => *remote,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Dialed(a) => write!(f, "{a}"),
            Peer::Accepted { remote, conn } => write!(f, "{remote}#{conn}"),
        }
    }
}

/// Counters for metrics and tests. Monotonic.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected_over_limit: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub dead_peers: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_resent: AtomicU64,
    pub writes: AtomicU64,
}

/// A snapshot of the network's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Successful outgoing connects.
    pub connects: u64,
    pub connect_failures: u64,
    /// Connections accepted by listeners.
    pub accepted: u64,
    /// Accepted connections closed at once because `connections_max` was reached.
    pub rejected_over_limit: u64,
    pub sessions_ended: u64,
    pub protocol_errors: u64,
    /// Connections closed because heartbeats stopped arriving.
    pub dead_peers: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Application frames written (heartbeats excluded).
    pub frames_sent: u64,
    /// Application frames received (heartbeats excluded).
    pub frames_received: u64,
    /// Frames carried over from a failed connection to a new one.
    pub frames_resent: u64,
    /// Write calls (each carries one or more coalesced frames).
    pub writes: u64,
}

struct PeerEntry {
    generation: u64,
    queue: mpsc::Sender<Outgoing>,
}

/// State shared by the network handle and all its tasks.
pub(crate) struct Ctx {
    pub config: NetConfig,
    pub stats: Stats,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    incoming: Mutex<Option<mpsc::Sender<(Peer, Frame)>>>,
    peers: Mutex<HashMap<SocketAddr, PeerEntry>>,
    pub(crate) accepted: Mutex<HashMap<u64, mpsc::Sender<Outgoing>>>,
    handed_back: Mutex<Vec<(Peer, Frame)>>,
    grace_deadline: Mutex<Option<Instant>>,
    next_id: AtomicU64,
}

/// Poisoning only means another thread panicked while holding the lock; the
/// maps stay structurally valid, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    pub fn incoming_sender(&self) -> Option<mpsc::Sender<(Peer, Frame)>> {
        lock(&self.incoming).clone()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn grace_deadline(&self) -> Instant {
        lock(&self.grace_deadline).unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
    }

    pub fn hand_back(&self, peer: Peer, frames: Vec<Outgoing>) {
        let mut hb = lock(&self.handed_back);
        for o in frames {
            if o.frame.kind == crate::frame::KIND_HEARTBEAT {
                continue;
            }
            hb.push((peer, o.frame.clone()));
            o.complete(Err(SendError::Shutdown));
        }
    }
}

/// Handle to the connection manager. Cheap to clone; all clones share the
/// same connections.
#[derive(Clone)]
pub struct Network {
    pub(crate) ctx: Arc<Ctx>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("peers", &lock(&self.ctx.peers).len())
            .field("accepted", &lock(&self.ctx.accepted).len())
            .finish()
    }
}

impl Network {
    /// Create a network with no connections yet. Frames received on any
    /// connection (dialed or accepted) come out of the returned receiver;
    /// heartbeats are consumed internally. The receiver yields `None` after
    /// [`Network::shutdown`] once every connection is closed.
    ///
    /// Must be called within a tokio runtime only when connections are made
    /// (tasks are spawned lazily).
    pub fn new(config: NetConfig) -> (Network, mpsc::Receiver<(Peer, Frame)>) {
        let (tx, rx) = mpsc::channel(config.incoming_queue_frames_max.max(1));
        let ctx = Arc::new(Ctx {
            config,
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            incoming: Mutex::new(Some(tx)),
            peers: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            handed_back: Mutex::new(Vec::new()),
            grace_deadline: Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        (Network { ctx }, rx)
    }

    /// [`Network::new`] after checking that the settings fit together
    /// (see [`NetConfig::validate`]).
    pub fn try_new(
        config: NetConfig,
    ) -> Result<(Network, mpsc::Receiver<(Peer, Frame)>), crate::config::ConfigError> {
        config.validate()?;
        Ok(Network::new(config))
    }

    pub fn config(&self) -> &NetConfig {
        &self.ctx.config
    }

    /// Send a frame to `addr` over the pooled connection, connecting first if
    /// there is none. Resolves once the frame's bytes were written to the
    /// socket (the kernel has them), or with the reason they were not.
    ///
    /// A reset or close of the pooled connection is repaired here: the frame
    /// is written again on a new connection and no error is returned. Errors
    /// are connect failures ([`SendError::Connect`], classified), fast
    /// failures while the peer is in reconnect backoff
    /// ([`SendError::PeerDown`]), an over-long frame, or shutdown.
    pub async fn send(&self, addr: SocketAddr, frame: Frame) -> Result<(), SendError> {
        self.check(&frame)?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            addr,
            Outgoing {
                frame,
                done: Some(tx),
            },
        )
        .await?;
        rx.await.unwrap_or(Err(SendError::Shutdown))
    }

    /// Queue a frame for `addr` without waiting for it to be written.
    /// Failures after queueing (the connect fails, the peer is in backoff) are
    /// logged, not returned: use this where the protocol re-sends anyway.
    pub fn try_send(&self, addr: SocketAddr, frame: Frame) -> Result<(), SendError> {
        self.check(&frame)?;
        let mut o = Outgoing { frame, done: None };
        for _ in 0..2 {
            let (queue, _) = self.peer_queue(addr)?;
            match queue.try_send(o) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(SendError::QueueFull {
                        peer: Peer::Dialed(addr),
                    })
                }
                // The peer task just exited (forgotten); make a new one.
                Err(mpsc::error::TrySendError::Closed(back)) => o = back,
            }
        }
        Err(SendError::Shutdown)
    }

    /// Send to a [`Peer`] as received with an incoming frame: a dialed peer
    /// goes through [`Network::send`]; an accepted connection is answered on
    /// that connection, and fails with [`SendError::ConnectionClosed`] if it
    /// is gone (the other side redials and re-sends; we cannot).
    pub async fn send_to(&self, peer: Peer, frame: Frame) -> Result<(), SendError> {
        match peer {
            Peer::Dialed(addr) => self.send(addr, frame).await,
            Peer::Accepted { conn, .. } => {
                self.check(&frame)?;
                let queue = lock(&self.ctx.accepted).get(&conn).cloned();
                let Some(queue) = queue else {
                    return Err(SendError::ConnectionClosed { peer });
                };
                let (tx, rx) = oneshot::channel();
                queue
                    .send(Outgoing {
                        frame,
                        done: Some(tx),
                    })
                    .await
                    .map_err(|_| SendError::ConnectionClosed { peer })?;
                rx.await
                    .unwrap_or(Err(SendError::ConnectionClosed { peer }))
            }
        }
    }

    /// [`Network::send_to`] without waiting: queue the frame for the peer's
    /// connection and return. For an accepted connection the frame goes on
    /// that connection (or fails with [`SendError::ConnectionClosed`]); a
    /// full queue fails with [`SendError::QueueFull`] and hands nothing back.
    pub fn try_send_to(&self, peer: Peer, frame: Frame) -> Result<(), SendError> {
        match peer {
            Peer::Dialed(addr) => self.try_send(addr, frame),
            Peer::Accepted { conn, .. } => {
                self.check(&frame)?;
                let queue = lock(&self.ctx.accepted).get(&conn).cloned();
                let Some(queue) = queue else {
                    return Err(SendError::ConnectionClosed { peer });
                };
                queue
                    .try_send(Outgoing { frame, done: None })
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => SendError::QueueFull { peer },
                        mpsc::error::TrySendError::Closed(_) => {
                            SendError::ConnectionClosed { peer }
                        }
                    })
            }
        }
    }

    /// Close an accepted connection after writing what is already queued
    /// for it, e.g. because a frame's *body* broke the application's
    /// protocol (the framing layer closes on header errors by itself).
    /// A dialed peer is forgotten instead (see [`Network::forget`]).
    pub fn close(&self, peer: Peer) {
        match peer {
            Peer::Dialed(addr) => self.forget(addr),
            // Dropping the map's sender ends the session once transient
            // clones (sends in progress) are gone: it writes what is
            // queued, sends FIN and stops reading.
            Peer::Accepted { conn, .. } => {
                lock(&self.ctx.accepted).remove(&conn);
            }
        }
    }

    /// Drop the pooled connection to `addr` (after writing what is queued).
    pub fn forget(&self, addr: SocketAddr) {
        lock(&self.ctx.peers).remove(&addr);
    }

    /// Number of dialed peers with a connection task, and of accepted
    /// connections currently open.
    pub fn connection_counts(&self) -> (usize, usize) {
        (lock(&self.ctx.peers).len(), lock(&self.ctx.accepted).len())
    }

    pub fn stats(&self) -> NetStats {
        let s = &self.ctx.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            connects: g(&s.connects),
            connect_failures: g(&s.connect_failures),
            accepted: g(&s.accepted),
            rejected_over_limit: g(&s.rejected_over_limit),
            sessions_ended: g(&s.sessions_ended),
            protocol_errors: g(&s.protocol_errors),
            dead_peers: g(&s.dead_peers),
            heartbeats_sent: g(&s.heartbeats_sent),
            heartbeats_received: g(&s.heartbeats_received),
            frames_sent: g(&s.frames_sent),
            frames_received: g(&s.frames_received),
            frames_resent: g(&s.frames_resent),
            writes: g(&s.writes),
        }
    }

    /// Graceful shutdown: listeners stop accepting, new sends fail with
    /// [`SendError::Shutdown`], every connection writes what is already queued,
    /// sends FIN and waits for the peer to close, all within `grace`.
    /// Returns the frames that were queued but could not be written (their
    /// waiters, if any, got `Err(Shutdown)`), so the caller can persist or
    /// re-route them.
    pub async fn shutdown(&self, grace: Duration) -> Vec<(Peer, Frame)> {
        *lock(&self.ctx.grace_deadline) = Some(Instant::now() + grace);
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        // Drop our incoming sender so the receiver ends once tasks are gone.
        lock(&self.ctx.incoming).take();
        let waited =
            tokio::time::timeout(grace + Duration::from_millis(500), self.ctx.tracker.wait()).await;
        if waited.is_err() {
            warn!(
                tasks = self.ctx.tracker.len(),
                "network shutdown: tasks still running after the grace period"
            );
        } else {
            info!("network shut down");
        }
        lock(&self.ctx.peers).clear();
        std::mem::take(&mut *lock(&self.ctx.handed_back))
    }

    pub fn is_shut_down(&self) -> bool {
        self.ctx.shutdown.is_cancelled()
    }

    fn check(&self, frame: &Frame) -> Result<(), SendError> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(SendError::Shutdown);
        }
        let max = self.ctx.config.frame_bytes_max;
        if frame.body.len() > max {
            return Err(SendError::TooLong {
                len: frame.body.len(),
                max,
            });
        }
        Ok(())
    }

    async fn enqueue(&self, addr: SocketAddr, mut o: Outgoing) -> Result<(), SendError> {
        for _ in 0..2 {
            let (queue, _) = self.peer_queue(addr)?;
            match queue.send(o).await {
                Ok(()) => return Ok(()),
                // The peer task exited between lookup and send (forgotten or
                // shutting down); retry once with a fresh task.
                Err(mpsc::error::SendError(back)) => o = back,
            }
        }
        Err(SendError::Shutdown)
    }

    fn peer_queue(&self, addr: SocketAddr) -> Result<(mpsc::Sender<Outgoing>, u64), SendError> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(SendError::Shutdown);
        }
        let mut peers = lock(&self.ctx.peers);
        if let Some(e) = peers.get(&addr) {
            if !e.queue.is_closed() {
                return Ok((e.queue.clone(), e.generation));
            }
        }
        let generation = self.ctx.next_id();
        let (tx, rx) = mpsc::channel(self.ctx.config.send_queue_frames_max.max(1));
        peers.insert(
            addr,
            PeerEntry {
                generation,
                queue: tx.clone(),
            },
        );
        drop(peers);
        let ctx = self.ctx.clone();
        self.ctx.tracker.spawn(peer_task(addr, generation, ctx, rx));
        Ok((tx, generation))
    }
}

/// Connect with a timeout, classify failures, set TCP_NODELAY.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::timed_out(addr, timeout)),
        Ok(Err(e)) => Err(ConnectError::from_io(addr, e)),
        Ok(Ok(stream)) => {
            set_nodelay(&stream, addr);
            Ok(stream)
        }
    }
}

pub(crate) fn set_nodelay(stream: &TcpStream, addr: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        // Not fatal, but every small frame may now wait ~40 ms.
        warn!(peer = %addr, error = %e, "could not set TCP_NODELAY");
    }
}

/// `min × 2^(failures-1)` capped at `max`, then equal jitter: half of it
/// fixed, half uniformly random.
pub(crate) fn backoff_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(30))
        .min(max);
    let half = exp / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let r = if jitter_ns == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=jitter_ns)
    };
    half + Duration::from_nanos(r)
}

fn fail_all(carry: &mut Vec<Outgoing>, err: &SendError) {
    for o in carry.drain(..) {
        o.complete(Err(err.clone()));
    }
}

/// Resolves when shutdown was requested *and* its grace period is over: work
/// in progress (a connect with frames waiting) may continue until then.
async fn grace_expired(ctx: &Ctx) {
    ctx.shutdown.cancelled().await;
    tokio::time::sleep_until(ctx.grace_deadline()).await;
}

/// The task owning the connection to one dialed peer.
///
/// Reconnect rules: frames left over from a failed connection that carried
/// traffic are re-sent on a new one at once. A connection that ended in
/// failure after the peer had sent us something (it was alive) is redialled
/// at once even with nothing to send, so a peer that pushes to us gets its
/// connection back; one that never answered is redialled only when there is
/// something to send. Failed attempts back off (see the module docs).
async fn peer_task(
    addr: SocketAddr,
    generation: u64,
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let peer = Peer::Dialed(addr);
    let cfg = &ctx.config;
    let mut carry: Vec<Outgoing> = Vec::new();
    let mut failures: u32 = 0;
    let mut backoff: Option<(Instant, Arc<str>)> = None;
    let mut ever_connected = false;
    let mut redial = false;
    loop {
        if carry.is_empty() && !redial {
            if ctx.shutdown.is_cancelled() {
                // Shutting down: flush what is queued, then stop.
                match rx.try_recv() {
                    Ok(o) => carry.push(o),
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => continue,
                    m = rx.recv() => match m {
                        Some(o) => carry.push(o),
                        None => break,
                    },
                }
            }
        }
        redial = false;
        if let Some((until, why)) = &backoff {
            let now = Instant::now();
            if now < *until {
                if ctx.shutdown.is_cancelled() {
                    ctx.hand_back(peer, std::mem::take(&mut carry));
                    continue;
                }
                let err = SendError::PeerDown {
                    addr,
                    last_error: why.clone(),
                    retry_in: *until - now,
                };
                debug!(peer = %addr, frames = carry.len(), error = %err, "failing frames fast: peer in reconnect backoff");
                fail_all(&mut carry, &err);
                continue;
            }
            backoff = None;
        }

        let attempt = tokio::select! {
            biased;
            _ = grace_expired(&ctx) => break,
            r = connect(addr, cfg.connect_timeout) => r,
        };
        let stream = match attempt {
            Ok(s) => s,
            Err(e) => {
                ctx.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let delay = backoff_delay(
                    failures,
                    cfg.reconnect_backoff_min,
                    cfg.reconnect_backoff_max,
                );
                warn!(peer = %addr, kind = e.kind.as_str(), error = %e, retry_in = ?delay, failures, "connect failed");
                // Frames that queued up during the attempt were waiting for
                // it too: they share its outcome.
                while let Ok(o) = rx.try_recv() {
                    carry.push(o);
                }
                if ctx.shutdown.is_cancelled() {
                    ctx.hand_back(peer, std::mem::take(&mut carry));
                } else {
                    fail_all(&mut carry, &SendError::Connect(e.clone()));
                }
                backoff = Some((Instant::now() + delay, Arc::from(e.to_string())));
                continue;
            }
        };
        ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
        if ever_connected || failures > 0 {
            info!(peer = %addr, resend = carry.len(), failures, "reconnected");
        } else {
            debug!(peer = %addr, "connected");
        }
        ever_connected = true;

        let out = run_session(stream, peer, Role::Client, &ctx, &mut rx, &mut carry).await;
        ctx.stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
        match &out.end {
            SessionEnd::Shutdown | SessionEnd::QueueClosed => break,
            SessionEnd::ClientIdle => {
                // Idle by our own timeout: give the task back too. Leave the
                // map so new sends start a fresh task, then finish whatever
                // was queued in the meantime (recv yields it, then None).
                debug!(peer = %addr, "idle connection closed (client_idle_timeout)");
                failures = 0;
                remove_entry(&ctx, addr, generation);
                rx.close();
            }
            SessionEnd::PeerClosed | SessionEnd::ServerIdle => {
                debug!(peer = %addr, reason = %out.end, pending = carry.len(), "connection closed");
                failures = 0;
            }
            end => {
                if out.frames_read > 0 || out.frames_written > 0 {
                    failures = 0;
                    redial = out.frames_read > 0;
                    info!(peer = %addr, reason = %end, pending = carry.len(), redial, "connection lost");
                } else {
                    failures = failures.saturating_add(1);
                    let delay = backoff_delay(
                        failures,
                        cfg.reconnect_backoff_min,
                        cfg.reconnect_backoff_max,
                    );
                    warn!(peer = %addr, reason = %end, retry_in = ?delay, failures, "connection failed before carrying any frame");
                    backoff = Some((Instant::now() + delay, Arc::from(end.to_string())));
                }
            }
        }
        if !carry.is_empty() {
            ctx.stats
                .frames_resent
                .fetch_add(carry.len() as u64, Ordering::Relaxed);
        }
    }

    // Exit: shutdown or forgotten. Whatever is still queued is handed back.
    rx.close();
    while let Ok(o) = rx.try_recv() {
        carry.push(o);
    }
    if !carry.is_empty() {
        ctx.hand_back(peer, carry);
    }
    remove_entry(&ctx, addr, generation);
}

/// Remove the map entry for `addr` if it still belongs to this task (a newer
/// task may have replaced it).
fn remove_entry(ctx: &Ctx, addr: SocketAddr, generation: u64) {
    let mut peers = lock(&ctx.peers);
    if peers.get(&addr).is_some_and(|e| e.generation == generation) {
        peers.remove(&addr);
    }
}

/// Run an accepted connection until it ends; it is never redialled.
pub(crate) async fn accepted_task(
    stream: TcpStream,
    remote: SocketAddr,
    conn: u64,
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let peer = Peer::Accepted { remote, conn };
    let mut carry = Vec::new();
    let out = run_session(stream, peer, Role::Server, &ctx, &mut rx, &mut carry).await;
    ctx.stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
    lock(&ctx.accepted).remove(&conn);
    match &out.end {
        SessionEnd::Protocol(_) => {} // already logged with peer= and error=
        SessionEnd::ServerIdle => {
            info!(peer = %peer, "closing idle connection (server_idle_timeout)")
        }
        SessionEnd::Dead(_) => warn!(peer = %peer, reason = %out.end, "closing connection"),
        end => debug!(peer = %peer, reason = %end, "connection ended"),
    }
    rx.close();
    while let Ok(o) = rx.try_recv() {
        carry.push(o);
    }
    let err = SendError::ConnectionClosed { peer };
    if ctx.shutdown.is_cancelled() {
        ctx.hand_back(peer, carry);
    } else {
        fail_all(&mut carry, &err);
    }
}

/// `Network` is shared across tasks and threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Network>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let min = Duration::from_millis(10);
        let max = Duration::from_secs(1);
        for failures in 0..40 {
            let d = backoff_delay(failures, min, max);
            let exp = min
                .saturating_mul(1u32 << failures.saturating_sub(1).min(30))
                .min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "failures {failures}: {d:?} vs {exp:?}"
            );
        }
        assert!(backoff_delay(100, min, max) <= max);
    }

    #[test]
    fn backoff_has_jitter() {
        let ds: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff_delay(5, Duration::from_millis(10), Duration::from_secs(10)))
            .collect();
        assert!(ds.len() > 1);
    }

    #[test]
    fn peer_display() {
        let p = Peer::Accepted {
            remote: SocketAddr::from(([127, 0, 0, 1], 5)),
            conn: 3,
        };
        assert_eq!(p.to_string(), "127.0.0.1:5#3");
        assert_eq!(Peer::Dialed(p.addr()).to_string(), "127.0.0.1:5");
    }
}
