//! The participant server (`concord participant`): the tokio driver around
//! the pure [`ParticipantServerNode`] (crate `concord-node`) with the
//! built-in key-value resource; this file only moves bytes, records and
//! timers.
//!
//! Start-up: open the log, decode every record (one that does not decode
//! stops start-up, naming it), write the seed record (forced) if the log has
//! none and seeding was asked for, rebuild the balances with
//! [`KvStore::replay`], run [`ParticipantServerNode::recover`] (in-doubt branches
//! take their locks back and inquire at once), start group commit, and only
//! then bind the listener.
//!
//! The participant is known by its `--name`; `--listen` (or `--advertise`)
//! is only where it is now, sent with every frame. Before anything is
//! sent, a `Started` record (this life's incarnation and address) is
//! forced. Replies to peer messages go to the sender's id, at the address
//! the node's directory has for it, through the [`Outbox`], never back on the
//! connection the message came in on.

use crate::conn::{self, Inbound};
use crate::driver::{run_event_loop, Clock, DriverNode, LogEvent, LogWriter};
use crate::failpoint;
use crate::outbox::Outbox;
use crate::wire::Reply;
use anyhow::{anyhow, bail, Context};
use concord_net::NetConfig;
use concord_node::{
    ClientId, ParticipantEvent, ParticipantNodeAction, ParticipantNodeConfig,
    ParticipantServerNode, Timers,
};
use concord_participant::kv::{seed_record, KvStore};
use concord_participant::resource::Accounts;
use concord_participant::Resource;
use concord_proto::codec::encode;
use concord_proto::{Body, Decision, ParticipantNotice, ParticipantRecord, Time, Vote};
use concord_store::{GroupCommit, LogStore};
use std::future::Future;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Everything `concord participant` needs.
#[derive(Clone, Debug)]
pub struct ParticipantServerConfig {
    /// Address to listen on; also where peers reach it unless `advertise`
    /// says otherwise.
    pub listen: String,
    /// Directory of the participant's durable log.
    pub data_dir: PathBuf,
    /// On first start (no seed record in the log): create `acct-0` …
    /// `acct-{N-1}`, each with the given balance. Ignored on restart.
    pub seed: Option<(usize, i64)>,
    /// What the node layer decides with: the inquire delay (see
    /// [`concord_node::timeouts`]), retention, compaction. Its `addr` is
    /// set from `advertise` (or `listen`) when the server starts.
    pub node: ParticipantNodeConfig,
    pub listen_backlog: u32,
    /// Protocol address when it differs from `listen` (behind a proxy or
    /// NAT); `None` means `listen`.
    pub advertise: Option<String>,
    /// Transport settings (frame bound, heartbeats, idle timeouts,
    /// reconnect backoff) for every connection of this process.
    pub net: NetConfig,
    /// False only for benchmark baselines (`--unsafe-no-fsync`): the log
    /// is then NOT durable.
    pub fsync: bool,
    /// How long a COMMITTED/ABORTED record (forced before the ACK) may
    /// wait for an fsync it can share with a READY record; 0 = at once.
    pub outcome_sync_delay_us: u64,
    /// Coordinators to tell where this participant is at start
    /// (`--coordinator NAME=ADDR`): for one that moved before it ever
    /// heard from them, and so would know no one to tell.
    pub coordinators: Vec<(String, String)>,
    /// `/metrics` and `/healthz` over HTTP (`--http-listen`); off when
    /// `None`.
    pub http: Option<crate::http::HttpConfig>,
}

/// Default of [`ParticipantServerConfig::outcome_sync_delay_us`]: short
/// against the coordinator's COMMIT resend delay (at least 10 ms), long
/// against the gap between two transactions of a busy client.
pub const OUTCOME_SYNC_DELAY_US_DEFAULT: u64 = 2000;

/// Most accounts `--seed-accounts` may create (an `accounts` reply must
/// fit in one frame of at most `wire::REPLY_BYTES_MAX`).
pub const SEED_ACCOUNTS_MAX: usize = 100_000;

