//! Outgoing 2PC messages: one persistent connection per peer address,
//! reconnected with exponential backoff and jitter.
//!
//! The driver calls [`Outbox::send`] and never waits: each peer has a task
//! with a bounded queue. The task connects (TCP_NODELAY), writes every
//! queued message coalesced into as few writes as possible, and watches the
//! read side so that a peer that closed or died (FIN or RST) is noticed
//! before the next message is written into a dead socket. On any failure it
//! reconnects with backoff; messages queued meanwhile wait (up to the queue
//! bound).
//!
//! Delivery is never promised: a message in a failed write, or one that
//! does not fit in a full queue, is dropped with a log line. That is safe
//! because every 2PC message is idempotent and covered by a timer that
//! resends it (coordinator: COMMIT until ACKed; participant: INQUIRE until
//! answered; a lost vote or PREPARE ends in an ABORT).
//!
//! This is a stand-in with a deliberately small surface (`send`), so that
//! concord-net's connection manager (heartbeats, idle handling, RTT
//! estimates) can replace it without touching the drivers.

use crate::wire;
use bytes::BytesMut;
use concord_net::encode_frame;
use concord_proto::{Message, PeerAddr};
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Tunables of the outgoing connections.
#[derive(Clone, Debug)]
pub struct OutboxOptions {
    /// Messages queued per peer while it is unreachable; further ones are
    /// dropped (timers resend what matters).
    pub queue_messages_max: usize,
    /// First reconnect delay; doubles per failed attempt up to
    /// `reconnect_ms_max`, with ±50% jitter.
    pub reconnect_ms_initial: u64,
    pub reconnect_ms_max: u64,
    pub connect_timeout_ms: u64,
    /// A peer unreachable for this long has its queued messages dropped
    /// and its task ended (the next message starts a new one), so that
    /// messages to a bogus `from` address cannot pile up forever.
    pub give_up_ms: u64,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            queue_messages_max: 8192,
            reconnect_ms_initial: 20,
            reconnect_ms_max: 1000,
            connect_timeout_ms: 1000,
            give_up_ms: 60_000,
        }
    }
}

/// Pending output above this many bytes is written before more is taken
/// from the queue.
const WRITE_COALESCE_BYTES_MAX: usize = 256 << 10;

/// Above this many links, closed ones are pruned from the table.
const LINKS_PRUNE_THRESHOLD: usize = 1024;

/// The sending side of a node: `send(addr, message)` and forget.
pub struct Outbox {
    options: OutboxOptions,
    links: HashMap<PeerAddr, mpsc::Sender<Message>>,
}

impl Outbox {
    pub fn new(options: OutboxOptions) -> Outbox {
        Outbox {
            options,
            links: HashMap::new(),
        }
    }

    /// Queue `message` for `to`. Never blocks; must run inside a tokio
    /// runtime (the first message to a peer starts its connection task).
    pub fn send(&mut self, to: &PeerAddr, message: Message) {
        let link = match self.links.get(to) {
            Some(link) if !link.is_closed() => link,
            _ => {
                if self.links.len() >= LINKS_PRUNE_THRESHOLD {
                    self.links.retain(|_, link| !link.is_closed());
                }
                let (tx, rx) = mpsc::channel(self.options.queue_messages_max.max(1));
                tokio::spawn(run_link(to.clone(), rx, self.options.clone()));
                self.links.insert(to.clone(), tx);
                &self.links[to]
            }
        };
        if let Err(e) = link.try_send(message) {
            let message = match e {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
            };
            tracing::warn!(
                peer = %to,
                xid = %message.xid,
                kind = message.kind(),
                "outgoing queue full (peer unreachable or slow): message dropped; timers will resend"
            );
        }
    }
}

/// Classify a connect failure for the log: refused, timed out and
/// unreachable need different fixes.
fn connect_error_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listening there?)",
        io::ErrorKind::TimedOut => "connect timed out",
        _ => match e.raw_os_error() {
            Some(code) if code == libc::ENETUNREACH || code == libc::EHOSTUNREACH => {
                "network unreachable"
            }
            _ => "connect failed",
        },
    }
}

async fn connect(to: &str, timeout_ms: u64) -> io::Result<TcpStream> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), TcpStream::connect(to)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout_ms} ms"),
        )),
    }
}

