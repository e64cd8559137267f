//! The simulated network's vocabulary: scripted message rules and the log
//! of messages sent (for scenario assertions).
//!
//! The random part of the network (loss, duplication, delay, reordering,
//! partitions) lives in the world's event loop, where it draws from the
//! run's one RNG. Rules here are plain data a scripted scenario adds to
//! drop, duplicate or delay particular messages; they never draw randomness.

use crate::ids::NodeId;
use concord_proto::{Epoch, Message, Time, Xid};

/// What a matching rule does to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Lose it.
    Drop,
    /// Deliver it twice (the copy 1 ms after the original).
    Duplicate,
    /// Deliver it this many milliseconds late.
    DelayMs(u64),
}

/// A scripted fault: the next `times` messages matching every given filter
/// meet `fate` (all of them when `times` is `None`). Rules are tried in the
/// order they were added; the first one that matches and still has uses
/// applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRule {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
    /// `Message::kind()`: "PREPARE", "VOTE READY", "COMMIT", "ACK", ...
    pub kind: Option<&'static str>,
    pub xid: Option<Xid>,
    pub fate: Fate,
    pub times: Option<u32>,
}

impl MessageRule {
    /// Every message of `kind` meets `fate` (narrow it with the builders).
    pub fn new(kind: &'static str, fate: Fate) -> MessageRule {
        MessageRule {
            from: None,
            to: None,
            kind: Some(kind),
            xid: None,
            fate,
            times: None,
        }
    }

    /// Every message, whatever its kind, meets `fate`.
    pub fn any(fate: Fate) -> MessageRule {
        MessageRule {
            kind: None,
            ..MessageRule::new("", fate)
        }
    }

    pub fn from(mut self, node: NodeId) -> Self {
        self.from = Some(node);
        self
    }

    pub fn to(mut self, node: NodeId) -> Self {
        self.to = Some(node);
        self
    }

    pub fn xid(mut self, xid: Xid) -> Self {
        self.xid = Some(xid);
        self
    }

    /// Apply to the next `n` matching messages only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub(crate) fn matches(&self, from: NodeId, to: NodeId, message: &Message) -> bool {
        self.times != Some(0)
            && self.from.map_or(true, |f| f == from)
            && self.to.map_or(true, |t| t == to)
            && self.kind.map_or(true, |k| k == message.kind())
            && self.xid.map_or(true, |x| x == message.xid)
    }
}

/// One message a node sent, and what the network did with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    pub at: Time,
    pub from: NodeId,
    pub to: NodeId,
    pub kind: &'static str,
    pub xid: Xid,
    pub epoch: Epoch,
    /// Copies scheduled for delivery: 0 lost, 2 duplicated. A copy can
    /// still be lost on arrival (the receiver is down or cut off).
    pub copies: u32,
}