impl ParticipantServerConfig {
    /// A config with the defaults of `concord participant`.
    /// `name` is the participant's id: the NAME the coordinator knows it
    /// by (`--participant NAME=ADDR`).
    pub fn new(
        name: impl Into<String>,
        listen: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        let listen = listen.into();
        ParticipantServerConfig {
            node: ParticipantNodeConfig::new(name, listen.clone()),
            listen,
            data_dir: data_dir.into(),
            seed: None,
            listen_backlog: 1024,
            advertise: None,
            net: NetConfig::default(),
            fsync: true,
            outcome_sync_delay_us: OUTCOME_SYNC_DELAY_US_DEFAULT,
            coordinators: Vec::new(),
            http: None,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.node.validate().map_err(anyhow::Error::msg)?;
        crate::conn::validate_net_config(&self.net)?;
        if let Some((count, balance)) = self.seed {
            if count > SEED_ACCOUNTS_MAX {
                bail!("--seed-accounts {count} is above the limit of {SEED_ACCOUNTS_MAX}");
            }
            if balance < 0 {
                bail!("--balance must not be negative, got {balance}");
            }
        }
        Ok(())
    }
}

/// Run a participant until SIGINT or SIGTERM.
pub async fn run_participant(config: ParticipantServerConfig) -> anyhow::Result<()> {
    run_participant_until(config, crate::shutdown_signal()).await
}

/// Run a participant until `shutdown` completes.
pub async fn run_participant_until(
    config: ParticipantServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let clock = Clock::start();
    let dir = config.data_dir.display().to_string();
    let (mut log, mut records) = crate::driver::open_log::<ParticipantRecord>(
        "participant",
        "participant log record",
        &config.data_dir,
        config.fsync,
    )?;
    let mut kv = KvStore::replay(&records)
        .map_err(|e| anyhow!("participant log in {dir} cannot be replayed: {e}"))?;
    if let Some((count, balance)) = config.seed {
        if kv.is_seeded() {
            tracing::info!("log already holds the seed accounts: --seed-accounts ignored");
        } else {
            let seed = seed_record(count, balance);
            let bytes = encode(&seed);
            log.append(&[&bytes])
                .and_then(|()| log.sync())
                .with_context(|| format!("cannot write the seed record to the log in {dir}"))?;
            records.push(seed);
            kv = KvStore::replay(&records)
                .map_err(|e| anyhow!("seed record cannot be replayed: {e}"))?;
            tracing::info!(
                accounts = count,
                balance,
                "seeded accounts acct-0 … acct-{}",
                count.saturating_sub(1)
            );
        }
    }
    serve_participant(
        &config,
        clock,
        log,
        records,
        kv,
        |_| NoResourceIo,
        false,
        shutdown,
    )
    .await
}

/// The resource side of a participant's driver: it starts what its
/// resource answers later and brings the answers back. The key-value
/// store answers at once and needs none of it ([`NoResourceIo`]); the
/// PostgreSQL resource runs its commands on a connection pool
/// (`crate::pg_participant`). Like the rest of the driver it only moves
/// data: what an answer means is the resource's business.
pub(crate) trait ResourceIo<R: Resource + Accounts> {
    /// After each event: start the resource's new work, log its notices.
    fn after_event(&mut self, node: &mut ParticipantServerNode<R>, now: Time) {
        let _ = (node, now);
    }
    /// The database answered command `id`.
    fn on_pg_done(
        &mut self,
        node: &mut ParticipantServerNode<R>,
        now: Time,
        id: u64,
        reply: concord_participant::pg::PgReply,
    ) {
        let _ = (node, now, id, reply);
        tracing::error!("a PostgreSQL answer reached a participant without PostgreSQL; dropped");
    }
    /// When `after_event` wants to run again with no event.
    fn next_due(&self, node: &ParticipantServerNode<R>) -> Option<Time> {
        let _ = node;
        None
    }
    /// The PostgreSQL findings for `/metrics`.
    fn prepared_report(
        &self,
        node: &ParticipantServerNode<R>,
    ) -> Option<concord_participant::pg::PreparedReport> {
        let _ = node;
        None
    }
}

/// For a resource that answers at once.
pub(crate) struct NoResourceIo;

impl<R: Resource + Accounts> ResourceIo<R> for NoResourceIo {}

/// Everything after the resource is rebuilt, for any resource: the start
/// record, recovery, group commit, the listeners, and the driver loop.
/// `local` also opens a channel into the driver (for the resource's IO
/// answers), handed to `make_io`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_participant<R, X>(
    config: &ParticipantServerConfig,
    clock: Clock,
    mut log: concord_store::FileLog,
    mut records: Vec<ParticipantRecord>,
    resource: R,
    make_io: impl FnOnce(Option<mpsc::Sender<Inbound>>) -> X,
    local: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    R: Resource + Accounts,
    X: ResourceIo<R>,
{
    let dir = config.data_dir.display().to_string();
    // A new life: forced before anything is sent (see `started_record`).
    let addr = config
        .advertise
        .clone()
        .unwrap_or_else(|| config.listen.clone());
    let started = concord_node::participant::started_record(&records, &addr);
    log.append(&[&encode(&started)])
        .and_then(|()| log.sync())
        .with_context(|| format!("cannot write the start record to the log in {dir}"))?;
    records.push(started);
    let record_count = records.len();
    let node_config = ParticipantNodeConfig {
        addr,
        ..config.node.clone()
    };
    let mut node =
        ParticipantServerNode::recover(node_config.clone(), records, resource, clock.now());
    for (id, at) in &config.coordinators {
        node.introduce(clock.now(), id.clone(), at);
    }
    tracing::info!(
        data_dir = %dir,
        records = record_count,
        in_doubt = node.inner().core().in_doubt().len(),
        "participant log recovered"
    );
    // Unbounded on purpose: the log's writer thread must never block on
    // the driver. It holds at most one event per submission, and those are
    // bounded by the node's admission limit (see `GroupCommit`).
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let metrics = crate::metrics::ParticipantMetrics::new();
    let log = LogWriter::new(
        GroupCommit::start_observed(Box::new(log), "participant", Some(metrics.log.observer())),
        log_tx,
        config.fsync,
    )
    .with_defer(std::time::Duration::from_micros(
        config.outcome_sync_delay_us,
    ));

    // Recovery is loaded (locks of in-doubt branches are held again): now
    // it is safe to take PREPAREs and answer INQUIREs.
    let (network, incoming) =
        conn::serve(&config.listen, config.listen_backlog, config.net.clone()).await?;
    let (incoming, http, local_tx) = crate::http::attach(
        config.http.as_ref(),
        crate::http::Role::Participant,
        incoming,
        local,
        None,
    )
    .await?;
    let io = make_io(local_tx);
    tracing::info!(
        name = %node_config.id,
        listen = %config.listen,
        advertise = %node_config.addr,
        "participant serving"
    );
    let incarnation = node.incarnation();
    let mut driver = ParticipantDriver {
        node,
        clock,
        timers: Timers::default(),
        log,
        outbox: Outbox::new(
            network.clone(),
            &node_config.id,
            &node_config.addr,
            incarnation,
        ),
        metrics,
        name: node_config.id.clone(),
        io,
        later: std::collections::HashMap::new(),
        next_client: 0,
    };
    let result = driver.run(incoming, log_rx, shutdown).await;
    if let Some(http) = http {
        http.abort();
    }
    // Graceful stop: write out the log, then let the transport flush queued
    // votes, ACKs and replies and close. READY branches stay in the log and
    // inquire again after the restart.
    driver.log.shutdown();
    conn::shutdown(&network).await;
    match &result {
        Ok(()) => tracing::info!("participant stopped"),
        Err(e) => tracing::error!("participant stopping: {e:#}"),
    }
    result
}

struct ParticipantDriver<R: Resource + Accounts, X: ResourceIo<R>> {
    node: ParticipantServerNode<R>,
    clock: Clock,
    timers: Timers,
    log: LogWriter,
    outbox: Outbox,
    metrics: crate::metrics::ParticipantMetrics,
    /// This participant's id (the label of its lock-hold metric).
    name: String,
    io: X,
    /// Requests answered later (a heuristic decision, once carried out),
    /// by the client id the node was given; others use `ClientId(0)` and
    /// are answered while their actions are drained.
    later: std::collections::HashMap<ClientId, conn::ReplyTx>,
    next_client: u64,
}

impl<R: Resource + Accounts, X: ResourceIo<R>> DriverNode for ParticipantDriver<R, X> {
    const ROLE: &'static str = "participant";

