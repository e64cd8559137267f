//! Names of the simulated processes and their protocol addresses.
//!
//! The protocol names processes by address ([`PeerAddr`]); the simulator
//! names them by [`NodeId`]. The mapping is fixed and total for the nodes
//! of a run; an address that maps to no node is a message into the void.
//! It must never depend on anything but the node's index: addresses appear
//! in log records and traces that a replay must reproduce.

use concord_proto::PeerAddr;
use std::fmt;

/// The coordinator's address inside the simulation.
pub const COORDINATOR_ADDR: &str = "coord";

/// One simulated process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    Coordinator,
    /// Participant `i`, with address `p{i}`.
    Participant(usize),
}

impl NodeId {
    pub fn addr(self) -> PeerAddr {
        match self {
            NodeId::Coordinator => COORDINATOR_ADDR.to_string(),
            NodeId::Participant(i) => format!("p{i}"),
        }
    }

    /// The node with address `addr`, if it is one of ours.
    pub fn from_addr(addr: &str) -> Option<NodeId> {
        if addr == COORDINATOR_ADDR {
            return Some(NodeId::Coordinator);
        }
        let digits = addr.strip_prefix('p')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(NodeId::Participant)
    }

    /// A small number for hashing traces: 0 for the coordinator.
    pub(crate) fn ordinal(self) -> u64 {
        match self {
            NodeId::Coordinator => 0,
            NodeId::Participant(i) => i as u64 + 1,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeId::Coordinator => f.write_str(COORDINATOR_ADDR),
            NodeId::Participant(i) => write!(f, "p{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for node in [
            NodeId::Coordinator,
            NodeId::Participant(0),
            NodeId::Participant(6),
        ] {
            assert_eq!(NodeId::from_addr(&node.addr()), Some(node));
        }
        assert_eq!(NodeId::from_addr("p"), None);
        assert_eq!(NodeId::from_addr("px"), None);
        assert_eq!(NodeId::from_addr("p+1"), None);
        assert_eq!(NodeId::from_addr("elsewhere"), None);
    }
}
