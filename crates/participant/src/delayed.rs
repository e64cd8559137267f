//! A test resource that answers later and fails on purpose: it wraps a
//! resource that answers at once (the key-value store) and delays its
//! prepares, commits and aborts, and fails the first commits and aborts of
//! every branch. Unit tests and the simulator use it to reach what a
//! database or an HTTP service does: answers that come later, and
//! transient commit failures that must be retried, never abandoned.
//!
//! Sans-IO like the rest of this crate: it has no clock. It records what it
//! started and after how long it wants to finish ([`Delayed::take_started`]);
//! the driver calls [`Delayed::finish`] at that time and hands the result
//! to the node (`ParticipantNode::on_resource_done`). An operation with no
//! delay answers at once (a scripted failure too), so both paths run.

use crate::kv::{KvStore, KvView};
use crate::resource::{Answer, Resource, ResourceOp};
use concord_proto::Xid;
use std::collections::HashMap;

/// How the wrapper misbehaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayConfig {
    /// Delay of each operation; 0 answers at once.
    pub prepare_ms: u64,
    pub commit_ms: u64,
    pub abort_ms: u64,
    /// The first this many commit attempts of every branch fail.
    pub commit_failures: u32,
    /// The first this many abort attempts of every branch fail.
    pub abort_failures: u32,
}

/// An operation the wrapper started and will answer later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub xid: Xid,
    pub op: ResourceOp,
    /// Call [`Delayed::finish`] this long after it started.
    pub after_ms: u64,
}

#[derive(Debug)]
pub struct Delayed<R> {
    inner: R,
    config: DelayConfig,
    started: Vec<Started>,
    /// Work of prepares started and not finished.
    preparing: HashMap<Xid, Vec<u8>>,
    /// Attempts that failed so far, per branch and operation.
    failed: HashMap<(Xid, ResourceOp), u32>,
}

impl<R: Resource> Delayed<R> {
    pub fn new(inner: R, config: DelayConfig) -> Delayed<R> {
        Delayed {
            inner,
            config,
            started: Vec::new(),
            preparing: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Operations started since the last call, oldest first.
    pub fn take_started(&mut self) -> Vec<Started> {
        std::mem::take(&mut self.started)
    }

    /// Finish an operation [`Delayed::take_started`] reported: its result,
    /// for the node's `on_resource_done`.
    pub fn finish(&mut self, xid: Xid, op: ResourceOp) -> Result<(), String> {
        match op {
            ResourceOp::Prepare => {
                let work = self
                    .preparing
                    .remove(&xid)
                    .ok_or_else(|| format!("no prepare of {xid} is pending"))?;
                at_once(self.inner.prepare(xid, &work))
            }
            ResourceOp::Commit | ResourceOp::Abort => self.apply(xid, op),
        }
    }

    fn delay_ms(&self, op: ResourceOp) -> u64 {
        match op {
            ResourceOp::Prepare => self.config.prepare_ms,
            ResourceOp::Commit => self.config.commit_ms,
            ResourceOp::Abort => self.config.abort_ms,
        }
    }

    /// Start `op`: at once if it has no delay, else later.
    fn start(&mut self, xid: Xid, op: ResourceOp) -> Answer {
        let after_ms = self.delay_ms(op);
        if after_ms == 0 {
            return Answer::Now(self.finish(xid, op));
        }
        self.started.push(Started { xid, op, after_ms });
        Answer::Later
    }

    /// A commit or an abort: a scripted failure, or the inner resource's.
    fn apply(&mut self, xid: Xid, op: ResourceOp) -> Result<(), String> {
        let failures = match op {
            ResourceOp::Commit => self.config.commit_failures,
            _ => self.config.abort_failures,
        };
        let failed = self.failed.entry((xid, op)).or_insert(0);
        if *failed < failures {
            *failed += 1;
            return Err(format!(
                "scripted {op:?} failure {} of {failures} for {xid}",
                *failed
            ));
        }
        self.failed.remove(&(xid, op));
        let answer = match op {
            ResourceOp::Commit => self.inner.commit(xid),
            _ => self.inner.abort(xid),
        };
        at_once(answer)
    }
}

/// The inner resource must answer at once: the delay is this wrapper's.
fn at_once(answer: Answer) -> Result<(), String> {
    match answer {
        Answer::Now(result) => result,
        Answer::Later => Err("the wrapped resource answered later; it must answer at once".into()),
    }
}

impl<R: Resource> Resource for Delayed<R> {
    fn prepare(&mut self, xid: Xid, work: &[u8]) -> Answer {
        if self.config.prepare_ms == 0 {
            return Answer::Now(at_once(self.inner.prepare(xid, work)));
        }
        // Kept until `finish`: the work is prepared then.
        self.preparing.insert(xid, work.to_vec());
        self.start(xid, ResourceOp::Prepare)
    }

    fn commit(&mut self, xid: Xid) -> Answer {
        self.start(xid, ResourceOp::Commit)
    }

    fn abort(&mut self, xid: Xid) -> Answer {
        self.start(xid, ResourceOp::Abort)
    }

    fn is_read_only(&self, work: &[u8]) -> bool {
        self.inner.is_read_only(work)
    }

    fn note_coordinator(&mut self, xid: Xid, coordinator: &concord_proto::NodeId) {
        self.inner.note_coordinator(xid, coordinator);
    }

    fn restore(&mut self, xid: Xid, work: &[u8]) {
        self.inner.restore(xid, work);
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }
}

impl<R: crate::resource::Accounts> crate::resource::Accounts for Delayed<R> {
    fn accounts(&self) -> Option<&KvStore> {
        self.inner.accounts()
    }
}

impl<R: KvView> KvView for Delayed<R> {
    fn kv(&self) -> &KvStore {
        self.inner.kv()
    }
}
