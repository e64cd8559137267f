//! Pieces both server drivers (coordinator and participant) share: the
//! clock that turns tokio time into the core's [`Time`], and the log writer that batches the records of one loop iteration into
//! one group-commit submission.
//!
//! A driver is one tokio task that owns its protocol core. Everything that
//! happens to the core arrives as an event on a channel (a peer message, a
//! client request, "these tickets are durable", a timer); after each event
//! the driver drains the core's actions and carries them out. Nothing here
//! may block the driver: log writes happen on the group-commit writer
//! thread, which reports back through a channel.

use crate::conn::{Inbound, Incoming};
use anyhow::{anyhow, Context};
use concord_proto::codec::decode;
use concord_proto::{Durability, PersistTicket, Time};
use concord_store::{FileLog, FileLogOptions, GroupCommit, StoreError, SyncMode};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events handled per loop iteration before the log batch is submitted:
/// bounds latency while letting a burst share one fsync.
const EVENTS_PER_BATCH_MAX: usize = 256;

/// One server's protocol core as the shared event loop sees it. Each
/// method feeds one kind of event to the core and carries out the actions
/// it produced (sends, timers, replies); log records go to the node's
/// [`LogWriter`], which the loop flushes once per iteration.
pub(crate) trait DriverNode {
    /// "coordinator" or "participant", for log lines.
    const ROLE: &'static str;
    /// These forced writes are durable.
    fn on_durable(&mut self, tickets: Vec<PersistTicket>);
    /// The log was rewritten with the node's last snapshot.
    fn on_compacted(&mut self);
    /// Run every timer that is due.
    fn on_timers_due(&mut self);
    /// A peer message or a client request.
    fn on_inbound(&mut self, event: Inbound);
    /// When the next timer is due, if any.
    fn next_timer(&self) -> Option<Instant>;
    fn log(&mut self) -> &mut LogWriter;
    /// Say what is left in flight as the loop stops.
    fn on_shutdown(&self);
}

/// The driver loop both servers run, until `shutdown` completes or the log
/// fails. Log completions come first (`biased`) so decisions and votes
/// leave as soon as they are durable; a burst of inbound events is handled
/// before one flush so its records share one group-commit batch.
pub(crate) async fn run_event_loop<N: DriverNode>(
    node: &mut N,
    mut inbound: Incoming,
    mut log_events: mpsc::UnboundedReceiver<LogEvent>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    node.log().flush();
    loop {
        let next_timer = node.next_timer();
        tokio::select! {
            biased;
            event = log_events.recv() => match event {
                Some(LogEvent::Durable(tickets)) => node.on_durable(tickets),
                Some(LogEvent::Compacted) => node.on_compacted(),
                Some(LogEvent::Failed(error)) => {
                    return Err(anyhow!(
                        "the {} log failed: {error}; stopping (restart to recover)",
                        N::ROLE
                    ));
                }
                None => return Err(anyhow!("the {} log writer stopped", N::ROLE)),
            },
            _ = sleep_until(next_timer) => node.on_timers_due(),
            event = inbound.recv() => {
                let Some(event) = event else { return Ok(()) };
                node.on_inbound(event);
                for _ in 1..EVENTS_PER_BATCH_MAX {
                    match inbound.try_recv() {
                        Some(event) => node.on_inbound(event),
                        None => break,
                    }
                }
            }
            _ = &mut shutdown => {
                node.on_shutdown();
                return Ok(());
            }
        }
        node.log().flush();
    }
}

/// Turns tokio's monotonic clock into the core's microsecond [`Time`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Time {
        Time(self.origin.elapsed().as_micros().min(u64::MAX as u128) as u64)
    }

    /// `at` on the tokio clock; a time past what the clock can hold
    /// ("never", `Time(u64::MAX)`, on some platforms) becomes a year from
    /// now rather than a panic.
    pub fn instant(&self, at: Time) -> Instant {
        self.origin
            .checked_add(std::time::Duration::from_micros(at.0))
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600))
    }
}

