//! `GroupCommit`: one writer thread per log that turns many submissions into
//! one write and one fsync.
//!
//! The writer blocks for the first submission, then takes everything already
//! queued (no artificial wait: under light load a lone record is written at
//! once), appends it all with one [`LogStore::append`], calls
//! [`LogStore::sync`] once if any of it was forced, and then runs every
//! completion in submission order. Submissions that arrive while it is
//! fsyncing queue up and form the next batch: that is the group commit, and
//! it is why the fsync count stays well below the forced-record count under
//! load.
//!
//! A forced submission may also say how long its fsync may wait
//! ([`SyncMode::Within`]): it is written at once, but the writer syncs only
//! when a submission that must be synced now arrives, or when the delay
//! runs out — whichever is first — and runs its completion then. That is
//! for durable records nobody is waiting on urgently (a participant's
//! COMMITTED record before its ACK): they ride on the next urgent fsync
//! instead of taking one of their own, and never delay an urgent record
//! behind an fsync of theirs. Durability is unchanged: a completion still
//! runs only after an fsync that covers its records.
//!
//! Failures are fail-stop: once a write or sync fails, every affected
//! completion gets the error and every later submission gets
//! [`StoreError::Poisoned`], even if the store would now succeed. A failed
//! fsync may have dropped dirty pages, so later "successful" writes could sit
//! on a hole (the PostgreSQL fsync-gate lesson). The owner must restart and
//! recover.
//!
//! The queue has no bound of its own: a bound here would have to block or
//! fail a submitter, and a driver must do neither halfway through a
//! protocol step. The callers bound it at admission instead: the
//! coordinator's `transactions_in_flight_max` and the participant's
//! `branches_in_flight_max` (a few records per transaction, each bounded by
//! the record size limit), which answer "busy, retry later" when full. This
//! module must never block a submitter (they may be async drivers) and
//! never depend on tokio.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{LogStore, RecordsProducer, StoreError};

/// Completion of a submission, run on the writer thread with the outcome.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// When a submission's records must be on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Not forced: `done` runs once the records are written (they become
    /// durable with a later sync).
    Lazy,
    /// Forced, urgently: fsync as soon as the batch is written.
    Now,
    /// Forced, but the fsync may wait up to this long for an urgent
    /// submission to share it. `done` still runs only after the fsync.
    Within(Duration),
}

impl SyncMode {
    fn is_forced(self) -> bool {
        self != SyncMode::Lazy
    }

    /// The mode that satisfies both: for records submitted together.
    pub fn stricter(self, other: SyncMode) -> SyncMode {
        match (self, other) {
            (SyncMode::Now, _) | (_, SyncMode::Now) => SyncMode::Now,
            (SyncMode::Within(a), SyncMode::Within(b)) => SyncMode::Within(a.min(b)),
            (SyncMode::Within(d), SyncMode::Lazy) | (SyncMode::Lazy, SyncMode::Within(d)) => {
                SyncMode::Within(d)
            }
            (SyncMode::Lazy, SyncMode::Lazy) => SyncMode::Lazy,
        }
    }
}

/// Stop draining the queue into one batch once it holds this many payload
/// bytes, so one burst cannot build an unbounded write buffer.
const BATCH_BYTES_MAX: usize = 8 << 20;

/// Counters since `start`, for benchmarks (e.g. fsyncs per transaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Append submissions written (or failed).
    pub submissions: u64,
    /// Of those, how many were forced.
    pub forced: u64,
    /// `LogStore::append` calls: one per batch.
    pub batches: u64,
    /// Records appended.
    pub records: u64,
    /// Payload bytes appended (framing not included).
    pub bytes: u64,
    /// `LogStore::sync` calls.
    pub syncs: u64,
    /// Completed `LogStore::rewrite` calls.
    pub rewrites: u64,
}

/// Handle to a log's writer thread. Dropping it is the same as [`shutdown`](Self::shutdown).
///
/// Completions run on the writer thread: they must be quick (hand the
/// outcome to another thread or task), may submit more work, and must never
/// block on the writer or drop the last `GroupCommit` (that would join the
/// writer from itself).
pub struct GroupCommit {
    name: String,
    sender: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl GroupCommit {
    /// Start the writer thread (named `log-{name}`) that owns `store`.
    ///
    /// # Panics
    /// If the OS cannot create a thread, like `std::thread::spawn`.
    pub fn start(store: Box<dyn LogStore>, name: &str) -> GroupCommit {
        GroupCommit::start_observed(store, name, None)
    }

    /// [`start`](Self::start), with `observer` told of every batch written
    /// and every fsync (on the writer thread: it must be quick), for
    /// metrics.
    pub fn start_observed(
        store: Box<dyn LogStore>,
        name: &str,
        observer: Option<LogObserver>,
    ) -> GroupCommit {
        let (sender, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            name: name.to_string(),
            store,
            receiver,
            observer,
            counters: Arc::clone(&counters),
            unsynced: false,
            failed: None,
            waiting: Vec::new(),
            sync_by: None,
            rewriting: None,
        };
        let handle = thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || writer.run())
            .expect("failed to spawn the group commit writer thread");
        GroupCommit {
            name: name.to_string(),
            sender: Some(sender),
            writer: Some(handle),
            counters,
        }
    }

