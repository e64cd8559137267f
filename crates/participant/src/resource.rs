//! The contract between the protocol and the data a participant guards.
//!
//! Every operation may finish at once or later: a resource in memory (the
//! key-value store) answers [`Answer::Now`]; one that talks to a database
//! or a service answers [`Answer::Later`] and hands its result to the node
//! with `ParticipantNode::on_resource_done` when it has one. Nothing in the
//! node waits: other branches go on meanwhile.

use crate::kv::KvStore;
use concord_proto::{NodeId, Xid};

/// How a resource answers `prepare`, `commit` or `abort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Finished: `Ok`, or why not.
    Now(Result<(), String>),
    /// Still working: the result comes later through
    /// `ParticipantNode::on_resource_done`.
    Later,
}

/// Which operation a later answer finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceOp {
    Prepare,
    Commit,
    Abort,
}

/// A resource manager. Calls for one xid come in protocol order, and never
/// two at once for one xid; calls for different xids interleave.
pub trait Resource {
    /// Check `work` and take whatever makes a later commit certain (locks,
    /// reservations). `Err(reason)` votes ABORT and must leave nothing held.
    fn prepare(&mut self, xid: Xid, work: &[u8]) -> Answer;
    /// Apply the prepared work of `xid` and release what prepare took. It
    /// must be idempotent: after a crash before the COMMITTED record was
    /// durable, the branch is committed again. `Err` is a transient
    /// failure: the node keeps the branch (and its locks) and asks again,
    /// with backoff, until it succeeds; it never gives up.
    fn commit(&mut self, xid: Xid) -> Answer;
    /// Drop the prepared work of `xid`, if any. Failures are retried like
    /// a commit's.
    fn abort(&mut self, xid: Xid) -> Answer;
    /// Whether a branch with this work changes nothing, so that once its
    /// prepare succeeds it votes READ-ONLY: nothing is logged for it and
    /// it gets no phase 2 (neither commit nor abort is called). Its
    /// prepare must then hold nothing. By default no work is read-only.
    fn is_read_only(&self, work: &[u8]) -> bool {
        let _ = work;
        false
    }
    /// Called just before `prepare` and `restore` with the branch's
    /// coordinator, for a resource that names its work after it (the
    /// PostgreSQL resource's gids). By default nothing.
    fn note_coordinator(&mut self, xid: Xid, coordinator: &NodeId) {
        let _ = (xid, coordinator);
    }
    /// After a restart, `xid` is in doubt: take again what prepare took.
    fn restore(&mut self, xid: Xid, work: &[u8]);
    /// The body of a `ParticipantRecord::Resource` record that holds every
    /// committed effect so far, for a compacted log: replaying it (and
    /// nothing before it) must give the resource's committed state back.
    /// Prepared-but-undecided work is not in it (it is restored from the
    /// READY records that follow it). Nor is a commit the node has not
    /// heard succeed yet: its branch is still in doubt in the compacted
    /// log (its READY record follows), so after a crash it is committed
    /// again, and a snapshot that already held it would apply it twice. A
    /// resource whose state lives elsewhere (a database) returns what it
    /// needs to find that state, not the state.
    fn snapshot(&self) -> Vec<u8>;
}

/// What `concord accounts` can show of a resource: the key-value store's
/// accounts and locks, or nothing for a resource whose data lives
/// elsewhere (a database: ask it). And what `concord status --prepared`
/// can: a PostgreSQL resource's last reconciliation.
pub trait Accounts {
    fn accounts(&self) -> Option<&KvStore>;

    fn prepared(&self) -> Option<&crate::pg::PreparedReport> {
        None
    }
}

impl Accounts for KvStore {
    fn accounts(&self) -> Option<&KvStore> {
        Some(self)
    }
}