    fn on_durable(&mut self, tickets: Vec<concord_proto::PersistTicket>) {
        let now = self.clock.now();
        for ticket in tickets {
            self.node.on_durable(now, ticket);
            self.drain_actions(None);
        }
    }

    fn on_timers_due(&mut self) {
        let now = self.clock.now();
        for key in self.timers.pop_due(now) {
            self.node.on_timer(now, key);
            self.drain_actions(None);
        }
        if self.io.next_due(&self.node).is_some_and(|at| at <= now) {
            self.drain_actions(None);
        }
    }

    fn on_compacted(&mut self) {
        self.node.on_compacted();
        tracing::debug!("participant log compacted");
        self.drain_actions(None);
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Peer(envelope) => {
                self.node.on_peer(self.clock.now(), envelope);
                self.drain_actions(None);
            }
            Inbound::Request { request, reply }
                if matches!(request, concord_api::Request::Heuristic { .. }) =>
            {
                self.next_client += 1;
                let client = ClientId(self.next_client);
                self.later.insert(client, reply);
                self.node.on_request(self.clock.now(), client, request);
                self.drain_actions(None);
            }
            Inbound::Request { request, reply } => {
                // Other participant requests are answered at once: the
                // reply channel is only needed while the actions are
                // drained.
                self.node.on_request(self.clock.now(), ClientId(0), request);
                self.drain_actions(Some(&reply));
            }
            Inbound::Scrape(answer) => {
                let now = self.clock.now();
                let core = self.node.inner().core();
                let snapshot = crate::metrics::ParticipantSnapshot {
                    counters: self.node.counters(),
                    in_doubt: core.in_doubt().len(),
                    oldest_in_doubt_seconds: core
                        .oldest_in_doubt_since()
                        .map_or(0.0, |at| now.ms_since(at) as f64 / 1000.0),
                    lock_hold: crate::metrics::PhaseHistograms::of(vec![(
                        &self.name,
                        "ready_to_outcome",
                        self.node.lock_hold(),
                    )]),
                    log: self.log.log_stats(),
                    pg: self.io.prepared_report(&self.node),
                };
                let _ = answer.send(self.metrics.render(&snapshot));
            }
            // Only a coordinator calls HTTP participants and asks for
            // heuristic decisions.
            Inbound::DeliveryFailed(_) | Inbound::ParticipantAnswer { .. } => {}
            Inbound::PgDone { id, reply } => {
                self.io
                    .on_pg_done(&mut self.node, self.clock.now(), id, reply);
                self.drain_actions(None);
            }
        }
    }