/// What the log writer thread reports back to the driver.
#[derive(Debug)]
pub(crate) enum LogEvent {
    /// These forced writes are on stable storage.
    Durable(Vec<PersistTicket>),
    /// The log was rewritten with a compaction snapshot.
    Compacted,
    /// A write or fsync failed: the log is fail-stop and the process must
    /// stop (a restart runs recovery).
    Failed(StoreError),
}

/// Collects the records of one driver loop iteration and submits them as
/// one group-commit batch, forced if any of them is forced: urgently if any
/// forced record is urgent, else with the deferral of
/// [`push_deferrable`](LogWriter::push_deferrable).
pub(crate) struct LogWriter {
    group: GroupCommit,
    /// False under `--unsafe-no-fsync`: reported in stats, never hidden.
    fsync: bool,
    /// Forced records pushed since start (the group-commit counters count
    /// submissions, which hold many records).
    forced_records: u64,
    events: mpsc::UnboundedSender<LogEvent>,
    records: Vec<Vec<u8>>,
    tickets: Vec<PersistTicket>,
    /// How the current batch must be synced.
    sync: SyncMode,
    /// How long a deferrable forced record may wait for its fsync.
    defer: Duration,
    after_write: Option<&'static str>,
}

impl LogWriter {
    pub fn new(
        group: GroupCommit,
        events: mpsc::UnboundedSender<LogEvent>,
        fsync: bool,
    ) -> LogWriter {
        LogWriter {
            group,
            fsync,
            forced_records: 0,
            events,
            records: Vec::new(),
            tickets: Vec::new(),
            sync: SyncMode::Lazy,
            defer: Duration::ZERO,
            after_write: None,
        }
    }

    /// Deferrable forced records may wait up to `defer` for their fsync
    /// (zero: they are urgent like every other).
    pub fn with_defer(mut self, defer: Duration) -> LogWriter {
        self.defer = defer;
        self
    }

    /// Queue a record; a forced one is synced as soon as its batch is
    /// written.
    pub fn push(&mut self, record: Vec<u8>, durability: Durability) {
        self.push_with(record, durability, SyncMode::Now);
    }

    /// Queue a record whose forced write nobody waits on urgently (a
    /// participant's outcome record before its ACK): its fsync may wait up
    /// to the writer's deferral to be shared with an urgent one. Its ticket
    /// is still reported durable only after an fsync covering it.
    pub fn push_deferrable(&mut self, record: Vec<u8>, durability: Durability) {
        let sync = if self.defer.is_zero() {
            SyncMode::Now
        } else {
            SyncMode::Within(self.defer)
        };
        self.push_with(record, durability, sync);
    }

    fn push_with(&mut self, record: Vec<u8>, durability: Durability, urgency: SyncMode) {
        self.records.push(record);
        if let Durability::Forced(ticket) = durability {
            self.forced_records += 1;
            self.tickets.push(ticket);
            self.sync = self.sync.stricter(urgency);
        }
    }

    /// The server's counters for `Request::Stats`: this log's and the
    /// network's.
    /// The group commit's counters since start.
    pub fn log_stats(&self) -> concord_store::GroupCommitStats {
        self.group.stats()
    }

    pub fn server_stats(&self, role: &str, net: concord_net::NetStats) -> crate::wire::ServerStats {
        crate::wire::server_stats(
            role,
            self.fsync,
            self.forced_records,
            self.group.stats(),
            net,
        )
    }

    /// Fire fail-point `name` once the current batch has been written.
    pub fn fail_after_write(&mut self, name: &'static str) {
        self.after_write = Some(name);
    }

