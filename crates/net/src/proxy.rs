//! A fault-injecting TCP proxy for tests and benchmarks on one machine
//! (netem is not available here).
//!
//! Clients connect to the proxy, which connects to one upstream address and
//! forwards bytes both ways. Faults are read for every chunk, so they can be
//! switched at run time through a [`ProxyHandle`] and apply to connections
//! already open:
//!
//! * latency with jitter — each chunk is held `latency + U(0, jitter)`; the
//!   stream stays in order (a chunk never overtakes the previous one), as on
//!   a real TCP path;
//! * bandwidth limit — per direction and connection;
//! * black hole — the proxy keeps accepting and reading, forwards nothing
//!   (new connections are not even connected upstream), like a dead route;
//! * half-open — one direction stops forwarding while the other works, like
//!   a middlebox that lost half its state; bytes are read and dropped so the
//!   sender sees them acknowledged;
//! * reset — [`ProxyHandle::reset_all`] closes every open connection with RST
//!   (SO_LINGER 0) on both sides;
//! * close after idle — connections that moved no byte for a while are
//!   closed with FIN on both sides, like a load balancer's idle timeout.
//!
//! The proxy is a test tool: it favours observable behaviour over speed and
//! must never be used on a production path.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The faults in force. `Faults::default()` forwards faithfully.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added one-way delay per chunk, each direction.
    pub latency: Duration,
    /// Extra uniformly random delay in `0..=jitter`, per chunk.
    pub jitter: Duration,
    /// Bytes per second per direction and connection; `None` is unlimited.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Forward nothing in either direction; new connections are accepted but
    /// never connected upstream.
    pub black_hole: bool,
    /// Stop forwarding this one direction.
    pub half_open: Option<Direction>,
    /// Close (FIN both sides) connections idle for this long.
    pub close_after_idle: Option<Duration>,
}

/// Counters of a proxy. Monotonic except `open`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub accepted: u64,
    pub open: usize,
    pub upstream_connects: u64,
    pub bytes_forwarded: u64,
    pub bytes_dropped: u64,
    pub resets: u64,
    pub idle_closes: u64,
}

struct Shared {
    faults: watch::Sender<Faults>,
    reset: watch::Sender<u64>,
    shutdown: CancellationToken,
    accepted: AtomicU64,
    open: AtomicUsize,
    upstream_connects: AtomicU64,
    bytes_forwarded: AtomicU64,
    bytes_dropped: AtomicU64,
    resets: AtomicU64,
    idle_closes: AtomicU64,
}

/// Controls a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("faults", &self.faults())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for ProxyHandle {
    fn default() -> Self {
        ProxyHandle::new(Faults::default())
    }
}

impl ProxyHandle {
    pub fn new(faults: Faults) -> Self {
        ProxyHandle {
            shared: Arc::new(Shared {
                faults: watch::Sender::new(faults),
                reset: watch::Sender::new(0),
                shutdown: CancellationToken::new(),
                accepted: AtomicU64::new(0),
                open: AtomicUsize::new(0),
                upstream_connects: AtomicU64::new(0),
                bytes_forwarded: AtomicU64::new(0),
                bytes_dropped: AtomicU64::new(0),
                resets: AtomicU64::new(0),
                idle_closes: AtomicU64::new(0),
            }),
        }
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        info!(?faults, "proxy faults set");
        self.shared.faults.send_replace(faults);
    }

    /// Change some faults, keep the rest.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(f);
        info!(faults = ?self.faults(), "proxy faults updated");
    }

    /// Back to faithful forwarding (connections already black-holed at
    /// accept have no upstream and stay dead).
    pub fn clear(&self) {
        self.set_faults(Faults::default());
    }

    /// Close every open connection with RST on both sides.
    pub fn reset_all(&self) {
        self.shared.reset.send_modify(|g| *g += 1);
    }

    /// Stop accepting and close every connection.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            open: s.open.load(Ordering::Relaxed),
            upstream_connects: s.upstream_connects.load(Ordering::Relaxed),
            bytes_forwarded: s.bytes_forwarded.load(Ordering::Relaxed),
            bytes_dropped: s.bytes_dropped.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            idle_closes: s.idle_closes.load(Ordering::Relaxed),
        }
    }
}

