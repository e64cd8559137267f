//! The coordinator server (`concord serve`): the tokio driver around the
//! sans-IO [`Coordinator`].
//!
//! Start-up order matters and is fixed here: open the log, decode every
//! record (one that does not decode stops start-up, naming it), run
//! [`Coordinator::recover`], start group commit, and only then bind the
//! listener. An INQUIRE answered before recovery could say ABORTED
//! (presumed abort) for a transaction whose COMMIT is in the log.
//!
//! The driver is one task that owns the core. Events arrive on channels
//! (peer messages and client requests from the connection tasks, durable
//! tickets from the log writer thread, timer firings from its own timer
//! table); after each event it drains the core's actions: records go into
//! one group-commit batch per loop iteration, messages to the [`Outbox`],
//! timers into the table, outcomes to the waiting client. Participants are
//! named for humans (`--participant NAME=ADDR`); inside the protocol they
//! are their addresses.

use crate::conn::{self, Inbound, ReplyTx};
use crate::driver::{run_event_loop, Clock, DriverNode, LogEvent, LogWriter, Timers};
use crate::failpoint;
use crate::outbox::Outbox;
use crate::timeouts::{CoordinatorTimeouts, PhaseSettings, PREPARE_SAFETY_FACTOR};
use crate::wire::{
    BranchRequest, BranchView, CoordinatorState, CoordinatorStatus, Outcome, Reply, Request,
    TimeoutsReport, IN_FLIGHT_LISTED_MAX,
};
use anyhow::{anyhow, bail, Context};
use concord_net::NetConfig;
use concord_participant::kv::{decode_kv_work, encode_work_with_memo, KvWork};
use concord_proto::codec::{decode, encode};
use concord_proto::{
    Body, Coordinator, CoordinatorAction, CoordinatorConfig, CoordinatorNotice, CoordinatorRecord,
    Decision, PeerAddr, TxnOutcome, Xid,
};
use concord_store::{FileLog, GroupCommit};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Everything `concord serve` needs.
#[derive(Clone, Debug)]
pub struct CoordinatorServerConfig {
    /// Address to listen on; it is also this coordinator's protocol address
    /// (participants send votes, ACKs and INQUIREs there).
    pub listen: String,
    /// Directory of the coordinator's durable log.
    pub data_dir: PathBuf,
    /// Participants by name: `(name, address)`.
    pub participants: Vec<(String, PeerAddr)>,
    /// Phase-1 timeout (no vote within it means ABORT) until
    /// `timeout_samples_min` samples of a participant exist; after that it
    /// comes from measured latency (see [`crate::timeouts`]).
    pub prepare_timeout_ms: u64,
    /// Bounds of the measured phase-1 timeout; the maximum also bounds a
    /// timeout a client asks for.
    pub prepare_timeout_ms_min: u64,
    pub prepare_timeout_ms_max: u64,
    /// First delay before re-sending an un-ACKed COMMIT until enough
    /// samples exist; then measured, within `resend_ms_min..=resend_ms_max`.
    /// Resends double up to `resend_ms_max`.
    pub resend_ms_initial: u64,
    pub resend_ms_min: u64,
    pub resend_ms_max: u64,
    /// Samples of a (participant, phase) needed before its timeout comes
    /// from the estimate instead of the default.
    pub timeout_samples_min: u64,
    /// Begin requests beyond this many transactions in flight are refused.
    pub transactions_in_flight_max: usize,
    /// Finished transactions remembered for `status`.
    pub recent_outcomes_max: usize,
    pub listen_backlog: u32,
    /// Transport settings (frame bound, heartbeats, idle timeouts,
    /// reconnect backoff) for every connection of this process.
    pub net: NetConfig,
    /// False only for benchmark baselines (`--unsafe-no-fsync`): the log
    /// is then NOT durable.
    pub fsync: bool,
}

