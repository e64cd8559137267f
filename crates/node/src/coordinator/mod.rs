//! The coordinator node: everything `concord serve` decides that is not IO.
//!
//! It owns the sans-IO [`Coordinator`] core and around it the directory,
//! the timeout policy (measured latency → each transaction's phase-1
//! timeout and first COMMIT resend delay), xid minting, branch merging,
//! admission limits, the clients waiting for an outcome, recent outcomes
//! for `status`, counters and typed events. Events go in (`on_request`,
//! `on_peer`, `on_timer`, `on_durable`, each with `now`), and
//! [`CoordinatorNodeAction`]s come out of `drain_actions`, in the order they
//! must be carried out.
//!
//! The tokio server and the simulator both drive exactly this type, so a
//! seed exercises the same timeout policy, minting and merging that ships.
//! It must never touch a socket, a file, the clock or an unseeded RNG.

mod operate;

use crate::attention::{AttentionChange, Deliveries};
use crate::compaction::{CompactionPolicy, COMPACT_AFTER_RECORDS_DEFAULT};
use crate::directory::{resolve_branches, Addr, Directory, DirectoryEvent, Learnt, Opened};
use crate::hello::{self, Greeting, Hellos, Welcomes, HELLO_ROUNDS_MAX};
use crate::idempotency;
use crate::listing;
use crate::open::{self, OpenTransactions};
use crate::operator::{self as operator_trail, Operators};
use crate::recent::{RecentOutcomes, RecentTxn};
use crate::timeline::Timelines;
use crate::timeouts::{CoordinatorTimeouts, PhaseSettings, TimeoutChoice, PREPARE_SAFETY_FACTOR};
use crate::xids::XidMinter;
use concord_api::{
    BranchRequest, BranchView, CoordinatorState, CoordinatorStatus, DeliveryView, ListFilter,
    Outcome, PeerEnvelope, PeerHint, Reply, Request, TimeoutsReport, TxnSummary,
    IN_FLIGHT_LISTED_MAX,
};
use concord_proto::mutant::{self, Mutant};
use concord_proto::{
    Body, Coordinator, CoordinatorAction, CoordinatorConfig, CoordinatorNotice, CoordinatorPhase,
    CoordinatorRecord, Decision, Durability, Epoch, Message, NodeId, PersistTicket, Shape, Time,
    TimerKey, TimerKind, TreeEntry, TxnOutcome, Vote, Xid,
};
use std::collections::{HashMap, HashSet};

/// The tree of a hierarchical begin: each branch's participant resolved
/// on its own (a tree names each participant once), with its parent.
/// Checked here only for what the core cannot see (the parent list's
/// length); the core checks the shape.
fn tree_of(
    directory: &Directory,
    branches: &[BranchRequest],
    parents: &[u32],
) -> Result<Vec<TreeEntry>, (String, bool)> {
    if !parents.is_empty() && parents.len() != branches.len() {
        let detail = format!(
            "the tree gives {} parents for {} branches",
            parents.len(),
            branches.len()
        );
        return Err((detail, false));
    }
    branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let node = directory.resolve(&b.participant).map_err(|e| (e, false))?;
            Ok(TreeEntry {
                node,
                parent: parents.get(i).copied().unwrap_or(0),
                work: b.work.clone(),
            })
        })
        .collect()
}

/// The driver's handle for one client request waiting for replies (a
/// connection and request in the server, a client index in the simulator).
/// The node only echoes it back in [`CoordinatorNodeAction::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Mixed into the xid seed for the resend jitter's generator, so the two
/// draw different sequences.
const JITTER_SEED: u64 = 0x6a69_7474_6572_0001;

/// Is `addr` an HTTP service's base URL (an HTTP participant) rather than
/// a concord node's address?
pub fn is_http_url(addr: &str) -> bool {
    addr.starts_with("http://") || addr.starts_with("https://")
}

/// A core phase as the state clients see.
fn state_of(phase: CoordinatorPhase) -> CoordinatorState {
    match phase {
        CoordinatorPhase::Wait => CoordinatorState::Wait,
        CoordinatorPhase::Committing => CoordinatorState::Committing,
        CoordinatorPhase::Committed => CoordinatorState::CommittedWaitingForAcks,
        CoordinatorPhase::Delegated => CoordinatorState::OnePhase,
    }
}

/// The configured participants that are HTTP services.
fn http_participants(participants: &[(NodeId, String)]) -> Vec<NodeId> {
    participants
        .iter()
        .filter(|(_, addr)| is_http_url(addr))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Settings of a coordinator node (the server's flags, or the simulator's
/// drawn configuration).
#[derive(Clone, Debug)]
pub struct CoordinatorNodeConfig {
    /// This coordinator's id (`--name`): how participants' READY records
    /// name it.
    pub id: NodeId,
    /// Where participants reach it (its advertised address): sent with
    /// every frame, so participants follow it if it moves.
    pub addr: String,
    /// Participants: `(id, address)`; the address is where to find the
    /// participant until it says otherwise.
    pub participants: Vec<(NodeId, String)>,
    /// Phase-1 timeout until `timeout_samples_min` samples of a
    /// participant exist, and the bounds of the measured one.
    pub prepare_timeout_ms: u64,
    pub prepare_timeout_ms_min: u64,
    pub prepare_timeout_ms_max: u64,
    /// First COMMIT resend delay until measured, its bounds; resends
    /// double up to `resend_ms_max` and never stop.
    pub resend_ms_initial: u64,
    pub resend_ms_min: u64,
    pub resend_ms_max: u64,
    pub timeout_samples_min: u64,
    /// Begin requests beyond this many transactions in flight are refused
    /// with a "busy, retry" error.
    pub transactions_in_flight_max: usize,
    /// Finished transactions remembered for `status`.
    pub recent_outcomes_max: usize,
    /// Seed of xid minting (from the OS in a server, from the run's seed in
    /// the simulator).
    pub xid_seed: u64,
    /// Compact the log once this many records were appended since the last
    /// compaction (and twice the last snapshot); `u64::MAX`: never.
    pub compact_after_records: u64,
    /// One-phase commit for single-branch transactions (`--no-one-phase`
    /// turns it off): see `CoordinatorConfig::one_phase`.
    pub one_phase: bool,
    /// A branch whose COMMIT is not acknowledged this long after it was
    /// first sent is flagged *needs attention* (`--attention-after`).
    pub attention_after_ms: u64,
    /// Transactions whose timeline is kept (the oldest finished are
    /// dropped first); 0: no timelines.
    pub timelines_max: usize,
    /// The operator token (`--operator-token-file`); `None`: no operator
    /// actions (read-only).
    pub operator_token: Option<String>,
    /// The lowest epoch this life may run at: with a shared store, the
    /// fencing token it granted (see `Coordinator::recover_at_least`);
    /// 0 with the embedded log.
    pub epoch_floor: u64,
    /// Several instances share this coordinator's store: an xid with no
    /// record here may be another instance's (status says so).
    pub shared_store: bool,
}

impl CoordinatorNodeConfig {
    /// The defaults of `concord serve`. `xid_seed` must differ between
    /// instances and restarts (the server draws it from the OS).
    pub fn new(
        id: impl Into<NodeId>,
        addr: impl Into<String>,
        participants: Vec<(NodeId, String)>,
        xid_seed: u64,
    ) -> CoordinatorNodeConfig {
        CoordinatorNodeConfig {
            id: id.into(),
            addr: addr.into(),
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
            xid_seed,
            compact_after_records: COMPACT_AFTER_RECORDS_DEFAULT,
            one_phase: true,
            attention_after_ms: crate::attention::ATTENTION_AFTER_MS_DEFAULT,
            timelines_max: crate::timeline::TIMELINES_MAX_DEFAULT,
            operator_token: None,
            epoch_floor: 0,
            shared_store: false,
        }
    }

    /// Refuse settings that contradict each other, naming the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.participants.is_empty() {
            return Err(
                "no participants configured: give at least one --participant NAME=ADDR or \
                 --http-participant NAME=URL"
                    .into(),
            );
        }
        if self.id.is_empty() {
            return Err("--name must not be empty".into());
        }
        for (i, (name, addr)) in self.participants.iter().enumerate() {
            if name.is_empty() || addr.is_empty() {
                return Err(format!(
                    "participant {i} has an empty name or address: use NAME=ADDR"
                ));
            }
            if let Some((other, _)) = self.participants[..i].iter().find(|(n, _)| n == name) {
                return Err(format!("participant name {other:?} is given twice"));
            }
            if let Some((other, _)) = self.participants[..i].iter().find(|(_, a)| a == addr) {
                return Err(format!(
                    "participants {other:?} and {name:?} have the same address {addr}"
                ));
            }
            if *addr == self.addr {
                return Err(format!(
                    "participant {name:?} has the coordinator's own address {addr}"
                ));
            }
            if *name == self.id {
                return Err(format!(
                    "participant {name:?} has the coordinator's own name (--name)"
                ));
            }
        }
        if self.prepare_timeout_ms == 0 || self.resend_ms_initial == 0 {
            return Err("timeouts must be at least 1 ms".into());
        }
        if self.resend_ms_max < self.resend_ms_initial {
            return Err(format!(
                "--resend-ms-max ({}) is below --resend-ms-initial ({})",
                self.resend_ms_max, self.resend_ms_initial
            ));
        }
        if self.prepare_timeout_ms_min == 0 || self.resend_ms_min == 0 {
            return Err(
                "--prepare-timeout-ms-min and --resend-ms-min must be at least 1 ms".into(),
            );
        }
        if self.prepare_timeout_ms_min > self.prepare_timeout_ms_max {
            return Err(format!(
                "--prepare-timeout-ms-min ({}) is above --prepare-timeout-ms-max ({})",
                self.prepare_timeout_ms_min, self.prepare_timeout_ms_max
            ));
        }
        if self.resend_ms_min > self.resend_ms_max {
            return Err(format!(
                "--resend-ms-min ({}) is above --resend-ms-max ({})",
                self.resend_ms_min, self.resend_ms_max
            ));
        }
        Ok(())
    }

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

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum CoordinatorNodeAction {
    /// Append `record`; for `Durability::Forced(t)` sync, then call
    /// `on_durable(t)`.
    Persist {
        record: CoordinatorRecord,
        durability: Durability,
    },
    /// Send `message` to node `to`, at `addr` (from the directory), in a
    /// frame that names this node and its address. `peers`: directory
    /// hints for the receiver (for a PREPARE, where the other participants
    /// are, so cooperative termination can reach them).
    Send {
        to: NodeId,
        addr: Addr,
        message: Message,
        peers: Vec<PeerHint>,
    },
    /// Send node `to` (at `addr`) a frame that only says where this node
    /// is now.
    Greet {
        to: NodeId,
        addr: String,
        greeting: Greeting,
        /// With a welcome: where the coordinator knows the participants
        /// are, so that two participants that both moved find each other
        /// through it (a linear chain's members ask one another).
        peers: Vec<PeerHint>,
    },
    /// Call `on_timer(key)` at `at` (or later); a stale firing is ignored.
    SetTimer { key: TimerKey, at: Time },
    /// Send `reply` to the client request `client`. A final reply
    /// ([`Reply::is_final`]) is the last one for that request.
    Reply { client: ClientId, reply: Reply },
    /// Answer `Request::Stats`: the counters are the driver's own (log and
    /// network), so the driver fills them in.
    Stats { client: ClientId, request_id: u64 },
    /// Replace the whole log with `records` (atomically, after every record
    /// asked for before this action is written), then call
    /// `on_compacted`. A crash during it must leave the old log or the new.
    Compact { records: Vec<CoordinatorRecord> },
    /// Send participant `to` (at `addr`, a concord node) the client
    /// request `ask` over its request port, then call
    /// `on_participant_answer(id, ..)` with its reply, or why it could
    /// not be asked (operator actions and views).
    AskParticipant {
        id: u64,
        to: NodeId,
        addr: String,
        ask: ParticipantAsk,
    },
    /// Something that happened, for logs, metrics and timelines.
    Event(CoordinatorEvent),
}

/// What the coordinator asks a participant directly (not a protocol
/// message): for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantAsk {
    /// Carry out an operator's heuristic decision (`Request::Heuristic`).
    Heuristic {
        xid: Xid,
        decision: Decision,
        audit: String,
    },
    /// Its branches in doubt (`Request::InDoubt`).
    InDoubt,
}