/// Bind `listen` and run the proxy to `upstream` until
/// [`ProxyHandle::shutdown`].
pub async fn run(listen: SocketAddr, upstream: SocketAddr, handle: ProxyHandle) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    serve(listener, upstream, handle).await
}

/// Start a proxy on `listen` in a background task; returns its address
/// (useful with port 0) and its handle.
pub async fn spawn(
    listen: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
) -> io::Result<(SocketAddr, ProxyHandle)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = ProxyHandle::new(faults);
    let h = handle.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, upstream, h).await {
            warn!(error = %e, "proxy stopped");
        }
    });
    Ok((addr, handle))
}

/// Run the proxy on an already bound listener.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    handle: ProxyHandle,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(listen = %local, upstream = %upstream, "proxy running");
    let shared = handle.shared;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, from)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    connection(client, from, upstream, &shared).await;
                    shared.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    info!(listen = %local, "proxy stopped accepting");
    Ok(())
}

enum ConnEnd {
    Done,
    Reset,
    Idle,
    Shutdown,
}

/// Milliseconds since the connection began, for the idle timer.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn connection(
    client: TcpStream,
    from: SocketAddr,
    upstream: SocketAddr,
    shared: &Arc<Shared>,
) {
    let _ = client.set_nodelay(true);
    let mut reset_rx = shared.reset.subscribe();
    reset_rx.mark_unchanged();
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };

    let black_hole = shared.faults.borrow().black_hole;
    if black_hole {
        debug!(client = %from, "proxy: black-holing new connection");
        let (mut cr, cw) = client.into_split();
        let end = {
            let swallow = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            activity.touch();
                            shared.bytes_dropped.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            };
            tokio::select! {
                _ = swallow => ConnEnd::Done,
                _ = reset_rx.changed() => ConnEnd::Reset,
                _ = idle_expired(&activity, shared) => ConnEnd::Idle,
                _ = shared.shutdown.cancelled() => ConnEnd::Shutdown,
            }
        };
        finish(end, cr, cw, None, shared).await;
        return;
    }

    let upstream_stream = match tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(upstream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(client = %from, upstream = %upstream, error = %e, "proxy: upstream connect failed");
            reset(&client);
            return;
        }
        Err(_) => {
            debug!(client = %from, upstream = %upstream, "proxy: upstream connect timed out");
            reset(&client);
            return;
        }
    };
    shared.upstream_connects.fetch_add(1, Ordering::Relaxed);
    let _ = upstream_stream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream_stream.into_split();

    let end = {
        let c2s = pump(
            &mut cr,
            &mut uw,
            Direction::ClientToServer,
            shared,
            &activity,
        );
        let s2c = pump(
            &mut ur,
            &mut cw,
            Direction::ServerToClient,
            shared,
            &activity,
        );
        tokio::pin!(c2s);
        tokio::pin!(s2c);
        let (mut c2s_done, mut s2c_done) = (false, false);
        loop {
            let failed = tokio::select! {
                r = &mut c2s, if !c2s_done => { c2s_done = true; r.is_err() }
                r = &mut s2c, if !s2c_done => { s2c_done = true; r.is_err() }
                _ = reset_rx.changed() => break ConnEnd::Reset,
                _ = idle_expired(&activity, shared) => break ConnEnd::Idle,
                _ = shared.shutdown.cancelled() => break ConnEnd::Shutdown,
            };
            // A reset on one side is passed on as a reset to the other.
            if failed {
                break ConnEnd::Reset;
            }
            if c2s_done && s2c_done {
                break ConnEnd::Done;
            }
        }
    };
    if matches!(end, ConnEnd::Reset) {
        // Reset the upstream side as well (finish forgets its write half).
        reset(ur.as_ref());
    }
    finish(end, cr, cw, Some((ur, uw)), shared).await;
}