impl CoordinatorServerConfig {
    /// A config with the defaults of `concord serve`.
    pub fn new(
        listen: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        participants: Vec<(String, PeerAddr)>,
    ) -> Self {
        CoordinatorServerConfig {
            listen: listen.into(),
            data_dir: data_dir.into(),
            participants,
            prepare_timeout_ms: 1000,
            prepare_timeout_ms_min: 100,
            prepare_timeout_ms_max: 60_000,
            resend_ms_initial: 100,
            resend_ms_min: 10,
            resend_ms_max: 5000,
            timeout_samples_min: 8,
            transactions_in_flight_max: 100_000,
            recent_outcomes_max: 100_000,
            listen_backlog: 1024,
            net: NetConfig::default(),
            fsync: true,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.participants.is_empty() {
            bail!("no participants configured: give at least one --participant NAME=ADDR");
        }
        for (i, (name, addr)) in self.participants.iter().enumerate() {
            if name.is_empty() || addr.is_empty() {
                bail!("participant {i} has an empty name or address: use NAME=ADDR");
            }
            if let Some((other, _)) = self.participants[..i].iter().find(|(n, _)| n == name) {
                bail!("participant name {other:?} is given twice");
            }
            if let Some((other, _)) = self.participants[..i].iter().find(|(_, a)| a == addr) {
                bail!("participants {other:?} and {name:?} have the same address {addr}");
            }
            if *addr == self.listen {
                bail!("participant {name:?} has the coordinator's own address {addr}");
            }
        }
        if self.prepare_timeout_ms == 0 || self.resend_ms_initial == 0 {
            bail!("timeouts must be at least 1 ms");
        }
        crate::conn::validate_net_config(&self.net)?;
        if self.resend_ms_max < self.resend_ms_initial {
            bail!(
                "--resend-ms-max ({}) is below --resend-ms-initial ({})",
                self.resend_ms_max,
                self.resend_ms_initial
            );
        }
        if self.prepare_timeout_ms_min == 0 || self.resend_ms_min == 0 {
            bail!("--prepare-timeout-ms-min and --resend-ms-min must be at least 1 ms");
        }
        if self.prepare_timeout_ms_min > self.prepare_timeout_ms_max {
            bail!(
                "--prepare-timeout-ms-min ({}) is above --prepare-timeout-ms-max ({})",
                self.prepare_timeout_ms_min,
                self.prepare_timeout_ms_max
            );
        }
        if self.resend_ms_min > self.resend_ms_max {
            bail!(
                "--resend-ms-min ({}) is above --resend-ms-max ({})",
                self.resend_ms_min,
                self.resend_ms_max
            );
        }
        Ok(())
    }

    /// How the driver computes timeouts from these settings.
    fn timeouts(&self) -> CoordinatorTimeouts {
        CoordinatorTimeouts::new(
            PhaseSettings {
                min_ms: self.prepare_timeout_ms_min,
                max_ms: self.prepare_timeout_ms_max,
                default_ms: self.prepare_timeout_ms,
                samples_min: self.timeout_samples_min,
                factor: PREPARE_SAFETY_FACTOR,
                flag: "--prepare-timeout-ms",
                default_flag: "--prepare-timeout-ms",
            },
            PhaseSettings {
                min_ms: self.resend_ms_min,
                max_ms: self.resend_ms_max,
                default_ms: self.resend_ms_initial,
                samples_min: self.timeout_samples_min,
                factor: 1.0,
                flag: "--resend-ms",
                default_flag: "--resend-ms-initial",
            },
        )
    }
}

/// Run a coordinator until SIGINT or SIGTERM.
pub async fn run_coordinator(config: CoordinatorServerConfig) -> anyhow::Result<()> {
    run_coordinator_until(config, crate::shutdown_signal()).await
}

/// Run a coordinator until `shutdown` completes, then stop accepting,
/// write out the log and return. Returns an error if start-up fails or the
/// log fails (fail-stop: restart to recover).
pub async fn run_coordinator_until(
    config: CoordinatorServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let clock = Clock::start();
    let options = crate::driver::log_options("coordinator", config.fsync);
    let (log, recovered) = FileLog::open(&config.data_dir, options).with_context(|| {
        format!(
            "cannot open the coordinator log in {}",
            config.data_dir.display()
        )
    })?;
    for warning in &recovered.warnings {
        tracing::warn!("coordinator log recovery: {warning}");
    }
    let mut records = Vec::with_capacity(recovered.records.len());
    for (index, bytes) in recovered.records.iter().enumerate() {
        let record: CoordinatorRecord = decode("coordinator log record", bytes).map_err(|e| {
            anyhow!(
                "coordinator log in {}: record #{index} ({} bytes) does not decode: {e}; \
                     refusing to start rather than lose it",
                config.data_dir.display(),
                bytes.len()
            )
        })?;
        records.push(record);
    }
    let recent = RecentOutcomes::from_log(&records, config.recent_outcomes_max);
    let core = Coordinator::recover(
        CoordinatorConfig {
            addr: config.listen.clone(),
            resend_ms_initial: config.resend_ms_initial,
            resend_ms_max: config.resend_ms_max,
        },
        records,
        clock.now(),
    );
    tracing::info!(
        data_dir = %config.data_dir.display(),
        records = recovered.records.len(),
        epoch = core.epoch(),
        "coordinator log recovered"
    );
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let log = LogWriter::new(
        GroupCommit::start(Box::new(log), "coordinator"),
        log_tx,
        config.fsync,
    );

    // Recovery is loaded: now it is safe to answer INQUIREs.
    let (network, incoming) =
        conn::serve(&config.listen, config.listen_backlog, config.net.clone()).await?;
    tracing::info!(
        listen = %config.listen,
        participants = %config
            .participants
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(", "),
        "coordinator serving"
    );
    let mut driver = CoordinatorDriver {
        directory: Directory::new(&config.participants),
        timeouts: config.timeouts(),
        transactions_in_flight_max: config.transactions_in_flight_max,
        core,
        clock,
        timers: Timers::default(),
        log,
        outbox: Outbox::new(network.clone()),
        waiting: HashMap::new(),
        recent,
        recovering: true,
    };
    let result = driver.run(incoming, log_rx, shutdown).await;
    // Graceful stop: the driver takes no more events; write out the log
    // (every record pushed so far becomes durable), then let the transport
    // flush queued replies and messages and close. Clients still waiting
    // for an outcome see their connection close: OutcomeUnknown with the
    // xid, which `status` answers after the restart.
    let waiting = driver.waiting.len();
    driver.log.shutdown();
    conn::shutdown(&network).await;
    if waiting > 0 {
        tracing::info!(
            waiting,
            "shutdown: {waiting} clients were waiting for an outcome; they see it as unknown \
             and can ask `concord status` after the restart"
        );
    }
    match &result {
        Ok(()) => tracing::info!("coordinator stopped"),
        Err(e) => tracing::error!("coordinator stopping: {e:#}"),
    }
    result
}

/// A client waiting for the outcome of a transaction it began.
struct Waiter {
    reply: ReplyTx,
    request_id: u64,
    participants: Vec<PeerAddr>,
}

struct CoordinatorDriver {
    core: Coordinator,
    clock: Clock,
    timers: Timers,
    log: LogWriter,
    outbox: Outbox,
    directory: Directory,
    /// Latency estimates per participant and the timeouts from them.
    timeouts: CoordinatorTimeouts,
    transactions_in_flight_max: usize,
    waiting: HashMap<Xid, Waiter>,
    recent: RecentOutcomes,
    /// True while the actions of recovery are carried out (decisions made
    /// then are logged at info level, one line per transaction).
    recovering: bool,
}

impl DriverNode for CoordinatorDriver {
    const ROLE: &'static str = "coordinator";