/// Typed events of the coordinator node. Names are already resolved
/// ("bank-a (127.0.0.1:7101)") so a log line needs no directory.
#[derive(Clone, Debug, PartialEq)]
pub enum CoordinatorEvent {
    Begun {
        xid: Xid,
        request_id: u64,
        timeout_ms: u64,
        resend_ms: u64,
        /// How the phase-1 timeout was computed. Kept as it is, not as
        /// text: this runs for every transaction, and the line that shows
        /// it is usually off.
        prepare: TimeoutChoice,
    },
    BeginRefused {
        request_id: u64,
        reason: String,
        /// Refused by an admission limit: the client should retry later.
        busy: bool,
    },
    TimeoutFired {
        xid: Xid,
        phase: &'static str,
        timeout_ms: u64,
        waiting_for: Vec<String>,
        /// The estimate that set the timeout.
        basis: String,
    },
    Decided {
        xid: Xid,
        decision: Decision,
        reason: Option<String>,
        /// Decided while recovering from the log at start-up.
        in_recovery: bool,
    },
    Ended {
        xid: Xid,
    },
    Ignored {
        xid: Xid,
        kind: &'static str,
        from: String,
        why: &'static str,
    },
    Recovered {
        epoch: Epoch,
        committing: usize,
        aborted: usize,
    },
    /// A compaction started: the log is rewritten with `records` records.
    Compacting {
        records: usize,
    },
    /// Peers that moved, messages with no address to go to.
    Directory(DirectoryEvent),
    /// A one-phase commit's branch, asked too late, no longer knows what
    /// it did; the coordinator stopped asking (the client, if still
    /// waiting, times out: outcome unknown).
    OutcomeUnknown {
        xid: Xid,
        participant: String,
    },
    /// An open-ended transaction began.
    Opened {
        xid: Xid,
        lifetime_ms: u64,
    },
    /// `participant` has not acknowledged `xid`'s COMMIT for `pending_ms`
    /// (past `--attention-after`): it is still re-sent, never given up.
    NeedsAttention {
        xid: Xid,
        participant: String,
        attempts: u32,
        last_error: Option<String>,
        pending_ms: u64,
    },
    /// A branch that needed attention acknowledged at last.
    AttentionCleared {
        xid: Xid,
        participant: String,
        attempts: u32,
    },
    /// An operator action was carried out (or failed); both of its audit
    /// records are durable.
    OperatorAction {
        entry: concord_proto::AuditRecord,
    },
    /// An operator action was refused; nothing was done or recorded.
    OperatorRefused {
        xid: Xid,
        action: String,
        operator: String,
        why: String,
    },
}

/// Monotonic counters of the node (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    pub begun: u64,
    pub refused: u64,
    pub refused_busy: u64,
    pub committed: u64,
    pub aborted: u64,
    pub ended: u64,
    pub timeouts_fired: u64,
    /// COMMIT messages sent (first sends and resends).
    pub decision_deliveries: u64,
}

/// A client waiting for the outcome of a transaction it began.
#[derive(Debug)]
struct Waiter {
    client: ClientId,
    request_id: u64,
    /// Every participant, in the order the client gave (a tree's parents
    /// first, a chain's members in chain order).
    participants: Vec<NodeId>,
    shape: Shape,
    /// A tree's parents (`Request::Begin.parents`); empty otherwise.
    parents: Vec<u32>,
    /// Retries of the begin (same idempotency key) waiting too.
    retries: Vec<(ClientId, u64)>,
    began_at: Time,
}

pub struct CoordinatorNode {
    core: Coordinator,
    directory: Directory,
    /// This coordinator's id and address.
    id: NodeId,
    addr: String,
    /// Each configured participant's configured address (for `Peer`
    /// records, which say which configuration they overrode).
    configured: HashMap<NodeId, String>,
    hellos: Hellos,
    welcomes: Welcomes,
    timeouts: CoordinatorTimeouts,
    transactions_in_flight_max: usize,
    waiting: HashMap<Xid, Waiter>,
    recent: RecentOutcomes,
    idempotency: idempotency::IdempotencyKeys,
    minter: XidMinter,
    /// Draws the jitter added to COMMIT resend timers (seeded, so the
    /// simulator replays it).
    jitter: XidMinter,
    /// COMMITs being delivered, and the branches needing attention.
    deliveries: Deliveries,
    /// Open-ended transactions not yet committed or aborted.
    open: OpenTransactions,
    timelines: Timelines,
    /// The time of the event being handled (the timelines stamp the
    /// actions drained after it with it).
    now: Time,
    /// Participants that are HTTP services (configured with an http:// or
    /// https:// URL): centralized, two-phase only.
    http: HashSet<NodeId>,
    counters: CoordinatorCounters,
    /// True while the actions of recovery are translated.
    recovering: bool,
    compaction: CompactionPolicy,
    /// The audit trail and the operator token.
    operators: Operators,
    /// Operator actions under way: the request to answer, by action.
    operator_clients: HashMap<u64, (ClientId, u64)>,
    /// Bumped by every event that may change what a listing shows (any
    /// but a read-only request): with the epoch, the version of
    /// `Request::List`'s answer, for conditional polling.
    version: u64,
    /// See `CoordinatorNodeConfig::shared_store`.
    shared_store: bool,
    /// Questions to participants awaiting their answers, by id.
    asks: HashMap<u64, operate::Asking>,
    next_ask: u64,
    /// Scratch space for the core's actions while they are translated.
    core_actions: Vec<CoordinatorAction>,
    actions: Vec<CoordinatorNodeAction>,
}

impl CoordinatorNode {
    /// Rebuild from the log (possibly empty). The core replays it once; its
    /// first actions (the epoch record, ABORTs for undecided transactions)
    /// are waiting in `drain_actions`.
    pub fn recover(
        config: CoordinatorNodeConfig,
        records: Vec<CoordinatorRecord>,
        now: Time,
    ) -> CoordinatorNode {
        // Where each participant was last heard from, while the
        // configuration has not changed since.
        let mut heard: HashMap<&str, (&str, u64, &str)> = HashMap::new();
        for record in &records {
            if let CoordinatorRecord::Peer {
                id,
                addr,
                incarnation,
                configured,
            } = record
            {
                heard.insert(id, (addr, *incarnation, configured));
            }
        }
        // Where this coordinator last started.
        let last_addr = heard
            .get(config.id.as_str())
            .map(|(addr, _, _)| addr.to_string());
        let mut directory = Directory::new(&config.participants);
        for (id, configured) in &config.participants {
            if let Some((addr, incarnation, was)) = heard.get(id.as_str()) {
                if was == configured {
                    directory.learn(id, addr, *incarnation);
                }
            }
        }
        let operators = Operators::recover(config.operator_token.clone(), &records);
        let mut core = Coordinator::recover_at_least(
            CoordinatorConfig {
                id: config.id.clone(),
                resend_ms_initial: config.resend_ms_initial,
                resend_ms_max: config.resend_ms_max,
                one_phase: config.one_phase,
                two_phase_only: http_participants(&config.participants),
            },
            records,
            now,
            config.epoch_floor,
        );
        let recent = RecentOutcomes::from_recovered(
            core.take_recovered_outcomes(),
            config.recent_outcomes_max,
        );
        // Moved since the last start: participants (which know the old
        // address) hear where we are now, until each welcomes us.
        let moved = last_addr.as_ref().is_some_and(|a| *a != config.addr);
        let greet_now: Vec<NodeId> = if moved {
            config
                .participants
                .iter()
                .filter(|(_, addr)| !is_http_url(addr))
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let (hellos, greet, hello_timer) = Hellos::start(
            greet_now,
            now,
            config.resend_ms_initial,
            config.resend_ms_max,
            Some(HELLO_ROUNDS_MAX),
        );
        let mut node = CoordinatorNode {
            core,
            directory,
            id: config.id.clone(),
            addr: config.addr.clone(),
            configured: config.participants.iter().cloned().collect(),
            hellos,
            welcomes: Welcomes::default(),
            timeouts: config.timeouts(),
            transactions_in_flight_max: config.transactions_in_flight_max,
            waiting: HashMap::new(),
            idempotency: idempotency::IdempotencyKeys::new(config.recent_outcomes_max),
            recent,
            minter: XidMinter::new(config.xid_seed),
            jitter: XidMinter::new(config.xid_seed ^ JITTER_SEED),
            deliveries: Deliveries::new(config.attention_after_ms),
            open: OpenTransactions::default(),
            timelines: Timelines::new(config.timelines_max),
            now,
            http: http_participants(&config.participants)
                .into_iter()
                .collect(),
            counters: CoordinatorCounters::default(),
            recovering: true,
            compaction: CompactionPolicy::new(config.compact_after_records),
            operators,
            operator_clients: HashMap::new(),
            asks: HashMap::new(),
            version: 0,
            shared_store: config.shared_store,
            next_ask: 1,
            core_actions: Vec::new(),
            actions: Vec::new(),
        };
        node.pump(now);
        node.recovering = false;
        if last_addr.as_deref() != Some(config.addr.as_str()) {
            node.compaction.appended(1);
            node.actions.push(CoordinatorNodeAction::Persist {
                record: node.own_address_record(),
                durability: Durability::Lazy,
            });
        }
        node.greet(greet, Greeting::Hello, hello_timer);
        node
    }

    pub fn core(&self) -> &Coordinator {
        &self.core
    }

    pub fn epoch(&self) -> Epoch {
        self.core.epoch()
    }

    /// Where participants reach this coordinator (sent with every frame).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What this node sends as its incarnation in every frame: its epoch,
    /// one higher at every start.
    pub fn incarnation(&self) -> u64 {
        self.core.epoch()
    }

    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Clients waiting for an outcome.
    pub fn clients_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The measured latency of every (participant, phase), for metrics.
    pub fn latency_histograms(
        &self,
    ) -> Vec<(&NodeId, &'static str, &crate::latency::LatencyHistogram)> {
        self.timeouts.histograms()
    }

    pub fn counters(&self) -> CoordinatorCounters {
        self.counters
    }

    /// Take the actions produced so far, in order.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, CoordinatorNodeAction> {
        self.timelines.observe(self.now, &self.actions);
        self.actions.drain(..)
    }

