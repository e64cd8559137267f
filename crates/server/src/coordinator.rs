//! The coordinator server (`concord serve`): the tokio driver around the
//! pure [`CoordinatorNode`] (crate `concord-node`), which makes every
//! decision; this file only moves bytes, records and timers.
//!
//! Start-up order matters and is fixed here: open the log, decode every
//! record (one that does not decode stops start-up, naming it), run
//! [`Coordinator::recover`], start group commit, and only then bind the
//! listener. An INQUIRE answered before recovery could say ABORTED
//! (presumed abort) for a transaction whose COMMIT is in the log.
//!
//! The driver is one task that owns the node. Events arrive on channels
//! (peer messages and client requests from the connection tasks, durable
//! tickets from the log writer thread, timer firings from its own timer
//! table); after each event it drains the node's actions: records go into
//! one group-commit batch per loop iteration, messages to the [`Outbox`],
//! timers into the table, replies to the client connection they belong
//! to. Fail points (kill -9 tests) are hit here, at the IO they name.

use crate::conn::{self, Inbound, ReplyTx};
use crate::driver::{run_event_loop, Clock, DriverNode, LogEvent, LogWriter};
use crate::failpoint;
use crate::http_participant::HttpParticipants;
use crate::outbox::Outbox;
use crate::wire::Reply;
use anyhow::bail;
use concord_net::NetConfig;
use concord_node::{
    ClientId, CoordinatorEvent, CoordinatorNode, CoordinatorNodeAction, CoordinatorNodeConfig,
    ParticipantAsk, Timers,
};
use concord_proto::codec::encode;
use concord_proto::{Body, CoordinatorRecord, Decision, NodeId};
use concord_store::GroupCommit;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// The coordinator's `--name` when none is given.
pub const COORDINATOR_NAME_DEFAULT: &str = "coordinator";

/// Everything `concord serve` needs.
#[derive(Clone, Debug)]
pub struct CoordinatorServerConfig {
    /// Address to listen on. Unless `advertise` says otherwise it is also
    /// where participants reach this coordinator (`node.addr`, sent with
    /// every frame).
    pub listen: String,
    /// Address participants reach this coordinator at when it differs
    /// from `listen` (behind a proxy or NAT).
    pub advertise: Option<String>,
    /// Directory of the coordinator's durable log.
    pub data_dir: PathBuf,
    /// What the node layer decides with: participants, timeouts (see
    /// [`concord_node::timeouts`]), admission, retention, compaction.
    pub node: CoordinatorNodeConfig,
    pub listen_backlog: u32,
    /// Transport settings (frame bound, heartbeats, idle timeouts,
    /// reconnect backoff) for every connection of this process.
    pub net: NetConfig,
    /// False only for benchmark baselines (`--unsafe-no-fsync`): the log
    /// is then NOT durable.
    pub fsync: bool,
    /// The HTTP/JSON API (`--http-listen`); off when `None`.
    pub http: Option<crate::http::HttpConfig>,
    /// `--store postgres://…`: the log in that database (log name: the
    /// coordinator's `--name`) instead of a file in `data_dir`, held
    /// under a lease; several instances then share the work (see
    /// [`crate::instance`]).
    pub store: Option<String>,
    /// `--lease`: how long a lease on a log in the shared store lasts.
    pub lease: concord_node::lease::LeaseConfig,
}

