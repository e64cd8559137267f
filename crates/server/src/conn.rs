//! The server side of a concord process's transport: one
//! [`concord_net::Network`] per process serves incoming connections
//! (clients and peers) *and* carries the [`Outbox`](crate::outbox::Outbox)'s
//! outgoing peer connections, so every connection gets the same treatment:
//! TCP_NODELAY, coalesced writes, heartbeats, dead-peer detection, the
//! server idle timeout, `connections_max`, the configured listen backlog
//! and a graceful shutdown that flushes what is queued.
//!
//! This module turns the network's `(Peer, Frame)` stream into
//! [`Inbound`] events for the driver ([`Incoming`]), decoding in the
//! driver's own task: a separate dispatch task would cost one more task
//! wake-up and channel hop per message, on the hot path. Frames whose *header* is wrong (bad
//! magic or version, longer than `frame_bytes_max`) are caught by
//! concord-net, which closes that connection and logs it with the peer's
//! address. Frames with a good header but a body this process cannot use
//! (an unknown kind, a reply sent to a server, a body that does not decode)
//! are caught here: the connection is closed with a warning naming the
//! peer, and every other connection is untouched. Nothing read from the
//! network is unwrapped.
//!
//! Client replies go back on the connection the request came in on
//! ([`ReplyTx`]); a client that is gone makes the reply a no-op, and one
//! that does not read its replies until its connection's queue is full is
//! disconnected (memory stays bounded). Peer
//! messages are never answered on their incoming connection (the answer is
//! a new message to the sender's id, at its address in the directory,
//! through the outbox).

use crate::wire::{self, PeerEnvelope, Reply, Request, KIND_PEER, KIND_REPLY, KIND_REQUEST};
use concord_net::{Frame, NetConfig, Network, Peer, SendError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a graceful shutdown lets connections flush what is queued (the
/// last replies, COMMITs and ACKs) before they are closed regardless.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Something that arrived on an incoming connection, for the driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    Peer(PeerEnvelope),
    Request {
        request: Request,
        reply: ReplyTx,
    },
    /// `GET /metrics`: the driver answers with the text format.
    Scrape(tokio::sync::oneshot::Sender<String>),
    /// An HTTP participant's call failed (coordinator only).
    DeliveryFailed(crate::http_participant::DeliveryFailure),
    /// A participant's answer to the coordinator node's question `id`
    /// (`CoordinatorNodeAction::AskParticipant`; coordinator only).
    ParticipantAnswer {
        id: u64,
        answer: Result<crate::wire::Reply, String>,
    },
    /// The PostgreSQL participant's database answered command `id`.
    PgDone {
        id: u64,
        reply: concord_participant::pg::PgReply,
    },
}

/// Where replies to one client request go: its connection, or (for the
/// HTTP API, which turns each HTTP request into the same requests the
/// binary protocol carries) the waiting handler. Cheap to clone; sending
/// after the client is gone is a no-op (logged at debug level).
#[derive(Clone, Debug)]
pub(crate) enum ReplyTx {
    Net {
        network: Network,
        peer: Peer,
    },
    /// Unbounded: one request gets at most a few replies (Begun, then the
    /// outcome), and the handler reads them as they come.
    Local(mpsc::UnboundedSender<Reply>),
}

/// Why a request handed to a driver from inside this process (the HTTP
/// API, a lookup) was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotTaken {
    /// Its queue is full: too many requests waiting already.
    Busy,
    /// The driver is gone or stopping.
    Closed,
}

/// Hand `request` to the driver behind `to`, with the replies coming out of
/// the returned receiver. Never waits: a full queue is `Busy` at once, so
/// a slow driver pushes back instead of piling up callers.
pub(crate) fn submit_local(
    to: &mpsc::Sender<Inbound>,
    request: Request,
) -> Result<mpsc::UnboundedReceiver<Reply>, NotTaken> {
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = Inbound::Request {
        request,
        reply: ReplyTx::Local(tx),
    };
    match to.try_send(inbound) {
        Ok(()) => Ok(rx),
        Err(mpsc::error::TrySendError::Full(_)) => Err(NotTaken::Busy),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(NotTaken::Closed),
    }
}

