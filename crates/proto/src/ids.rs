//! Identifiers, time and named limits shared by every part of the protocol.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Most participants one global transaction may have; checked where a
/// transaction enters the coordinator.
pub const PARTICIPANTS_MAX: usize = 64;
/// Largest opaque work payload one branch may carry.
pub const WORK_BYTES_MAX: usize = 64 * 1024;
/// Shortest time a participant remembers a finished branch, whatever its
/// `finished_max` says (a TIME_WAIT-style horizon). A duplicate PREPARE
/// that arrives after the branch was forgotten is taken for a new one and
/// prepared again; if the coordinator still has the transaction in flight
/// it answers the participant's INQUIRE with COMMITTED and the branch is
/// applied twice. Duplicates must therefore not outlive this.
pub const FINISHED_MS_MIN: u64 = 60_000;
/// Cooperative termination: the oldest PREPARE (by the asker's account)
/// for which a peer with no record of the xid may abort it unilaterally
/// and answer ABORTED. Such a peer either never saw the PREPARE or
/// finished the branch and forgot it; it can only have forgotten it
/// `FINISHED_MS_MIN` after finishing, and it finished after the PREPARE
/// was sent. So for an asker that received its PREPARE less than this
/// long ago the peer would still remember: "no record" means "never
/// prepared". Half of `FINISHED_MS_MIN` leaves the rest for message
/// delays and clock-rate differences. Older (or of unknown age, after the
/// asker restarted): the peer answers UNKNOWN and the asker stays blocked.
pub const PEER_ABORT_AGE_MS_MAX: u64 = FINISHED_MS_MIN / 2;

/// Global transaction id. Chosen by the driver (random, or seeded in the
/// simulator) so the core stays deterministic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xid(pub u128);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps simulator traces readable; Display gives the full id.
        write!(f, "xid:{:08x}", self.0 as u32)
    }
}

impl std::str::FromStr for Xid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.len() > 32 {
            return Err(format!("xid must be 1 to 32 hex digits, got {s:?}"));
        }
        u128::from_str_radix(s, 16)
            .map(Xid)
            .map_err(|e| format!("xid {s:?} is not hex: {e}"))
    }
}

/// Fencing number of the coordinator instance that owns a transaction.
/// Participants reject messages carrying an epoch older than the one they
/// have seen for that transaction.
pub type Epoch = u64;

/// A node's stable id: its configured name (`--name`), never its network
/// address. Messages, participant lists and records name nodes by id; the
/// directory of each node maps ids to where they can be reached now, so a
/// node that moves to another address is still the same node.
pub type NodeId = String;

/// Which of a node's timers for one xid. A node can hold several timers
/// for the same xid (a sub-coordinator of hierarchical 2PC is both a
/// participant waiting for a decision and a coordinator waiting for votes),
/// so timers are keyed by `(xid, kind)`, never by xid alone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TimerKind {
    /// Coordinator in WAIT: no vote within the phase-1 timeout means ABORT.
    Votes,
    /// Coordinator after COMMIT: re-send the decision to whoever has not
    /// ACKed.
    Resend,
    /// Participant in READY: ask what was decided.
    Inquire,
    /// Participant: try again a resource commit or abort that failed
    /// (transiently) last time.
    Apply,
    /// Node layer, one per node (keyed with xid 0, which is never minted):
    /// say hello again to peers not heard from since this node started.
    Hello,
    /// Coordinator node: an open-ended transaction's lifetime is over;
    /// abort it unless it was committed or aborted meanwhile.
    Lifetime,
}

/// What a latency sample measured, reported by the cores so that the
/// timeout policy never has to shadow protocol state. Only exchanges whose
/// request went out exactly once give a sample (Karn's rule).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum LatencyPhase {
    /// Coordinator: PREPARE sent → that participant's VOTE READY received
    /// (includes the participant's own work and forced READY write).
    Prepare,
    /// Coordinator: COMMIT sent (once) → ACK received.
    Decision,
    /// Participant: VOTE READY sent (once) → the decision received, with no
    /// INQUIRE in between.
    VoteToDecision,
}

/// One timer: `(xid, kind)`. Setting a timer with the same key replaces
/// the earlier one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimerKey {
    pub xid: Xid,
    pub kind: TimerKind,
}

impl TimerKey {
    pub fn new(xid: Xid, kind: TimerKind) -> TimerKey {
        TimerKey { xid, kind }
    }
}

/// Monotonic time in microseconds since an arbitrary origin chosen by the
/// driver (process start, or 0 in the simulator).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(pub u64);

impl Time {
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms.saturating_mul(1000)))
    }
    pub fn ms_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
    pub fn us_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