    /// Timelines kept, and transactions that got none (for metrics).
    pub fn timeline_counts(&self) -> (usize, u64) {
        self.timelines.counts()
    }

    /// A client request. Every request gets a reply (an error if it cannot
    /// be served here); a begin gets `Begun` with the xid at once and the
    /// outcome later.
    pub fn on_request(&mut self, now: Time, client: ClientId, request: Request) {
        self.now = now;
        if !request.is_read_only() {
            self.version += 1;
        }
        match request {
            Request::Begin {
                request_id,
                branches,
                prepare_timeout_ms,
                shape,
                parents,
                idempotency_key,
            } => {
                let keyed = match idempotency_key {
                    Some(key) if key.len() > idempotency::KEY_BYTES_MAX => {
                        let why = format!(
                            "the idempotency key is {} bytes; at most {} are allowed",
                            key.len(),
                            idempotency::KEY_BYTES_MAX
                        );
                        return self.reply_error(client, request_id, why);
                    }
                    Some(key) => {
                        let fingerprint = idempotency::fingerprint(&branches, shape, &parents);
                        match self.idempotency.check(&key, fingerprint) {
                            idempotency::Seen::Same(xid) => {
                                return self.rejoin(client, request_id, xid)
                            }
                            idempotency::Seen::Different(xid) => {
                                let why = format!(
                                    "idempotency key {key:?} already began transaction {xid} \
                                     with a different request"
                                );
                                return self.reply_error(client, request_id, why);
                            }
                            idempotency::Seen::New => Some((key, fingerprint)),
                        }
                    }
                    None => None,
                };
                let plan = (branches, shape, parents);
                let begun = self.begin(now, client, request_id, plan, prepare_timeout_ms, None);
                if let (Ok(xid), Some((key, fingerprint))) = (&begun, keyed) {
                    self.idempotency.remember(key, *xid, fingerprint);
                }
                if let Err((reason, busy)) = begun {
                    self.counters.refused += 1;
                    if busy {
                        self.counters.refused_busy += 1;
                    }
                    self.push_event(CoordinatorEvent::BeginRefused {
                        request_id,
                        reason: reason.clone(),
                        busy,
                    });
                    self.reply_error(client, request_id, reason);
                }
            }
            Request::Status { request_id, xid } => {
                let status = self.status(now, xid);
                self.reply(client, Reply::Status { request_id, status });
            }
            Request::ListInFlight { request_id } => {
                let mut xids = self.core.in_flight_xids();
                let truncated = xids.len() > IN_FLIGHT_LISTED_MAX;
                xids.truncate(IN_FLIGHT_LISTED_MAX);
                self.reply(
                    client,
                    Reply::InFlight {
                        request_id,
                        xids,
                        truncated,
                    },
                );
            }
            Request::Timeouts { request_id } => {
                let labels: Vec<(String, NodeId)> = self
                    .directory
                    .configured()
                    .iter()
                    .map(|id| (self.directory.display_name(id), id.clone()))
                    .collect();
                let phases = self.timeouts.report(&labels);
                let report = TimeoutsReport {
                    role: "coordinator".into(),
                    phases,
                };
                self.reply(client, Reply::Timeouts { request_id, report });
            }
            Request::Stats { request_id } => self
                .actions
                .push(CoordinatorNodeAction::Stats { client, request_id }),
            Request::Open {
                request_id,
                lifetime_ms,
                idempotency_key,
            } => self.on_open(now, client, request_id, lifetime_ms, idempotency_key),
            Request::Register {
                request_id,
                xid,
                branches,
            } => self.on_register(now, client, request_id, xid, branches),
            Request::Commit { request_id, xid } => self.on_commit(now, client, request_id, xid),
            Request::Abort { request_id, xid } => self.on_abort(now, client, request_id, xid),
            Request::List {
                request_id,
                filter,
                cursor,
                limit,
            } => {
                let candidates = self.list_candidates(now, &filter);
                match listing::page(candidates, cursor.as_deref(), limit) {
                    Ok((transactions, next_cursor)) => self.reply(
                        client,
                        Reply::List {
                            request_id,
                            transactions,
                            next_cursor,
                            version: format!("{}.{}", self.core.epoch(), self.version),
                        },
                    ),
                    Err(why) => self.reply_error(client, request_id, why),
                }
            }
            Request::Timeline { request_id, xid } => {
                let timeline = self.timelines.view(now, xid);
                self.reply(
                    client,
                    Reply::Timeline {
                        request_id,
                        timeline,
                    },
                );
            }
            Request::Operator { request_id, action } => {
                self.operator_request(now, client, request_id, action)
            }
            Request::InDoubtAt {
                request_id,
                participant,
            } => self.in_doubt_at(client, request_id, &participant),
            Request::Audit { request_id } => {
                let entries = self.operators.entries();
                self.reply(
                    client,
                    Reply::Audit {
                        request_id,
                        writable: self.operators.writable(),
                        entries,
                    },
                );
            }
            other @ (Request::Accounts { .. }
            | Request::Prepared { .. }
            | Request::BranchState { .. }
            | Request::Heuristic { .. }
            | Request::InDoubt { .. }) => {
                let message = format!(
                    "{} is a participant request, and this is the coordinator; ask a participant",
                    other.kind()
                );
                self.reply_error(client, other.request_id(), message);
            }
        }
    }

    /// A frame from a peer: its sender's address goes into the directory
    /// (a participant that moved is reached at its new address from now
    /// on), then its message, if any, to the core.
    pub fn on_peer(&mut self, now: Time, envelope: PeerEnvelope) {
        self.now = now;
        self.version += 1;
        // Anyone is learnt (within the directory's bound): an INQUIRE's
        // answer goes to whoever asked.
        let opened = self.directory.open(envelope);
        if opened.learnt != Learnt::Stale {
            if opened.welcome {
                self.hellos.heard(&opened.from);
            }
            self.record_address(&opened);
        }
        if let Some(event) = opened.event {
            self.push_event(CoordinatorEvent::Directory(event));
        }
        if let Some(message) = opened.message {
            self.timelines
                .received(now, message.xid, &message.from, &message.body);
            if message.body == Body::Ack {
                let change = self.deliveries.acked(message.xid, &message.from);
                self.on_attention(change);
            }
            self.core.on_message(now, message);
            self.pump(now);
        }
    }

    /// The transport could not deliver `xid`'s message of `kind` (its
    /// [`Body::kind`]) to `to`: an HTTP participant's error answer or
    /// timeout, a refused connection. A failed PREPARE is that branch's
    /// VOTE ABORT (it may not have prepared; if it did, the ABORT that
    /// follows undoes it), so the transaction does not wait for its
    /// timeout. A failed COMMIT is kept as the branch's last error while
    /// the core re-sends it; nothing else is decided here.
    pub fn on_delivery_failed(
        &mut self,
        now: Time,
        to: &NodeId,
        xid: Xid,
        kind: &str,
        error: &str,
    ) {
        self.now = now;
        self.version += 1;
        self.timelines.delivery_failed(now, xid, to, kind, error);
        if kind == "PREPARE" {
            let message = Message {
                xid,
                epoch: self.core.epoch(),
                from: to.clone(),
                body: Body::Vote(Vote::Abort {
                    reason: format!(
                        "{} could not prepare: {error}",
                        self.directory.display_name(to)
                    ),
                }),
            };
            self.core.on_message(now, message);
            return self.pump(now);
        }
        let change = self.deliveries.failed(now, xid, to, error);
        self.on_attention(change);
    }

    /// Branches needing attention now (for metrics).
    pub fn needs_attention(&self) -> usize {
        self.deliveries.flagged()
    }

    fn on_attention(&mut self, change: Option<AttentionChange>) {
        let Some(change) = change else { return };
        self.push_event(match change {
            AttentionChange::Flagged {
                xid,
                participant,
                attempts,
                last_error,
                pending_ms,
            } => CoordinatorEvent::NeedsAttention {
                xid,
                participant: self.directory.display_name(&participant),
                attempts,
                last_error,
                pending_ms,
            },
            AttentionChange::Cleared {
                xid,
                participant,
                attempts,
            } => CoordinatorEvent::AttentionCleared {
                xid,
                participant: self.directory.display_name(&participant),
                attempts,
            },
        });
    }

    /// A fresh xid, unused by anything this node remembers.
    fn mint(&mut self) -> Xid {
        let (core, waiting, recent, open) = (&self.core, &self.waiting, &self.recent, &self.open);
        self.minter.mint(|x| {
            waiting.contains_key(&x)
                || recent.contains(x)
                || core.is_in_flight(x)
                || open.contains(x)
        })
    }