    fn on_durable(&mut self, tickets: Vec<concord_proto::PersistTicket>) {
        let now = self.clock.now();
        for ticket in tickets {
            self.core.on_durable(now, ticket);
            self.drain_actions();
        }
    }

    fn on_timers_due(&mut self) {
        let now = self.clock.now();
        for xid in self.timers.pop_due(now) {
            self.core.on_timer(now, xid);
            self.drain_actions();
        }
    }

    fn on_inbound(&mut self, event: Inbound) {
        CoordinatorDriver::on_inbound(self, event)
    }

    fn next_timer(&self) -> Option<tokio::time::Instant> {
        self.timers.next_due().map(|at| self.clock.instant(at))
    }

    fn log(&mut self) -> &mut LogWriter {
        &mut self.log
    }

    fn on_shutdown(&self) {
        tracing::info!(
            "coordinator shutting down: {} transactions in flight",
            self.core.in_flight()
        );
    }
}

impl CoordinatorDriver {
    async fn run(
        &mut self,
        inbound: conn::Incoming,
        log_events: mpsc::UnboundedReceiver<LogEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Recovery's own actions (the epoch record, ABORTs for undecided
        // transactions) go first.
        self.drain_actions();
        self.recovering = false;
        run_event_loop(self, inbound, log_events, shutdown).await
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Peer(message) => {
                let now = self.clock.now();
                self.timeouts.on_receive(now, &message);
                self.core.on_message(now, message);
            }
            Inbound::Request { request, reply } => self.on_request(request, reply),
        }
        self.drain_actions();
    }

