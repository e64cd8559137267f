//! A participant node: the protocol core and a resource, wired together.
//!
//! The core's resource actions (prepare, commit, abort, restore) are handed
//! to the resource here, in the order the core emits them; only IO actions
//! (persist, send, set timer, notices) reach the driver. An answer the
//! resource gives at once goes straight back to the core; one it gives
//! later comes in through [`ParticipantNode::on_resource_done`]. Both the
//! tokio driver and the simulator use this, so the simulator tests the same
//! wiring that ships.

use crate::resource::{Answer, Resource, ResourceOp};
use concord_proto::{
    Message, Participant, ParticipantAction, ParticipantConfig, ParticipantRecord, PersistTicket,
    Time, TimerKey, Xid,
};
use std::collections::HashSet;

pub struct ParticipantNode<R: Resource> {
    core: Participant,
    resource: R,
    io: Vec<ParticipantAction>,
    /// Prepares in flight whose work the resource called read-only: a
    /// success becomes a READ-ONLY vote.
    read_only: HashSet<Xid>,
    /// Whether read-only branches vote READ-ONLY (off: they vote READY and
    /// go through both phases, for comparison).
    read_only_votes: bool,
}

impl<R: Resource> ParticipantNode<R> {
    /// Rebuild from the log: `resource` must already reflect the committed
    /// history (see `KvStore::replay`); in-doubt branches are restored here.
    pub fn recover(
        config: ParticipantConfig,
        records: impl IntoIterator<Item = ParticipantRecord>,
        resource: R,
        now: Time,
    ) -> Self {
        let mut node = ParticipantNode {
            core: Participant::recover(config, records, now),
            resource,
            io: Vec::new(),
            read_only: HashSet::new(),
            read_only_votes: true,
        };
        node.pump(now);
        node
    }

    pub fn on_message(&mut self, now: Time, message: Message) {
        self.core.on_message(now, message);
        self.pump(now);
    }

    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        self.core.on_timer(now, key);
        self.pump(now);
    }

    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        self.core.on_durable(now, ticket);
        self.pump(now);
    }

    /// The resource finished `op` for `xid`, which it answered with
    /// [`Answer::Later`]. A stale answer (from before a restart, or for a
    /// branch already finished) is ignored by the core.
    pub fn on_resource_done(
        &mut self,
        now: Time,
        xid: Xid,
        op: ResourceOp,
        result: Result<(), String>,
    ) {
        self.answer(now, xid, op, result);
        self.pump(now);
    }

    /// See [`Participant::heuristic`]: an operator's decision for an
    /// in-doubt branch.
    pub fn heuristic(
        &mut self,
        now: Time,
        xid: Xid,
        decision: concord_proto::Decision,
        audit: String,
    ) -> Result<(), String> {
        let decided = self.core.heuristic(xid, decision, audit);
        self.pump(now);
        decided
    }

    /// The IO actions produced so far, in order.
    pub fn drain_io(&mut self) -> std::vec::Drain<'_, ParticipantAction> {
        self.io.drain(..)
    }

    pub fn core(&self) -> &Participant {
        &self.core
    }

    /// See [`Participant::set_inquire_ms_initial`].
    pub fn set_inquire_ms_initial(&mut self, inquire_ms: u64) {
        self.core.set_inquire_ms_initial(inquire_ms);
    }

    /// See [`Participant::set_child_timeout_ms`].
    pub fn set_child_timeout_ms(&mut self, child: concord_proto::NodeId, timeout_ms: Option<u64>) {
        self.core.set_child_timeout_ms(child, timeout_ms);
    }

    /// Switch the read-only vote off (or on again): see
    /// `Resource::is_read_only`.
    pub fn set_read_only_votes(&mut self, on: bool) {
        self.read_only_votes = on;
    }

    /// The core to read and the resource to change, at once (the
    /// PostgreSQL resource's reconciliation reads finished outcomes).
    pub fn core_and_resource_mut(&mut self) -> (&Participant, &mut R) {
        (&self.core, &mut self.resource)
    }

    pub fn resource(&self) -> &R {
        &self.resource
    }

    /// For a driver that must take the resource's started operations (see
    /// `Delayed::take_started`).
    pub fn resource_mut(&mut self) -> &mut R {
        &mut self.resource
    }

    /// The records of a compacted log: the resource's snapshot, then the
    /// protocol's (see [`Participant::snapshot_records`]). Recovery from
    /// them gives the same committed state, the same in-doubt branches and
    /// the same remembered outcomes.
    pub fn snapshot_records(&self) -> Vec<ParticipantRecord> {
        let mut records = vec![ParticipantRecord::Resource {
            body: self.resource.snapshot(),
        }];
        records.extend(self.core.snapshot_records());
        records
    }

    /// Run resource actions until the core has nothing more for the
    /// resource; a prepare's answer can produce further actions.
    fn pump(&mut self, now: Time) {
        loop {
            let actions: Vec<ParticipantAction> = self.core.drain_actions().collect();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                let (xid, op, answer) = match action {
                    ParticipantAction::Prepare { xid, work } => {
                        self.note_coordinator(xid);
                        if self.read_only_votes && self.resource.is_read_only(&work) {
                            self.read_only.insert(xid);
                        } else {
                            self.read_only.remove(&xid);
                        }
                        (xid, ResourceOp::Prepare, self.resource.prepare(xid, &work))
                    }
                    ParticipantAction::Commit { xid } => {
                        (xid, ResourceOp::Commit, self.resource.commit(xid))
                    }
                    ParticipantAction::Abort { xid } => {
                        (xid, ResourceOp::Abort, self.resource.abort(xid))
                    }
                    ParticipantAction::Restore { xid, work } => {
                        self.note_coordinator(xid);
                        self.resource.restore(xid, &work);
                        continue;
                    }
                    io => {
                        self.io.push(io);
                        continue;
                    }
                };
                if let Answer::Now(result) = answer {
                    self.answer(now, xid, op, result);
                }
            }
        }
    }

    fn note_coordinator(&mut self, xid: Xid) {
        if let Some(coordinator) = self.core.coordinator_of(xid) {
            self.resource.note_coordinator(xid, coordinator);
        }
    }

    fn answer(&mut self, now: Time, xid: Xid, op: ResourceOp, result: Result<(), String>) {
        match op {
            ResourceOp::Prepare => {
                let read_only = self.read_only.remove(&xid);
                match result {
                    Ok(()) if read_only => self.core.on_prepared_read_only(now, xid),
                    result => self.core.on_prepared(now, xid, result),
                }
            }
            ResourceOp::Commit => self.core.on_committed(now, xid, result),
            ResourceOp::Abort => self.core.on_aborted(now, xid, result),
        }
    }
}
