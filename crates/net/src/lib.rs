//! concord-net: the transport under concord.
//!
//! Framing, long-lived peer connections with heartbeats and reconnect,
//! and a fault-injecting proxy for tests (latency estimation and the
//! timeouts it sets are pure and live in `concord-node`). This crate
//! knows nothing about two-phase commit: a frame is a message-type byte and
//! an opaque body; interpreting either is the caller's job.

pub mod config;
pub mod conn;
pub mod error;
pub mod frame;
pub mod limits;
pub mod proxy;
pub mod server;
mod session;

pub use config::{ConfigError, NetConfig};
pub use conn::{NetStats, Network, Peer};
pub use error::{ConnectError, ConnectErrorKind, SendError};
pub use frame::{encode_frame, Frame, FrameCodec, FrameError, KIND_HEARTBEAT};
pub use limits::{raise_fd_limit, FdLimit};
pub use server::{bind_listener, listen, Server};