    fn on_request(&mut self, request: Request, reply: ReplyTx) {
        match request {
            Request::Begin {
                request_id,
                branches,
                prepare_timeout_ms,
            } => {
                if let Err(message) = self.begin(request_id, branches, prepare_timeout_ms, &reply) {
                    tracing::debug!(request_id, "begin refused: {message}");
                    reply.error(request_id, message);
                }
            }
            Request::Status { request_id, xid } => {
                let status = self.status(xid);
                reply.send(&Reply::Status { request_id, status });
            }
            Request::ListInFlight { request_id } => {
                let mut xids = self.core.in_flight_xids();
                let truncated = xids.len() > IN_FLIGHT_LISTED_MAX;
                xids.truncate(IN_FLIGHT_LISTED_MAX);
                reply.send(&Reply::InFlight {
                    request_id,
                    xids,
                    truncated,
                });
            }
            Request::Timeouts { request_id } => {
                let mut phases = self.timeouts.report(&self.directory.participants);
                for phase in &mut phases {
                    phase.basis = self.directory.name_addresses(&phase.basis);
                }
                let report = TimeoutsReport {
                    role: "coordinator".into(),
                    phases,
                };
                reply.send(&Reply::Timeouts { request_id, report });
            }
            Request::Stats { request_id } => {
                let stats = self
                    .log
                    .server_stats("coordinator", self.outbox.network().stats());
                reply.send(&Reply::Stats { request_id, stats });
            }
            other @ (Request::Accounts { .. } | Request::BranchState { .. }) => reply.error(
                other.request_id(),
                format!(
                    "{} is a participant request, and this is the coordinator; ask a participant",
                    other.kind()
                ),
            ),
        }
    }

    fn begin(
        &mut self,
        request_id: u64,
        branches: Vec<BranchRequest>,
        prepare_timeout_ms: Option<u64>,
        reply: &ReplyTx,
    ) -> Result<(), String> {
        if branches.is_empty() {
            return Err("a transaction needs at least one branch".into());
        }
        let branches = resolve_branches(&self.directory, branches)?;
        if self.core.in_flight() >= self.transactions_in_flight_max {
            return Err(format!(
                "too many transactions in flight (limit {}); retry later",
                self.transactions_in_flight_max
            ));
        }
        let xid = self.new_xid();
        let participants: Vec<PeerAddr> = branches.iter().map(|(p, _)| p.clone()).collect();
        // Largest measured timeout over the participants, or the client's.
        let timeouts = self.timeouts.begin(xid, &participants, prepare_timeout_ms);
        let timeout_ms = timeouts.prepare.timeout_ms;
        if let Err(e) = self.core.begin_with_resend(
            self.clock.now(),
            xid,
            branches,
            timeout_ms,
            timeouts.resend.timeout_ms,
        ) {
            self.timeouts.finish(xid);
            return Err(e.to_string());
        }
        tracing::debug!(
            %xid,
            request_id,
            timeout_ms,
            resend_ms = timeouts.resend.timeout_ms,
            "transaction begun: {}",
            timeouts.prepare
        );
        reply.send(&Reply::Begun { request_id, xid });
        self.waiting.insert(
            xid,
            Waiter {
                reply: reply.clone(),
                request_id,
                participants,
            },
        );
        Ok(())
    }

