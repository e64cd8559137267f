//! Outgoing 2PC messages over the process's [`concord_net::Network`]: one
//! persistent connection per peer address, shared with the listener's
//! connections (same heartbeats, idle timers and shutdown).
//!
//! The driver calls [`Outbox::send`] and never waits. concord-net owns the
//! rest: it connects (TCP_NODELAY), coalesces queued frames into single
//! writes, heartbeats idle connections, declares a silent peer dead after
//! `dead_after_missed` intervals, and repairs a pooled connection that the
//! other side (its idle timeout, a middlebox, a restart) closed under us by
//! reconnecting and re-sending the frames it had not written — the driver
//! never sees a reset. Connect failures are logged by concord-net with
//! their kind (`connection_refused`, `connect_timeout`,
//! `network_unreachable`) and back off exponentially with jitter; while a
//! peer is in backoff its messages fail fast instead of queueing.
//!
//! Delivery is never promised: a message lost with a connection, failed
//! fast during backoff, or not fitting in a full queue is dropped with a
//! log line. That is safe because every 2PC message is idempotent and
//! covered by a timer that resends it (coordinator: COMMIT until ACKed;
//! participant: INQUIRE until answered; a lost vote or PREPARE ends in an
//! ABORT).
//!
//! Peers are named by id; the node layer's directory gives the address
//! each message goes to, and every frame carries this node's own id and
//! address (`reply_to`) so the receiver's directory follows it. Literal
//! socket addresses are used as they are, host names are resolved in a
//! task (never blocking the driver) and cached.

use crate::wire::{self, PeerBodyRef, PeerHint};
use concord_net::Frame;
use concord_net::{Network, SendError};
use concord_node::hello::Greeting;
use concord_proto::{Message, Xid};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Above this many cached name resolutions the cache is cleared (a peer
/// can put any `from` address in a message).
const RESOLVED_MAX: usize = 4096;

/// Most host-name resolutions running at once; a message that would need
/// another is dropped with a log line (timers resend what matters), so a
/// flood of unresolvable names cannot pile up tasks.
const RESOLVING_MAX: usize = 64;

/// The sending side of a node: `send(addr, message)` and forget.
pub struct Outbox {
    network: Network,
    /// This node's id, address and incarnation, sent with every frame.
    id: String,
    reply_to: String,
    incarnation: u64,
    resolved: Arc<Mutex<HashMap<String, SocketAddr>>>,
    /// Resolutions running now (see [`RESOLVING_MAX`]).
    resolving: Arc<AtomicUsize>,
}

impl Outbox {
    /// An outbox over `network` (normally the one the process listens
    /// with, so outgoing and incoming connections share one shutdown).
    pub fn new(
        network: Network,
        id: impl Into<String>,
        reply_to: impl Into<String>,
        incarnation: u64,
    ) -> Outbox {
        Outbox {
            network,
            id: id.into(),
            reply_to: reply_to.into(),
            incarnation,
            resolved: Arc::default(),
            resolving: Arc::default(),
        }
    }

    /// The network this outbox sends over (for its counters).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Queue `message` for node `to` at `addr`, with directory hints
    /// `peers`. Never blocks; must run inside a tokio runtime (the first
    /// message to a peer starts its connection task).
    pub fn send(&mut self, to: &str, addr: &str, message: &Message, peers: &[PeerHint]) {
        let what = What {
            to,
            xid: Some(message.xid),
            kind: message.kind(),
        };
        let frame = wire::peer_frame(
            &self.id,
            &self.reply_to,
            self.incarnation,
            peers,
            PeerBodyRef::Message(message),
        );
        self.send_frame(addr, frame, what);
    }

    /// Tell node `to` at `addr` where this node is.
    pub fn greet(&mut self, to: &str, addr: &str, greeting: Greeting, peers: &[PeerHint]) {
        let (kind, body) = match greeting {
            Greeting::Hello => ("HELLO", PeerBodyRef::Hello),
            Greeting::Welcome => ("WELCOME", PeerBodyRef::Welcome),
        };
        let what = What {
            to,
            xid: None,
            kind,
        };
        let frame = wire::peer_frame(&self.id, &self.reply_to, self.incarnation, peers, body);
        self.send_frame(addr, frame, what);
    }

    fn send_frame(&mut self, addr: &str, frame: Frame, what: What<'_>) {
        if let Ok(socket) = addr.parse::<SocketAddr>() {
            send_to(&self.network, socket, addr, frame, &what);
            return;
        }
        let cached = lock(&self.resolved).get(addr).copied();
        if let Some(socket) = cached {
            send_to(&self.network, socket, addr, frame, &what);
            return;
        }
        // A host name: resolve off the driver's task, a bounded number at
        // a time.
        if self.resolving.fetch_add(1, Ordering::AcqRel) >= RESOLVING_MAX {
            self.resolving.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                peer = %what.to,
                addr,
                kind = what.kind,
                "{RESOLVING_MAX} peer address resolutions already running: message dropped; \
                 timers will resend"
            );
            return;
        }
        let resolving = Arc::clone(&self.resolving);
        let network = self.network.clone();
        let resolved = Arc::clone(&self.resolved);
        let to = addr.to_string();
        let (peer, xid, kind) = (what.to.to_string(), what.xid, what.kind);
        tokio::spawn(async move {
            let what = What {
                to: &peer,
                xid,
                kind,
            };
            match tokio::net::lookup_host(to.as_str())
                .await
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => {
                    {
                        let mut cache = lock(&resolved);
                        if cache.len() >= RESOLVED_MAX {
                            cache.clear();
                        }
                        cache.insert(to.clone(), addr);
                    }
                    send_to(&network, addr, &to, frame, &what);
                }
                Ok(None) => tracing::warn!(
                    peer = %what.to,
                    addr = %to,
                    xid = ?what.xid,
                    kind = what.kind,
                    "peer address resolves to nothing: message dropped"
                ),
                Err(e) => tracing::warn!(
                    peer = %what.to,
                    addr = %to,
                    xid = ?what.xid,
                    kind = what.kind,
                    "cannot resolve peer address ({e}): message dropped; timers will resend"
                ),
            }
            resolving.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a frame is, for log lines about it (borrowed: built for every
/// message, read only when something goes wrong).
struct What<'a> {
    to: &'a str,
    /// None for a hello.
    xid: Option<Xid>,
    kind: &'static str,
}

fn send_to(network: &Network, socket: SocketAddr, addr: &str, frame: Frame, what: &What<'_>) {
    match network.try_send(socket, frame) {
        Ok(()) => {}
        Err(SendError::Shutdown) => tracing::debug!(
            peer = %what.to,
            addr,
            xid = ?what.xid,
            kind = what.kind,
            "shutting down: message not sent"
        ),
        Err(e) => tracing::warn!(
            peer = %what.to,
            addr,
            xid = ?what.xid,
            kind = what.kind,
            "message dropped ({e}); timers will resend"
        ),
    }
}