    /// Submit what was pushed since the last flush (nothing if empty).
    pub fn flush(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.records);
        let tickets = std::mem::take(&mut self.tickets);
        let sync = std::mem::replace(&mut self.sync, SyncMode::Lazy);
        let after_write = self.after_write.take();
        let events = self.events.clone();
        self.group.submit_with(
            records,
            sync,
            Box::new(move |result| {
                // A send error means the driver is gone (shutting down):
                // nothing left to tell.
                match result {
                    Ok(()) => {
                        if let Some(name) = after_write {
                            crate::failpoint::hit(name);
                        }
                        if !tickets.is_empty() {
                            let _ = events.send(LogEvent::Durable(tickets));
                        }
                    }
                    Err(error) => {
                        let _ = events.send(LogEvent::Failed(error));
                    }
                }
            }),
        );
    }

    /// Compact: replace the whole log with the records `produce` returns
    /// (called in the store's background thread: a large snapshot is
    /// encoded there, not here). Everything pushed so far is submitted
    /// first (the group-commit writer keeps the order), so the snapshot,
    /// which already reflects those records, replaces them only after they
    /// are written; later records land after it.
    pub fn compact(&mut self, produce: concord_store::RecordsProducer) {
        self.flush();
        let events = self.events.clone();
        self.group.submit_rewrite_with(
            produce,
            Box::new(move |result| {
                let _ = events.send(match result {
                    Ok(()) => LogEvent::Compacted,
                    Err(error) => LogEvent::Failed(error),
                });
            }),
        );
    }

    /// Flush, then stop the writer thread after it has written and synced
    /// everything queued.
    pub fn shutdown(mut self) {
        self.flush();
        self.group.shutdown();
    }
}

/// Open the `role`'s log in `dir` and decode every record. A record that
/// does not decode stops start-up, naming it: starting without it could
/// lose a vote or a decision.
pub(crate) fn open_log<R: serde::de::DeserializeOwned>(
    role: &str,
    record_name: &'static str,
    dir: &Path,
    fsync: bool,
) -> anyhow::Result<(FileLog, Vec<R>)> {
    let (log, recovered) = FileLog::open(dir, log_options(role, fsync))
        .with_context(|| format!("cannot open the {role} log in {}", dir.display()))?;
    for warning in &recovered.warnings {
        tracing::warn!("{role} log recovery: {warning}");
    }
    let mut records = Vec::with_capacity(recovered.records.len() + 1);
    for (index, bytes) in recovered.records.iter().enumerate() {
        let record: R = decode(record_name, bytes).map_err(|e| {
            anyhow!(
                "{role} log in {}: record #{index} ({} bytes) does not decode: {e}; \
                 refusing to start rather than lose it",
                dir.display(),
                bytes.len()
            )
        })?;
        records.push(record);
    }
    Ok((log, records))
}

/// Options of a server's log. With `fsync` false (`--unsafe-no-fsync`,
/// for benchmark baselines) forced records are not durable: say so loudly.
pub(crate) fn log_options(role: &str, fsync: bool) -> FileLogOptions {
    if !fsync {
        tracing::warn!(
            "--unsafe-no-fsync: the {role} log is NOT fsynced; a crash of the machine can lose \
             decisions and votes. Use this only to measure what durability costs."
        );
    }
    FileLogOptions {
        fsync,
        ..FileLogOptions::default()
    }
}

/// Sleep until `at`, or forever when there is no timer.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The log line of a directory event (either node).
pub(crate) fn log_directory_event(event: concord_node::directory::DirectoryEvent) {
    use concord_node::directory::DirectoryEvent;
    match event {
        DirectoryEvent::PeerMoved { id, from, to } => {
            tracing::info!(peer = %id, %from, %to, "{id} moved from {from} to {to}: reached there now")
        }
        DirectoryEvent::NoAddress { to, xid, kind } => tracing::warn!(
            peer = %to,
            %xid,
            kind,
            "no address known for {to}: {kind} not sent (it is found again once it sends \
             anything, a hello at its start included)"
        ),
        DirectoryEvent::Misaddressed { from, claimed, xid } => tracing::warn!(
            %from,
            %claimed,
            %xid,
            "frame from {from} carries a message from {claimed}: dropped"
        ),
    }
}