    fn new_xid(&self) -> Xid {
        loop {
            let xid = Xid(rand::random::<u128>());
            if xid.0 != 0 && !self.waiting.contains_key(&xid) && !self.recent.contains(xid) {
                return xid;
            }
        }
    }

    fn drain_actions(&mut self) {
        let actions: Vec<CoordinatorAction> = self.core.drain_actions().collect();
        let now = self.clock.now();
        for action in actions {
            match action {
                CoordinatorAction::Persist { record, durability } => {
                    match &record {
                        CoordinatorRecord::Decision { .. } => {
                            failpoint::hit(failpoint::COORDINATOR_AFTER_BEGIN)
                        }
                        CoordinatorRecord::End { .. }
                            if failpoint::is_armed(failpoint::COORDINATOR_AFTER_END) =>
                        {
                            self.log.fail_after_write(failpoint::COORDINATOR_AFTER_END)
                        }
                        _ => {}
                    }
                    self.log.push(encode(&record), durability);
                }
                CoordinatorAction::Send { to, message } => {
                    if matches!(message.body, Body::Decision(Decision::Commit)) {
                        failpoint::hit(failpoint::COORDINATOR_AFTER_DECISION_DURABLE);
                    }
                    self.timeouts.on_send(now, &to, &message);
                    self.outbox.send(&to, message);
                }
                CoordinatorAction::SetTimer { xid, at } => self.timers.set(xid, at),
                CoordinatorAction::Outcome { xid, outcome } => self.on_outcome(xid, outcome),
                CoordinatorAction::Notice(notice) => self.on_notice(notice),
            }
        }
    }

    fn on_outcome(&mut self, xid: Xid, outcome: TxnOutcome) {
        let waiter = self.waiting.remove(&xid);
        let outcome = match outcome {
            TxnOutcome::Committed => Outcome::Committed,
            TxnOutcome::Aborted { reason } => Outcome::Aborted {
                reason: self.directory.name_addresses(&reason),
            },
        };
        let participants = waiter
            .as_ref()
            .map(|w| w.participants.clone())
            .unwrap_or_default();
        let (decision, reason) = match &outcome {
            Outcome::Committed => (Decision::Commit, None),
            Outcome::Aborted { reason } => (Decision::Abort, Some(reason.clone())),
        };
        self.recent.insert(
            xid,
            RecentTxn {
                decision,
                reason,
                participants,
                ended: false,
            },
        );
        if let Some(waiter) = waiter {
            waiter.reply.send(&Reply::Outcome {
                request_id: waiter.request_id,
                xid,
                outcome,
            });
        }
    }

    fn on_notice(&mut self, notice: CoordinatorNotice) {
        match notice {
            CoordinatorNotice::TimeoutFired {
                xid,
                phase,
                timeout_ms,
                waiting_for,
            } => {
                // The estimate that set the timeout, and backoff for the
                // participants that did not answer in time.
                let basis = if phase.starts_with("WAIT") {
                    self.timeouts.prepare_fired(xid, &waiting_for)
                } else {
                    self.timeouts.resend_fired(xid, &waiting_for)
                };
                let basis = basis.unwrap_or_else(|| {
                    format!("{timeout_ms} ms (configured: recovered transaction)")
                });
                let basis = self.directory.name_addresses(&basis);
                let waiting_for: Vec<String> = waiting_for
                    .iter()
                    .map(|a| self.directory.display_name(a))
                    .collect();
                tracing::info!(
                    %xid,
                    phase,
                    timeout_ms,
                    waiting_for = %waiting_for.join(", "),
                    "timeout fired in {phase} after {timeout_ms} ms: {basis}"
                );
            }
            CoordinatorNotice::Decided {
                xid,
                decision,
                reason,
            } => {
                if decision == Decision::Abort {
                    // Presumed abort: nothing more to wait for or measure.
                    self.timeouts.finish(xid);
                }
                let reason = reason.map(|r| self.directory.name_addresses(&r));
                let reason = reason.as_deref().unwrap_or("");
                if self.recovering {
                    tracing::info!(%xid, ?decision, "recovery decided {decision:?}: {reason}");
                } else {
                    tracing::debug!(%xid, ?decision, reason, "decided");
                }
            }
            CoordinatorNotice::Ended { xid } => {
                self.timeouts.finish(xid);
                self.recent.mark_ended(xid);
                tracing::debug!(%xid, "ended: every participant acknowledged COMMIT");
            }
            CoordinatorNotice::Ignored {
                xid,
                kind,
                from,
                why,
            } => tracing::debug!(%xid, kind, %from, "message ignored: {why}"),
            CoordinatorNotice::Recovered {
                epoch,
                committing,
                aborted,
            } => tracing::info!(
                epoch,
                committing,
                aborted,
                "recovery: {committing} committed transactions to finish (COMMIT re-sent), \
                 {aborted} undecided transactions aborted (presumed abort)"
            ),
        }
    }

