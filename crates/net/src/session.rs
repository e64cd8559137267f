//! One live TCP connection: a writer loop that coalesces queued frames into
//! single writes and drives heartbeats and idle/dead timers, plus a reader
//! task that decodes frames and delivers them to the network's incoming
//! channel.
//!
//! A session never reconnects and never decides what a failure means for the
//! frames it holds: it returns why it ended and leaves frames it did not
//! manage to write in `carry`, so the caller (the dialing peer task, or the
//! accept loop) decides to re-send them on a new connection or give them back.
//! The reader runs as its own task so that a slow application (incoming
//! channel full) or a blocked write never stops the other direction.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use crate::conn::{Ctx, Peer};
use crate::error::SendError;
use crate::frame::{encode_frame, Frame, FrameCodec, FrameError, KIND_HEARTBEAT};

/// A frame waiting to be written, with whoever waits for the write.
pub(crate) struct Outgoing {
    pub frame: Frame,
    pub done: Option<oneshot::Sender<Result<(), SendError>>>,
}

impl Outgoing {
    pub fn complete(self, result: Result<(), SendError>) {
        if let Some(done) = self.done {
            // The sender may have given up waiting; nothing to do then.
            let _ = done.send(result);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The network is shutting down; queued frames were flushed or handed back.
    Shutdown,
    /// Every sender for this connection is gone (peer forgotten).
    QueueClosed,
    /// The peer closed its side in an orderly way (FIN).
    PeerClosed,
    /// Client: no application frame for `client_idle_timeout`.
    ClientIdle,
    /// Server: nothing read for `server_idle_timeout`.
    ServerIdle,
    /// Nothing read for `dead_after_missed` heartbeat intervals.
    Dead(Duration),
    /// A batch could not be written within `write_timeout`.
    WriteTimeout,
    Io(io::Error),
    Protocol(FrameError),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Shutdown => write!(f, "shutdown"),
            SessionEnd::QueueClosed => write!(f, "peer forgotten"),
            SessionEnd::PeerClosed => write!(f, "closed by peer"),
            SessionEnd::ClientIdle => write!(f, "client idle timeout"),
            SessionEnd::ServerIdle => write!(f, "server idle timeout"),
            SessionEnd::Dead(silent) => {
                write!(f, "peer dead: nothing received for {silent:?}")
            }
            SessionEnd::WriteTimeout => write!(f, "write timed out (peer not reading)"),
            SessionEnd::Io(e) => write!(f, "i/o error: {e}"),
            SessionEnd::Protocol(e) => write!(f, "{e}"),
        }
    }
}

pub(crate) struct SessionOutcome {
    pub end: SessionEnd,
    /// Frames (heartbeats included) read and written on this connection:
    /// a session that moved anything proves the peer was reachable.
    pub frames_read: u64,
    pub frames_written: u64,
}

enum ReaderEnd {
    Eof,
    Io(io::Error),
    Protocol(FrameError),
    /// The application dropped the incoming receiver (shutdown).
    ReceiverGone,
}

/// Milliseconds since the session began, shared between reader and writer.
struct Clock {
    start: Instant,
}