    /// `Request::Open`: an open-ended transaction (SPEC §4).
    fn on_open(
        &mut self,
        now: Time,
        client: ClientId,
        request_id: u64,
        lifetime_ms: Option<u64>,
        idempotency_key: Option<String>,
    ) {
        let fingerprint = idempotency::fingerprint(&[], Shape::Centralized, &[]);
        if let Some(key) = &idempotency_key {
            match self.idempotency.check(key, fingerprint) {
                idempotency::Seen::New => {}
                idempotency::Seen::Same(xid) => {
                    let lifetime_ms = self.open.get(xid).map_or(0, |t| t.lifetime_ms);
                    let reply = Reply::Opened {
                        request_id,
                        xid,
                        lifetime_ms,
                        coordinator: self.id.clone(),
                    };
                    return self.reply(client, reply);
                }
                idempotency::Seen::Different(xid) => {
                    let why = format!(
                        "idempotency key {key:?} already began transaction {xid} with a \
                         different request"
                    );
                    return self.reply_error(client, request_id, why);
                }
            }
        }
        if self.core.in_flight() + self.open.len() >= self.transactions_in_flight_max {
            self.counters.refused += 1;
            self.counters.refused_busy += 1;
            let why = format!(
                "busy: too many transactions in flight or open (limit {}); retry later",
                self.transactions_in_flight_max
            );
            return self.reply_error(client, request_id, why);
        }
        let xid = self.mint();
        let (lifetime_ms, key, at) = self.open.open(now, xid, lifetime_ms);
        if let Some(key) = idempotency_key {
            self.idempotency.remember(key, xid, fingerprint);
        }
        self.actions
            .push(CoordinatorNodeAction::SetTimer { key, at });
        self.push_event(CoordinatorEvent::Opened { xid, lifetime_ms });
        self.reply(
            client,
            Reply::Opened {
                request_id,
                xid,
                lifetime_ms,
                coordinator: self.id.clone(),
            },
        );
    }

    /// `Request::Register`: branches for an open transaction; unknown
    /// participants are refused here, not at commit.
    fn on_register(
        &mut self,
        now: Time,
        client: ClientId,
        request_id: u64,
        xid: Xid,
        branches: Vec<BranchRequest>,
    ) {
        if let Err(why) = resolve_branches(&self.directory, branches.clone()) {
            return self.reply_error(client, request_id, why);
        }
        match self.open.register(xid, branches) {
            Ok(count) => self.reply(
                client,
                Reply::Registered {
                    request_id,
                    xid,
                    branches: count,
                },
            ),
            Err(open::RegisterError::TooManyBranches { max }) => {
                let why = format!("transaction {xid} would have more than {max} branches");
                self.reply_error(client, request_id, why)
            }
            Err(open::RegisterError::NotOpen) => self.not_open(now, client, request_id, xid),
        }
    }

    /// `Request::Commit`: both phases over what was registered, under the
    /// xid given at open. A repeat (a client retrying after a reset)
    /// joins the first commit and gets its outcome.
    fn on_commit(&mut self, now: Time, client: ClientId, request_id: u64, xid: Xid) {
        let Some(txn) = self.open.take(xid) else {
            if self.waiting.contains_key(&xid) || self.recent.get(xid).is_some() {
                return self.rejoin(client, request_id, xid);
            }
            return self.not_open(now, client, request_id, xid);
        };
        if txn.branches.is_empty() {
            let why = format!(
                "transaction {xid} has no branches yet: register some, or abort it (it stays open)"
            );
            self.open.restore(xid, txn);
            return self.reply_error(client, request_id, why);
        }
        let plan = (txn.branches.clone(), Shape::Centralized, Vec::new());
        if let Err((reason, busy)) = self.begin(now, client, request_id, plan, None, Some(xid)) {
            if busy {
                // Still open: the client may retry the commit.
                self.open.restore(xid, txn);
                self.counters.refused += 1;
                self.counters.refused_busy += 1;
                return self.reply_error(client, request_id, reason);
            }
            self.abort_open(xid, txn, format!("the commit could not start: {reason}"));
            self.reply_error(client, request_id, reason);
        }
    }

    /// `Request::Abort` of an open transaction (a repeat gets the outcome).
    fn on_abort(&mut self, now: Time, client: ClientId, request_id: u64, xid: Xid) {
        if let Some(txn) = self.open.take(xid) {
            self.abort_open(xid, txn, "aborted by the application".into());
        }
        match self.recent.get(xid) {
            Some(txn) if txn.decision == Decision::Abort => {
                let reply = Reply::Outcome {
                    request_id,
                    xid,
                    outcome: Outcome::Aborted {
                        reason: txn.reason.clone().unwrap_or_default(),
                    },
                };
                self.reply(client, reply)
            }
            _ => self.not_open(now, client, request_id, xid),
        }
    }

    /// End an open transaction as ABORTED. Nothing was prepared for it
    /// under this coordinator, so there is nothing to send or log.
    fn abort_open(&mut self, xid: Xid, txn: open::OpenTxn, reason: String) {
        self.counters.aborted += 1;
        let participants = txn.branches.into_iter().map(|b| b.participant).collect();
        self.recent.insert(
            xid,
            RecentTxn {
                decision: Decision::Abort,
                reason: Some(reason.clone()),
                participants,
                ended: false,
                shape: Some(Shape::Centralized),
                parents: Vec::new(),
                began_at: Some(txn.opened_at),
            },
        );
        self.push_event(CoordinatorEvent::Decided {
            xid,
            decision: Decision::Abort,
            reason: Some(reason),
            in_recovery: false,
        });
    }

    fn not_open(&mut self, now: Time, client: ClientId, request_id: u64, xid: Xid) {
        let status = self.status(now, xid);
        let message = match status.state {
            CoordinatorState::NoRecord => format!(
                "transaction {xid} is not open here: no record of it (never opened here, or \
                 forgotten by a restart: presumed aborted)"
            ),
            state => format!("transaction {xid} is not open: it is {state}"),
        };
        self.reply(
            client,
            Reply::NotOpen {
                request_id,
                xid,
                state: status.state,
                message,
            },
        );
    }

    /// A COMMIT resend timer, moved later by up to a quarter of its delay
    /// so that the resends to a participant that was down do not all
    /// arrive together when it is back (capped exponential backoff plus
    /// jitter; the core's doubling is the backoff).
    fn jittered(&mut self, now: Time, key: TimerKey, at: Time) -> Time {
        if key.kind != TimerKind::Resend {
            return at;
        }
        let delay_us = at.0.saturating_sub(now.0);
        let spread = delay_us / 4;
        if spread == 0 {
            return at;
        }
        Time(at.0 + self.jitter.draw_below(spread + 1))
    }

    /// Keep a configured participant's new address in the log (COMMITs
    /// still owed to it must find it after a restart of ours), and answer
    /// a hello. A hello from anywhere but the configured address is
    /// welcomed only once its `Peer` record is durable: the participant
    /// stops saying hello once welcomed, so we must not forget it then.
    /// Runs for every frame: nothing is allocated unless a record or a
    /// welcome results.
    fn record_address(&mut self, opened: &Opened) {
        let configured = self.configured.get(&opened.from).cloned();
        let moved = matches!(opened.learnt, Learnt::Moved { .. });
        let durability = match (configured.as_deref(), opened.hello) {
            (Some(c), true)
                if c != opened.addr.as_str() && !mutant::active(Mutant::WelcomeBeforeDurable) =>
            {
                let ticket = self.welcomes.park(opened.from.clone(), opened.addr.clone());
                Durability::Forced(ticket)
            }
            (Some(c), hello) if (moved && !hello) || (hello && c != opened.addr.as_str()) => {
                // (Reached with a hello only under the mutant: the welcome
                // below leaves before the record is durable.)
                if hello {
                    self.welcome(opened.from.clone(), opened.addr.clone());
                }
                Durability::Lazy
            }
            _ => {
                if opened.hello {
                    self.welcome(opened.from.clone(), opened.addr.clone());
                }
                return;
            }
        };
        self.compaction.appended(1);
        self.actions.push(CoordinatorNodeAction::Persist {
            record: CoordinatorRecord::Peer {
                id: opened.from.clone(),
                addr: opened.addr.clone(),
                incarnation: opened.incarnation,
                configured: configured.unwrap_or_default(),
            },
            durability,
        });
    }