    fn status(&self, xid: Xid) -> CoordinatorStatus {
        let now = self.clock.now();
        if let Some(status) = self.core.status(now, xid) {
            let state = match status.state {
                "WAIT" => CoordinatorState::Wait,
                s if s.contains("forcing") => CoordinatorState::Committing,
                _ => CoordinatorState::CommittedWaitingForAcks,
            };
            return CoordinatorStatus {
                xid,
                state,
                detail: format!(
                    "in flight for {} ms; {} resends of the decision",
                    status.age_ms, status.resends
                ),
                branches: status
                    .branches
                    .iter()
                    .map(|b| BranchView {
                        name: self.directory.display_name(&b.participant),
                        addr: b.participant.clone(),
                        voted_ready: Some(b.voted_ready),
                        acked: Some(b.acked),
                    })
                    .collect(),
            };
        }
        if let Some(txn) = self.recent.get(xid) {
            let (state, detail) = match (txn.decision, txn.ended) {
                (Decision::Commit, true) => (
                    CoordinatorState::Committed,
                    "every participant acknowledged".to_string(),
                ),
                (Decision::Commit, false) => (
                    CoordinatorState::CommittedWaitingForAcks,
                    "decision durable".to_string(),
                ),
                (Decision::Abort, _) => (
                    CoordinatorState::Aborted,
                    txn.reason.clone().unwrap_or_default(),
                ),
            };
            return CoordinatorStatus {
                xid,
                state,
                detail,
                branches: txn
                    .participants
                    .iter()
                    .map(|a| self.branch_view(a))
                    .collect(),
            };
        }
        CoordinatorStatus {
            xid,
            state: CoordinatorState::NoRecord,
            detail: "no record of this xid: if it ever existed it is ABORTED (presumed abort)"
                .into(),
            branches: self
                .directory
                .participants
                .iter()
                .map(|(_, a)| self.branch_view(a))
                .collect(),
        }
    }

    fn branch_view(&self, addr: &PeerAddr) -> BranchView {
        BranchView {
            name: self.directory.display_name(addr),
            addr: addr.clone(),
            voted_ready: None,
            acked: None,
        }
    }
}

/// Participants by name for humans, by address inside the protocol.
struct Directory {
    participants: Vec<(String, PeerAddr)>,
    by_name: HashMap<String, PeerAddr>,
    by_addr: HashMap<PeerAddr, String>,
}

impl Directory {
    fn new(participants: &[(String, PeerAddr)]) -> Directory {
        Directory {
            participants: participants.to_vec(),
            by_name: participants.iter().cloned().collect(),
            by_addr: participants
                .iter()
                .map(|(n, a)| (a.clone(), n.clone()))
                .collect(),
        }
    }