async fn run_link(to: PeerAddr, mut queue: mpsc::Receiver<Message>, options: OutboxOptions) {
    let mut pending: VecDeque<Message> = VecDeque::new();
    let mut backoff_ms = options.reconnect_ms_initial.max(1);
    let mut failures: u32 = 0;
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        // Wait for something to send before connecting: an idle peer costs
        // no connection attempts.
        if pending.is_empty() {
            match queue.recv().await {
                Some(message) => pending.push_back(message),
                None => return,
            }
        }
        let stream = match connect(&to, options.connect_timeout_ms).await {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                let what = connect_error_kind(&e);
                if since.elapsed() >= Duration::from_millis(options.give_up_ms) {
                    tracing::warn!(
                        peer = %to,
                        attempts = failures,
                        dropped = pending.len(),
                        "peer unreachable for {} ms ({what}: {e}): dropping its queued messages; \
                         timers resend what matters",
                        options.give_up_ms
                    );
                    return;
                }
                if failures == 1 || failures.is_power_of_two() {
                    tracing::info!(
                        peer = %to,
                        attempt = failures,
                        queued = pending.len(),
                        "cannot reach peer: {what}: {e}; retrying in about {backoff_ms} ms"
                    );
                }
                let jittered = backoff_ms / 2 + rand::thread_rng().gen_range(0..=backoff_ms);
                let sleep = tokio::time::sleep(Duration::from_millis(jittered));
                tokio::pin!(sleep);
                // Keep taking messages while waiting so the bounded queue
                // does not fill behind us.
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        message = queue.recv() => match message {
                            Some(message) => push_bounded(&mut pending, message, &to, options.queue_messages_max),
                            None => return,
                        },
                    }
                }
                backoff_ms = (backoff_ms * 2).min(options.reconnect_ms_max.max(1));
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(peer = %to, after_attempts = failures, "connected to peer");
        }
        failures = 0;
        failing_since = None;
        backoff_ms = options.reconnect_ms_initial.max(1);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %to, "cannot set TCP_NODELAY: {e}");
        }
        match drive_connection(stream, &mut queue, &mut pending).await {
            LinkEnd::QueueClosed => return,
            LinkEnd::Broken(why) => {
                tracing::debug!(peer = %to, "connection to peer lost: {why}; reconnecting");
            }
        }
    }
}

fn push_bounded(pending: &mut VecDeque<Message>, message: Message, to: &str, max: usize) {
    if pending.len() >= max {
        if let Some(dropped) = pending.pop_front() {
            tracing::warn!(
                peer = %to,
                xid = %dropped.xid,
                kind = dropped.kind(),
                "peer unreachable and {max} messages queued: oldest dropped; timers will resend"
            );
        }
    }
    pending.push_back(message);
}

enum LinkEnd {
    QueueClosed,
    Broken(String),
}

async fn drive_connection(
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Message>,
    pending: &mut VecDeque<Message>,
) -> LinkEnd {
    let (mut read_half, mut write_half) = stream.into_split();
    let mut scratch = [0u8; 512];
    let mut buffer = BytesMut::new();
    loop {
        // Everything already waiting goes out in one write.
        while buffer.len() < WRITE_COALESCE_BYTES_MAX {
            let message = match pending.pop_front() {
                Some(message) => message,
                None => match queue.try_recv() {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            let frame = wire::peer_frame(&message);
            encode_frame(frame.kind, &frame.body, &mut buffer);
        }
        if !buffer.is_empty() {
            if let Err(e) = write_half.write_all(&buffer).await {
                return LinkEnd::Broken(format!("write failed: {e}"));
            }
            buffer.clear();
            continue;
        }
        tokio::select! {
            message = queue.recv() => match message {
                Some(message) => pending.push_back(message),
                None => {
                    let _ = write_half.shutdown().await;
                    return LinkEnd::QueueClosed;
                }
            },
            read = read_half.read(&mut scratch) => match read {
                // Peers answer on their own connections; anything read here
                // is ignored, and EOF or an error means the peer is gone.
                Ok(0) => return LinkEnd::Broken("peer closed the connection".into()),
                Ok(_) => {}
                Err(e) => return LinkEnd::Broken(format!("read failed: {e}")),
            },
        }
    }
}
