//! concord-net: the transport under concord.
//!
//! Framing, long-lived peer connections with heartbeats and reconnect,
//! latency estimation and a fault-injecting proxy for tests. This crate
//! knows nothing about two-phase commit: a frame is a message-type byte and
//! an opaque body; interpreting either is the caller's job.

pub mod config;
pub mod conn;
pub mod error;
pub mod frame;
pub mod latency;
pub mod limits;
pub mod proxy;
pub mod rtt;
pub mod server;
mod session;

pub use config::{ConfigError, NetConfig};
pub use conn::{NetStats, Network, Peer};
pub use error::{ConnectError, ConnectErrorKind, SendError};
pub use frame::{encode_frame, Frame, FrameCodec, FrameError, KIND_HEARTBEAT};
pub use latency::{
    deadline_timeout, LatencyHistogram, LatencySummary, LatencyTracker, PhaseSnapshot,
    TimeoutDecision, TimeoutPolicy,
};
pub use limits::{raise_fd_limit, FdLimit};
pub use rtt::RttEstimator;
pub use server::{bind_listener, listen, Server};