    /// A participant's address from its name (or its address).
    fn resolve(&self, participant: &str) -> Result<PeerAddr, String> {
        if let Some(addr) = self.by_name.get(participant) {
            return Ok(addr.clone());
        }
        if self.by_addr.contains_key(participant) {
            return Ok(participant.to_string());
        }
        Err(format!(
            "unknown participant {participant} (known: {})",
            self.participants
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// "name (addr)" for logs and status; the bare address if unnamed.
    fn display_name(&self, addr: &PeerAddr) -> String {
        match self.by_addr.get(addr) {
            Some(name) => format!("{name} ({addr})"),
            None => addr.clone(),
        }
    }

    /// Replace participant addresses in a core message with "name (addr)".
    fn name_addresses(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 16);
        let mut token = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c == ' ' || c == ',' {
                match self.by_addr.get(&token) {
                    Some(name) => out.push_str(&format!("{name} ({token})")),
                    None => out.push_str(&token),
                }
                token.clear();
                out.push(c);
            } else {
                token.push(c);
            }
        }
        out.pop(); // the sentinel space
        out
    }
}

/// Names (or addresses) to protocol addresses, merging branches that
/// name the same participant (the core takes one branch per
/// participant).
fn resolve_branches(
    directory: &Directory,
    branches: Vec<BranchRequest>,
) -> Result<Vec<(PeerAddr, Vec<u8>)>, String> {
    let mut resolved: Vec<(PeerAddr, Vec<Vec<u8>>)> = Vec::new();
    for branch in branches {
        let addr = directory.resolve(&branch.participant)?;
        match resolved.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, works)) => works.push(branch.work),
            None => resolved.push((addr, vec![branch.work])),
        }
    }
    resolved
        .into_iter()
        .map(|(addr, mut works)| {
            if works.len() == 1 {
                return Ok((addr, works.pop().unwrap_or_default()));
            }
            // Several branches for one participant: only key-value work
            // has a known way to merge.
            let mut merged = KvWork::default();
            for work in &works {
                let work = decode_kv_work(work).map_err(|e| {
                    format!(
                        "participant {} is named by several branches and their work cannot \
                         be merged (not key-value work: {e}); send one branch per participant",
                        directory.display_name(&addr)
                    )
                })?;
                merged.ops.extend(work.ops);
                merged.memo.extend(work.memo);
            }
            Ok((addr, encode_work_with_memo(&merged.ops, &merged.memo)))
        })
        .collect()
}

/// Outcome of a finished (or deciding) transaction, kept for `status`.
#[derive(Clone, Debug)]
struct RecentTxn {
    decision: Decision,
    reason: Option<String>,
    participants: Vec<PeerAddr>,
    ended: bool,
}

/// A bounded memory of recent outcomes, oldest forgotten first. Filled
/// from the log at start-up so that `status` survives restarts.
struct RecentOutcomes {
    txns: HashMap<Xid, RecentTxn>,
    order: VecDeque<Xid>,
    max: usize,
}

impl RecentOutcomes {
    fn from_log(records: &[CoordinatorRecord], max: usize) -> RecentOutcomes {
        let mut recent = RecentOutcomes {
            txns: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        };
        let mut begun: HashMap<Xid, Vec<PeerAddr>> = HashMap::new();
        for record in records {
            match record {
                CoordinatorRecord::Epoch { .. } => {}
                CoordinatorRecord::Begin { xid, participants } => {
                    begun.insert(*xid, participants.clone());
                }
                CoordinatorRecord::Decision {
                    xid,
                    decision,
                    participants,
                } => {
                    begun.remove(xid);
                    recent.insert(
                        *xid,
                        RecentTxn {
                            decision: *decision,
                            reason: (*decision == Decision::Abort)
                                .then(|| "aborted before the coordinator's last restart".into()),
                            participants: participants.clone(),
                            ended: false,
                        },
                    );
                }
                CoordinatorRecord::End { xid } => recent.mark_ended(*xid),
            }
        }
        // Begun and never decided: recovery aborts these now.
        for (xid, participants) in begun {
            recent.insert(
                xid,
                RecentTxn {
                    decision: Decision::Abort,
                    reason: Some("coordinator restarted before deciding (presumed abort)".into()),
                    participants,
                    ended: false,
                },
            );
        }
        recent
    }

