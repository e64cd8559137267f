//! concord-sim: deterministic simulation of concord's centralized 2PC, in
//! the style of TigerBeetle's VOPR (ARCHITECTURE.md, principle 5).
//!
//! One coordinator ([`concord_proto::Coordinator`]) and 2–7 participants
//! ([`concord_participant::ParticipantNode`] over the key-value resource)
//! run in one discrete-event loop with virtual time. One `u64` seed decides
//! everything through one seeded RNG: the cluster's shape, the bank
//! workload, message loss / duplication / delay / reordering, partitions,
//! crashes at any step (losing a random part of the unsynced log tail) and
//! slow disks. A run has a **safety phase** (faults on, clients submit
//! transfers) and then a **liveness phase** (faults healed, every node
//! restarted) in which every transaction must resolve. Invariants, one
//! function each, are checked continuously where cheap and at the end
//! (see [`checks`]).
//!
//! Entry points: [`run_seed`] for a random run, [`World::scripted`] for the
//! scripted scenario tests (SPEC §1.5), and the `concord-sim` binary.
//!
//! [`ha`] is a second world: several coordinator instances over one shared
//! store, with the real lease state machine (`concord-node`'s `lease`),
//! takeovers, zombies, clock rates that differ, partitions from the store
//! and store outages, and lookups at any instance with the real
//! `locate` rule ([`run_ha_seed`], `concord-sim --ha`).
//!
//! This crate must never use `std::time`, threads, unseeded randomness or
//! the iteration order of a `HashMap` to decide anything: a seed must replay
//! byte for byte.

pub mod checks;
pub mod config;
pub mod disk;
pub mod ha;
pub mod ids;
pub mod net;
pub mod report;
pub mod trace;
pub mod workload;
pub mod world;

pub use config::{
    ClockConfig, DiskConfig, FaultConfig, NetConfig, ShapeMode, SimConfig, SimOptions,
    WorkloadConfig,
};
pub use ha::{run_ha_seed, HaFailure, HaOptions, HaReport};
pub use ids::NodeId;
pub use net::{Fate, MessageRule, SentMessage};
pub use report::{ClientOutcome, SimFailure, SimReport};
pub use world::{Cut, KeepUnsynced, Phase, World};

pub use concord_proto::mutant::Mutant;

/// Switch one deliberately broken protocol rule on for this thread (or all
/// off with `None`): the simulator must then catch it. Only with the
/// `mutants` feature, which no release build of the servers enables.
#[cfg(feature = "mutants")]
pub fn set_mutant(mutant: Option<Mutant>) {
    concord_proto::mutant::set(mutant);
}

/// Whether this build can switch mutants on.
pub const MUTANTS_AVAILABLE: bool = cfg!(feature = "mutants");

/// Run the simulation for `seed`: build the cluster and the workload from
/// the seed, run the safety phase and the liveness phase, check every
/// invariant. The same seed and options always give the same result, trace
/// included.
pub fn run_seed(seed: u64, options: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut world = World::random(seed, options);
    world.run_phases();
    world.finish()
}