    /// Queue a batch. `forced` = must be durable before `done` runs. `done`
    /// runs on the writer thread after the batch is written (and, if any
    /// queued batch was forced, fsynced). Batches are written in submission
    /// order. If the writer has stopped, `done` runs at once on the calling
    /// thread with [`StoreError::WriterStopped`].
    pub fn submit(&self, records: Vec<Vec<u8>>, forced: bool, done: Done) {
        let sync = if forced {
            SyncMode::Now
        } else {
            SyncMode::Lazy
        };
        self.submit_with(records, sync, done);
    }

    /// Like [`submit`](Self::submit), with the sync urgency spelled out
    /// (see [`SyncMode::Within`]). Completions still run in submission
    /// order: a completion queued behind a deferred one waits for its sync.
    pub fn submit_with(&self, records: Vec<Vec<u8>>, sync: SyncMode, done: Done) {
        self.send(Request::Append(Append {
            records,
            sync,
            done,
        }));
    }

    /// Queue a compaction: replace the whole log with `records` (see
    /// [`LogStore::rewrite`]), ordered with appends: everything submitted
    /// before it is written (and synced if forced) first, everything after
    /// it lands after the new content. `done` gets the outcome; the new
    /// content is durable when it gets `Ok`.
    pub fn submit_rewrite(&self, records: Vec<Vec<u8>>, done: Done) {
        self.submit_rewrite_with(Box::new(move || records), done);
    }

