//! Incoming connections: the listener, one reader task per connection that
//! turns frames into [`Inbound`] events for the driver, and one writer task
//! per connection that carries client replies back, coalescing whatever is
//! queued into one write.
//!
//! A connection that sends a malformed frame (bad magic or version, a body
//! longer than `frame_bytes_max`, an unknown kind, a body that does not
//! decode) is closed with a warning naming the peer's address; every other
//! connection is untouched and the server goes on. Nothing read from the
//! network is unwrapped.

use crate::wire::{self, Reply, Request, KIND_PEER, KIND_REPLY, KIND_REQUEST};
use bytes::BytesMut;
use concord_net::{encode_frame, Frame, FrameCodec, KIND_HEARTBEAT};
use concord_proto::Message;
use futures::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Pending output above this many bytes is written before more is taken
/// from the queue.
const WRITE_COALESCE_BYTES_MAX: usize = 256 << 10;

/// Something that arrived on an incoming connection, for the driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    Peer(Message),
    Request { request: Request, reply: ReplyTx },
}

/// Where replies to one client connection go. Cheap to clone; sending after
/// the connection closed is a no-op.
#[derive(Clone, Debug)]
pub(crate) struct ReplyTx {
    frames: mpsc::UnboundedSender<Frame>,
    peer: SocketAddr,
}

impl ReplyTx {
    pub fn send(&self, reply: &Reply) {
        if self.frames.send(wire::reply_frame(reply)).is_err() {
            tracing::debug!(
                peer = %self.peer,
                request_id = reply.request_id(),
                "client connection closed before its reply could be sent"
            );
        }
    }

    pub fn error(&self, request_id: u64, message: impl Into<String>) {
        self.send(&Reply::Error {
            request_id,
            message: message.into(),
        });
    }
}

/// Bind `listen` with SO_REUSEADDR (so a restarted process gets its port
/// back at once) and the given accept backlog.
pub(crate) async fn bind(listen: &str, backlog: u32) -> anyhow::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve listen address {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("listen address {listen:?} resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| anyhow::anyhow!("cannot create a socket for {listen}: {e}"))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| anyhow::anyhow!("cannot set SO_REUSEADDR on {listen}: {e}"))?;
    socket
        .bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    socket
        .listen(backlog)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
}

/// Accept connections until `stop` is cancelled; each gets a reader and a
/// writer task feeding `inbound`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    frame_bytes_max: usize,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                let inbound = inbound.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve_connection(stream, peer, inbound, frame_bytes_max) => {}
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    frame_bytes_max: usize,
) {
    let (read_half, write_half) = stream.into_split();
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(write_half, frames_rx, peer.to_string()));
    let mut reader = FramedRead::new(read_half, FrameCodec::new(frame_bytes_max));
    let protocol_error = loop {
        let frame = match reader.next().await {
            None => break false,
            Some(Ok(frame)) => frame,
            Some(Err(e)) if e.is_protocol_error() => {
                tracing::warn!(%peer, "closing connection: {e}");
                break true;
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, "connection failed: {e}");
                break false;
            }
        };
        let event = match frame.kind {
            KIND_HEARTBEAT => continue,
            KIND_PEER => match wire::decode_peer(&frame.body) {
                Ok(message) => Inbound::Peer(message),
                Err(e) => {
                    tracing::warn!(%peer, "closing connection: protocol error: {e}");
                    break true;
                }
            },
            KIND_REQUEST => match wire::decode_request(&frame.body) {
                Ok(request) => Inbound::Request {
                    request,
                    reply: ReplyTx {
                        frames: frames.clone(),
                        peer,
                    },
                },
                Err(e) => {
                    tracing::warn!(%peer, "closing connection: protocol error: {e}");
                    break true;
                }
            },
            other => {
                let what = if other == KIND_REPLY {
                    "a reply frame, which only clients receive".to_string()
                } else {
                    format!("unknown frame kind {other}")
                };
                tracing::warn!(%peer, "closing connection: protocol error: {what}");
                break true;
            }
        };
        if inbound.send(event).await.is_err() {
            return; // the driver stopped
        }
    };
    drop(frames);
    if protocol_error {
        // Close now: dropping both halves closes the socket.
        writer.abort();
    }
    // Otherwise the writer finishes once the replies still owed to this
    // client are written (or the driver drops them).
}

/// Write queued frames to `write_half`, coalescing everything already
/// queued into one write. Ends when the queue closes or a write fails.
pub(crate) async fn write_frames(
    mut write_half: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    peer: String,
) {
    let mut buffer = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        encode_frame(frame.kind, &frame.body, &mut buffer);
        while buffer.len() < WRITE_COALESCE_BYTES_MAX {
            match frames.try_recv() {
                Ok(frame) => encode_frame(frame.kind, &frame.body, &mut buffer),
                Err(_) => break,
            }
        }
        if let Err(e) = write_half.write_all(&buffer).await {
            tracing::debug!(%peer, "write failed, dropping the connection: {e}");
            return;
        }
        buffer.clear();
    }
}
