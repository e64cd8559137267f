//! The contract between the protocol and the data a participant guards.

use concord_proto::Xid;

/// A resource manager. Calls for one xid come in protocol order; calls for
/// different xids interleave.
pub trait Resource {
    /// Check `work` and take whatever makes a later commit certain (locks,
    /// reservations). `Err(reason)` votes ABORT and must leave nothing held.
    fn prepare(&mut self, xid: Xid, work: &[u8]) -> Result<(), String>;
    /// Apply the prepared work of `xid` and release what prepare took.
    fn commit(&mut self, xid: Xid);
    /// Drop the prepared work of `xid`, if any.
    fn abort(&mut self, xid: Xid);
    /// After a restart, `xid` is in doubt: take again what prepare took.
    fn restore(&mut self, xid: Xid, work: &[u8]);
    /// The body of a `ParticipantRecord::Resource` record that holds every
    /// committed effect so far, for a compacted log: replaying it (and
    /// nothing before it) must give the resource's committed state back.
    /// Prepared-but-undecided work is not in it (it is restored from the
    /// READY records that follow it).
    fn snapshot(&self) -> Vec<u8>;
}