impl Clock {
    fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

struct Activity {
    last_read_ms: AtomicU64,
    /// Last application (non-heartbeat) frame in either direction.
    last_app_ms: AtomicU64,
    frames_read: AtomicU64,
}

/// Aborts the reader task when the session returns by any path.
struct ReaderTask(JoinHandle<ReaderEnd>);

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run one connection until it ends. Frames in `carry` are written first
/// (they are re-sends from a previous connection); on a failed write the
/// unwritten batch is left in `carry`.
pub(crate) async fn run_session(
    stream: TcpStream,
    peer: Peer,
    role: Role,
    ctx: &Arc<Ctx>,
    rx: &mut mpsc::Receiver<Outgoing>,
    carry: &mut Vec<Outgoing>,
) -> SessionOutcome {
    let cfg = &ctx.config;
    // None once shutdown began: frames read while flushing are dropped.
    let incoming = ctx.incoming_sender();
    let clock = Arc::new(Clock {
        start: Instant::now(),
    });
    let activity = Arc::new(Activity {
        last_read_ms: AtomicU64::new(0),
        last_app_ms: AtomicU64::new(0),
        frames_read: AtomicU64::new(0),
    });
    let (rd, mut wr) = stream.into_split();
    let mut reader = ReaderTask(tokio::spawn(read_loop(
        rd,
        peer,
        FrameCodec::new(cfg.frame_bytes_max),
        incoming,
        clock.clone(),
        activity.clone(),
        ctx.clone(),
    )));

    let mut ticker = cfg.tick().map(|t| {
        let mut i = tokio::time::interval_at(Instant::now() + t, t);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut batch: Vec<Outgoing> = std::mem::take(carry);
    let mut last_write_ms = 0u64;
    let mut frames_written = 0u64;

    let outcome = |end, written| SessionOutcome {
        end,
        frames_read: activity.frames_read.load(Ordering::Relaxed),
        frames_written: written,
    };

    loop {
        if !batch.is_empty() {
            // A peer that already closed its side would accept these bytes
            // into the kernel and then answer with RST, losing them: look at
            // the reader's verdict first and carry the batch to a new
            // connection instead.
            if reader.0.is_finished() {
                *carry = batch;
                let end = reader_end(&mut reader).await;
                return outcome(end, frames_written);
            }
            match write_batch(&mut wr, &mut batch, &mut buf, ctx).await {
                Ok(n) => {
                    frames_written += n.frames;
                    last_write_ms = clock.ms();
                    if n.app_frames > 0 {
                        activity.last_app_ms.store(last_write_ms, Ordering::Relaxed);
                    }
                }
                Err(end) => {
                    *carry = batch;
                    return outcome(end, frames_written);
                }
            }
        }

        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                let end = graceful_close(&mut wr, &mut reader, peer, rx, &mut batch, &mut buf, ctx).await;
                return outcome(end, frames_written);
            }
            end = &mut reader.0 => {
                let end = match end {
                    Ok(e) => reader_to_session_end(e),
                    Err(join) => SessionEnd::Io(io::Error::other(join.to_string())),
                };
                *carry = batch;
                return outcome(end, frames_written);
            }
            msg = rx.recv() => match msg {
                Some(o) => {
                    let mut bytes = o.frame.wire_len();
                    batch.push(o);
                    // Coalesce whatever else is already waiting.
                    while bytes < cfg.write_bytes_max {
                        match rx.try_recv() {
                            Ok(o) => {
                                bytes += o.frame.wire_len();
                                batch.push(o);
                            }
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    let _ = wr.shutdown().await;
                    return outcome(SessionEnd::QueueClosed, frames_written);
                }
            },
            _ = tick(&mut ticker) => {
                let now = clock.ms();
                let read_idle = Duration::from_millis(now.saturating_sub(activity.last_read_ms.load(Ordering::Relaxed)));
                if let Some(dead) = cfg.dead_after() {
                    if read_idle >= dead {
                        ctx.stats.dead_peers.fetch_add(1, Ordering::Relaxed);
                        return outcome(SessionEnd::Dead(read_idle), frames_written);
                    }
                }
                match role {
                    Role::Server => {
                        if cfg.server_idle_timeout.is_some_and(|t| read_idle >= t) {
                            let _ = wr.shutdown().await;
                            return outcome(SessionEnd::ServerIdle, frames_written);
                        }
                    }
                    Role::Client => {
                        let app_idle = Duration::from_millis(now.saturating_sub(activity.last_app_ms.load(Ordering::Relaxed)));
                        if cfg.client_idle_timeout.is_some_and(|t| app_idle >= t) {
                            let _ = wr.shutdown().await;
                            return outcome(SessionEnd::ClientIdle, frames_written);
                        }
                    }
                }
                if let Some(hb) = cfg.heartbeat_interval {
                    if Duration::from_millis(now.saturating_sub(last_write_ms)) >= hb {
                        ctx.stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                        batch.push(Outgoing { frame: Frame::heartbeat(), done: None });
                    }
                }
            }
        }
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn reader_end(reader: &mut ReaderTask) -> SessionEnd {
    match (&mut reader.0).await {
        Ok(e) => reader_to_session_end(e),
        Err(join) => SessionEnd::Io(io::Error::other(join.to_string())),
    }
}

fn reader_to_session_end(e: ReaderEnd) -> SessionEnd {
    match e {
        ReaderEnd::Eof => SessionEnd::PeerClosed,
        ReaderEnd::Io(e) => SessionEnd::Io(e),
        ReaderEnd::Protocol(e) => SessionEnd::Protocol(e),
        ReaderEnd::ReceiverGone => SessionEnd::Shutdown,
    }
}

struct Written {
    frames: u64,
    app_frames: u64,
}

/// Encode the whole batch into one buffer and write it with one `write_all`
/// (one syscall in the common case). On success every waiter is told `Ok`;
/// on failure the batch is left untouched for a re-send.
async fn write_batch(
    wr: &mut OwnedWriteHalf,
    batch: &mut Vec<Outgoing>,
    buf: &mut BytesMut,
    ctx: &Ctx,
) -> Result<Written, SessionEnd> {
    let max = ctx.config.frame_bytes_max;
    buf.clear();
    let mut i = 0;
    while i < batch.len() {
        let len = batch[i].frame.body.len();
        if len > max {
            batch
                .swap_remove(i)
                .complete(Err(SendError::TooLong { len, max }));
            continue;
        }
        i += 1;
    }
    for o in batch.iter() {
        encode_frame(o.frame.kind, &o.frame.body, buf);
    }
    match tokio::time::timeout(ctx.config.write_timeout, wr.write_all(buf)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(SessionEnd::Io(e)),
        Err(_) => return Err(SessionEnd::WriteTimeout),
    }
    // Do not keep a huge buffer around after one large batch.
    if buf.capacity() > 4 * ctx.config.write_bytes_max.max(max) {
        *buf = BytesMut::with_capacity(8 * 1024);
    }
    let frames = batch.len() as u64;
    let mut app_frames = 0;
    for o in batch.drain(..) {
        if o.frame.kind != KIND_HEARTBEAT {
            app_frames += 1;
        }
        o.complete(Ok(()));
    }
    ctx.stats
        .frames_sent
        .fetch_add(app_frames, Ordering::Relaxed);
    ctx.stats.writes.fetch_add(1, Ordering::Relaxed);
    Ok(Written { frames, app_frames })
}

/// Shutdown path: stop taking frames, write what is queued, send FIN, then
/// wait (until the grace deadline) for the peer to close its side, so the
/// peer reads everything before the socket goes away. Frames that could not
/// be written are handed back.
async fn graceful_close(
    wr: &mut OwnedWriteHalf,
    reader: &mut ReaderTask,
    peer: Peer,
    rx: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    buf: &mut BytesMut,
    ctx: &Arc<Ctx>,
) -> SessionEnd {
    rx.close();
    while let Ok(o) = rx.try_recv() {
        batch.push(o);
    }
    let deadline = ctx.grace_deadline();
    if !batch.is_empty() {
        match tokio::time::timeout_at(deadline, write_batch(wr, batch, buf, ctx)).await {
            Ok(Ok(_)) => {}
            Ok(Err(end)) => {
                warn!(peer = %peer, error = %end, frames = batch.len(), "could not flush on shutdown; handing frames back");
                ctx.hand_back(peer, std::mem::take(batch));
            }
            Err(_) => {
                warn!(peer = %peer, frames = batch.len(), "shutdown grace expired while flushing; handing frames back");
                ctx.hand_back(peer, std::mem::take(batch));
            }
        }
    }
    let _ = tokio::time::timeout_at(deadline, wr.shutdown()).await;
    let _ = tokio::time::timeout_at(deadline, &mut reader.0).await;
    SessionEnd::Shutdown
}

async fn read_loop(
    rd: OwnedReadHalf,
    peer: Peer,
    codec: FrameCodec,
    incoming: Option<mpsc::Sender<(Peer, Frame)>>,
    clock: Arc<Clock>,
    activity: Arc<Activity>,
    ctx: Arc<Ctx>,
) -> ReaderEnd {
    let mut frames = FramedRead::new(rd, codec);
    loop {
        match frames.next().await {
            Some(Ok(frame)) => {
                let now = clock.ms();
                activity.last_read_ms.store(now, Ordering::Relaxed);
                activity.frames_read.fetch_add(1, Ordering::Relaxed);
                if frame.kind == KIND_HEARTBEAT {
                    ctx.stats
                        .heartbeats_received
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                activity.last_app_ms.store(now, Ordering::Relaxed);
                ctx.stats.frames_received.fetch_add(1, Ordering::Relaxed);
                match &incoming {
                    Some(tx) => {
                        if tx.send((peer, frame)).await.is_err() {
                            return ReaderEnd::ReceiverGone;
                        }
                    }
                    None => {
                        debug!(peer = %peer, kind = frame.kind, "dropping frame received during shutdown")
                    }
                }
            }
            Some(Err(e)) if e.is_protocol_error() => {
                ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer, error = %e, "protocol error: closing connection");
                return ReaderEnd::Protocol(e);
            }
            Some(Err(FrameError::Io(e))) => {
                debug!(peer = %peer, error = %e, "read failed");
                return ReaderEnd::Io(e);
            }
            Some(Err(e)) => {
                // Unreachable: every non-Io variant is a protocol error.
                return ReaderEnd::Io(io::Error::other(e.to_string()));
            }
            None => {
                info!(peer = %peer, "connection closed by peer");
                return ReaderEnd::Eof;
            }
        }
    }
}
