//! concord-node: the pure node layer, everything a concord server decides
//! that is not IO.
//!
//! - [`coordinator::CoordinatorNode`]: `concord serve`'s decisions around
//!   the protocol core: the [`directory`], client requests, xid minting
//!   ([`xids`]), branch merging, [`recent`] outcomes, the timeout policy
//!   ([`timeouts`]), admission limits, counters and typed events.
//! - [`participant::ParticipantServerNode`]: `concord participant`'s
//!   decisions around the participant core and its resource (which may
//!   answer later), admission, its directory of coordinators.
//! - [`directory`]: node ids ↔ addresses, learnt from every frame, and
//!   [`hello`]: how a node that moved is found again.
//! - [`timeline`]: per-transaction timelines, bounded.
//! - [`timers`]: the timer table keyed by (xid, kind).
//! - [`compaction`]: when a node's log is compacted.
//! - [`attention`]: COMMIT delivery and branches that need attention.
//! - [`idempotency`]: begin requests retried with the same key join the
//!   transaction the first one started.
//! - [`listing`]: which transactions a list shows, in pages.
//! - [`open`]: open-ended transactions and their lifetimes.
//! - [`latency`] and [`rtt`]: the measured latency behind the timeouts.
//! - [`lease`]: which coordinator logs an instance runs when several share
//!   one store: acquire, renew, adopt, hand back; and [`locate`]: which
//!   of them to ask about one xid, and when "no record" may be said.
//!
//! The tokio servers (crate `concord`) and the simulator (`concord-sim`)
//! drive these same types: events in with `now`, actions out. So every
//! decision a server makes is also made under a simulated seed. This crate
//! must never touch tokio, sockets, files, the clock or unseeded
//! randomness: the clock and the xid seed are inputs.

pub mod attention;
pub mod compaction;
pub mod coordinator;
pub mod directory;
pub mod hello;
pub mod idempotency;
pub mod latency;
pub mod lease;
pub mod listing;
pub mod locate;
pub mod open;
pub mod operator;
pub mod participant;
pub mod recent;
pub mod rtt;
pub mod timeline;
pub mod timeouts;
pub mod timers;
pub mod xids;

pub use coordinator::{
    ClientId, CoordinatorCounters, CoordinatorEvent, CoordinatorNode, CoordinatorNodeAction,
    CoordinatorNodeConfig, ParticipantAsk,
};
pub use participant::{
    ParticipantCounters, ParticipantEvent, ParticipantNodeAction, ParticipantNodeConfig,
    ParticipantServerNode,
};
pub use timers::Timers;
