//! What a run hands back: a [`SimReport`] with its counts, or a
//! [`SimFailure`] naming the broken invariant, the seed and the xid, with
//! the command that replays it. These are plain data: they must never hold
//! anything that differs between two runs of one seed (wall time, pointer
//! values), or the determinism test could not compare them.

use concord_proto::{Time, Xid};
use std::fmt;

/// What a client knows about its transaction. A client only learns an
/// outcome from the coordinator's `Outcome` action; if the coordinator
/// crashed before answering, or the client gave up waiting, it is
/// `Unknown` (and stays so, whatever happened to the transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientOutcome {
    /// Submitted (or waiting to be), no answer yet.
    Pending,
    Committed,
    Aborted,
    Unknown,
}

/// The counts of one successful run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    pub participants: usize,
    /// Client transactions submitted.
    pub transactions: u64,
    /// ... that the client was told committed.
    pub committed: u64,
    /// ... that the client was told aborted.
    pub aborted: u64,
    /// ... whose client does not know (coordinator crash, client timeout).
    pub unknown: u64,
    /// Transactions actually committed at their participants.
    pub committed_in_fact: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub fsyncs: u64,
    /// Log compactions started, and crashes that hit a node while one ran.
    pub compactions: u64,
    pub crashes_in_compaction: u64,
    /// Crashes that were an fsync error's fail-stop.
    pub fsync_errors: u64,
    pub events: u64,
    /// Virtual time at the end of the run.
    pub virtual_time: Time,
    /// Virtual time the liveness phase took to go quiet.
    pub liveness_time: Time,
    /// A hash of every event the run processed: equal hashes mean (with
    /// overwhelming likelihood) equal runs.
    pub trace_hash: u64,
    /// One line per event, when `SimOptions::trace` was set.
    pub trace: Vec<String>,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} participants, {} txns ({} committed, {} aborted, {} unknown to the \
             client; {} committed in fact), {} msgs ({} dropped, {} duplicated), {} crashes \
             ({} during a compaction, {} fsync errors), {} restarts, {} fsyncs, {} compactions, {} events, \
             {:.3} s virtual, trace {:016x}",
            self.seed,
            self.participants,
            self.transactions,
            self.committed,
            self.aborted,
            self.unknown,
            self.committed_in_fact,
            self.messages_sent,
            self.messages_dropped,
            self.messages_duplicated,
            self.crashes,
            self.crashes_in_compaction,
            self.fsync_errors,
            self.restarts,
            self.fsyncs,
            self.compactions,
            self.events,
            self.virtual_time.0 as f64 / 1e6,
            self.trace_hash,
        )
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    pub seed: u64,
    /// The shapes the run drew from (part of what replays it).
    pub shape: crate::config::ShapeMode,
    /// The invariant's name, as its checker function is named.
    pub invariant: &'static str,
    pub xid: Option<Xid>,
    /// Virtual time at which it was detected.
    pub at: Time,
    pub detail: String,
    /// The trace up to the failure, when tracing was on (boxed: a
    /// failure is returned by value everywhere, so it stays small).
    pub trace: Box<[String]>,
}

impl SimFailure {
    /// The command that replays this run with a trace.
    pub fn replay_command(&self) -> String {
        let shape = match self.shape {
            crate::config::ShapeMode::Centralized => String::new(),
            other => format!(" --shape {}", other.name()),
        };
        format!(
            "cargo run -p concord-sim --release -- --seed {}{shape} --trace",
            self.seed
        )
    }
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant `{}` violated, seed {}, ",
            self.invariant, self.seed
        )?;
        match self.xid {
            Some(xid) => write!(f, "xid {xid:?} ({xid})")?,
            None => write!(f, "no single xid")?,
        }
        write!(
            f,
            ", at {}: {}\n  replay: {}",
            fmt_time(self.at),
            self.detail,
            self.replay_command()
        )
    }
}

impl std::error::Error for SimFailure {}

/// Virtual time as milliseconds with microseconds ("12.345ms").
pub fn fmt_time(t: Time) -> String {
    format!("{}.{:03}ms", t.0 / 1000, t.0 % 1000)
}
