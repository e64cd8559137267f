//! concord-participant: how a resource takes part in concord's 2PC.
//!
//! Implement [`Resource`] (prepare / commit / abort / restore) for your data
//! and wrap it in a [`ParticipantNode`]: durable READY records, duplicate
//! handling, inquiry, retries of failed commits and recovery come from the
//! protocol core. A resource may answer at once or later ([`Answer`]). The
//! built-in [`kv::KvStore`] (named accounts with balances) is the example
//! resource; [`delayed::Delayed`] wraps one to answer late and fail on
//! purpose, for tests.
//!
//! Nothing here does IO: the node returns log writes, messages and timers
//! for a driver (the tokio server, or the simulator) to carry out.

pub mod delayed;
pub mod kv;
pub mod node;
pub mod pg;
pub mod resource;

pub use node::ParticipantNode;
pub use resource::{Answer, Resource, ResourceOp};