    fn insert(&mut self, xid: Xid, txn: RecentTxn) {
        if self.txns.insert(xid, txn).is_none() {
            self.order.push_back(xid);
            while self.order.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.txns.remove(&old);
                }
            }
        }
    }

    fn mark_ended(&mut self, xid: Xid) {
        if let Some(txn) = self.txns.get_mut(&xid) {
            txn.ended = true;
        }
    }

    fn get(&self, xid: Xid) -> Option<&RecentTxn> {
        self.txns.get(&xid)
    }

    fn contains(&self, xid: Xid) -> bool {
        self.txns.contains_key(&xid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_participant::kv::{decode_work, encode_work, KvOp};

    fn directory() -> Directory {
        Directory::new(&[
            ("bank-a".into(), "127.0.0.1:7101".into()),
            ("bank-b".into(), "127.0.0.1:710".into()),
        ])
    }

    fn kv(account: &str, delta: i64) -> Vec<u8> {
        encode_work(&[KvOp {
            account: account.into(),
            delta,
        }])
    }

    fn branch(participant: &str, work: Vec<u8>) -> BranchRequest {
        BranchRequest {
            participant: participant.into(),
            work,
        }
    }

    #[test]
    fn unknown_participant_lists_the_known_ones() {
        let err = resolve_branches(&directory(), vec![branch("bank-z", kv("x", 1))]).unwrap_err();
        assert_eq!(err, "unknown participant bank-z (known: bank-a, bank-b)");
    }

    #[test]
    fn branches_for_one_participant_are_merged() {
        let resolved = resolve_branches(
            &directory(),
            vec![
                branch("bank-a", kv("x", -5)),
                branch("127.0.0.1:710", kv("y", 5)),
                branch("127.0.0.1:7101", kv("z", 1)),
            ],
        )
        .expect("resolves");
        assert_eq!(resolved.len(), 2);
        assert_eq!(resolved[0].0, "127.0.0.1:7101");
        let ops = decode_work(&resolved[0].1).expect("kv work");
        assert_eq!(
            ops.iter().map(|o| o.account.as_str()).collect::<Vec<_>>(),
            vec!["x", "z"]
        );
    }

    #[test]
    fn non_kv_work_for_one_participant_is_refused() {
        let err = resolve_branches(
            &directory(),
            vec![branch("bank-a", vec![0xff]), branch("bank-a", vec![0xff])],
        )
        .unwrap_err();
        assert!(err.contains("cannot be merged"), "{err}");
    }

    #[test]
    fn addresses_in_reasons_get_names_exactly() {
        let d = directory();
        assert_eq!(
            d.name_addresses("no vote within 300 ms from 127.0.0.1:7101, 127.0.0.1:710"),
            "no vote within 300 ms from bank-a (127.0.0.1:7101), bank-b (127.0.0.1:710)"
        );
        assert_eq!(
            d.name_addresses("participant 127.0.0.1:71011 voted ABORT"),
            "participant 127.0.0.1:71011 voted ABORT"
        );
    }

    #[test]
    fn recent_outcomes_come_from_the_log_and_stay_bounded() {
        let p = vec!["a".to_string()];
        let log = vec![
            CoordinatorRecord::Epoch { epoch: 1 },
            CoordinatorRecord::Begin {
                xid: Xid(1),
                participants: p.clone(),
            },
            CoordinatorRecord::Decision {
                xid: Xid(1),
                decision: Decision::Commit,
                participants: p.clone(),
            },
            CoordinatorRecord::End { xid: Xid(1) },
            CoordinatorRecord::Begin {
                xid: Xid(2),
                participants: p.clone(),
            },
        ];
        let mut recent = RecentOutcomes::from_log(&log, 2);
        let one = recent.get(Xid(1)).expect("xid 1");
        assert!(one.ended && one.decision == Decision::Commit);
        let two = recent.get(Xid(2)).expect("xid 2");
        assert_eq!(two.decision, Decision::Abort, "undecided = presumed abort");
        recent.insert(
            Xid(3),
            RecentTxn {
                decision: Decision::Commit,
                reason: None,
                participants: p,
                ended: false,
            },
        );
        assert!(!recent.contains(Xid(1)), "oldest forgotten past the bound");
        assert!(recent.contains(Xid(3)));
    }
}