    /// A timer set with `SetTimer` is due.
    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        self.now = now;
        self.version += 1;
        if key == hello::hello_timer() {
            let (greet, timer) = self.hellos.on_timer(now);
            return self.greet(greet, Greeting::Hello, timer);
        }
        if key.kind == TimerKind::Lifetime {
            if let Some(txn) = self.open.expired(now, key.xid) {
                let reason = format!(
                    "open-ended transaction not committed within its lifetime of {} ms",
                    txn.lifetime_ms
                );
                self.abort_open(key.xid, txn, reason);
            }
            return;
        }
        self.core.on_timer(now, key);
        self.pump(now);
    }

    fn greet(&mut self, peers: Vec<NodeId>, greeting: Greeting, timer: Option<(TimerKey, Time)>) {
        for (to, addr) in hello::addressed(&self.directory, peers) {
            self.actions.push(CoordinatorNodeAction::Greet {
                to,
                addr,
                greeting,
                peers: Vec::new(),
            });
        }
        if let Some((key, at)) = timer {
            self.actions
                .push(CoordinatorNodeAction::SetTimer { key, at });
        }
    }

    /// Welcome `to` (at `addr`), telling it where the other participants
    /// are.
    fn welcome(&mut self, to: NodeId, addr: String) {
        let peers = self.directory.hints(self.directory.configured(), &to);
        self.actions.push(CoordinatorNodeAction::Greet {
            to,
            addr,
            greeting: Greeting::Welcome,
            peers,
        });
    }

    /// The forced write named by `ticket` is durable.
    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        self.now = now;
        self.version += 1;
        if operator_trail::is_audit_ticket(ticket) {
            return self.on_audit_durable(now, ticket);
        }
        if hello::is_node_ticket(ticket) {
            if let Some((to, addr)) = self.welcomes.release(ticket) {
                self.welcome(to, addr);
            }
            return;
        }
        self.timelines.durable(now, ticket);
        self.core.on_durable(now, ticket);
        self.pump(now);
    }

    fn begin(
        &mut self,
        now: Time,
        client: ClientId,
        request_id: u64,
        (branches, shape, parents): (Vec<BranchRequest>, Shape, Vec<u32>),
        prepare_timeout_ms: Option<u64>,
        opened: Option<Xid>,
    ) -> Result<Xid, (String, bool)> {
        if branches.is_empty() {
            return Err(("a transaction needs at least one branch".into(), false));
        }
        let tree = match shape {
            Shape::Hierarchical => Some(tree_of(&self.directory, &branches, &parents)?),
            _ if !parents.is_empty() => {
                let shape = shape.name();
                return Err((
                    format!("a {shape} transaction has no tree (parents)"),
                    false,
                ));
            }
            _ => None,
        };
        let branches = resolve_branches(&self.directory, branches).map_err(|e| (e, false))?;
        if shape != Shape::Centralized {
            if let Some((http, _)) = branches.iter().find(|(p, _)| self.http.contains(p)) {
                let name = self.directory.display_name(http);
                return Err((
                    format!(
                        "{name} is an HTTP participant: it takes part only in centralized \
                         transactions (it cannot forward a chain or a subtree)"
                    ),
                    false,
                ));
            }
        }
        if self.core.in_flight() >= self.transactions_in_flight_max {
            return Err((
                format!(
                    "busy: too many transactions in flight (limit {}); retry later",
                    self.transactions_in_flight_max
                ),
                true,
            ));
        }
        let xid = match opened {
            Some(xid) => xid,
            None => self.mint(),
        };
        let participants: Vec<NodeId> = branches.iter().map(|(p, _)| p.clone()).collect();
        // Largest measured timeout over the participants, or the client's.
        let timeouts = self.timeouts.begin(xid, &participants, prepare_timeout_ms);
        // A chain's members prepare one after the other: its budget is
        // the sum of theirs (n times the largest); a tree's levels too
        // (its height times the largest).
        let levels = match (&tree, shape) {
            (Some(tree), _) => concord_proto::tree::height(tree),
            (None, Shape::Linear) => participants.len(),
            _ => 1,
        };
        let timeout_ms = timeouts
            .prepare
            .timeout_ms
            .saturating_mul(levels.max(1) as u64);
        let resend_ms = timeouts.resend.timeout_ms;
        // As the tree was given; a tree of one level runs as centralized.
        let (ran_as, layout_parents) = match &tree {
            Some(tree) if tree.iter().all(|e| e.parent == 0) => (Shape::Centralized, Vec::new()),
            Some(tree) => (shape, tree.iter().map(|e| e.parent).collect()),
            None => (shape, Vec::new()),
        };
        let begun = match tree {
            Some(tree) => self.core.begin_tree(now, xid, tree, timeout_ms, resend_ms),
            None => self
                .core
                .begin_shaped(now, xid, branches, timeout_ms, resend_ms, shape),
        };
        if let Err(e) = begun {
            self.timeouts.finish(xid);
            return Err((e.to_string(), false));
        }
        self.counters.begun += 1;
        self.push_event(CoordinatorEvent::Begun {
            xid,
            request_id,
            timeout_ms,
            resend_ms,
            prepare: timeouts.prepare,
        });
        // The client learns the xid before anything can go wrong.
        self.reply(client, Reply::Begun { request_id, xid });
        self.waiting.insert(
            xid,
            Waiter {
                client,
                request_id,
                participants,
                shape: ran_as,
                parents: layout_parents,
                retries: Vec::new(),
                began_at: now,
            },
        );
        self.pump(now);
        Ok(xid)
    }

    /// A begin retried with its idempotency key: the same xid, then the
    /// outcome (now if it is known, else when it comes).
    fn rejoin(&mut self, client: ClientId, request_id: u64, xid: Xid) {
        self.reply(client, Reply::Begun { request_id, xid });
        if let Some(waiter) = self.waiting.get_mut(&xid) {
            waiter.retries.push((client, request_id));
            return;
        }
        let outcome = match self.recent.get(xid) {
            Some(txn) => match txn.decision {
                Decision::Commit => Outcome::Committed,
                Decision::Abort => Outcome::Aborted {
                    reason: txn.reason.clone().unwrap_or_default(),
                },
            },
            None => {
                let why = format!(
                    "transaction {xid} began under this idempotency key, but its outcome is no \
                     longer remembered here: ask `status`"
                );
                return self.reply_error(client, request_id, why);
            }
        };
        self.reply(
            client,
            Reply::Outcome {
                request_id,
                xid,
                outcome,
            },
        );
    }

    /// The driver rewrote the log with the last `Compact`'s records.
    pub fn on_compacted(&mut self) {
        self.compaction.finished();
    }

    /// Start a compaction if one is due. Runs at the end of every event,
    /// once all of the event's records were handed to the driver. The
    /// snapshot is the core's alone (epoch, undecided and un-ended
    /// transactions: what the protocol must still answer). Finished
    /// outcomes stay in memory for `status` while the process runs, but
    /// are not carried into the compacted log: that would make every
    /// compaction (and restart) cost `recent_outcomes_max` records.
    fn maybe_compact(&mut self) {
        if !self.compaction.due() {
            return;
        }
        let mut records = self.core.snapshot_records();
        records.push(self.own_address_record());
        records.extend(self.operators.snapshot_records());
        // In configured order: a snapshot must not depend on hashing.
        for id in self.directory.configured() {
            let Some(configured) = self.configured.get(id) else {
                continue;
            };
            match self.directory.addr_of(id) {
                Some(addr) if addr != configured => records.push(CoordinatorRecord::Peer {
                    id: id.clone(),
                    addr: addr.to_string(),
                    incarnation: self.directory.incarnation_of(id).unwrap_or(0),
                    configured: configured.clone(),
                }),
                _ => {}
            }
        }
        self.compaction.started(records.len() as u64);
        self.push_event(CoordinatorEvent::Compacting {
            records: records.len(),
        });
        self.actions
            .push(CoordinatorNodeAction::Compact { records });
    }

    /// Translate the core's actions into the node's, in order.
    fn pump(&mut self, now: Time) {
        // A buffer kept across events: this runs for every message.
        let mut actions = std::mem::take(&mut self.core_actions);
        actions.extend(self.core.drain_actions());
        for action in actions.drain(..) {
            match action {
                CoordinatorAction::Persist { record, durability } => {
                    self.compaction.appended(1);
                    self.actions
                        .push(CoordinatorNodeAction::Persist { record, durability })
                }
                CoordinatorAction::Send { to, message } => {
                    if matches!(message.body, Body::Decision(Decision::Commit)) {
                        self.counters.decision_deliveries += 1;
                        let change = self.deliveries.sent(now, message.xid, &to);
                        self.on_attention(change);
                    }
                    self.send(to, message)
                }
                CoordinatorAction::SetTimer { key, at } => {
                    let at = self.jittered(now, key, at);
                    self.actions
                        .push(CoordinatorNodeAction::SetTimer { key, at })
                }
                CoordinatorAction::Outcome { xid, outcome } => self.on_outcome(xid, outcome),
                CoordinatorAction::Notice(notice) => self.on_notice(notice),
            }
        }
        self.core_actions = actions;
        self.maybe_compact();
    }

    fn on_outcome(&mut self, xid: Xid, outcome: TxnOutcome) {
        let waiter = self.waiting.remove(&xid);
        let outcome = match outcome {
            TxnOutcome::Committed => Outcome::Committed,
            TxnOutcome::Aborted { reason } => Outcome::Aborted { reason },
        };
        let (decision, reason) = match &outcome {
            Outcome::Committed => (Decision::Commit, None),
            Outcome::Aborted { reason } => (Decision::Abort, Some(reason.clone())),
        };
        // The layout moves from the waiter to the recent outcome; the
        // requests waiting get the outcome (the first one's, and retries').
        let (layout, waiting) = match waiter {
            Some(w) => {
                let mut waiting = w.retries;
                waiting.push((w.client, w.request_id));
                (
                    (w.participants, Some(w.shape), w.parents, Some(w.began_at)),
                    waiting,
                )
            }
            None => ((Vec::new(), None, Vec::new(), None), Vec::new()),
        };
        let (participants, shape, parents, began_at) = layout;
        self.recent.insert(
            xid,
            RecentTxn {
                decision,
                reason,
                participants,
                ended: false,
                shape,
                parents,
                began_at,
            },
        );
        for (client, request_id) in waiting {
            let outcome = outcome.clone();
            self.reply(
                client,
                Reply::Outcome {
                    request_id,
                    xid,
                    outcome,
                },
            );
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
                self.counters.timeouts_fired += 1;
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
                let waiting_for = waiting_for
                    .iter()
                    .map(|a| self.directory.display_name(a))
                    .collect();
                self.push_event(CoordinatorEvent::TimeoutFired {
                    xid,
                    phase,
                    timeout_ms,
                    waiting_for,
                    basis,
                });
            }
            CoordinatorNotice::Decided {
                xid,
                decision,
                reason,
            } => {
                match decision {
                    Decision::Commit => self.counters.committed += 1,
                    Decision::Abort => {
                        self.counters.aborted += 1;
                        // Presumed abort: nothing more to wait for or measure.
                        self.timeouts.finish(xid);
                    }
                }
                self.push_event(CoordinatorEvent::Decided {
                    xid,
                    decision,
                    reason,
                    in_recovery: self.recovering,
                });
            }
            CoordinatorNotice::Ended { xid } => {
                for change in self.deliveries.finished(xid) {
                    self.on_attention(Some(change));
                }
                self.counters.ended += 1;
                self.timeouts.finish(xid);
                self.recent.mark_ended(xid);
                self.push_event(CoordinatorEvent::Ended { xid });
            }
            CoordinatorNotice::Ignored {
                xid,
                kind,
                from,
                why,
            } => {
                let from = self.directory.display_name(&from);
                self.push_event(CoordinatorEvent::Ignored {
                    xid,
                    kind,
                    from,
                    why,
                });
            }
            CoordinatorNotice::Recovered {
                epoch,
                committing,
                aborted,
            } => self.push_event(CoordinatorEvent::Recovered {
                epoch,
                committing,
                aborted,
            }),
            CoordinatorNotice::LatencySample {
                peer,
                phase,
                elapsed_us,
                ..
            } => self.timeouts.observe(&peer, phase, elapsed_us),
            CoordinatorNotice::OutcomeUnknown { xid, participant } => {
                self.timeouts.finish(xid);
                let participant = self.directory.display_name(&participant);
                self.push_event(CoordinatorEvent::OutcomeUnknown { xid, participant });
            }
        }
    }

    /// Every transaction this node knows of (open, in flight, recently
    /// decided) that matches `filter`, with its sort key.
    fn list_candidates(&self, now: Time, filter: &ListFilter) -> Vec<listing::Candidate> {
        let mut out = Vec::new();
        let mut push = |began: Option<Time>, summary: TxnSummary| {
            if listing::matches(filter, &summary) {
                out.push(listing::Candidate {
                    began_us: began.map_or(0, |t| t.0),
                    summary,
                });
            }
        };
        for xid in self.open.xids() {
            let Some(txn) = self.open.get(xid) else {
                continue;
            };
            push(
                Some(txn.opened_at),
                TxnSummary {
                    xid,
                    state: CoordinatorState::Open,
                    age_ms: Some(now.ms_since(txn.opened_at)),
                    participants: txn.branches.iter().map(|b| b.participant.clone()).collect(),
                    shape: Some(Shape::Centralized),
                    needs_attention: false,
                    reason: None,
                },
            );
        }
        for xid in self.core.in_flight_xids() {
            let Some(status) = self.core.status(now, xid) else {
                continue;
            };
            let (participants, shape) = match self.layout_of(xid) {
                Some((ps, _, shape)) => (ps.to_vec(), Some(shape)),
                None => (
                    status
                        .branches
                        .iter()
                        .map(|b| b.participant.clone())
                        .collect(),
                    None,
                ),
            };
            // The exact begin time where this life has it, so that the
            // sort key (and a cursor) does not move between two pages.
            let began = match (self.waiting.get(&xid), self.recent.get(xid)) {
                (Some(w), _) => w.began_at,
                (
                    None,
                    Some(RecentTxn {
                        began_at: Some(at), ..
                    }),
                ) => *at,
                _ => Time(now.0.saturating_sub(status.age_ms.saturating_mul(1000))),
            };
            push(
                Some(began),
                TxnSummary {
                    xid,
                    state: state_of(status.phase),
                    age_ms: Some(status.age_ms),
                    participants,
                    shape,
                    needs_attention: self.deliveries.is_flagged(xid),
                    reason: None,
                },
            );
        }
        for (xid, txn) in self.recent.newest_first() {
            if self.core.is_in_flight(xid) {
                continue; // listed above
            }
            let state = match (txn.decision, txn.ended) {
                (Decision::Commit, true) => CoordinatorState::Committed,
                (Decision::Commit, false) => CoordinatorState::CommittedWaitingForAcks,
                (Decision::Abort, _) => CoordinatorState::Aborted,
            };
            push(
                txn.began_at,
                TxnSummary {
                    xid,
                    state,
                    age_ms: txn.began_at.map(|b| now.ms_since(b)),
                    participants: txn.participants.clone(),
                    shape: txn.shape,
                    needs_attention: false,
                    reason: txn.reason.clone(),
                },
            );
        }
        out
    }

    /// What `concord status XID` shows.
    pub fn status(&self, now: Time, xid: Xid) -> CoordinatorStatus {
        if let Some(txn) = self.open.get(xid) {
            return CoordinatorStatus {
                xid,
                state: CoordinatorState::Open,
                detail: format!(
                    "open for {} ms of its lifetime of {} ms; {} branches registered",
                    now.ms_since(txn.opened_at),
                    txn.lifetime_ms,
                    txn.branches.len()
                ),
                branches: txn
                    .branches
                    .iter()
                    .map(|b| self.branch_view(&b.participant))
                    .collect(),
                shape: Some(Shape::Centralized),
            };
        }
        if let Some(status) = self.core.status(now, xid) {
            let state = state_of(status.phase);
            let read_only: Vec<String> = status
                .branches
                .iter()
                .filter(|b| b.read_only)
                .map(|b| self.directory.display_name(&b.participant))
                .collect();
            let mut detail = format!(
                "in flight for {} ms; {} resends of the decision",
                status.age_ms, status.resends
            );
            if !read_only.is_empty() {
                detail.push_str(&format!(
                    "; voted READ-ONLY (no phase 2): {}",
                    read_only.join(", ")
                ));
            }
            // Every node of a tree begun in this life, the coordinator's
            // view on the roots it tracks; otherwise what the core tracks.
            let tracked = |id: &NodeId| status.branches.iter().find(|b| b.participant == *id);
            let branches = match self.layout_of(xid) {
                Some((participants, parents, _)) => {
                    self.branch_views(participants, parents, |id| {
                        tracked(id).map(|b| (b.voted_ready, b.acked))
                    })
                }
                None => status
                    .branches
                    .iter()
                    .map(|b| BranchView {
                        voted_ready: Some(b.voted_ready),
                        acked: Some(b.acked),
                        ..self.branch_view(&b.participant)
                    })
                    .collect(),
            };
            let mut branches = branches;
            for branch in &mut branches {
                branch.delivery = self.deliveries.get(xid, &branch.id).map(|d| DeliveryView {
                    attempts: d.attempts,
                    pending_ms: now.ms_since(d.first_sent),
                    last_error: d.last_error.clone(),
                    needs_attention: d.flagged_at.is_some(),
                });
            }
            return CoordinatorStatus {
                xid,
                state,
                detail,
                branches,
                shape: self.layout_of(xid).map(|(_, _, shape)| shape),
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
                // Ended means every branch voted READY (or READ-ONLY) and
                // acknowledged; until then the core still tracks it (above).
                // An abort's votes are not kept: its reason names who.
                branches: self.branch_views(&txn.participants, &txn.parents, |_| {
                    (txn.decision == Decision::Commit && txn.ended).then_some((true, true))
                }),
                shape: txn.shape,
            };
        }
        let mut detail = String::from(
            "no record of this xid: if it ever began here it is ABORTED (presumed abort), \
             unless it committed and ended before the coordinator last restarted (a compacted \
             log keeps only what is in flight; the participants keep their outcome for a while)",
        );
        if self.shared_store {
            detail.push_str(
                "; this instance shares its store with others, and answers here only for the \
                 transactions of its own log: one another instance began is answered there \
                 (`concord status --instances` lists them), by `GET /v1/transactions/{xid}` \
                 at any instance (which asks every log's holder), and by its participants",
            );
        }
        CoordinatorStatus {
            xid,
            state: CoordinatorState::NoRecord,
            detail,
            branches: self
                .directory
                .configured()
                .iter()
                .map(|id| self.branch_view(id))
                .collect(),
            shape: None,
        }
    }

    /// Every participant of `xid`, a tree's parents and the shape, if
    /// this life began it: from its waiting client until decided, then
    /// from the recent outcomes.
    fn layout_of(&self, xid: Xid) -> Option<(&[NodeId], &[u32], Shape)> {
        if let Some(w) = self.waiting.get(&xid) {
            return Some((&w.participants, &w.parents, w.shape));
        }
        let txn = self.recent.get(xid)?;
        Some((&txn.participants, &txn.parents, txn.shape?))
    }

    fn branch_view(&self, id: &NodeId) -> BranchView {
        BranchView {
            id: id.clone(),
            name: self.directory.display_name(id),
            addr: self.addr_label(id),
            voted_ready: None,
            acked: None,
            parent: None,
            delivery: None,
        }
    }

    /// Views of `participants` (with a tree's `parents`, as a begin
    /// request gives them), `tracked` giving the coordinator's (voted
    /// READY, ACKed) for the ones it talks to.
    fn branch_views(
        &self,
        participants: &[NodeId],
        parents: &[u32],
        tracked: impl Fn(&NodeId) -> Option<(bool, bool)>,
    ) -> Vec<BranchView> {
        participants
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let parent = parents
                    .get(i)
                    .and_then(|&p| participants.get((p as usize).checked_sub(1)?))
                    .cloned();
                let seen = tracked(id);
                BranchView {
                    voted_ready: seen.map(|(ready, _)| ready),
                    acked: seen.map(|(_, acked)| acked),
                    parent,
                    ..self.branch_view(id)
                }
            })
            .collect()
    }

    /// The `Peer` record of this coordinator's own address.
    fn own_address_record(&self) -> CoordinatorRecord {
        CoordinatorRecord::Peer {
            id: self.id.clone(),
            addr: self.addr.clone(),
            incarnation: self.core.epoch(),
            configured: String::new(),
        }
    }

    /// Where `id` is reached, for status.
    fn addr_label(&self, id: &str) -> String {
        self.directory
            .addr_of(id)
            .unwrap_or("(address unknown)")
            .to_string()
    }

    /// A core message to node `to`, at its address in the directory.
    fn send(&mut self, to: NodeId, message: Message) {
        match self.directory.route(&to, &message) {
            Ok(addr) => {
                let peers = match &message.body {
                    Body::Prepare { participants, .. } => self.directory.hints(participants, &to),
                    // A sub-coordinator learns where its subtree is.
                    Body::TreePrepare { .. } => {
                        self.directory.hints(&message.body.named_nodes(), &to)
                    }
                    // A chain's members also learn where this coordinator
                    // is: they say hello to it when they move, and its
                    // welcome tells them where the others are.
                    Body::Chain { chain, .. } => {
                        let mut hints = self.directory.hints(chain, &to);
                        hints.push(PeerHint {
                            id: self.id.clone(),
                            addr: std::sync::Arc::from(self.addr.as_str()),
                            incarnation: self.core.epoch(),
                        });
                        hints
                    }
                    _ => Vec::new(),
                };
                self.actions.push(CoordinatorNodeAction::Send {
                    to,
                    addr,
                    message,
                    peers,
                })
            }
            Err(event) => self.push_event(CoordinatorEvent::Directory(event)),
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        self.actions
            .push(CoordinatorNodeAction::Reply { client, reply });
    }

    fn reply_error(&mut self, client: ClientId, request_id: u64, message: String) {
        self.reply(
            client,
            Reply::Error {
                request_id,
                message,
            },
        );
    }

    fn push_event(&mut self, event: CoordinatorEvent) {
        self.actions.push(CoordinatorNodeAction::Event(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::PeerBody;
    use concord_participant::kv::{encode_work, KvOp};
    use concord_proto::{Body, Vote};

    const A: &str = "127.0.0.1:7101";
    const B: &str = "127.0.0.1:7102";

    fn config() -> CoordinatorNodeConfig {
        CoordinatorNodeConfig {
            transactions_in_flight_max: 1,
            recent_outcomes_max: 100,
            compact_after_records: u64::MAX,
            ..CoordinatorNodeConfig::new(
                "coord",
                "127.0.0.1:7100",
                vec![("bank-a".into(), A.into()), ("bank-b".into(), B.into())],
                7,
            )
        }
    }

    fn begin_request(request_id: u64) -> Request {
        let work = |account: &str, delta| {
            encode_work(&[KvOp {
                account: account.into(),
                delta,
            }])
        };
        Request::Begin {
            request_id,
            branches: vec![
                BranchRequest {
                    participant: "bank-a".into(),
                    work: work("x", -1),
                },
                BranchRequest {
                    participant: "bank-b".into(),
                    work: work("y", 1),
                },
            ],
            prepare_timeout_ms: None,
            shape: Shape::Centralized,
            parents: Vec::new(),
            idempotency_key: None,
        }
    }

    fn replies(actions: &[CoordinatorNodeAction]) -> Vec<(ClientId, Reply)> {
        actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorNodeAction::Reply { client, reply } => Some((*client, reply.clone())),
                _ => None,
            })
            .collect()
    }

    /// `begin_request(id)` carrying an idempotency key.
    fn keyed(id: u64, key: &str) -> Request {
        let mut request = begin_request(id);
        if let Request::Begin {
            idempotency_key, ..
        } = &mut request
        {
            *idempotency_key = Some(key.into());
        }
        request
    }

    /// `from`, at `addr`, votes READY on `xid`.
    fn vote_ready(node: &mut CoordinatorNode, now: Time, xid: Xid, from: &str, addr: &str) {
        from_peer(node, now, xid, (from, addr), Body::Vote(Vote::Ready));
    }

    /// `from` (at its address) sends `body` about `xid`.
    fn from_peer(node: &mut CoordinatorNode, now: Time, xid: Xid, from: (&str, &str), body: Body) {
        let epoch = node.epoch();
        node.on_peer(
            now,
            PeerEnvelope {
                from: from.0.into(),
                reply_to: from.1.into(),
                incarnation: 1,
                peers: Vec::new(),
                body: PeerBody::Message(Message {
                    xid,
                    epoch,
                    from: from.0.into(),
                    body,
                }),
            },
        );
    }

    /// The ticket of the forced record among `actions` (the COMMIT).
    fn forced_ticket(actions: &[CoordinatorNodeAction]) -> Option<PersistTicket> {
        actions.iter().find_map(|a| match a {
            CoordinatorNodeAction::Persist {
                durability: Durability::Forced(t),
                ..
            } => Some(*t),
            _ => None,
        })
    }

    fn operator(xid: Xid, action: concord_proto::AuditAction, token: &str) -> Request {
        Request::Operator {
            request_id: 9,
            action: concord_api::OperatorRequest {
                xid,
                action,
                confirm: xid.to_string(),
                operator: "alice".into(),
                reason: "test".into(),
                token: token.into(),
                at_unix_ms: 1,
            },
        }
    }

    fn refusal(actions: &[CoordinatorNodeAction]) -> Option<(concord_api::Refusal, String)> {
        replies(actions).into_iter().find_map(|(_, r)| match r {
            Reply::Refused {
                refusal, message, ..
            } => Some((refusal, message)),
            _ => None,
        })
    }

    /// Operator actions in the node: refused while the protocol will
    /// finish the transaction by itself (nothing recorded); retry now on a
    /// COMMIT being delivered sends it again only once its first audit
    /// record is durable, and answers only once the second is; a heuristic
    /// decision for a transaction this coordinator does not hold goes to
    /// the participant, under its id even when named by its address.
    #[test]
    fn operator_actions_are_checked_recorded_then_carried_out() {
        use concord_proto::AuditAction;
        let mut node = CoordinatorNode::recover(
            CoordinatorNodeConfig {
                operator_token: Some("t".into()),
                ..config()
            },
            vec![],
            Time(0),
        );
        node.drain_actions().for_each(drop);
        node.on_request(Time(0), ClientId(1), begin_request(1));
        let actions: Vec<_> = node.drain_actions().collect();
        let [(_, Reply::Begun { xid, .. })] = replies(&actions)[..] else {
            panic!("expected Begun: {actions:?}");
        };
        // Collecting votes: neither action is needed.
        node.on_request(
            Time(1),
            ClientId(2),
            operator(xid, AuditAction::RetryNow, "t"),
        );
        let actions: Vec<_> = node.drain_actions().collect();
        let (why, message) = refusal(&actions).expect("refused");
        assert_eq!(why, concord_api::Refusal::NotNeeded);
        assert!(message.contains("not decided yet"), "{message}");
        assert!(!actions
            .iter()
            .any(|a| matches!(a, CoordinatorNodeAction::Persist { .. })));
        let heuristic = AuditAction::Heuristic {
            participant: "bank-a".into(),
            decision: Decision::Abort,
        };
        node.on_request(Time(1), ClientId(2), operator(xid, heuristic.clone(), "t"));
        let (_, message) = refusal(&node.drain_actions().collect::<Vec<_>>()).expect("refused");
        assert!(message.contains("not decided yet"), "{message}");
        // Decided COMMIT, bank-b's ACK outstanding: a heuristic is refused,
        // retry now is done.
        vote_ready(&mut node, Time(2), xid, "bank-a", A);
        vote_ready(&mut node, Time(2), xid, "bank-b", B);
        let ticket = forced_ticket(&node.drain_actions().collect::<Vec<_>>()).expect("COMMIT");
        node.on_durable(Time(3), ticket);
        node.drain_actions().for_each(drop);
        from_peer(&mut node, Time(4), xid, ("bank-a", A), Body::Ack);
        node.drain_actions().for_each(drop);
        node.on_request(Time(5), ClientId(3), operator(xid, heuristic, "t"));
        let (_, message) = refusal(&node.drain_actions().collect::<Vec<_>>()).expect("refused");
        assert!(message.contains("decided COMMIT"), "{message}");
        node.on_request(
            Time(5),
            ClientId(4),
            operator(xid, AuditAction::RetryNow, "t"),
        );
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, CoordinatorNodeAction::Send { .. })),
            "nothing sent before the audit record is durable"
        );
        let first = forced_ticket(&actions).expect("first audit record forced");
        node.on_durable(Time(6), first);
        let actions: Vec<_> = node.drain_actions().collect();
        let resent: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorNodeAction::Send { to, message, .. }
                    if message.body == Body::Decision(Decision::Commit) =>
                {
                    Some(to.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(resent, vec!["bank-b"], "only the branch that has not ACKed");
        assert!(
            replies(&actions).is_empty(),
            "answered once the result is durable"
        );
        let second = forced_ticket(&actions).expect("second audit record forced");
        node.on_durable(Time(7), second);
        let actions: Vec<_> = node.drain_actions().collect();
        match &replies(&actions)[..] {
            [(ClientId(4), Reply::Operator { entry, .. })] => {
                let result = entry.result.as_ref().expect("result");
                assert!(result.ok && result.detail.contains("bank-b"), "{entry:?}");
            }
            other => panic!("expected the audit entry: {other:?}"),
        }
        // A transaction this coordinator never had: asked of the
        // participant, named here by its address.
        let other = Xid(0xfeed);
        let by_address = AuditAction::Heuristic {
            participant: A.into(),
            decision: Decision::Abort,
        };
        node.on_request(Time(8), ClientId(5), operator(other, by_address, "t"));
        let ticket = forced_ticket(&node.drain_actions().collect::<Vec<_>>()).expect("audit");
        node.on_durable(Time(9), ticket);
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            actions.iter().any(|a| matches!(
                a,
                CoordinatorNodeAction::AskParticipant { to, ask: ParticipantAsk::Heuristic { .. }, .. }
                    if to == "bank-a"
            )),
            "{actions:?}"
        );
        let trail = node.operators.entries();
        assert_eq!(trail.len(), 2, "refusals are not recorded");
    }

    /// A begin retried with its key while the transaction runs and after it
    /// ended gets the same xid and outcome, and no second transaction; the
    /// key with another request is refused.
    #[test]
    fn a_begin_retried_with_its_idempotency_key_joins_the_first_transaction() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.drain_actions().for_each(drop);
        node.on_request(Time(0), ClientId(1), keyed(1, "k"));
        let actions: Vec<_> = node.drain_actions().collect();
        let [(ClientId(1), Reply::Begun { xid, .. })] = replies(&actions)[..] else {
            panic!("expected Begun: {actions:?}");
        };
        // The retry, while it runs: the same xid, nothing sent.
        node.on_request(Time(1), ClientId(2), keyed(2, "k"));
        let actions: Vec<_> = node.drain_actions().collect();
        assert_eq!(
            replies(&actions),
            vec![(ClientId(2), Reply::Begun { request_id: 2, xid })]
        );
        assert!(!actions
            .iter()
            .any(|a| matches!(a, CoordinatorNodeAction::Send { .. })));
        assert_eq!(node.counters().begun, 1);
        // Both votes READY, the decision durable: both requests hear it.
        for (from, addr) in [("bank-a", A), ("bank-b", B)] {
            vote_ready(&mut node, Time(10), xid, from, addr);
        }
        let actions: Vec<_> = node.drain_actions().collect();
        let ticket = forced_ticket(&actions).expect("forced COMMIT record");
        node.on_durable(Time(20), ticket);
        let actions: Vec<_> = node.drain_actions().collect();
        let mut heard: Vec<ClientId> = replies(&actions)
            .into_iter()
            .filter(|(_, r)| {
                matches!(
                    r,
                    Reply::Outcome {
                        outcome: Outcome::Committed,
                        ..
                    }
                )
            })
            .map(|(c, _)| c)
            .collect();
        heard.sort();
        assert_eq!(heard, vec![ClientId(1), ClientId(2)]);
        // Retried after the outcome: the xid and the outcome at once.
        node.on_request(Time(30), ClientId(3), keyed(3, "k"));
        let actions: Vec<_> = node.drain_actions().collect();
        assert_eq!(
            replies(&actions),
            vec![
                (ClientId(3), Reply::Begun { request_id: 3, xid }),
                (
                    ClientId(3),
                    Reply::Outcome {
                        request_id: 3,
                        xid,
                        outcome: Outcome::Committed
                    }
                ),
            ]
        );
        assert_eq!(node.counters().begun, 1, "never a second transaction");
        // The key with a different request: refused, naming the first.
        let mut other = keyed(4, "k");
        if let Request::Begin { branches, .. } = &mut other {
            branches.pop();
        }
        node.on_request(Time(40), ClientId(4), other);
        let actions: Vec<_> = node.drain_actions().collect();
        match &replies(&actions)[..] {
            [(ClientId(4), Reply::Error { message, .. })] => {
                assert!(message.contains(&xid.to_string()), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The branches of `begin_request`, for an open transaction.
    fn registered(request_id: u64, xid: Xid) -> Request {
        let Request::Begin { branches, .. } = begin_request(0) else {
            unreachable!()
        };
        Request::Register {
            request_id,
            xid,
            branches,
        }
    }

    fn opened(node: &mut CoordinatorNode, now: Time, lifetime_ms: u64) -> (Xid, Time) {
        let open = Request::Open {
            request_id: 1,
            lifetime_ms: Some(lifetime_ms),
            idempotency_key: None,
        };
        node.on_request(now, ClientId(1), open);
        let actions: Vec<_> = node.drain_actions().collect();
        let xid = match &replies(&actions)[..] {
            [(_, Reply::Opened { xid, .. })] => *xid,
            other => panic!("expected Opened: {other:?}"),
        };
        let at = actions
            .iter()
            .find_map(|a| match a {
                CoordinatorNodeAction::SetTimer { key, at } if key.kind == TimerKind::Lifetime => {
                    Some(*at)
                }
                _ => None,
            })
            .expect("a lifetime timer");
        (xid, at)
    }

    /// SPEC §4: an open transaction neither committed nor aborted within
    /// its lifetime is aborted; nothing was sent for it, so nothing is.
    #[test]
    fn an_open_transaction_past_its_lifetime_is_aborted_and_cannot_be_committed() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.drain_actions().for_each(drop);
        let (xid, at) = opened(&mut node, Time(0), 500);
        assert_eq!(at, Time(0).plus_ms(500));
        node.on_request(Time(1), ClientId(2), registered(2, xid));
        let actions: Vec<_> = node.drain_actions().collect();
        assert_eq!(
            replies(&actions),
            vec![(
                ClientId(2),
                Reply::Registered {
                    request_id: 2,
                    xid,
                    branches: 2
                }
            )]
        );
        assert_eq!(node.status(Time(2), xid).state, CoordinatorState::Open);
        node.on_timer(at, TimerKey::new(xid, TimerKind::Lifetime));
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            !actions.iter().any(|a| matches!(
                a,
                CoordinatorNodeAction::Send { .. } | CoordinatorNodeAction::Persist { .. }
            )),
            "{actions:?}"
        );
        let status = node.status(at, xid);
        assert_eq!(status.state, CoordinatorState::Aborted);
        assert!(
            status.detail.contains("lifetime of 500 ms"),
            "{}",
            status.detail
        );
        // A commit now gets the outcome, and runs nothing.
        node.on_request(at, ClientId(3), Request::Commit { request_id: 3, xid });
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            matches!(
                replies(&actions).last(),
                Some((
                    _,
                    Reply::Outcome {
                        outcome: Outcome::Aborted { .. },
                        ..
                    }
                ))
            ),
            "{actions:?}"
        );
        assert_eq!(node.counters().begun, 0);
    }

    /// A commit within the lifetime runs both phases under the xid given
    /// at open; the lifetime timer firing later changes nothing.
    #[test]
    fn an_open_transaction_committed_in_time_runs_under_its_xid() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.drain_actions().for_each(drop);
        let (xid, at) = opened(&mut node, Time(0), 500);
        node.on_request(Time(1), ClientId(2), registered(2, xid));
        node.drain_actions().for_each(drop);
        node.on_request(Time(2), ClientId(3), Request::Commit { request_id: 3, xid });
        let actions: Vec<_> = node.drain_actions().collect();
        assert_eq!(
            replies(&actions),
            vec![(ClientId(3), Reply::Begun { request_id: 3, xid })]
        );
        let prepares = actions
            .iter()
            .filter(|a| matches!(a, CoordinatorNodeAction::Send { message, .. } if message.xid == xid && message.kind() == "PREPARE"))
            .count();
        assert_eq!(prepares, 2);
        node.on_timer(at, TimerKey::new(xid, TimerKind::Lifetime));
        assert_eq!(node.status(at, xid).state, CoordinatorState::Wait);
        // Registering more is too late now.
        node.on_request(at, ClientId(4), registered(4, xid));
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            matches!(
                &replies(&actions)[..],
                [(
                    _,
                    Reply::NotOpen {
                        state: CoordinatorState::Wait,
                        ..
                    }
                )]
            ),
            "{actions:?}"
        );
    }

    /// SPEC §8: a COMMIT not acknowledged within `attention_after_ms` is
    /// flagged with its attempts and last error, still re-sent, and the
    /// flag clears with the ACK.
    #[test]
    fn a_commit_unacknowledged_past_the_threshold_needs_attention_until_acked() {
        let mut node = CoordinatorNode::recover(
            CoordinatorNodeConfig {
                attention_after_ms: 1000,
                ..config()
            },
            vec![],
            Time(0),
        );
        node.drain_actions().for_each(drop);
        node.on_request(Time(0), ClientId(1), begin_request(1));
        let actions: Vec<_> = node.drain_actions().collect();
        let [(_, Reply::Begun { xid, .. })] = replies(&actions)[..] else {
            panic!("{actions:?}")
        };
        for (from, addr) in [("bank-a", A), ("bank-b", B)] {
            vote_ready(&mut node, Time(10), xid, from, addr);
        }
        let actions: Vec<_> = node.drain_actions().collect();
        node.on_durable(Time(20), forced_ticket(&actions).expect("COMMIT record"));
        node.drain_actions().for_each(drop);
        // bank-a acknowledges; bank-b never does.
        from_peer(&mut node, Time(30), xid, ("bank-a", A), Body::Ack);
        node.on_delivery_failed(Time(40), &"bank-b".to_string(), xid, "COMMIT", "refused");
        let mut now = Time(0).plus_ms(20);
        let mut flagged = None;
        for _ in 0..40 {
            now = now.plus_ms(200);
            node.on_timer(now, TimerKey::new(xid, TimerKind::Resend));
            for action in node.drain_actions() {
                if let CoordinatorNodeAction::Event(CoordinatorEvent::NeedsAttention {
                    participant,
                    attempts,
                    last_error,
                    pending_ms,
                    ..
                }) = action
                {
                    flagged = Some((participant, attempts, last_error, pending_ms));
                }
            }
            if flagged.is_some() {
                break;
            }
        }
        let (participant, attempts, last_error, pending_ms) = flagged.expect("flagged");
        assert!(participant.starts_with("bank-b"), "{participant}");
        assert!(
            attempts >= 2 && pending_ms >= 1000,
            "{attempts} {pending_ms}"
        );
        assert_eq!(last_error.as_deref(), Some("refused"));
        assert_eq!(node.needs_attention(), 1);
        let view = node.status(now, xid);
        let b = view
            .branches
            .iter()
            .find(|b| b.id == "bank-b")
            .expect("bank-b");
        assert!(
            b.delivery.as_ref().is_some_and(|d| d.needs_attention),
            "{b:?}"
        );
        from_peer(&mut node, now, xid, ("bank-b", B), Body::Ack);
        let cleared = node.drain_actions().any(|a| {
            matches!(
                a,
                CoordinatorNodeAction::Event(CoordinatorEvent::AttentionCleared { .. })
            )
        });
        assert!(cleared);
        assert_eq!(node.needs_attention(), 0);
    }

    /// A PREPARE the transport could not deliver (an HTTP participant's
    /// error) is that branch's VOTE ABORT: the transaction aborts at once.
    #[test]
    fn a_prepare_that_could_not_be_delivered_aborts_the_transaction() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.drain_actions().for_each(drop);
        node.on_request(Time(0), ClientId(1), begin_request(1));
        let actions: Vec<_> = node.drain_actions().collect();
        let [(_, Reply::Begun { xid, .. })] = replies(&actions)[..] else {
            panic!("{actions:?}")
        };
        node.on_delivery_failed(Time(5), &"bank-b".to_string(), xid, "PREPARE", "HTTP 500");
        let actions: Vec<_> = node.drain_actions().collect();
        match replies(&actions).last() {
            Some((
                _,
                Reply::Outcome {
                    outcome: Outcome::Aborted { reason },
                    ..
                },
            )) => {
                assert!(reason.contains("could not prepare: HTTP 500"), "{reason}")
            }
            other => panic!("expected an abort: {other:?}"),
        }
    }

    #[test]
    fn begin_replies_with_the_xid_first_then_the_outcome_once_commit_is_durable() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.drain_actions().for_each(drop);
        node.on_request(Time(0), ClientId(3), begin_request(9));
        let actions: Vec<_> = node.drain_actions().collect();
        let xid = match &replies(&actions)[..] {
            [(ClientId(3), Reply::Begun { request_id: 9, xid })] => *xid,
            other => panic!("expected Begun first, got {other:?}"),
        };
        let sends: Vec<(&str, &str)> = actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorNodeAction::Send { to, addr, .. } => Some((to.as_str(), &**addr)),
                _ => None,
            })
            .collect();
        assert_eq!(sends, vec![("bank-a", A), ("bank-b", B)]);
        // bank-b answers from another address: it moved.
        for (from, addr) in [("bank-a", A), ("bank-b", "127.0.0.1:9999")] {
            vote_ready(&mut node, Time(1000), xid, from, addr);
        }
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(replies(&actions).is_empty(), "no outcome before durable");
        let ticket = forced_ticket(&actions).expect("forced COMMIT record");
        node.on_durable(Time(2000), ticket);
        let actions: Vec<_> = node.drain_actions().collect();
        // The COMMIT goes to where bank-b is now.
        assert!(actions.iter().any(|a| matches!(
            a,
            CoordinatorNodeAction::Send { to, addr, .. } if to == "bank-b" && &**addr == "127.0.0.1:9999"
        )));
        assert_eq!(
            replies(&actions),
            vec![(
                ClientId(3),
                Reply::Outcome {
                    request_id: 9,
                    xid,
                    outcome: Outcome::Committed
                }
            )]
        );
        assert_eq!(node.counters().committed, 1);
    }

    #[test]
    fn admission_limit_answers_busy_retry_and_counts_it() {
        let mut node = CoordinatorNode::recover(config(), vec![], Time(0));
        node.on_request(Time(0), ClientId(1), begin_request(1));
        node.on_request(Time(0), ClientId(2), begin_request(2));
        let actions: Vec<_> = node.drain_actions().collect();
        let refused = replies(&actions)
            .into_iter()
            .find(|(c, _)| *c == ClientId(2))
            .expect("a reply to the second client");
        match refused.1 {
            Reply::Error { message, .. } => {
                assert!(message.starts_with("busy:"), "{message}")
            }
            other => panic!("expected busy, got {other:?}"),
        }
        assert_eq!(node.counters().refused_busy, 1);
    }

    #[test]
    fn status_after_restart_comes_from_the_one_replay() {
        let records = vec![
            CoordinatorRecord::Epoch { epoch: 1 },
            // The last life ran somewhere else.
            CoordinatorRecord::Peer {
                id: "coord".into(),
                addr: "10.0.0.9:7100".into(),
                incarnation: 1,
                configured: String::new(),
            },
            CoordinatorRecord::Begin {
                xid: Xid(5),
                participants: vec!["bank-a".into()],
            },
        ];
        let mut node = CoordinatorNode::recover(config(), records.clone(), Time(0));
        // It moved: every configured participant hears where it is now.
        let hellos: Vec<(String, String)> = node
            .drain_actions()
            .filter_map(|a| match a {
                CoordinatorNodeAction::Greet {
                    to,
                    addr,
                    greeting: Greeting::Hello,
                    ..
                } => Some((to, addr)),
                _ => None,
            })
            .collect();
        assert_eq!(
            hellos,
            vec![("bank-a".into(), A.into()), ("bank-b".into(), B.into())]
        );
        let status = node.status(Time(0), Xid(5));
        assert_eq!(status.state, CoordinatorState::Aborted);
        assert!(
            status.detail.contains("presumed abort"),
            "{}",
            status.detail
        );
        assert_eq!(node.epoch(), 2);
        // Started where it ran last time: no hellos.
        let mut same = records;
        same[1] = CoordinatorRecord::Peer {
            id: "coord".into(),
            addr: "127.0.0.1:7100".into(),
            incarnation: 1,
            configured: String::new(),
        };
        let mut node = CoordinatorNode::recover(config(), same, Time(0));
        assert!(!node
            .drain_actions()
            .any(|a| matches!(a, CoordinatorNodeAction::Greet { .. })));
    }
}
