//! concord-net: the transport under concord.
//!
//! Framing, long-lived peer connections with heartbeats and reconnect,
//! latency estimation and a fault-injecting proxy for tests. This crate
//! knows nothing about two-phase commit: a frame is a message-type byte and
//! an opaque body; interpreting either is the caller's job.

pub mod frame;

pub use frame::{encode_frame, Frame, FrameCodec, FrameError, KIND_HEARTBEAT};
