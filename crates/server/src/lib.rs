//! concord-server: the tokio drivers of concord's servers.
//!
//! This crate drives the pure node layer (`concord-node`, which holds
//! every decision around the sans-IO protocol core) with tokio, the
//! durable log (`concord-store`) and the transport (`concord-net`). It
//! only moves bytes, records and timers; it must never decide anything the
//! simulator cannot reach.
//!
//! - [`coordinator`]: `concord serve` ([`run_coordinator`]).
//! - [`participant`]: `concord participant` with the key-value resource
//!   ([`run_participant`]).
//! - [`wire`]: the frames that carry peer messages, client requests and
//!   replies.
//! - [`outbox`]: outgoing peer messages over concord-net (one persistent,
//!   heartbeating connection per peer, repaired on reset).
//! - [`failpoint`]: `CONCORD_FAILPOINT` crash points for kill -9 tests.
//! - [`http`]: the coordinator's HTTP/JSON API (`--http-listen`).
//! - `instance`: one coordinator instance of several over a shared
//!   PostgreSQL store (leases, takeover, hand-back).
//!
//! The servers are library functions so that tests, `concord demo` and
//! `concord bench` start them the same way the binary does (usually as separate
//! processes of the same binary). Nothing that arrives from the network,
//! the log or the user is unwrapped: it is validated and refused with a
//! message saying why.

mod conn;
pub mod console;
pub mod coordinator;
mod driver;
pub mod failpoint;
pub mod http;
mod http_participant;
mod instance;
pub mod metrics;
pub mod outbox;
pub mod participant;
mod peers;
pub mod pg_participant;
pub mod relay;
pub mod wire;

pub use coordinator::{run_coordinator, run_coordinator_until, CoordinatorServerConfig};
pub use participant::{run_participant, run_participant_until, ParticipantServerConfig};

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Raise the soft limit on open files to the hard limit, so a server can
/// hold thousands of connections. Returns a message saying what happened
/// (concord-net's [`concord_net::raise_fd_limit`] also logs it).
pub fn raise_fd_limit() -> Result<String, String> {
    match concord_net::raise_fd_limit() {
        Ok(l) if l.soft > l.soft_before => Ok(format!(
            "open-files limit raised from {} to {}",
            l.soft_before, l.soft
        )),
        Ok(l) => Ok(format!("open-files limit is {}", l.soft)),
        Err(e) => Err(format!("cannot raise the open-files limit: {e}")),
    }
}
