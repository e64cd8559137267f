//! The server side: listening sockets whose accepted connections join the
//! same [`Network`] as dialed ones (same incoming channel, same heartbeats,
//! replies via [`Network::send_to`]).
//!
//! The listening socket is built with socket2 so the accept backlog is ours
//! to choose (std and tokio hard-code it). An accept error (typically EMFILE
//! when out of file descriptors) must not spin the loop, so it pauses
//! briefly; a connection over `connections_max` is closed at once rather than
//! letting one flood of clients exhaust descriptors for everyone.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::NetConfig;
use crate::conn::{accepted_task, lock, set_nodelay, Ctx, Network, Peer};
use crate::frame::Frame;

/// A network with one listener, as returned by [`listen`].
#[derive(Debug)]
pub struct Server {
    pub network: Network,
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    pub incoming: mpsc::Receiver<(Peer, Frame)>,
}

/// Create a [`Network`] and listen on `addr` with the given accept backlog.
/// Must be called inside a tokio runtime.
pub fn listen(addr: SocketAddr, backlog: u32, config: NetConfig) -> io::Result<Server> {
    let (network, incoming) = Network::new(config);
    let local_addr = network.listen(addr, backlog)?;
    Ok(Server {
        network,
        local_addr,
        incoming,
    })
}

/// Bind a listening socket with `SO_REUSEADDR` (so a restarted server can
/// bind while old connections sit in TIME_WAIT) and the given backlog.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

impl Network {
    /// Listen on `addr` (backlog as given) and serve accepted connections
    /// until [`Network::shutdown`]. Returns the bound address. Must be called
    /// inside a tokio runtime.
    pub fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<SocketAddr> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(io::Error::other("network is shut down"));
        }
        let listener = bind_listener(addr, backlog)?;
        let local = listener.local_addr()?;
        info!(addr = %local, backlog, "listening");
        let ctx = self.ctx.clone();
        self.ctx.tracker.spawn(accept_loop(listener, local, ctx));
        Ok(local)
    }
}

async fn accept_loop(listener: TcpListener, local: SocketAddr, ctx: Arc<Ctx>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                let open = lock(&ctx.accepted).len();
                if open >= ctx.config.connections_max {
                    ctx.stats
                        .rejected_over_limit
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %remote, open, max = ctx.config.connections_max, "connections_max reached; closing new connection");
                    drop(stream);
                    continue;
                }
                ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
                set_nodelay(&stream, remote);
                let conn = ctx.next_id();
                let (tx, rx) = mpsc::channel(ctx.config.send_queue_frames_max.max(1));
                lock(&ctx.accepted).insert(conn, tx);
                ctx.tracker
                    .spawn(accepted_task(stream, remote, conn, ctx.clone(), rx));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and friends: the condition persists
                // for a while, so do not spin on it.
                warn!(addr = %local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!(addr = %local, "stopped accepting");
}
