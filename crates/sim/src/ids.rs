//! Names of the simulated processes.
//!
//! The protocol names processes by id (`concord_proto::NodeId`, their
//! configured name: "coord", "p0", …); the simulator names them by
//! [`NodeId`]. The mapping is fixed and total for the nodes of a run. Where
//! a node can be reached (its address, "p0@2") is separate and changes when
//! a node restarts somewhere else; the world keeps it. Neither may depend
//! on anything but the node's index and the run: both appear in log records
//! and traces that a replay must reproduce.
use std::fmt;

/// The coordinator's name (protocol id) inside the simulation.
pub const COORDINATOR_NAME: &str = "coord";

/// One simulated process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    Coordinator,
    /// Participant `i`, named `p{i}`.
    Participant(usize),
}

impl NodeId {
    /// The node's protocol id.
    pub fn name(self) -> concord_proto::NodeId {
        match self {
            NodeId::Coordinator => COORDINATOR_NAME.to_string(),
            NodeId::Participant(i) => format!("p{i}"),
        }
    }

    /// The node with protocol id `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<NodeId> {
        if name == COORDINATOR_NAME {
            return Some(NodeId::Coordinator);
        }
        let digits = name.strip_prefix('p')?;
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
            NodeId::Coordinator => f.write_str(COORDINATOR_NAME),
            NodeId::Participant(i) => write!(f, "p{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for node in [
            NodeId::Coordinator,
            NodeId::Participant(0),
            NodeId::Participant(6),
        ] {
            assert_eq!(NodeId::from_name(&node.name()), Some(node));
        }
        assert_eq!(NodeId::from_name("p"), None);
        assert_eq!(NodeId::from_name("px"), None);
        assert_eq!(NodeId::from_name("p+1"), None);
        assert_eq!(NodeId::from_name("elsewhere"), None);
    }
}