    /// [`submit_rewrite`](Self::submit_rewrite) with records produced when
    /// the rewrite runs (in the store's background thread where it has
    /// one): the caller hands over a large snapshot without encoding it on
    /// its own thread, and the request still takes its place in order now.
    pub fn submit_rewrite_with(&self, produce: RecordsProducer, done: Done) {
        self.send(Request::Rewrite { produce, done });
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GroupCommitStats {
        let c = &self.counters;
        GroupCommitStats {
            submissions: c.submissions.load(Ordering::Relaxed),
            forced: c.forced.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            rewrites: c.rewrites.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting work, write out everything queued, sync the log once
    /// more (so unforced records are durable too) and join the writer.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn send(&self, request: Request) {
        let request = match &self.sender {
            Some(sender) => match sender.send(request) {
                Ok(()) => return,
                Err(mpsc::SendError(request)) => request,
            },
            None => request,
        };
        let error = StoreError::WriterStopped {
            name: self.name.clone(),
        };
        finish(&self.name, request.into_done(), Err(error));
    }

    fn stop(&mut self) {
        // Dropping the sender ends the writer's loop once the queue is empty.
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("group commit writer {:?} panicked", self.name);
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Append {
    records: Vec<Vec<u8>>,
    sync: SyncMode,
    done: Done,
}

enum Request {
    Append(Append),
    Rewrite {
        produce: RecordsProducer,
        done: Done,
    },
}

impl Request {
    fn into_done(self) -> Done {
        match self {
            Request::Append(append) => append.done,
            Request::Rewrite { done, .. } => done,
        }
    }

    fn payload_bytes(&self) -> usize {
        match self {
            Request::Append(append) => append.records.iter().map(Vec::len).sum(),
            // Not produced yet; a rewrite ends the batch anyway.
            Request::Rewrite { .. } => 0,
        }
    }
}

/// What the writer thread tells an observer (see
/// [`GroupCommit::start_observed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogObservation {
    /// One batch of this many records was appended (one write).
    Batch { records: usize },
    /// One fsync, and how long it took.
    Sync { elapsed: Duration },
}

/// Called by the writer thread with each [`LogObservation`].
pub type LogObserver = Arc<dyn Fn(LogObservation) + Send + Sync>;

#[derive(Default)]
struct Counters {
    submissions: AtomicU64,
    forced: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
    rewrites: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// Run a completion; a panicking completion is logged and must not take the
/// writer (and every later completion) down with it.
fn finish(name: &str, done: Done, result: Result<(), StoreError>) {
    if panic::catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
        tracing::error!("group commit {name:?}: a completion callback panicked");
    }
}

struct Writer {
    name: String,
    store: Box<dyn LogStore>,
    receiver: mpsc::Receiver<Request>,
    observer: Option<LogObserver>,
    counters: Arc<Counters>,
    /// Records were appended since the last sync or rewrite.
    unsynced: bool,
    /// First failure: fail-stop from then on.
    failed: Option<StoreError>,
    /// Written submissions whose completions wait for a deferred sync
    /// (`SyncMode::Within`), and everything submitted after them (so
    /// completions keep submission order).
    waiting: Vec<Append>,
    /// When the deferred sync of `waiting` is due at the latest.
    sync_by: Option<Instant>,
    /// A background rewrite in progress (`LogStore::rewrite_begin`): its
    /// completion, and a copy of every record appended since it began,
    /// which `rewrite_commit` carries over into the new log.
    rewriting: Option<(Done, Vec<Vec<u8>>)>,
}

/// How often the writer looks whether a background rewrite is ready while
/// no request arrives.
const REWRITE_POLL: Duration = Duration::from_millis(1);

impl Writer {
    fn run(mut self) {
        loop {
            if self.rewriting.is_some() && self.store.rewrite_ready() {
                self.commit_rewrite();
            }
            // While a rewrite runs in the background, wake up to commit it.
            let wake = match (self.sync_by, self.rewriting.is_some()) {
                (due, true) => Some(
                    due.unwrap_or_else(|| Instant::now() + REWRITE_POLL)
                        .min(Instant::now() + REWRITE_POLL),
                ),
                (due, false) => due,
            };
            let first = match wake {
                Some(due) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    match self.receiver.recv_timeout(wait) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if self.sync_by.is_some_and(|d| d <= Instant::now()) {
                                self.sync_waiting();
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                // recv fails only when every sender is gone and the queue
                // is empty.
                None => match self.receiver.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let mut batch_bytes = first.payload_bytes();
            let mut batch = vec![first];
            while batch_bytes < BATCH_BYTES_MAX {
                match self.receiver.try_recv() {
                    Ok(request) => {
                        batch_bytes += request.payload_bytes();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        // Shutting down: a background rewrite is committed, deferred syncs
        // are due now.
        if self.rewriting.is_some() {
            self.commit_rewrite();
        }
        self.sync_waiting();
        if self.unsynced && self.failed.is_none() {
            match self.store.sync() {
                Ok(()) => bump(&self.counters.syncs, 1),
                Err(e) => tracing::error!("group commit {:?}: final sync failed: {e}", self.name),
            }
        }
    }

    /// Write a drained batch. A rewrite splits it: the appends before it are
    /// written (and synced, if forced) and completed first.
    fn process(&mut self, batch: Vec<Request>) {
        let mut appends = Vec::new();
        for request in batch {
            match request {
                Request::Append(append) => {
                    bump(&self.counters.submissions, 1);
                    bump(&self.counters.forced, usize::from(append.sync.is_forced()));
                    appends.push(append);
                }
                Request::Rewrite { produce, done } => {
                    self.write_appends(std::mem::take(&mut appends));
                    self.sync_waiting();
                    if self.rewriting.is_some() {
                        self.commit_rewrite(); // one at a time
                    }
                    match self.begin_rewrite(produce) {
                        Ok(None) => self.rewriting = Some((done, Vec::new())),
                        Ok(Some(produce)) => {
                            let result = self.rewrite(&produce());
                            finish(&self.name, done, result);
                        }
                        Err(e) => finish(&self.name, done, Err(e)),
                    }
                }
            }
        }
        self.write_appends(appends);
    }

    fn write_appends(&mut self, appends: Vec<Append>) {
        if appends.is_empty() {
            return;
        }
        match self.append(&appends) {
            Ok(()) => self.settle(appends),
            // The store wrote nothing (see the LogStore contract); redo the
            // batch one submission at a time so only the oversized one fails.
            Err(StoreError::RecordTooLarge { .. }) if appends.len() > 1 => {
                for append in appends {
                    match self.append(std::slice::from_ref(&append)) {
                        Ok(()) => self.settle(vec![append]),
                        Err(e) => finish(&self.name, append.done, Err(e)),
                    }
                }
            }
            Err(e) => {
                // Nothing written can be synced any more either.
                self.fail_waiting(&e);
                for append in appends {
                    finish(&self.name, append.done, Err(e.clone()));
                }
            }
        }
    }

    /// After `appends` were written: sync now, defer the sync, or complete
    /// them at once, as their sync modes and the waiting ones require.
    fn settle(&mut self, appends: Vec<Append>) {
        let now = Instant::now();
        let urgent = appends.iter().any(|a| a.sync == SyncMode::Now)
            || self.sync_by.is_some_and(|due| due <= now);
        let deferred = appends.iter().filter_map(|a| match a.sync {
            SyncMode::Within(delay) => Some(now + delay),
            _ => None,
        });
        let due = deferred.chain(self.sync_by).min();
        self.waiting.extend(appends);
        if urgent {
            self.sync_waiting();
        } else if due.is_some() {
            self.sync_by = due;
        } else {
            // Only lazy submissions and nothing deferred before them.
            for append in std::mem::take(&mut self.waiting) {
                finish(&self.name, append.done, Ok(()));
            }
        }
    }

    /// Sync (if anything written is unsynced) and complete every waiting
    /// submission.
    fn sync_waiting(&mut self) {
        self.sync_by = None;
        if self.waiting.is_empty() {
            return;
        }
        let result = self.sync_store();
        if let Err(e) = &result {
            self.fail_waiting(e);
            return;
        }
        for append in std::mem::take(&mut self.waiting) {
            finish(&self.name, append.done, Ok(()));
        }
    }

    fn fail_waiting(&mut self, error: &StoreError) {
        self.sync_by = None;
        for append in std::mem::take(&mut self.waiting) {
            finish(&self.name, append.done, Err(error.clone()));
        }
    }

    fn append(&mut self, appends: &[Append]) -> Result<(), StoreError> {
        self.check_usable()?;
        let records: Vec<&[u8]> = appends
            .iter()
            .flat_map(|a| a.records.iter().map(Vec::as_slice))
            .collect();
        if !records.is_empty() {
            if let Err(e) = self.store.append(&records) {
                return Err(self.fail(e));
            }
            self.unsynced = true;
            if let Some((_, tail)) = self.rewriting.as_mut() {
                tail.extend(records.iter().map(|r| r.to_vec()));
            }
            bump(&self.counters.batches, 1);
            bump(&self.counters.records, records.len());
            bump(&self.counters.bytes, records.iter().map(|r| r.len()).sum());
            self.observe(LogObservation::Batch {
                records: records.len(),
            });
        }
        Ok(())
    }

    fn sync_store(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        if self.unsynced {
            let started = Instant::now();
            if let Err(e) = self.store.sync() {
                return Err(self.fail(e));
            }
            self.unsynced = false;
            bump(&self.counters.syncs, 1);
            self.observe(LogObservation::Sync {
                elapsed: started.elapsed(),
            });
        }
        Ok(())
    }

    fn observe(&self, observation: LogObservation) {
        if let Some(observer) = &self.observer {
            observer(observation);
        }
    }

    /// Start a background rewrite; `Ok(Some(records))` hands them back when
    /// the store has none (then they are rewritten in the foreground).
    fn begin_rewrite(
        &mut self,
        produce: RecordsProducer,
    ) -> Result<Option<RecordsProducer>, StoreError> {
        self.check_usable()?;
        self.store.rewrite_begin(produce).map_err(|e| self.fail(e))
    }

    /// Commit the background rewrite: the records appended meanwhile go
    /// into the new log, which is synced, so every waiting submission is
    /// durable too.
    fn commit_rewrite(&mut self) {
        let Some((done, tail)) = self.rewriting.take() else {
            return;
        };
        let result = self.check_usable().and_then(|()| {
            let tail: Vec<&[u8]> = tail.iter().map(Vec::as_slice).collect();
            self.store.rewrite_commit(&tail).map_err(|e| self.fail(e))
        });
        match &result {
            Ok(()) => {
                self.unsynced = false;
                bump(&self.counters.rewrites, 1);
                // Their records are in the synced new log now.
                self.sync_waiting();
            }
            Err(e) => self.fail_waiting(e),
        }
        finish(&self.name, done, result);
    }

    fn rewrite(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        self.check_usable()?;
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        if let Err(e) = self.store.rewrite(&records) {
            return Err(self.fail(e));
        }
        self.unsynced = false;
        bump(&self.counters.rewrites, 1);
        Ok(())
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(first) => Err(first.poisoned(&self.name)),
            None => Ok(()),
        }
    }

    /// Record a failure; everything but an oversized record is fail-stop.
    fn fail(&mut self, error: StoreError) -> StoreError {
        if !matches!(error, StoreError::RecordTooLarge { .. }) {
            tracing::error!("group commit {:?} is now fail-stop: {error}", self.name);
            self.failed = Some(error.clone());
        }
        error
    }
}
