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
//! Peer addresses are protocol strings (`"127.0.0.1:7101"`); literal socket
//! addresses are used as they are, host names are resolved in a task (never
//! blocking the driver) and cached.

use crate::wire;
use concord_net::{Network, SendError};
use concord_proto::{Message, PeerAddr};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Above this many cached name resolutions the cache is cleared (a peer
/// can put any `from` address in a message).
const RESOLVED_MAX: usize = 4096;

/// The sending side of a node: `send(addr, message)` and forget.
pub struct Outbox {
    network: Network,
    resolved: Arc<Mutex<HashMap<PeerAddr, SocketAddr>>>,
}

impl Outbox {
    /// An outbox over `network` (normally the one the process listens
    /// with, so outgoing and incoming connections share one shutdown).
    pub fn new(network: Network) -> Outbox {
        Outbox {
            network,
            resolved: Arc::default(),
        }
    }

    /// The network this outbox sends over (for its counters).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Queue `message` for `to`. Never blocks; must run inside a tokio
    /// runtime (the first message to a peer starts its connection task).
    pub fn send(&mut self, to: &PeerAddr, message: Message) {
        if let Ok(addr) = to.parse::<SocketAddr>() {
            send_to(&self.network, addr, to, &message);
            return;
        }
        let cached = lock(&self.resolved).get(to).copied();
        if let Some(addr) = cached {
            send_to(&self.network, addr, to, &message);
            return;
        }
        // A host name: resolve off the driver's task.
        let network = self.network.clone();
        let resolved = Arc::clone(&self.resolved);
        let to = to.clone();
        tokio::spawn(async move {
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
                    send_to(&network, addr, &to, &message);
                }
                Ok(None) => tracing::warn!(
                    peer = %to,
                    xid = %message.xid,
                    kind = message.kind(),
                    "peer address resolves to nothing: message dropped"
                ),
                Err(e) => tracing::warn!(
                    peer = %to,
                    xid = %message.xid,
                    kind = message.kind(),
                    "cannot resolve peer address ({e}): message dropped; timers will resend"
                ),
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn send_to(network: &Network, addr: SocketAddr, to: &str, message: &Message) {
    match network.try_send(addr, wire::peer_frame(message)) {
        Ok(()) => {}
        Err(SendError::Shutdown) => tracing::debug!(
            peer = %to,
            xid = %message.xid,
            kind = message.kind(),
            "shutting down: message not sent"
        ),
        Err(e) => tracing::warn!(
            peer = %to,
            xid = %message.xid,
            kind = message.kind(),
            "message dropped ({e}); timers will resend"
        ),
    }
}