    fn next_timer(&self) -> Option<tokio::time::Instant> {
        let due = match (self.timers.next_due(), self.io.next_due(&self.node)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        due.map(|at| self.clock.instant(at))
    }

    fn log(&mut self) -> &mut LogWriter {
        &mut self.log
    }

    fn on_shutdown(&self) {
        tracing::info!(
            in_doubt = self.node.inner().core().in_doubt().len(),
            "participant shutting down"
        );
    }
}

impl<R: Resource + Accounts, X: ResourceIo<R>> ParticipantDriver<R, X> {
    async fn run(
        &mut self,
        inbound: conn::Incoming,
        log_events: mpsc::UnboundedReceiver<LogEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Recovery's actions: INQUIRE timers for in-doubt branches.
        self.drain_actions(None);
        run_event_loop(self, inbound, log_events, shutdown).await
    }

    /// Carry out the node's actions, in order; replies go to `reply`.
    fn drain_actions(&mut self, reply: Option<&conn::ReplyTx>) {
        let actions: Vec<ParticipantNodeAction> = self.node.drain_actions().collect();
        for action in actions {
            match action {
                ParticipantNodeAction::Persist {
                    record,
                    durability,
                    deferrable,
                } => {
                    match &record {
                        ParticipantRecord::Ready { .. } | ParticipantRecord::OnePhase { .. } => {
                            failpoint::hit(failpoint::PARTICIPANT_BEFORE_READY_WRITE)
                        }
                        ParticipantRecord::Outcome {
                            decision: Decision::Commit,
                            ..
                        } => failpoint::hit(failpoint::PARTICIPANT_BEFORE_COMMIT_WRITE),
                        _ => {}
                    }
                    if deferrable {
                        self.log.push_deferrable(encode(&record), durability);
                    } else {
                        self.log.push(encode(&record), durability);
                    }
                }
                ParticipantNodeAction::Send {
                    to,
                    addr,
                    message,
                    peers,
                } => {
                    match message.body {
                        // A linear chain's member votes by passing the
                        // chain on; its COMMIT goes back as a decision.
                        Body::Vote(Vote::Ready) | Body::Chain { .. } => {
                            failpoint::hit(failpoint::PARTICIPANT_AFTER_READY_DURABLE)
                        }
                        Body::Ack | Body::Decision(Decision::Commit) => {
                            failpoint::hit(failpoint::PARTICIPANT_AFTER_COMMIT_DURABLE)
                        }
                        _ => {}
                    }
                    self.outbox.send(&to, &addr, &message, &peers);
                }
                ParticipantNodeAction::Greet { to, addr, greeting } => {
                    self.outbox.greet(&to, &addr, greeting, &[])
                }
                ParticipantNodeAction::SetTimer { key, at } => self.timers.set(key, at),
                ParticipantNodeAction::Reply { reply: r, client } => {
                    match self.later.remove(&client).as_ref().or(reply) {
                        Some(tx) => tx.send(&r),
                        None => tracing::error!("a reply without a request; dropped"),
                    }
                }
                ParticipantNodeAction::Stats { request_id, .. } => {
                    let stats = self
                        .log
                        .server_stats("participant", self.outbox.network().stats());
                    match reply {
                        Some(tx) => tx.send(&Reply::Stats { request_id, stats }),
                        None => tracing::error!("a reply without a request; dropped"),
                    }
                }
                ParticipantNodeAction::Compact { records } => self
                    .log
                    .compact(Box::new(move || records.iter().map(encode).collect())),
                ParticipantNodeAction::Event(event) => log_event(event),
            }
        }
        let now = self.clock.now();
        self.io.after_event(&mut self.node, now);
    }
}

/// The log line of each node event.
fn log_event(event: ParticipantEvent) {
    match event {
        ParticipantEvent::Directory(event) => crate::driver::log_directory_event(event),
        ParticipantEvent::InquireFired {
            xid,
            phase,
            timeout_ms,
            attempt,
            basis,
        } => tracing::info!(
            %xid,
            phase,
            timeout_ms,
            attempt,
            "timeout fired in {phase} after {timeout_ms} ms: sending INQUIRE \
             (attempt {attempt}); {basis}"
        ),
        ParticipantEvent::ChildrenSilent {
            xid,
            silent,
            timeout_ms,
            basis,
        } => tracing::info!(
            %xid,
            timeout_ms,
            "timeout fired in GATHERING after {timeout_ms} ms: no vote from {}; the subtree \
             aborts; {basis}",
            silent.join(", ")
        ),
        ParticipantEvent::Compacting { records } => {
            tracing::info!(
                records,
                "compacting the participant log to {records} records"
            )
        }
        ParticipantEvent::Heuristic {
            xid,
            decision,
            audit,
        } => tracing::warn!(
            %xid,
            ?decision,
            %audit,
            "operator's heuristic decision accepted: {decision:?} for in-doubt {xid} (audit \
             record {audit}); recording it, then carrying it out"
        ),
        ParticipantEvent::Core(notice) => log_notice(notice),
    }
}

/// The log line of each notice of the participant core.
fn log_notice(notice: ParticipantNotice) {
    match notice {
        ParticipantNotice::Outcome { xid, decision } => {
            tracing::debug!(%xid, ?decision, "branch finished")
        }
        ParticipantNotice::Ignored {
            xid,
            kind,
            from,
            why,
        } => tracing::debug!(%xid, kind, %from, "message ignored: {why}"),
        ParticipantNotice::HeuristicConflict {
            xid,
            heuristic,
            decided,
            from,
        } => tracing::error!(
            %xid,
            ?heuristic,
            ?decided,
            %from,
            "heuristic conflict: {from} says {decided:?} for {xid}, but an operator decided \
             {heuristic:?} here; the heuristic decision stands and the branches of {xid} now \
             disagree: mend the data by hand"
        ),
        ParticipantNotice::Violation { xid, detail } => {
            tracing::error!(%xid, "protocol violation by a peer (not acted upon): {detail}")
        }
        // The node turns these into InquireFired and timeout estimates.
        ParticipantNotice::TimeoutFired { .. }
        | ParticipantNotice::LatencySample { .. }
        | ParticipantNotice::ChildrenSilent { .. }
        | ParticipantNotice::ChildAborted { .. } => {}
        ParticipantNotice::ApplyFailed {
            xid,
            decision,
            attempt,
            error,
            retry_in_ms,
        } => tracing::warn!(
            %xid,
            ?decision,
            attempt,
            retry_in_ms,
            "the resource failed to carry out {decision:?} (attempt {attempt}): {error}; \
             the branch keeps its locks, trying again in {retry_in_ms} ms"
        ),
        ParticipantNotice::Recovered { in_doubt, finished } => tracing::info!(
            in_doubt,
            finished,
            "recovery: {in_doubt} branches in doubt (locks taken back, asking the coordinator), \
             {finished} finished branches remembered"
        ),
    }
}
