//! Durable log records of SPEC §1 "Logs". The store treats them as opaque
//! bytes; recovery replays them in order.

use crate::ids::{Epoch, PeerAddr, Xid};
use crate::message::Decision;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorRecord {
    /// Written (forced) at every start: the epoch this instance runs with.
    Epoch { epoch: Epoch },
    /// Begin record with the participant list. Not forced: with presumed
    /// abort a lost begin record only means participants learn ABORTED by
    /// inquiry instead of by an ABORT message.
    Begin {
        xid: Xid,
        participants: Vec<PeerAddr>,
    },
    /// The decision. COMMIT is forced before any COMMIT is sent; ABORT is
    /// not forced (presumed abort).
    Decision {
        xid: Xid,
        decision: Decision,
        participants: Vec<PeerAddr>,
    },
    /// Every participant acknowledged the COMMIT; not forced.
    End { xid: Xid },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// Forced before VOTE READY: everything needed to commit later, across
    /// restarts.
    Ready {
        xid: Xid,
        coordinator: PeerAddr,
        epoch: Epoch,
        participants: Vec<PeerAddr>,
        work: Vec<u8>,
    },
    /// The outcome. COMMIT is forced before the ACK; ABORT is not forced.
    Outcome { xid: Xid, decision: Decision },
    /// A record that belongs to the resource (for example the key-value
    /// resource's seed accounts, or its snapshot); the protocol ignores it.
    Resource { body: Vec<u8> },
    /// Written only by compaction: these branches finished with these
    /// decisions (oldest first), and their effects are already in the
    /// resource snapshot before this record. Recovery remembers the
    /// outcomes (duplicates get the same answer); the resource applies
    /// nothing for them. One record for all of them, so that a snapshot of
    /// many finished branches costs one encode and one log record.
    Finished { outcomes: Vec<(Xid, Decision)> },
}