fn reset(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        warn!(error = %e, "proxy: could not set SO_LINGER 0; close will not reset");
    }
}

async fn finish(
    end: ConnEnd,
    cr: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    upstream: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    shared: &Shared,
) {
    match end {
        ConnEnd::Reset => {
            shared.resets.fetch_add(1, Ordering::Relaxed);
            reset(cr.as_ref());
            // Dropping an OwnedWriteHalf sends FIN first, which the other
            // side would read as an orderly close: forget() skips that, so
            // the close (linger 0) sends only the RST.
            cw.forget();
            if let Some((ur, uw)) = upstream {
                uw.forget();
                drop(ur);
            }
        }
        ConnEnd::Idle => {
            shared.idle_closes.fetch_add(1, Ordering::Relaxed);
            let _ = cw.shutdown().await;
            if let Some((_, mut uw)) = upstream {
                let _ = uw.shutdown().await;
            }
        }
        ConnEnd::Done | ConnEnd::Shutdown => {
            let _ = cw.shutdown().await;
        }
    }
}

async fn idle_expired(activity: &Activity, shared: &Shared) {
    loop {
        let limit = shared.faults.borrow().close_after_idle;
        match limit {
            Some(limit) => {
                let idle = activity.idle();
                if idle >= limit {
                    return;
                }
                tokio::time::sleep((limit - idle).max(Duration::from_millis(5))).await;
            }
            // Faults can change at any time: look again soon.
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Forward one direction: a reader that timestamps chunks and a writer that
/// releases them at their delivery time, joined by a bounded queue (the
/// bytes "in flight" on the simulated link).
async fn pump(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    dir: Direction,
    shared: &Shared,
    activity: &Activity,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(1024);
    let read_side = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_deliver = Instant::now();
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(true);
            }
            activity.touch();
            let f = shared.faults.borrow().clone();
            if f.black_hole || f.half_open == Some(dir) {
                shared.bytes_dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            let jitter = if f.jitter.is_zero() {
                Duration::ZERO
            } else {
                let j = u64::try_from(f.jitter.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::thread_rng().gen_range(0..=j))
            };
            // Never overtake the previous chunk: TCP delivers in order.
            let deliver = (Instant::now() + f.latency + jitter).max(last_deliver);
            last_deliver = deliver;
            if tx
                .send((deliver, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    };
    let write_side = async {
        while let Some((deliver, chunk)) = rx.recv().await {
            tokio::time::sleep_until(deliver).await;
            let bw = shared.faults.borrow().bandwidth_bytes_per_sec;
            match bw {
                Some(bw) if bw > 0 => {
                    // Send in slices of ~10 ms worth of bytes so the rate is
                    // smooth rather than one burst per chunk.
                    let slice = usize::try_from((bw / 100).max(1)).unwrap_or(usize::MAX);
                    for piece in chunk.chunks(slice) {
                        let started = Instant::now();
                        dst.write_all(piece).await?;
                        let due = Duration::from_secs_f64(piece.len() as f64 / bw as f64);
                        tokio::time::sleep_until(started + due).await;
                    }
                }
                _ => dst.write_all(&chunk).await?,
            }
            activity.touch();
            shared
                .bytes_forwarded
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok::<(), io::Error>(())
    };
    // try_join: a failed write must not wait for the next read.
    let (eof, ()) = tokio::try_join!(read_side, write_side)?;
    if eof {
        let f = shared.faults.borrow().clone();
        // A black hole forwards nothing, not even the FIN.
        if !(f.black_hole || f.half_open == Some(dir)) {
            dst.shutdown().await?;
        }
    }
    Ok(())
}
