//! concord-store: the durable log every concord process (coordinator,
//! participant) writes, behind one trait with a written contract.
//!
//! - [`LogStore`]: the contract (what is durable when a call returns).
//! - [`FileLog`]: the embedded default, an append-only file with checksummed
//!   records and crash recovery.
//! - [`MemLog`]: an in-memory log for the deterministic simulator, with a
//!   seeded-crash hook that drops unsynced records.
//! - [`GroupCommit`]: a writer thread that batches many submissions into one
//!   write and one fsync.
//! - [`PgLog`]: a log in a shared PostgreSQL database, every write fenced
//!   by the owner's epoch (`serve --store postgres://…`).
//! - [`conformance`]: the suite every implementation must pass.
//!
//! Records are opaque byte strings: this crate knows nothing of the protocol
//! and must never interpret a record's content.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub mod conformance;
pub mod file_log;
pub mod group_commit;
pub mod mem_log;
pub mod pg_lease;
pub mod pg_log;

pub use file_log::{FileLog, FileLogOptions, Recovered};
pub use group_commit::{
    Done, GroupCommit, GroupCommitStats, LogObservation, LogObserver, SyncMode,
};
pub use mem_log::MemLog;
pub use pg_lease::{Acquired, OwnerRow, PgLeases, Renewal};
pub use pg_log::PgLog;

/// Produces the records of a rewrite when called: a compaction's snapshot,
/// encoded off the threads that cannot wait (the driver, the log writer).
pub type RecordsProducer = Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>;

/// A durable, append-only log of opaque records.
///
/// # Durability contract
///
/// - **Order**: records come back from recovery in the order they were
///   appended, across calls.
/// - **After a machine crash** (power loss, kernel panic), recovery returns
///   every record appended before the last successful [`sync`](Self::sync)
///   or [`rewrite`](Self::rewrite), followed by some prefix (possibly empty)
///   of the records appended after it. It never returns a gap, a reordered
///   record or a record that was never appended; if it cannot guarantee that
///   (media damage before the tail), opening fails with an error instead of
///   silently losing records.
/// - **After a process crash** (the machine stays up), every record whose
///   `append` returned `Ok` is recovered: the kernel holds it.
/// - **Fail-stop**: after any `Err` from `append`, `sync` or `rewrite`, the
///   store refuses all later calls with [`StoreError::Poisoned`]. The owner
///   must reopen the log and run recovery. A failed fsync may already have
///   dropped dirty pages, so retrying it could "succeed" without the data
///   ever reaching the disk (the PostgreSQL "fsync-gate" lesson, 2018).
///   Exception: [`StoreError::RecordTooLarge`] is checked before anything is
///   written and leaves the store usable.
pub trait LogStore: Send + 'static {
    /// Append records in order. After Ok, they will be returned by a later open/recovery
    /// unless the machine crashes before a successful `sync`. Not durable yet.
    ///
    /// Empty records are allowed. Either every record of the call is
    /// accepted or, for an oversized record, none is.
    fn append(&mut self, records: &[&[u8]]) -> Result<(), StoreError>;

    /// Make every record appended so far durable (fdatasync). After Ok they survive any crash.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// Replace the whole log with `records` atomically (write new file, fsync, rename, fsync dir):
    /// after Ok, recovery returns exactly these records (used to compact away finished transactions).
    ///
    /// The new content is durable when this returns Ok (no `sync` needed).
    /// After a crash during the call, recovery returns either the old log
    /// or exactly `records`, never a mix.
    fn rewrite(&mut self, records: &[&[u8]]) -> Result<(), StoreError>;

    /// Begin a rewrite that runs beside appends, so that compaction does
    /// not stall the log: the store writes `records` as a new log in the
    /// background while `append` and `sync` go on with the current log, with
    /// their usual guarantees. `records` produces the content (encoding a
    /// large snapshot is part of the background work). Returns the
    /// producer back when the store cannot (the default); the caller then
    /// uses [`rewrite`](Self::rewrite). At most one background rewrite at a
    /// time.
    fn rewrite_begin(
        &mut self,
        records: RecordsProducer,
    ) -> Result<Option<RecordsProducer>, StoreError> {
        Ok(Some(records))
    }

    /// Whether the background part of the rewrite begun last is done (so
    /// that [`rewrite_commit`](Self::rewrite_commit) will not block long).
    fn rewrite_ready(&mut self) -> bool {
        true
    }

    /// Complete the rewrite begun last. `tail` is every record appended
    /// since `rewrite_begin`, in order: it is appended to the new log,
    /// which is synced and then atomically replaces the current one. After
    /// Ok, recovery returns the records given to `rewrite_begin`, then
    /// `tail`, then whatever is appended later, all durable up to here.
    /// After a crash before it returns, recovery returns the current log
    /// (under the usual rules), never a mix. Blocks until the background
    /// part is done.
    fn rewrite_commit(&mut self, tail: &[&[u8]]) -> Result<(), StoreError> {
        let _ = tail;
        Ok(())
    }
}

/// Everything that can go wrong in a log store. Each variant says what
/// happened and where (path, byte offset), so an operator can act on it.
///
/// `Clone` so that group commit can hand the same failure to every caller
/// whose batch it affected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A system call failed.
    #[error("{}: {op} failed: {source}", .path.display())]
    Io {
        path: PathBuf,
        /// The operation, e.g. "write", "fdatasync", "rename".
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },

    /// The log's content is damaged somewhere recovery cannot treat as a torn
    /// tail; opening refuses rather than dropping records that may have been
    /// durable.
    #[error("{}: corrupt log at byte offset {offset}: {detail}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },

    /// A record is longer than the store's `record_bytes_max`. Checked before
    /// anything is written: the store stays usable.
    #[error(
        "{}: record of {len} bytes exceeds record_bytes_max ({max} bytes); nothing was written",
        .path.display()
    )]
    RecordTooLarge {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    /// Another open `FileLog` (in this or another process) holds the log's lock.
    #[error("{}: log is locked by another open FileLog (is another process using this directory?)", .path.display())]
    Locked { path: PathBuf },

    /// The store failed earlier and is fail-stop (see [`LogStore`]).
    #[error("{store}: refusing writes after an earlier failure; reopen the log to recover (first failure: {first})")]
    Poisoned {
        /// The store's path or group-commit name.
        store: String,
        first: Box<StoreError>,
    },

    /// The group-commit writer thread is gone (it was shut down or panicked).
    #[error("group commit writer {name:?} has stopped")]
    WriterStopped { name: String },

    /// A database store's statement failed (or its connection was lost:
    /// whether the last write committed is then unknown).
    #[error("{store}: {op} failed: {detail}")]
    Database {
        store: String,
        op: &'static str,
        detail: String,
    },

    /// Another instance took this log over (opened it with a higher
    /// epoch): this one may never write to it again.
    #[error("{store}: fenced off: another instance took the log over after this one opened it with epoch {epoch}; this instance must stop writing")]
    Fenced { store: String, epoch: u64 },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            op,
            source: Arc::new(source),
        }
    }

    /// Wrap `self` as the cause of a fail-stop refusal by `store`.
    pub(crate) fn poisoned(&self, store: impl fmt::Display) -> Self {
        let first = match self {
            // Keep the original cause, not a chain of refusals.
            StoreError::Poisoned { first, .. } => first.clone(),
            other => Box::new(other.clone()),
        };
        StoreError::Poisoned {
            store: store.to_string(),
            first,
        }
    }
}