impl CoordinatorServerConfig {
    /// A config with the defaults of `concord serve`.
    pub fn new(
        listen: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        participants: Vec<(NodeId, String)>,
    ) -> Self {
        let listen = listen.into();
        CoordinatorServerConfig {
            // Xids must differ across restarts and instances: seeded from
            // the OS here, from the run's seed in the simulator.
            node: CoordinatorNodeConfig::new(
                COORDINATOR_NAME_DEFAULT,
                listen.clone(),
                participants,
                rand::random(),
            ),
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            listen_backlog: 1024,
            net: NetConfig::default(),
            fsync: true,
            http: None,
            store: None,
            lease: concord_node::lease::LeaseConfig::default(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let addr = self.advertise.as_deref().unwrap_or(&self.listen);
        if self.node.addr != addr {
            bail!(
                "the coordinator's address {} differs from --listen/--advertise {addr}",
                self.node.addr,
            );
        }
        self.node.validate().map_err(anyhow::Error::msg)?;
        self.lease.validate().map_err(anyhow::Error::msg)?;
        crate::conn::validate_net_config(&self.net)
    }
}

/// Run a coordinator until SIGINT or SIGTERM.
pub async fn run_coordinator(config: CoordinatorServerConfig) -> anyhow::Result<()> {
    run_coordinator_until(config, crate::shutdown_signal()).await
}

/// Run a coordinator until `shutdown` completes, then stop accepting,
/// write out the log and return. Returns an error if start-up fails or the
/// log fails (fail-stop: restart to recover). With the log in PostgreSQL
/// (`--store`) the process is one instance of several that share the
/// store ([`crate::instance`]): a database that cannot be reached stops it
/// deciding but not the process, and it resumes by itself.
pub async fn run_coordinator_until(
    config: CoordinatorServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.store.is_some() {
        return crate::instance::run_instance_until(config, shutdown).await;
    }
    let mut shutdown = Box::pin(shutdown);
    serve_once(&config, None, &mut shutdown).await
}

/// While this instance runs no coordinator over its own log: serve its
/// ports, answering every request with `message` (the HTTP API: 503),
/// until `until` completes.
pub(crate) async fn serve_unavailable(
    config: &CoordinatorServerConfig,
    message: String,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (network, incoming) =
        conn::serve(&config.listen, config.listen_backlog, config.net.clone()).await?;
    let (mut incoming, http, _to_driver) = crate::http::attach(
        config.http.as_ref(),
        crate::http::Role::Coordinator,
        incoming,
        false,
        None,
    )
    .await?;
    tokio::pin!(until);
    loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(Inbound::Request { request, reply }) => reply.send(&Reply::Error {
                    request_id: request.request_id(),
                    message: message.clone(),
                }),
                Some(Inbound::Scrape(answer)) => {
                    let _ = answer.send(format!("# {message}\n# EOF\n"));
                }
                Some(_) => {} // peers retry; nothing is decided meanwhile
                None => break,
            },
            _ = &mut until => break,
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    conn::shutdown(&network).await;
    Ok(())
}

/// A life over a log held under a lease in the shared store.
pub(crate) struct Leased {
    /// The fencing token the lease came with: the log opens at it, and
    /// the protocol's epoch is at least it.
    pub epoch: u64,
    /// Transactions in flight, kept current for the lease keeper.
    pub in_flight: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The instance's other logs and instances: this life registers with
    /// it, and its HTTP API (the own log's) looks xids up through it.
    pub peers: std::sync::Arc<crate::peers::Peers>,
}

/// One life of the coordinator: open the log, recover, serve until
/// `shutdown` or a failure.
pub(crate) async fn serve_once(
    config: &CoordinatorServerConfig,
    leased: Option<Leased>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<()> {
    let clock = Clock::start();
    let (log, records, place): (Box<dyn concord_store::LogStore>, _, _) = match &config.store {
        None => {
            let (log, records) = crate::driver::open_log::<CoordinatorRecord>(
                "coordinator",
                "coordinator log record",
                &config.data_dir,
                config.fsync,
            )?;
            (
                Box::new(log),
                records,
                config.data_dir.display().to_string(),
            )
        }
        Some(dsn) => {
            if !config.data_dir.as_os_str().is_empty() {
                tracing::info!(
                    data_dir = %config.data_dir.display(),
                    "--data-dir is not used: the log is in PostgreSQL (--store)"
                );
            }
            // The instance loop acquired the log: it opens at that epoch.
            let Some(epoch) = leased.as_ref().map(|l| l.epoch) else {
                bail!("a log in PostgreSQL is opened only under a lease (crate::instance)");
            };
            let (log, records) = open_pg_log(dsn, &config.node.id, epoch).await?;
            let place = format!(
                "PostgreSQL, log {:?} (epoch {})",
                config.node.id,
                log.epoch()
            );
            (Box::new(log), records, place)
        }
    };
    let record_count = records.len();
    // Bound before recovery so that an adopted log's coordinator (port 0)
    // knows its address; nothing is read from the listener until the
    // driver runs, after recovery, so no INQUIRE is answered before it.
    let (network, incoming, bound) =
        conn::serve_at(&config.listen, config.listen_backlog, config.net.clone()).await?;
    let mut node_config = config.node.clone();
    if config.advertise.is_none() && config.listen.ends_with(":0") {
        node_config.addr = bound.to_string();
    }
    if let Some(leased) = &leased {
        node_config.epoch_floor = leased.epoch;
        node_config.shared_store = true;
    }
    // Every life mints from a seed of its own: a process that runs its
    // log again (the store came back, a lease was renewed too late) would
    // otherwise mint the xids of its earlier life again, and a branch of
    // an xid that already finished would meet a new transaction under it.
    node_config.xid_seed ^= rand::random::<u64>();
    let node = CoordinatorNode::recover(node_config, records, clock.now());
    tracing::info!(
        store = %place,
        records = record_count,
        epoch = node.epoch(),
        "coordinator log recovered"
    );
    // Unbounded on purpose: the log's writer thread must never block on
    // the driver. It holds at most one event per submission, and those are
    // bounded by the node's admission limit (see `GroupCommit`).
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let metrics = crate::metrics::CoordinatorMetrics::new();
    let log = LogWriter::new(
        GroupCommit::start_observed(log, "coordinator", Some(metrics.log.observer())),
        log_tx,
        config.fsync,
    );

    let has_http_participants = config
        .node
        .participants
        .iter()
        .any(|(_, addr)| concord_node::coordinator::is_http_url(addr));
    // Always a channel from inside: operator actions' answers come back
    // on it, and HTTP participants' if there are any.
    let peers = leased.as_ref().map(|l| l.peers.clone());
    let (incoming, http, to_driver) = crate::http::attach(
        config.http.as_ref(),
        crate::http::Role::Coordinator,
        incoming,
        true,
        peers.clone(),
    )
    .await?;
    // Until this life ends, other instances' lookups reach it.
    let _registered = peers
        .zip(to_driver.clone())
        .map(|(peers, tx)| peers.register(&config.node.id, tx));
    let http_participants = to_driver
        .clone()
        .filter(|_| has_http_participants)
        .map(|tx| HttpParticipants::new(tx, &config.node.id));
    tracing::info!(
        name = %config.node.id,
        listen = %config.listen,
        advertise = %node.addr(),
        participants = %config
            .node
            .participants
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(", "),
        "coordinator serving"
    );
    let incarnation = node.incarnation();
    let addr = node.addr().to_string();
    let mut driver = CoordinatorDriver {
        node,
        clock,
        timers: Timers::default(),
        log,
        outbox: Outbox::new(network.clone(), &config.node.id, &addr, incarnation),
        clients: HashMap::new(),
        next_client: 0,
        metrics,
        http_participants,
        to_driver,
        in_flight: leased.map(|l| l.in_flight),
    };
    let result = driver.run(incoming, log_rx, &mut *shutdown).await;
    // Graceful stop: the driver takes no more events; write out the log
    // (every record pushed so far becomes durable), then let the transport
    // flush queued replies and messages and close. Clients still waiting
    // for an outcome see their connection close: OutcomeUnknown with the
    // xid, which `status` answers after the restart.
    let waiting = driver.node.clients_waiting();
    if let Some(http) = http {
        // Its waiting handlers see their replies' channel close: 503 with
        // the xid, which the status URL answers after the restart.
        http.abort();
    }
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

struct CoordinatorDriver {
    node: CoordinatorNode,
    clock: Clock,
    timers: Timers,
    log: LogWriter,
    outbox: Outbox,
    /// Where the replies of each client request still expecting one go;
    /// removed with the request's final reply.
    clients: HashMap<ClientId, ReplyTx>,
    next_client: u64,
    metrics: crate::metrics::CoordinatorMetrics,
    /// The transport to HTTP participants, if any is configured.
    http_participants: Option<HttpParticipants>,
    /// Events from inside the process (answers to operator actions).
    to_driver: Option<mpsc::Sender<Inbound>>,
    /// Transactions in flight, for the lease keeper (shared store only).
    in_flight: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl DriverNode for CoordinatorDriver {
    const ROLE: &'static str = "coordinator";

    fn on_durable(&mut self, tickets: Vec<concord_proto::PersistTicket>) {
        let now = self.clock.now();
        for ticket in tickets {
            self.node.on_durable(now, ticket);
            self.drain_actions();
        }
    }

    fn on_timers_due(&mut self) {
        let now = self.clock.now();
        for key in self.timers.pop_due(now) {
            self.node.on_timer(now, key);
            self.drain_actions();
        }
    }

    fn on_compacted(&mut self) {
        self.node.on_compacted();
        tracing::debug!("coordinator log compacted");
        self.drain_actions();
    }

    fn on_inbound(&mut self, event: Inbound) {
        let now = self.clock.now();
        match event {
            Inbound::Peer(envelope) => self.node.on_peer(now, envelope),
            Inbound::Request { mut request, reply } => {
                let client = ClientId(self.next_client);
                self.next_client += 1;
                self.clients.insert(client, reply);
                if let concord_api::Request::Operator { action, .. } = &mut request {
                    // When, by this server's clock, whatever the client said.
                    action.at_unix_ms = unix_ms();
                }
                self.node.on_request(now, client, request);
            }
            Inbound::ParticipantAnswer { id, answer } => {
                self.node.on_participant_answer(now, id, answer)
            }
            Inbound::Scrape(answer) => {
                let snapshot = crate::metrics::CoordinatorSnapshot {
                    latency: crate::metrics::PhaseHistograms::of(self.node.latency_histograms()),
                    counters: self.node.counters(),
                    in_flight: self.node.in_flight(),
                    clients_waiting: self.node.clients_waiting(),
                    needs_attention: self.node.needs_attention(),
                    log: self.log.log_stats(),
                };
                let _ = answer.send(self.metrics.render(&snapshot));
            }
            Inbound::DeliveryFailed(failure) => {
                tracing::debug!(
                    xid = %failure.xid,
                    participant = %failure.to,
                    kind = failure.kind,
                    "HTTP participant call failed: {}",
                    failure.error
                );
                self.node.on_delivery_failed(
                    now,
                    &failure.to,
                    failure.xid,
                    failure.kind,
                    &failure.error,
                )
            }
            // Only a PostgreSQL participant runs database commands.
            Inbound::PgDone { .. } => {}
        }
        self.drain_actions();
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
            self.node.in_flight()
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
        run_event_loop(self, inbound, log_events, shutdown).await
    }

    /// Carry out the node's actions, in order.
    fn drain_actions(&mut self) {
        if let Some(gauge) = &self.in_flight {
            gauge.store(
                self.node.in_flight() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let actions: Vec<CoordinatorNodeAction> = self.node.drain_actions().collect();
        for action in actions {
            match action {
                CoordinatorNodeAction::Persist { record, durability } => {
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
                CoordinatorNodeAction::Send {
                    to,
                    addr,
                    message,
                    peers,
                } => {
                    if matches!(message.body, Body::Decision(Decision::Commit)) {
                        failpoint::hit(failpoint::COORDINATOR_AFTER_DECISION_DURABLE);
                    }
                    match &self.http_participants {
                        Some(http) if concord_node::coordinator::is_http_url(&addr) => {
                            http.send(&to, &addr, &message)
                        }
                        _ => self.outbox.send(&to, &addr, &message, &peers),
                    }
                }
                // An HTTP participant never moves and takes no greetings.
                CoordinatorNodeAction::Greet { addr, .. }
                    if concord_node::coordinator::is_http_url(&addr) => {}
                CoordinatorNodeAction::Greet {
                    to,
                    addr,
                    greeting,
                    peers,
                } => self.outbox.greet(&to, &addr, greeting, &peers),
                CoordinatorNodeAction::SetTimer { key, at } => self.timers.set(key, at),
                CoordinatorNodeAction::Reply { client, reply } => self.reply(client, &reply),
                CoordinatorNodeAction::Stats { client, request_id } => {
                    let stats = self
                        .log
                        .server_stats("coordinator", self.outbox.network().stats());
                    self.reply(client, &Reply::Stats { request_id, stats });
                }
                CoordinatorNodeAction::Compact { records } => self
                    .log
                    .compact(Box::new(move || records.iter().map(encode).collect())),
                CoordinatorNodeAction::AskParticipant { id, to, addr, ask } => {
                    let Some(tx) = self.to_driver.clone() else {
                        let answer = Err("this coordinator cannot ask participants".to_string());
                        self.node
                            .on_participant_answer(self.clock.now(), id, answer);
                        continue;
                    };
                    tokio::spawn(async move {
                        let answer = ask_participant(&to, &addr, ask).await;
                        let _ = tx.send(Inbound::ParticipantAnswer { id, answer }).await;
                    });
                }
                CoordinatorNodeAction::Event(event) => {
                    self.metrics.on_event(&event);
                    log_event(event)
                }
            }
        }
    }

    fn reply(&mut self, client: ClientId, reply: &Reply) {
        let sender = if reply.is_final() {
            self.clients.remove(&client)
        } else {
            self.clients.get(&client).cloned()
        };
        match sender {
            Some(sender) => sender.send(reply),
            None => tracing::debug!(?client, "reply for a client request no longer tracked"),
        }
    }
}

/// How long a participant has to answer (a heuristic decision waits for
/// a forced write and the resource).
const PARTICIPANT_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Ask participant `to` at `addr` over its request port: its reply, or
/// why there is none.
async fn ask_participant(to: &str, addr: &str, ask: ParticipantAsk) -> Result<Reply, String> {
    let (question, xid) = match &ask {
        ParticipantAsk::Heuristic { xid, .. } => ("a heuristic decision", Some(*xid)),
        ParticipantAsk::InDoubt => ("its branches in doubt", None),
    };
    let call = async {
        let client = concord_client::Client::connect(addr).await?;
        match ask {
            ParticipantAsk::Heuristic {
                xid,
                decision,
                audit,
            } => client.heuristic(xid, decision, audit).await,
            ParticipantAsk::InDoubt => client.in_doubt().await,
        }
    };
    match tokio::time::timeout(PARTICIPANT_ANSWER_WAIT, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{to} could not be asked for {question}: {e}")),
        Err(_) => Err(format!(
            "{to} did not answer within {} s about {question}{}",
            PARTICIPANT_ANSWER_WAIT.as_secs(),
            match xid {
                Some(xid) => format!(
                    ": whether it carried it out is unknown; ask it with `concord status \
                     --participant {addr} {xid}`"
                ),
                None => String::new(),
            }
        )),
    }
}

/// Open the coordinator's log `name` in the PostgreSQL database at `dsn`,
/// held under a lease at `epoch` (see `concord_store::PgLog::open_leased`),
/// and decode its records.
/// The `postgres` client runs its own runtime, so it is opened on a
/// thread of its own, outside this one.
async fn open_pg_log(
    dsn: &str,
    name: &str,
    epoch: u64,
) -> anyhow::Result<(concord_store::PgLog, Vec<CoordinatorRecord>)> {
    let (dsn, owned) = (dsn.to_string(), name.to_string());
    let opened = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || concord_store::PgLog::open_leased(&dsn, &owned, epoch))
            .join()
            .map_err(|_| anyhow::anyhow!("the thread opening the PostgreSQL log panicked"))
    })
    .await??;
    let (log, raw) = opened?;
    let mut records = Vec::with_capacity(raw.len());
    for (index, bytes) in raw.iter().enumerate() {
        let record: CoordinatorRecord =
            concord_proto::codec::decode("coordinator log record", bytes).map_err(|e| {
                anyhow::anyhow!(
                    "coordinator log {name:?} in PostgreSQL: record #{index} ({} bytes) does not \
                     decode: {e}; refusing to start rather than lose it",
                    bytes.len()
                )
            })?;
        records.push(record);
    }
    Ok((log, records))
}

/// Milliseconds since the Unix epoch by this machine's clock (0 if the
/// clock is before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The log line of each node event.
fn log_event(event: CoordinatorEvent) {
    match event {
        CoordinatorEvent::Directory(event) => crate::driver::log_directory_event(event),
        CoordinatorEvent::Begun {
            xid,
            request_id,
            timeout_ms,
            resend_ms,
            prepare,
        } => tracing::debug!(
            %xid,
            request_id,
            timeout_ms,
            resend_ms,
            "transaction begun: {prepare}"
        ),
        CoordinatorEvent::BeginRefused {
            request_id,
            reason,
            busy,
        } => tracing::debug!(request_id, busy, "begin refused: {reason}"),
        CoordinatorEvent::TimeoutFired {
            xid,
            phase,
            timeout_ms,
            waiting_for,
            basis,
        } => tracing::info!(
            %xid,
            phase,
            timeout_ms,
            waiting_for = %waiting_for.join(", "),
            "timeout fired in {phase} after {timeout_ms} ms: {basis}"
        ),
        CoordinatorEvent::Decided {
            xid,
            decision,
            reason,
            in_recovery,
        } => {
            let reason = reason.as_deref().unwrap_or("");
            if in_recovery {
                tracing::info!(%xid, ?decision, "recovery decided {decision:?}: {reason}");
            } else {
                tracing::debug!(%xid, ?decision, reason, "decided");
            }
        }
        CoordinatorEvent::Ended { xid } => {
            tracing::debug!(%xid, "ended: every participant acknowledged COMMIT")
        }
        CoordinatorEvent::Ignored {
            xid,
            kind,
            from,
            why,
        } => tracing::debug!(%xid, kind, %from, "message ignored: {why}"),
        CoordinatorEvent::Recovered {
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
        CoordinatorEvent::Compacting { records } => {
            tracing::info!(
                records,
                "compacting the coordinator log to {records} records"
            )
        }
        CoordinatorEvent::Opened { xid, lifetime_ms } => {
            tracing::debug!(%xid, lifetime_ms, "open-ended transaction begun")
        }
        CoordinatorEvent::NeedsAttention {
            xid,
            participant,
            attempts,
            last_error,
            pending_ms,
        } => tracing::warn!(
            %xid,
            %participant,
            attempts,
            last_error = last_error.as_deref().unwrap_or("none reported"),
            pending_ms,
            "needs attention: {participant} has not acknowledged COMMIT of {xid} after \
             {attempts} attempts over {pending_ms} ms; still re-sending (nothing is given up); \
             `concord status {xid}` shows it"
        ),
        CoordinatorEvent::AttentionCleared {
            xid,
            participant,
            attempts,
        } => tracing::info!(
            %xid,
            %participant,
            attempts,
            "attention cleared: {participant} acknowledged COMMIT of {xid} after {attempts} attempts"
        ),
        CoordinatorEvent::OperatorAction { entry } => {
            let result = entry.result.as_ref();
            tracing::warn!(
                xid = %entry.xid,
                seq = entry.seq,
                operator = %entry.operator,
                reason = %entry.reason,
                ok = result.is_some_and(|r| r.ok),
                "operator action #{} by {}: {} of {}: {}",
                entry.seq,
                entry.operator,
                entry.action.describe(),
                entry.xid,
                result.map_or("no result", |r| r.detail.as_str())
            )
        }
        CoordinatorEvent::OperatorRefused {
            xid,
            action,
            operator,
            why,
        } => tracing::info!(%xid, %operator, "operator action refused ({action}): {why}"),
        CoordinatorEvent::OutcomeUnknown { xid, participant } => tracing::warn!(
            %xid,
            %participant,
            "one-phase commit: {participant} was asked too late and no longer knows whether it \
             committed (it never got the request, or committed and forgot); nothing is held \
             anywhere; ask {participant} with `concord status --participant`"
        ),
    }
}