impl ReplyTx {
    pub fn send(&self, reply: &Reply) {
        let (network, peer) = match self {
            ReplyTx::Net { network, peer } => (network, *peer),
            ReplyTx::Local(tx) => {
                if tx.send(reply.clone()).is_err() {
                    tracing::debug!(
                        request_id = reply.request_id(),
                        "HTTP request gone before its reply"
                    );
                }
                return;
            }
        };
        let frame = wire::reply_frame(reply);
        match network.try_send_to(peer, frame) {
            Ok(()) => {}
            Err(SendError::QueueFull { .. }) => {
                // The client pipelines faster than it reads, and its
                // connection's queue (`NetConfig::send_queue_frames_max`,
                // 4,096 frames) is full. Waiting would stall the driver for everyone, and
                // queueing more is unbounded memory: close that one
                // connection. Its requests in flight see the connection
                // lost (with the xid, for a begun transaction) and can ask
                // `status`; nothing is decided differently.
                tracing::warn!(
                    %peer,
                    request_id = reply.request_id(),
                    "client is not reading its replies (its send queue is full); closing its \
                     connection"
                );
                network.close(peer);
            }
            Err(SendError::TooLong { len, max }) => {
                tracing::warn!(
                    %peer,
                    request_id = reply.request_id(),
                    "reply of {len} bytes exceeds --frame-bytes-max {max}; sending an error instead"
                );
                self.error(
                    reply.request_id(),
                    format!("the reply ({len} bytes) exceeds the server's --frame-bytes-max {max}; raise it"),
                );
            }
            Err(e) => tracing::debug!(
                %peer,
                request_id = reply.request_id(),
                "client connection gone before its reply could be sent: {e}"
            ),
        }
    }

    pub fn error(&self, request_id: u64, message: impl Into<String>) {
        self.send(&Reply::Error {
            request_id,
            message: message.into(),
        });
    }
}

/// Check the transport settings of a server before anything starts, with
/// the relation concord adds to [`NetConfig::validate`]: without heartbeats
/// the client idle timeout must be shorter than the server idle timeout, so
/// a pooled connection is closed by its client (which then reconnects
/// before writing) rather than by the server under a client about to write.
pub fn validate_net_config(net: &NetConfig) -> anyhow::Result<()> {
    net.validate().map_err(|e| {
        anyhow::anyhow!(
            "{e} (flags: --heartbeat-interval-ms, --dead-after-missed, \
                 --server-idle-timeout-ms, --client-idle-timeout-ms, --frame-bytes-max, \
                 --reconnect-ms-initial/-max; README section Network)"
        )
    })?;
    if net.heartbeat_interval.is_none() {
        if let (Some(client), Some(server)) = (net.client_idle_timeout, net.server_idle_timeout) {
            if client >= server {
                anyhow::bail!(
                    "invalid network configuration: with heartbeats off, --client-idle-timeout-ms \
                     ({} ms) must be below --server-idle-timeout-ms ({} ms) so the client closes \
                     an idle connection first",
                    client.as_millis(),
                    server.as_millis()
                );
            }
        }
    }
    Ok(())
}

/// Resolve `listen`, create the process's network with `config` and
/// listen with `backlog`; what arrives comes out of the returned
/// [`Incoming`]. Must run inside a tokio runtime.
pub(crate) async fn serve(
    listen: &str,
    backlog: u32,
    config: NetConfig,
) -> anyhow::Result<(Network, Incoming)> {
    let (network, incoming, _) = serve_at(listen, backlog, config).await?;
    Ok((network, incoming))
}

/// [`serve`], also returning the address bound (port 0 picks one).
pub(crate) async fn serve_at(
    listen: &str,
    backlog: u32,
    config: NetConfig,
) -> anyhow::Result<(Network, Incoming, std::net::SocketAddr)> {
    validate_net_config(&config)?;
    let addr = resolve(listen).await?;
    let (network, frames) = Network::try_new(config)?;
    let bound = network
        .listen(addr, backlog)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let incoming = Incoming {
        network: network.clone(),
        frames,
        local: None,
    };
    Ok((network, incoming, bound))
}

/// Decoded events from every incoming connection. The network's queue
/// bounds them (`incoming_queue_frames_max`): when the driver falls behind,
/// the connection readers stop reading and TCP pushes back on the senders.
pub(crate) struct Incoming {
    network: Network,
    frames: mpsc::Receiver<(Peer, Frame)>,
    /// Requests from inside the process (the HTTP API), already decoded.
    /// Bounded: when the driver falls behind, the HTTP handlers answer 503.
    /// `None` without an HTTP listener: the hot path then waits on the
    /// network alone.
    local: Option<mpsc::Receiver<Inbound>>,
}

impl Incoming {
    /// Take requests from inside the process (the HTTP API) too.
    pub fn with_local(mut self, local: mpsc::Receiver<Inbound>) -> Incoming {
        self.local = Some(local);
        self
    }

    /// The next event; `None` once the network has shut down.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            let (peer, frame) = match &mut self.local {
                None => self.frames.recv().await?,
                Some(local) => tokio::select! {
                    // The network first, and no random branch order.
                    biased;
                    got = self.frames.recv() => got?,
                    // Once the HTTP side stopped, only the network is left.
                    Some(event) = local.recv() => return Some(event),
                },
            };
            if let Some(event) = self.decode(peer, frame) {
                return Some(event);
            }
        }
    }

    /// The next event if one is already queued.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        if let Some(event) = self.local.as_mut().and_then(|l| l.try_recv().ok()) {
            return Some(event);
        }
        loop {
            let (peer, frame) = self.frames.try_recv().ok()?;
            if let Some(event) = self.decode(peer, frame) {
                return Some(event);
            }
        }
    }

    /// A frame this process cannot use closes its connection (only that
    /// one) with a warning naming the peer.
    fn decode(&self, peer: Peer, frame: Frame) -> Option<Inbound> {
        match decode(&self.network, peer, frame) {
            Ok(event) => Some(event),
            Err(why) => {
                tracing::warn!(%peer, "closing connection: protocol error: {why}");
                self.network.close(peer);
                None
            }
        }
    }
}

/// Graceful end of the transport: stop accepting, write what is queued on
/// every connection (replies to clients, the last protocol messages), send
/// FIN, and wait for the peers to close, within [`SHUTDOWN_GRACE`]. Frames
/// that could not be written are logged; the protocol re-sends them after
/// restart (COMMITs from the log, INQUIREs from READY branches).
pub(crate) async fn shutdown(network: &Network) {
    let handed_back = network.shutdown(SHUTDOWN_GRACE).await;
    if !handed_back.is_empty() {
        tracing::info!(
            frames = handed_back.len(),
            "shutdown: {} queued frames could not be written before the grace period ended; \
             the protocol re-sends what matters after restart",
            handed_back.len()
        );
    }
}

async fn resolve(listen: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve listen address {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("listen address {listen:?} resolves to nothing"))
}

fn decode(network: &Network, peer: Peer, frame: Frame) -> Result<Inbound, String> {
    match frame.kind {
        KIND_PEER => wire::decode_peer(&frame.body)
            .map(Inbound::Peer)
            .map_err(|e| e.to_string()),
        KIND_REQUEST => wire::decode_request(&frame.body)
            .map(|request| Inbound::Request {
                request,
                reply: ReplyTx::Net {
                    network: network.clone(),
                    peer,
                },
            })
            .map_err(|e| e.to_string()),
        KIND_REPLY => Err("a reply frame, which only clients receive".into()),
        other => Err(format!("unknown frame kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::Xid;

    fn status(request_id: u64) -> Request {
        Request::Status {
            request_id,
            xid: Xid(7),
        }
    }

    /// Taken: the driver gets the request with a reply path that reaches
    /// the caller. Full: `Busy` at once, without waiting. Gone: `Closed`.
    #[test]
    fn a_local_request_is_taken_refused_when_full_and_when_the_driver_is_gone() {
        let (to, mut driver) = mpsc::channel(1);
        let mut replies = submit_local(&to, status(1)).expect("room for one");
        assert_eq!(
            submit_local(&to, status(2)).err(),
            Some(NotTaken::Busy),
            "the queue holds one"
        );
        let Some(Inbound::Request { request, reply }) = driver.try_recv().ok() else {
            panic!("the driver got the request");
        };
        assert!(matches!(request, Request::Status { request_id: 1, .. }));
        reply.send(&Reply::Error {
            request_id: 1,
            message: "no such thing".into(),
        });
        assert!(matches!(
            replies.try_recv(),
            Ok(Reply::Error { request_id: 1, .. })
        ));
        drop(driver);
        assert_eq!(submit_local(&to, status(3)).err(), Some(NotTaken::Closed));
    }
}
