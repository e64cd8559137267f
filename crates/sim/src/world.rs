//! The simulated world: nodes, disks, network, clients and the
//! discrete-event loop that drives them in virtual time.
//!
//! The world is the driver of the sans-IO cores, written to be faithful to
//! what a real driver may do and no kinder: a node's actions are carried
//! out in order, and the node may crash between any two of them; a
//! `Persist` appends to the node's [`SimDisk`] and, when forced, is
//! reported durable only after an fsync that covers it completes; a lazy
//! record survives a crash only if a later fsync covered it or the crash
//! happened to keep it; a `SetTimer` becomes an event at that time (the core
//! ignores stale ones); a crash throws away the node's memory, its fsync in
//! flight and its timers. Messages travel through a network that loses,
//! duplicates, delays, reorders and partitions them as the seed says.
//!
//! Everything random comes from one ChaCha8 RNG seeded with the run's seed
//! and drawn in event order; events at the same virtual time run in the
//! order they were scheduled. It must never read the clock, spawn a thread
//! or iterate a `HashMap` to decide anything.
//!
//! Two ways in: [`World::random`] (used by [`crate::run_seed`]) plans a
//! workload and faults from the seed; [`World::scripted`] gives a quiet
//! cluster that a scenario test drives step by step, injecting exactly the
//! fault it is about.

use crate::config::{SimConfig, SimOptions};
use crate::disk::SimDisk;
use crate::ids::NodeId;
use crate::net::{Fate, MessageRule, SentMessage};
use crate::report::{fmt_time, ClientOutcome, SimFailure, SimReport};
use crate::trace::Trace;
use crate::workload::{plan_transactions, Intent, TxnPlan};
use concord_api::{BranchRequest, Outcome, PeerBody, PeerEnvelope, PeerHint, Reply, Request};
use concord_node::hello::Greeting;
use concord_node::{
    ClientId, CoordinatorNode, CoordinatorNodeAction, CoordinatorNodeConfig, ParticipantEvent,
    ParticipantNodeAction, ParticipantNodeConfig, ParticipantServerNode,
};
use concord_participant::delayed::Delayed;
use concord_participant::kv::{encode_work, seed_record, KvOp, KvStore, KvView};
use concord_participant::ParticipantNode;
use concord_participant::ResourceOp;
use concord_proto::{
    Coordinator, CoordinatorRecord, Decision, Durability, Message, ParticipantNotice,
    ParticipantRecord, Shape, Time, TimerKey, Xid,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

/// Which part of a run the world is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Faults on, clients submitting.
    Safety,
    /// Faults healed (no loss, no partitions, no crashes, every node up):
    /// everything must resolve.
    Liveness,
    /// A scripted scenario: no random faults, only what the script does.
    Scripted,
}

/// Which of a partitioned node's messages are lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Everything to and from it.
    Both,
    /// Only what is sent to it: it still talks, nobody answers it.
    Inbound,
    /// Only what it sends: it hears everything, nobody hears it.
    Outbound,
}

/// A node's partition: until when, and which way.
#[derive(Clone, Copy, Debug)]
struct Partition {
    until: Time,
    cut: Cut,
}

/// How much of a node's unsynced log tail survives its crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepUnsynced {
    Nothing,
    All,
    /// The first n unsynced records (or all, if fewer).
    Count(usize),
    /// A prefix of random length, drawn from the run's RNG.
    Random,
}

#[derive(Debug)]
enum Event {
    /// A client submits its transaction to the coordinator.
    Submit {
        client: usize,
    },
    /// A client stops waiting for its answer.
    ClientGiveUp {
        client: usize,
    },
    /// A frame arrives: from `from` (at its address of generation
    /// `reply_gen`, its `reply_to`) for `to` at its address of generation
    /// `to_gen` (lost if `to` has moved on since).
    Deliver {
        from: NodeId,
        /// The sender's incarnation when it sent the frame.
        incarnation: u64,
        reply_gen: u32,
        to: NodeId,
        to_gen: u32,
        body: PeerBody,
        /// The frame's directory hints (a PREPARE's other participants).
        peers: Vec<PeerHint>,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        key: TimerKey,
    },
    FsyncDone {
        node: NodeId,
        incarnation: u32,
        /// The disk's generation when the fsync was issued: a compaction
        /// in between renumbers the records.
        generation: u64,
        upto: usize,
    },
    /// A compaction's rewrite of `node`'s log completes.
    RewriteDone {
        node: NodeId,
        incarnation: u32,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    /// Cut `node` off (both ways, or only its incoming or outgoing
    /// messages) until `until`.
    Isolate {
        node: NodeId,
        cut: Cut,
        until: Time,
    },
    /// Participant `from` asks participant `to` for its STATE of `xid`
    /// (a peer's INQUIRE, as in cooperative termination). `submitted`:
    /// when the client submitted `xid`; the asker claims its PREPARE is
    /// that old, which is never younger than the truth.
    PeerInquire {
        from: usize,
        to: usize,
        xid: Xid,
        epoch: concord_proto::Epoch,
        submitted: Time,
    },
    /// A participant's resource finishes an operation it answered later.
    ResourceDone {
        p: usize,
        incarnation: u32,
        xid: Xid,
        op: ResourceOp,
    },
    /// An operator asks the coordinator to "retry now" for `xid` (SPEC
    /// §8): whatever state it is in, this must never change an outcome.
    OperatorRetry {
        xid: Xid,
    },
    /// End of the safety phase.
    Heal,
}

/// The simulated coordinator's operator token.
const SIM_OPERATOR_TOKEN: &str = "sim-operator";
/// Operator requests' client ids, above every client's index.
const OPERATOR_CLIENT: ClientId = ClientId(u64::MAX);
/// Mixed into the seed of the operator's draws.
const OPERATOR_SEED: u64 = 0x6f70_6572_6174_6f72;
/// The share of transactions an operator asks to retry now at some point.
const OPERATOR_RETRY_PROBABILITY: f64 = 0.1;

/// Every participant's resource: the key-value store behind a wrapper that
/// answers late and fails commits as the seed says.
pub type SimResource = Delayed<KvStore>;

impl Event {
    fn tag(&self) -> u64 {
        match self {
            Event::Submit { .. } => 1,
            Event::ClientGiveUp { .. } => 2,
            Event::Deliver { .. } => 3,
            Event::Timer { .. } => 4,
            Event::FsyncDone { .. } => 5,
            Event::Crash { .. } => 6,
            Event::Restart { .. } => 7,
            Event::Isolate { .. } => 8,
            Event::Heal => 9,
            Event::PeerInquire { .. } => 10,
            Event::RewriteDone { .. } => 11,
            Event::ResourceDone { .. } => 12,
            Event::OperatorRetry { .. } => 13,
        }
    }
}

/// An event in the queue. Ordered by time, then by the order it was
/// scheduled in, so equal times never depend on anything but the run.
#[derive(Debug)]
struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A client transaction and what its client knows.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub xid: Xid,
    pub plan: TxnPlan,
    pub submitted: bool,
    pub outcome: ClientOutcome,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    transactions: u64,
    sent: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    restarts: u64,
    fsyncs: u64,
    compactions: u64,
    crashes_in_compaction: u64,
    fsync_errors: u64,
    events: u64,
}

pub struct World {
    pub(crate) config: SimConfig,
    options: SimOptions,
    rng: ChaCha8Rng,
    /// The operator's own draws (when to "retry now"), apart from `rng` so
    /// that they do not move every other draw of a seed.
    operator_rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    phase: Phase,
    heal_at: Time,
    pub(crate) coordinator: Option<CoordinatorNode>,
    pub(crate) coordinator_disk: SimDisk<CoordinatorRecord>,
    pub(crate) participants: Vec<Option<ParticipantServerNode<SimResource>>>,
    pub(crate) participant_disks: Vec<SimDisk<ParticipantRecord>>,
    /// Per node (by `NodeId::ordinal`): bumped at every crash, so timers
    /// and fsyncs of an earlier life are recognised as stale.
    incarnations: Vec<u32>,
    /// Per node (by ordinal): the generation of its address ("p0@2"),
    /// bumped when it restarts somewhere else.
    addr_gen: Vec<u32>,
    partitions: BTreeMap<NodeId, Partition>,
    rules: Vec<MessageRule>,
    sent_log: Option<Vec<SentMessage>>,
    pub(crate) clients: Vec<Client>,
    pub(crate) client_of: BTreeMap<Xid, usize>,
    pub(crate) ghost: crate::checks::Ghost,
    pub(crate) initial_balances: Vec<BTreeMap<String, i64>>,
    stats: Stats,
    trace: Trace,
    failure: Option<SimFailure>,
    /// The event queue ran dry: nothing more will ever happen.
    pub(crate) quiescent: bool,
}

/// Format a trace line only when tracing is on.
macro_rules! trace {
    ($world:expr, $node:expr, $($arg:tt)*) => {
        if $world.trace.enabled() {
            let now = $world.now;
            $world.trace.line(now, $node, format!($($arg)*));
        }
    };
}

impl World {
    /// A run planned entirely from `seed`: cluster, workload, crashes and
    /// partitions; nodes are started at time 0.
    pub fn random(seed: u64, options: &SimOptions) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let config = SimConfig::generate(seed, options, &mut rng);
        let plans = plan_transactions(&config, &mut rng);
        let mut world = World::build(config, options.clone(), rng, Phase::Safety, false);
        trace!(world, None, "config {:?}", world.config);
        for plan in plans {
            let at = plan.submit_at;
            let client = world.add_client(plan);
            world.schedule(at, Event::Submit { client });
        }
        world.plan_faults();
        world.heal_at = Time(world.config.safety_ms * 1000);
        world.schedule(world.heal_at, Event::Heal);
        world.start_all();
        world
    }

    /// A quiet cluster for a scripted scenario: `config` (normally
    /// [`SimConfig::scripted`]) with tracing and the sent-message log on.
    /// No random fault ever happens; the script submits transactions,
    /// crashes and restarts nodes and adds message rules.
    pub fn scripted(config: SimConfig) -> World {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let options = SimOptions {
            trace: true,
            ..SimOptions::default()
        };
        let mut world = World::build(config, options, rng, Phase::Scripted, true);
        world.start_all();
        world
    }

    fn build(
        config: SimConfig,
        options: SimOptions,
        rng: ChaCha8Rng,
        phase: Phase,
        log_sent: bool,
    ) -> World {
        let n = config.participants;
        let seed = seed_record(config.accounts_per_participant, config.balance_initial);
        let initial = KvStore::replay([&seed])
            .expect("the seed record replays")
            .balances()
            .clone();
        World {
            trace: Trace::new(options.trace),
            options,
            operator_rng: ChaCha8Rng::seed_from_u64(config.seed ^ OPERATOR_SEED),
            rng,
            now: Time(0),
            queue: BinaryHeap::new(),
            seq: 0,
            phase,
            heal_at: Time(0),
            coordinator: None,
            coordinator_disk: SimDisk::with_durable(Vec::new()),
            participants: (0..n).map(|_| None).collect(),
            participant_disks: (0..n)
                .map(|_| SimDisk::with_durable(vec![seed.clone()]))
                .collect(),
            incarnations: vec![0; n + 1],
            addr_gen: vec![0; n + 1],
            partitions: BTreeMap::new(),
            rules: Vec::new(),
            sent_log: log_sent.then(Vec::new),
            clients: Vec::new(),
            client_of: BTreeMap::new(),
            ghost: Default::default(),
            initial_balances: vec![initial; n],
            stats: Stats::default(),
            failure: None,
            quiescent: false,
            config,
        }
    }

    fn add_client(&mut self, plan: TxnPlan) -> usize {
        let client = self.clients.len();
        // The coordinator node mints the xid when the client submits (the
        // shipped minting, seeded from the run's seed); until then none.
        self.clients.push(Client {
            xid: Xid(0),
            plan,
            submitted: false,
            outcome: ClientOutcome::Pending,
        });
        client
    }

    /// Scheduled crashes (with their restarts) and partitions.
    fn plan_faults(&mut self) {
        let safety_us = self.config.safety_ms * 1000;
        for _ in 0..self.config.faults.crashes {
            let at = Time(self.rng.gen_range(0..=safety_us));
            let node = self.random_node();
            self.schedule(at, Event::Crash { node });
            if let Some(back) = self.random_downtime(node) {
                self.schedule(Time(at.0 + back), Event::Restart { node });
            }
        }
        for _ in 0..self.config.faults.partitions {
            let at = Time(self.rng.gen_range(0..=safety_us));
            let node = self.random_node();
            let until = at.plus_ms(self.rng.gen_range(1..=self.config.faults.partition_ms_max));
            let cut = [Cut::Both, Cut::Inbound, Cut::Outbound][self.rng.gen_range(0..3)];
            self.schedule(at, Event::Isolate { node, cut, until });
        }
    }

    /// The coordinator a third of the time, else a random participant.
    fn random_node(&mut self) -> NodeId {
        if self.rng.gen_bool(1.0 / 3.0) {
            NodeId::Coordinator
        } else {
            NodeId::Participant(self.rng.gen_range(0..self.config.participants))
        }
    }

    /// How long (µs) a crashed node stays down; `None`: until the liveness
    /// phase (rarely for the coordinator: with it down, nothing commits).
    fn random_downtime(&mut self, node: NodeId) -> Option<u64> {
        let until_heal = match node {
            NodeId::Coordinator => 0.05,
            NodeId::Participant(_) => 0.2,
        };
        if self.rng.gen_bool(until_heal) {
            None
        } else {
            Some(
                self.rng
                    .gen_range(1..=self.config.faults.downtime_ms_max.max(1))
                    * 1000,
            )
        }
    }

    fn start_all(&mut self) {
        self.start(NodeId::Coordinator);
        for i in 0..self.config.participants {
            self.start(NodeId::Participant(i));
        }
    }

    // ----- the event loop -------------------------------------------------

    fn schedule(&mut self, at: Time, event: Event) {
        let at = at.max(self.now);
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Process the next event. Returns false when there is none left or a
    /// failure has been found.
    pub fn step(&mut self) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let Some(Reverse(next)) = self.queue.pop() else {
            self.quiescent = true;
            return false;
        };
        self.now = self.now.max(next.at);
        self.stats.events += 1;
        self.trace.mix(&[self.now.0, next.event.tag()]);
        self.handle(next.event);
        true
    }

    /// Run the safety phase and then the liveness phase until the world
    /// goes quiet (nothing left to happen) or the liveness bound passes.
    pub fn run_phases(&mut self) {
        let deadline = self.heal_at.plus_ms(self.options.liveness_ms_max);
        while self.failure.is_none() {
            if self.stats.events >= self.options.events_max {
                let detail = format!(
                    "still busy after {} events (phase {:?})",
                    self.stats.events, self.phase
                );
                self.fail("termination", None, detail);
                return;
            }
            match self.queue.peek() {
                None => {
                    self.quiescent = true;
                    return;
                }
                Some(Reverse(next)) if next.at > deadline => return,
                Some(_) => {}
            }
            self.step();
        }
    }

    /// Check every end-of-run invariant and produce the report.
    pub fn finish(mut self) -> Result<SimReport, SimFailure> {
        if self.failure.is_none() {
            self.check_final();
        }
        if let Some(mut failure) = self.failure.take() {
            failure.trace = self.trace.take_lines().into();
            return Err(failure);
        }
        Ok(self.report())
    }

    fn report(&mut self) -> SimReport {
        let count =
            |o: ClientOutcome| self.clients.iter().filter(|c| c.outcome == o).count() as u64;
        SimReport {
            seed: self.config.seed,
            participants: self.config.participants,
            transactions: self.stats.transactions,
            committed: count(ClientOutcome::Committed),
            aborted: count(ClientOutcome::Aborted),
            unknown: count(ClientOutcome::Unknown) + count(ClientOutcome::Pending),
            committed_in_fact: self
                .ghost
                .applied
                .values()
                .filter(|a| !a.commit.is_empty())
                .count() as u64,
            messages_sent: self.stats.sent,
            messages_dropped: self.stats.dropped,
            messages_duplicated: self.stats.duplicated,
            crashes: self.stats.crashes,
            restarts: self.stats.restarts,
            fsyncs: self.stats.fsyncs,
            compactions: self.stats.compactions,
            crashes_in_compaction: self.stats.crashes_in_compaction,
            fsync_errors: self.stats.fsync_errors,
            events: self.stats.events,
            virtual_time: self.now,
            liveness_time: Time(self.now.0.saturating_sub(self.heal_at.0)),
            trace_hash: self.trace.hash(),
            trace: self.trace.take_lines(),
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::OperatorRetry { xid } => self.operator_retry(xid),
            Event::Submit { client } => self.submit_client(client),
            Event::ClientGiveUp { client } => {
                let c = &mut self.clients[client];
                if c.outcome == ClientOutcome::Pending {
                    c.outcome = ClientOutcome::Unknown;
                    let xid = c.xid;
                    trace!(self, None, "client of {xid:?} gives up: outcome unknown");
                }
            }
            Event::Deliver {
                from,
                incarnation,
                reply_gen,
                to,
                to_gen,
                body,
                peers,
            } => self.deliver(from, (incarnation, reply_gen), to, to_gen, (body, peers)),
            Event::Timer {
                node,
                incarnation,
                key,
            } => {
                self.trace.mix(&[node.ordinal(), key.xid.0 as u64]);
                if self.incarnations[node.ordinal() as usize] != incarnation {
                    return; // a timer of an earlier life
                }
                let now = self.node_now(node);
                match node {
                    NodeId::Coordinator => {
                        if let Some(c) = self.coordinator.as_mut() {
                            trace!(self, Some(node), "timer {:?} {:?}", key.xid, key.kind);
                            c.on_timer(now, key);
                            self.run_coordinator();
                        }
                    }
                    NodeId::Participant(i) => {
                        if let Some(p) = self.participants[i].as_mut() {
                            trace!(self, Some(node), "timer {:?} {:?}", key.xid, key.kind);
                            p.on_timer(now, key);
                            self.run_participant(i);
                        }
                    }
                }
            }
            Event::FsyncDone {
                node,
                incarnation,
                generation,
                upto,
            } => self.fsync_done(node, incarnation, generation, upto),
            Event::RewriteDone { node, incarnation } => self.rewrite_done(node, incarnation),
            Event::Crash { node } => {
                if self.phase == Phase::Safety {
                    self.crash(node, KeepUnsynced::Random);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::Isolate { node, cut, until } => {
                if self.phase == Phase::Safety {
                    self.isolate_until(node, cut, until);
                }
            }
            Event::Heal => self.heal(),
            Event::ResourceDone {
                p,
                incarnation,
                xid,
                op,
            } => {
                self.trace.mix(&[100 + p as u64, xid.0 as u64]);
                if self.incarnations[NodeId::Participant(p).ordinal() as usize] != incarnation {
                    return; // the resource of an earlier life
                }
                let now = self.node_now(NodeId::Participant(p));
                if let Some(node) = self.participants[p].as_mut() {
                    let result = node.resource_mut().finish(xid, op);
                    trace!(
                        self,
                        Some(NodeId::Participant(p)),
                        "resource {op:?} of {xid:?} done: {result:?}"
                    );
                    node.on_resource_done(now, xid, op, result);
                    self.run_participant(p);
                }
            }
            Event::PeerInquire {
                from,
                to,
                xid,
                epoch,
                submitted,
            } => {
                if !self.is_up(NodeId::Participant(from)) {
                    return; // a crashed node asks nobody
                }
                let message = Message {
                    xid,
                    epoch,
                    from: NodeId::Participant(from).name(),
                    body: concord_proto::Body::Inquire {
                        prepared_ms_ago: Some(self.now.ms_since(submitted)),
                    },
                };
                let to = self.addr_of(NodeId::Participant(to));
                self.send(NodeId::Participant(from), &to, message, Vec::new());
            }
        }
    }

    /// End of the safety phase: no more loss, partitions or crashes, and
    /// every node that is down restarts now.
    fn heal(&mut self) {
        trace!(
            self,
            None,
            "=== liveness phase: faults healed, every node restarts ==="
        );
        self.phase = Phase::Liveness;
        self.partitions.clear();
        self.restart(NodeId::Coordinator);
        for i in 0..self.config.participants {
            self.restart(NodeId::Participant(i));
        }
        // A participant that moved may have heard from no coordinator it
        // could tell; the operator gives it the coordinator's address
        // (`concord participant --coordinator NAME=ADDR`), as one would for
        // a node one moved: healed means reachable again.
        let coordinator = (
            NodeId::Coordinator.name(),
            self.addr_of(NodeId::Coordinator),
        );
        for i in 0..self.config.participants {
            if self.addr_gen[NodeId::Participant(i).ordinal() as usize] == 0 {
                continue;
            }
            let now = self.node_now(NodeId::Participant(i));
            if let Some(p) = self.participants[i].as_mut() {
                p.introduce(now, coordinator.0.clone(), &coordinator.1);
                self.run_participant(i);
            }
        }
    }

    // ----- clients ----------------------------------------------------------

    fn submit_client(&mut self, client: usize) {
        if self.coordinator.is_none() {
            // The client cannot reach a coordinator; it tries again.
            trace!(self, None, "client {client}: coordinator down, retrying");
            self.schedule(self.now.plus_ms(5), Event::Submit { client });
            return;
        }
        // Branches are named the way a real client names them: by the
        // participant's configured name, resolved by the node's directory.
        let branches: Vec<BranchRequest> = self.clients[client]
            .plan
            .branches
            .iter()
            .map(|(p, ops)| BranchRequest {
                participant: NodeId::Participant(*p).name(),
                work: encode_work(ops),
            })
            .collect();
        let shape = self.clients[client].plan.shape;
        let parents = self.clients[client].plan.parents.clone();
        trace!(
            self,
            None,
            "client {client} submits ({:?}, {}{}): {}",
            self.clients[client].plan.intent,
            shape.name(),
            if parents.is_empty() {
                String::new()
            } else {
                format!(" parents {parents:?}")
            },
            show_branches(&self.clients[client].plan.branches)
        );
        let now = self.node_now(NodeId::Coordinator);
        let request = Request::Begin {
            request_id: client as u64,
            branches,
            prepare_timeout_ms: None,
            shape,
            parents,
            idempotency_key: None,
        };
        let coordinator = self.coordinator.as_mut().expect("checked above");
        coordinator.on_request(now, ClientId(client as u64), request);
        self.run_coordinator();
        if !self.clients[client].submitted {
            if self.coordinator.is_some() && self.failure.is_none() {
                self.fail("driver", None, format!("client {client}: no Begun reply"));
            } else {
                // The coordinator crashed before its reply left: the client
                // sees its connection break without having learned an xid
                // (nothing was sent to a participant yet).
                trace!(self, None, "client {client}: no reply, outcome unknown");
                self.clients[client].outcome = ClientOutcome::Unknown;
            }
            return;
        }
        self.stats.transactions += 1;
        let give_up = self.now.plus_ms(self.config.client_timeout_ms);
        self.schedule(give_up, Event::ClientGiveUp { client });
    }

    /// An operator's "retry now" for `xid`, typed out and with the token:
    /// carried out or refused, both fine; nothing else is.
    fn operator_retry(&mut self, xid: Xid) {
        if self.coordinator.is_none() {
            return;
        }
        let now = self.node_now(NodeId::Coordinator);
        let action = concord_api::OperatorRequest {
            xid,
            action: concord_proto::AuditAction::RetryNow,
            confirm: xid.to_string(),
            operator: "sim".into(),
            reason: "simulated operator".into(),
            token: SIM_OPERATOR_TOKEN.into(),
            at_unix_ms: now.0 / 1000,
        };
        trace!(self, None, "operator: retry now {xid:?}");
        let request = Request::Operator {
            request_id: 0,
            action,
        };
        let coordinator = self.coordinator.as_mut().expect("checked above");
        coordinator.on_request(now, OPERATOR_CLIENT, request);
        self.run_coordinator();
    }

    /// Maybe have an operator ask to retry `xid` now, at a random moment
    /// of its life.
    fn maybe_plan_operator_retry(&mut self, xid: Xid) {
        // A script says what happens; it has no operator.
        if self.phase == Phase::Scripted || !self.operator_rng.gen_bool(OPERATOR_RETRY_PROBABILITY)
        {
            return;
        }
        // While it is still preparing or delivering its COMMIT (most
        // finish within a few phase-1 timeouts), or long after.
        let window_ms = if self.operator_rng.gen_bool(0.5) {
            self.config.prepare_timeout_ms.saturating_mul(3)
        } else {
            self.config.resend_ms_max.saturating_mul(8)
        };
        let window_us = window_ms.saturating_mul(1000).max(1);
        let at = Time(self.now.0 + self.operator_rng.gen_range(0..=window_us));
        self.schedule(at, Event::OperatorRetry { xid });
    }

    /// A reply from the coordinator node to client `client`.
    fn on_reply(&mut self, client: ClientId, reply: Reply) {
        if client == OPERATOR_CLIENT {
            return match reply {
                Reply::Operator { entry, .. } if entry.result.is_some() => {
                    trace!(self, None, "operator: {:?}", entry.result)
                }
                Reply::Refused { message, .. } => {
                    trace!(self, None, "operator refused: {message}")
                }
                other => self.fail("driver", None, format!("operator got {other:?}")),
            };
        }
        let Some(c) = usize::try_from(client.0)
            .ok()
            .filter(|c| *c < self.clients.len())
        else {
            return self.fail("driver", None, format!("reply to unknown {client:?}"));
        };
        match reply {
            Reply::Begun { xid, .. } => {
                trace!(self, None, "client {c} learns its xid {xid:?}");
                self.clients[c].xid = xid;
                self.clients[c].submitted = true;
                self.client_of.insert(xid, c);
                self.maybe_plan_peer_inquiry(c, xid);
                self.maybe_plan_operator_retry(xid);
            }
            Reply::Outcome { xid, outcome, .. } => self.on_outcome(xid, outcome),
            Reply::Error { message, .. } => {
                self.fail("driver", None, format!("begin refused: {message}"))
            }
            other => self.fail("driver", None, format!("unexpected reply {other:?}")),
        }
    }

    /// Maybe have one participant of `xid` ask another for its state at
    /// a random moment of the transaction's life.
    fn maybe_plan_peer_inquiry(&mut self, client: usize, xid: Xid) {
        let p = self.config.faults.peer_inquiry_probability;
        let branches = self.clients[client].plan.branches.len();
        if p <= 0.0 || branches < 2 || !self.rng.gen_bool(p) {
            return;
        }
        let a = self.rng.gen_range(0..branches);
        let b = (a + self.rng.gen_range(1..branches)) % branches;
        let (from, to) = (
            self.clients[client].plan.branches[a].0,
            self.clients[client].plan.branches[b].0,
        );
        let window_us = self.config.prepare_timeout_ms.saturating_mul(2000).max(1);
        let at = Time(self.now.0 + self.rng.gen_range(0..=window_us));
        let epoch = self.coordinator.as_ref().map_or(0, |c| c.epoch());
        self.schedule(
            at,
            Event::PeerInquire {
                from,
                to,
                xid,
                epoch,
                submitted: self.now,
            },
        );
    }

    fn on_outcome(&mut self, xid: Xid, outcome: Outcome) {
        let told = match &outcome {
            Outcome::Committed => ClientOutcome::Committed,
            Outcome::Aborted { .. } => ClientOutcome::Aborted,
        };
        trace!(
            self,
            Some(NodeId::Coordinator),
            "outcome {xid:?}: {outcome:?}"
        );
        self.outcome_reported(xid, told);
        if let Some(&client) = self.client_of.get(&xid) {
            let c = &mut self.clients[client];
            if c.outcome == ClientOutcome::Pending {
                c.outcome = told;
            }
        }
    }

    // ----- nodes: start, crash, restart -------------------------------------

    fn coordinator_config(&self) -> CoordinatorNodeConfig {
        let c = &self.config;
        CoordinatorNodeConfig {
            id: NodeId::Coordinator.name(),
            addr: self.addr_of(NodeId::Coordinator),
            // Named by their addresses, which are already names ("p0").
            participants: (0..c.participants)
                // Where each participant first was: a configuration that is
                // never updated, so a participant that moved must be found
                // through its hellos and frames, and remembered across the
                // coordinator's restarts.
                .map(|i| {
                    let node = NodeId::Participant(i);
                    (node.name(), self.addr_string(node, 0))
                })
                .collect(),
            prepare_timeout_ms: c.prepare_timeout_ms,
            prepare_timeout_ms_min: c.prepare_timeout_ms_min,
            prepare_timeout_ms_max: c.prepare_timeout_ms_max,
            resend_ms_initial: c.resend_ms_initial,
            resend_ms_min: c.resend_ms_min,
            resend_ms_max: c.resend_ms_max,
            timeout_samples_min: c.timeout_samples_min,
            compact_after_records: c.compact_after_records,
            transactions_in_flight_max: usize::MAX,
            recent_outcomes_max: 100_000,
            // A new seed per incarnation, as a restarted server reseeds.
            xid_seed: c.seed ^ (u64::from(self.incarnations[0]) << 48),
            one_phase: c.one_phase,
            // Short enough that the safety phase's outages flag branches,
            // so the liveness phase checks that every flag is cleared.
            attention_after_ms: c.resend_ms_max.saturating_mul(4),
            // Small, so that runs reach the bound and drop timelines.
            timelines_max: 16,
            operator_token: Some(SIM_OPERATOR_TOKEN.into()),
            // The embedded log: the epoch comes from its own records.
            epoch_floor: 0,
            shared_store: false,
        }
    }

    fn participant_config(&self, i: usize) -> ParticipantNodeConfig {
        let c = &self.config;
        ParticipantNodeConfig {
            id: NodeId::Participant(i).name(),
            addr: self.addr_of(NodeId::Participant(i)),
            inquire_ms_initial: c.inquire_ms_initial,
            inquire_ms_min: c.inquire_ms_min,
            inquire_ms_max: c.inquire_ms_max,
            timeout_samples_min: c.timeout_samples_min,
            child_prepare_timeout_ms_min: c.child_prepare_timeout_ms_min,
            finished_max: c.finished_max,
            compact_after_records: c.compact_after_records,
            apply_retry_ms_initial: c.resource.apply_retry_ms_initial,
            apply_retry_ms_max: c.resource.apply_retry_ms_max,
            branches_in_flight_max: c.branches_in_flight_max,
            read_only_votes: c.read_only_votes,
        }
    }

    /// Whether `node` is running.
    pub fn is_up(&self, node: NodeId) -> bool {
        match node {
            NodeId::Coordinator => self.coordinator.is_some(),
            NodeId::Participant(i) => self.participants.get(i).is_some_and(|p| p.is_some()),
        }
    }

    fn exists(&self, node: NodeId) -> bool {
        match node {
            NodeId::Coordinator => true,
            NodeId::Participant(i) => i < self.config.participants,
        }
    }

    /// Bring `node` up from what its disk holds (a first start, or a
    /// restart): the core's `recover` with the surviving records and, for a
    /// participant, `KvStore::replay` of them.
    fn start(&mut self, node: NodeId) {
        let now = self.node_now(node);
        match node {
            NodeId::Coordinator => {
                let records = match self.coordinator_disk.recover() {
                    Ok(r) => r,
                    Err(e) => return self.fail("log_recovery", None, format!("{node}: {e}")),
                };
                trace!(self, Some(node), "start from {} log records", records.len());
                let config = self.coordinator_config();
                self.coordinator = Some(CoordinatorNode::recover(config, records, now));
                self.run_coordinator();
            }
            NodeId::Participant(i) => {
                let mut records = match self.participant_disks[i].recover() {
                    Ok(r) => r,
                    Err(e) => return self.fail("log_recovery", None, format!("{node}: {e}")),
                };
                // A new life, durable before anything is sent, as the
                // server does it.
                let started =
                    concord_node::participant::started_record(&records, &self.addr_of(node));
                self.participant_disks[i].append_synced(started.clone());
                records.push(started);
                let kv = match KvStore::replay(records.iter()) {
                    Ok(kv) => kv,
                    Err(e) => {
                        return self.fail("log_recovery", None, format!("{node} replay: {e}"))
                    }
                };
                trace!(self, Some(node), "start from {} log records", records.len());
                let config = self.participant_config(i);
                let resource = Delayed::new(kv, self.config.resource.delay);
                self.participants[i] = Some(ParticipantServerNode::recover(
                    config, records, resource, now,
                ));
                self.check_locks_restored(i);
                self.run_participant(i);
            }
        }
    }

    /// Crash `node`: its memory, timers and fsync in flight are gone, and
    /// its log keeps the durable records plus `keep` of the rest. Clients
    /// waiting on a crashed coordinator will never hear: their outcome is
    /// unknown. A node that is already down is left alone.
    pub fn crash(&mut self, node: NodeId, keep: KeepUnsynced) {
        if !self.is_up(node) {
            return;
        }
        let (unsynced, rewriting) = match node {
            NodeId::Coordinator => (
                self.coordinator_disk.unsynced(),
                self.coordinator_disk.rewriting(),
            ),
            NodeId::Participant(i) => (
                self.participant_disks[i].unsynced(),
                self.participant_disks[i].rewriting(),
            ),
        };
        if rewriting {
            self.stats.crashes_in_compaction += 1;
        }
        let kept = match keep {
            KeepUnsynced::Nothing => 0,
            KeepUnsynced::All => unsynced,
            KeepUnsynced::Count(n) => n.min(unsynced),
            KeepUnsynced::Random => self.rng.gen_range(0..=unsynced),
        };
        match node {
            NodeId::Coordinator => {
                self.coordinator_disk.crash(kept);
                self.coordinator = None;
                for c in &mut self.clients {
                    if c.submitted && c.outcome == ClientOutcome::Pending {
                        c.outcome = ClientOutcome::Unknown;
                    }
                }
            }
            NodeId::Participant(i) => {
                self.participant_disks[i].crash(kept);
                self.participants[i] = None;
            }
        }
        self.incarnations[node.ordinal() as usize] += 1;
        self.stats.crashes += 1;
        self.trace
            .mix(&[node.ordinal(), kept as u64, unsynced as u64]);
        trace!(
            self,
            Some(node),
            "CRASH (log keeps {kept} of {unsynced} unsynced records)"
        );
    }

    /// Restart `node` from its log, if it is down.
    pub fn restart(&mut self, node: NodeId) {
        let elsewhere =
            matches!(node, NodeId::Participant(_)) && self.config.faults.restart_elsewhere;
        self.restart_with(node, elsewhere);
    }

    /// Restart `node` at a new address (scripted scenarios), if it is down.
    pub fn restart_elsewhere(&mut self, node: NodeId) {
        self.restart_with(node, true);
    }

    fn restart_with(&mut self, node: NodeId, elsewhere: bool) {
        if self.is_up(node) {
            return;
        }
        self.stats.restarts += 1;
        if elsewhere {
            self.addr_gen[node.ordinal() as usize] += 1;
            let addr = self.addr_of(node);
            trace!(self, Some(node), "RESTART at a new address, {addr}");
        } else {
            trace!(self, Some(node), "RESTART");
        }
        self.start(node);
    }

    /// Maybe crash `node` right after one of its actions (a crash "at any
    /// step"); safety phase only. Returns whether it crashed.
    fn crash_mid_actions(&mut self, node: NodeId) -> bool {
        let p = self.config.faults.crash_in_actions_probability;
        if self.phase != Phase::Safety || p <= 0.0 || !self.rng.gen_bool(p) {
            return false;
        }
        trace!(self, Some(node), "crash between two actions");
        self.crash(node, KeepUnsynced::Random);
        if let Some(back) = self.random_downtime(node) {
            self.schedule(Time(self.now.0 + back), Event::Restart { node });
        }
        true
    }

    // ----- drivers: carrying out the cores' actions -------------------------

    /// Carry out the coordinator node's actions, in order.
    fn run_coordinator(&mut self) {
        let node = NodeId::Coordinator;
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        let actions: Vec<CoordinatorNodeAction> = c.drain_actions().collect();
        for action in actions {
            if self.failure.is_some() {
                return;
            }
            match action {
                CoordinatorNodeAction::Persist { record, durability } => {
                    trace!(
                        self,
                        Some(node),
                        "persist {} {}",
                        show_coordinator_record(&record),
                        show_durability(durability)
                    );
                    self.coordinator_record_appended(&record);
                    let index = self.coordinator_disk.append(record);
                    if let Durability::Forced(ticket) = durability {
                        self.coordinator_disk.wait_for_fsync(index, ticket);
                        self.issue_fsync(node);
                    }
                }
                CoordinatorNodeAction::Send {
                    addr,
                    message,
                    peers,
                    ..
                } => self.send(node, &addr, message, peers),
                CoordinatorNodeAction::Greet {
                    addr,
                    greeting,
                    peers,
                    ..
                } => self.greet(node, &addr, greeting, peers),
                CoordinatorNodeAction::SetTimer { key, at } => self.set_timer(node, key, at),
                CoordinatorNodeAction::Reply { client, reply } => self.on_reply(client, reply),
                CoordinatorNodeAction::Stats { .. } => {
                    self.fail("driver", None, "no client asks for stats here".into())
                }
                CoordinatorNodeAction::Compact { records } => {
                    trace!(
                        self,
                        Some(node),
                        "compact the log to {} records",
                        records.len()
                    );
                    self.coordinator_disk.rewrite_begin(records);
                    self.begin_rewrite(node);
                }
                CoordinatorNodeAction::AskParticipant { .. } => self.fail(
                    "driver",
                    None,
                    "the simulator's operators never ask participants directly".into(),
                ),
                CoordinatorNodeAction::Event(event) => {
                    trace!(self, Some(node), "event {event:?}");
                }
            }
            if self.crash_mid_actions(node) {
                return;
            }
        }
    }

    /// Carry out participant `i`'s node actions, in order.
    fn run_participant(&mut self, i: usize) {
        let node = NodeId::Participant(i);
        let Some(p) = self.participants[i].as_mut() else {
            return;
        };
        let actions: Vec<ParticipantNodeAction> = p.drain_actions().collect();
        let started = p.resource_mut().take_started();
        self.check_admission(i);
        let incarnation = self.incarnations[node.ordinal() as usize];
        for op in started {
            let at = self.now.plus_ms(op.after_ms);
            let (xid, op) = (op.xid, op.op);
            self.schedule(
                at,
                Event::ResourceDone {
                    p: i,
                    incarnation,
                    xid,
                    op,
                },
            );
        }
        for action in actions {
            if self.failure.is_some() {
                return;
            }
            match action {
                ParticipantNodeAction::Persist {
                    record, durability, ..
                } => {
                    trace!(
                        self,
                        Some(node),
                        "persist {} {}",
                        show_participant_record(&record),
                        show_durability(durability)
                    );
                    // A COMMITTED record follows the resource's commit: it
                    // is applied. An ABORTED record may be a unilateral
                    // abort being forced before an answer (answers persist
                    // first); until it is durable and told, a crash may
                    // undo it, and a later READY is then no contradiction.
                    // Aborts count when the node reports the outcome.
                    if let ParticipantRecord::Outcome {
                        xid,
                        decision: Decision::Commit,
                    } = &record
                    {
                        self.decision_applied(i, *xid, Decision::Commit);
                    }
                    let index = self.participant_disks[i].append(record);
                    if let Durability::Forced(ticket) = durability {
                        self.participant_disks[i].wait_for_fsync(index, ticket);
                        self.issue_fsync(node);
                    }
                }
                ParticipantNodeAction::Send {
                    addr,
                    message,
                    peers,
                    ..
                } => self.send(node, &addr, message, peers),
                ParticipantNodeAction::Greet { addr, greeting, .. } => {
                    self.greet(node, &addr, greeting, Vec::new())
                }
                ParticipantNodeAction::SetTimer { key, at } => self.set_timer(node, key, at),
                ParticipantNodeAction::Compact { records } => {
                    trace!(
                        self,
                        Some(node),
                        "compact the log to {} records",
                        records.len()
                    );
                    self.participant_disks[i].rewrite_begin(records);
                    self.begin_rewrite(node);
                }
                ParticipantNodeAction::Event(event) => {
                    trace!(self, Some(node), "event {event:?}");
                    match event {
                        ParticipantEvent::Core(ParticipantNotice::Violation { xid, detail }) => {
                            self.no_violation_notice(i, xid, detail);
                        }
                        ParticipantEvent::Core(ParticipantNotice::Outcome { xid, decision }) => {
                            self.decision_applied(i, xid, decision);
                        }
                        _ => {}
                    }
                }
                other @ (ParticipantNodeAction::Reply { .. }
                | ParticipantNodeAction::Stats { .. }) => {
                    let detail = format!("a reply with no request: {other:?}");
                    self.fail("driver", None, detail);
                }
            }
            if self.crash_mid_actions(node) {
                return;
            }
        }
    }

    /// The time `node`'s own clock reads now.
    fn node_now(&self, node: NodeId) -> Time {
        let clock = self.clock_of(node);
        let scaled = u128::from(self.now.0) * u128::from(clock.rate_ppm) / 1_000_000;
        Time(
            clock
                .offset_us
                .saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX)),
        )
    }

    /// The world time at which `node`'s clock reads `at` (rounded up, so a
    /// timer never fires before it is due by the node's own clock).
    fn world_time(&self, node: NodeId, at: Time) -> Time {
        let clock = self.clock_of(node);
        let since = u128::from(at.0.saturating_sub(clock.offset_us));
        let rate = u128::from(clock.rate_ppm.max(1));
        let world = (since * 1_000_000).div_ceil(rate);
        Time(u64::try_from(world).unwrap_or(u64::MAX))
    }

    fn clock_of(&self, node: NodeId) -> crate::config::ClockConfig {
        self.config
            .clocks
            .get(node.ordinal() as usize)
            .copied()
            .unwrap_or(crate::config::ClockConfig::EXACT)
    }

    fn set_timer(&mut self, node: NodeId, key: TimerKey, at: Time) {
        let incarnation = self.incarnations[node.ordinal() as usize];
        let at = self.world_time(node, at);
        self.schedule(
            at,
            Event::Timer {
                node,
                incarnation,
                key,
            },
        );
    }

    // ----- disks ------------------------------------------------------------

    /// Start an fsync on `node` if forced writes wait and none runs.
    fn issue_fsync(&mut self, node: NodeId) {
        let upto = match node {
            NodeId::Coordinator => self.coordinator_disk.issue_fsync(),
            NodeId::Participant(i) => self.participant_disks[i].issue_fsync(),
        };
        let Some(upto) = upto else {
            return;
        };
        let took = self.disk_op_us();
        self.stats.fsyncs += 1;
        let incarnation = self.incarnations[node.ordinal() as usize];
        let generation = self.disk_generation(node);
        self.schedule(
            Time(self.now.0 + took),
            Event::FsyncDone {
                node,
                incarnation,
                generation,
                upto,
            },
        );
    }

    fn disk_generation(&self, node: NodeId) -> u64 {
        match node {
            NodeId::Coordinator => self.coordinator_disk.generation(),
            NodeId::Participant(i) => self.participant_disks[i].generation(),
        }
    }

    /// How long a disk operation takes (an fsync, or one step of a rewrite).
    fn disk_op_us(&mut self) -> u64 {
        let disk = &self.config.disk;
        let (min, max, stall_p, stall_max) = (
            disk.fsync_us_min,
            disk.fsync_us_max,
            disk.stall_probability,
            disk.stall_us_max,
        );
        let mut took = self.rng.gen_range(min..=max.max(min));
        if stall_p > 0.0 && self.rng.gen_bool(stall_p) {
            took += self.rng.gen_range(0..=stall_max);
        }
        took
    }

    /// A node asked to compact its log: the rewrite takes two disk
    /// operations (write and fsync the new file, rename and fsync the
    /// directory); a crash before it completes keeps the old log.
    fn begin_rewrite(&mut self, node: NodeId) {
        let took = self.disk_op_us() + self.disk_op_us();
        self.stats.compactions += 1;
        let incarnation = self.incarnations[node.ordinal() as usize];
        self.schedule(
            Time(self.now.0 + took),
            Event::RewriteDone { node, incarnation },
        );
    }

    fn rewrite_done(&mut self, node: NodeId, incarnation: u32) {
        self.trace.mix(&[node.ordinal(), 11]);
        if self.incarnations[node.ordinal() as usize] != incarnation {
            return; // the node crashed while its log was rewritten
        }
        let tickets = match node {
            NodeId::Coordinator => self.coordinator_disk.rewrite_done(),
            NodeId::Participant(i) => self.participant_disks[i].rewrite_done(),
        };
        trace!(self, Some(node), "compaction done, {tickets:?} durable");
        match node {
            NodeId::Coordinator => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.on_compacted();
                }
                self.run_coordinator();
            }
            NodeId::Participant(i) => {
                if let Some(p) = self.participants[i].as_mut() {
                    p.on_compacted();
                }
                self.run_participant(i);
            }
        }
        self.tickets_durable(node, tickets);
    }

    fn fsync_done(&mut self, node: NodeId, incarnation: u32, generation: u64, upto: usize) {
        self.trace.mix(&[node.ordinal(), upto as u64]);
        if self.incarnations[node.ordinal() as usize] != incarnation {
            return; // the node crashed while this fsync ran
        }
        if self.disk_generation(node) != generation {
            return; // a compaction finished meanwhile and covered it
        }
        let p = self.config.faults.fsync_error_probability;
        if self.phase == Phase::Safety && p > 0.0 && self.rng.gen_bool(p) {
            // The fail-stop path: an fsync error leaves the disk's state
            // unknown, so the node stops without releasing any forced
            // write (no answer that waited on it leaves).
            trace!(self, Some(node), "FSYNC ERROR: fail-stop");
            self.stats.fsync_errors += 1;
            self.crash(node, KeepUnsynced::Random);
            if let Some(back) = self.random_downtime(node) {
                self.schedule(Time(self.now.0 + back), Event::Restart { node });
            }
            return;
        }
        let tickets = match node {
            NodeId::Coordinator => self.coordinator_disk.fsync_done(upto),
            NodeId::Participant(i) => self.participant_disks[i].fsync_done(upto),
        };
        trace!(
            self,
            Some(node),
            "fsync done: {upto} records durable, {tickets:?}"
        );
        self.tickets_durable(node, tickets);
    }

    /// Tell `node` its forced writes `tickets` are durable, then start the
    /// next fsync if writes wait.
    fn tickets_durable(&mut self, node: NodeId, tickets: Vec<concord_proto::PersistTicket>) {
        let now = self.node_now(node);
        for ticket in tickets {
            if self.failure.is_some() || !self.is_up(node) {
                return;
            }
            match node {
                NodeId::Coordinator => {
                    if let Some(c) = self.coordinator.as_mut() {
                        c.on_durable(now, ticket);
                    }
                    self.run_coordinator();
                }
                NodeId::Participant(i) => {
                    if let Some(p) = self.participants[i].as_mut() {
                        p.on_durable(now, ticket);
                    }
                    self.run_participant(i);
                }
            }
        }
        if self.is_up(node) {
            self.issue_fsync(node);
        }
    }

    // ----- network ----------------------------------------------------------

    /// Whether a partition loses a message from `from` to `to` now.
    fn cut_off(&self, from: NodeId, to: NodeId) -> bool {
        let active = |node: NodeId, lost: Cut| {
            self.partitions
                .get(&node)
                .is_some_and(|p| p.until > self.now && (p.cut == Cut::Both || p.cut == lost))
        };
        active(from, Cut::Outbound) || active(to, Cut::Inbound)
    }

    fn isolate_until(&mut self, node: NodeId, cut: Cut, until: Time) {
        trace!(
            self,
            Some(node),
            "partition: {cut:?} cut until {}",
            fmt_time(until)
        );
        self.partitions.insert(node, Partition { until, cut });
    }

    fn sample_delay_us(&mut self) -> u64 {
        let net = &self.config.net;
        let (min, max, reorder_p, reorder_max) = (
            net.delay_us_min,
            net.delay_us_max,
            net.reorder_probability,
            net.reorder_us_max,
        );
        let mut delay = self.rng.gen_range(min..=max.max(min));
        if reorder_p > 0.0 && self.rng.gen_bool(reorder_p) {
            delay += self.rng.gen_range(0..=reorder_max);
        }
        delay
    }

    fn rule_fate(&mut self, from: NodeId, to: NodeId, message: &Message) -> Option<Fate> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.matches(from, to, message))?;
        if let Some(times) = rule.times.as_mut() {
            *times -= 1;
        }
        Some(rule.fate)
    }

    /// A node sends `message` to the address `to`: the network loses,
    /// duplicates, delays it as the seed (or a scripted rule) says.
    fn send(&mut self, from: NodeId, to: &str, message: Message, peers: Vec<PeerHint>) {
        self.persist_then_send(from, &message);
        self.answers_persist_first(from, &message);
        // A chain member's vote is the CHAIN PREPARE it passes on.
        if let (
            NodeId::Participant(i),
            concord_proto::Body::Vote(concord_proto::Vote::Ready)
            | concord_proto::Body::Chain { .. },
        ) = (from, &message.body)
        {
            self.check_isolation_at_vote(i, message.xid);
        }
        self.stats.sent += 1;
        let kind = message.kind();
        self.trace.mix_str(kind);
        self.trace.mix(&[from.ordinal(), message.xid.0 as u64]);
        let Some((to, to_gen)) = self.node_at(to) else {
            self.stats.dropped += 1;
            trace!(self, Some(from), "send {kind} to {to}: nobody there, lost");
            return;
        };
        let rule = self.rule_fate(from, to, &message);
        let shown = if self.trace.enabled() {
            show(&message)
        } else {
            String::new()
        };
        let (xid, epoch) = (message.xid, message.epoch);
        let frame = (PeerBody::Message(message), peers);
        let copies = self.transmit(from, to, to_gen, rule, frame, &shown);
        if let Some(log) = self.sent_log.as_mut() {
            log.push(SentMessage {
                at: self.now,
                from,
                to,
                kind,
                xid,
                epoch,
                copies,
            });
        }
    }

    /// A node says hello (or welcome) to the address `to`.
    fn greet(&mut self, from: NodeId, to: &str, greeting: Greeting, peers: Vec<PeerHint>) {
        let Some((to, to_gen)) = self.node_at(to) else {
            trace!(
                self,
                Some(from),
                "send {greeting:?} to {to}: nobody there, lost"
            );
            return;
        };
        let body = match greeting {
            Greeting::Hello => PeerBody::Hello,
            Greeting::Welcome => PeerBody::Welcome,
        };
        let frame = (body, peers);
        self.transmit(from, to, to_gen, None, frame, &format!("{greeting:?}"));
    }

    /// Put one frame from `from` on the wire to `to` (at its address of
    /// generation `to_gen`): loss, partitions, duplicates and delays as the
    /// seed says. Returns how many copies will arrive.
    fn transmit(
        &mut self,
        from: NodeId,
        to: NodeId,
        to_gen: u32,
        rule: Option<Fate>,
        (body, peers): (PeerBody, Vec<PeerHint>),
        shown: &str,
    ) -> u32 {
        let mut copies = 1u32;
        let mut extra_us = 0;
        let mut lost: Option<&'static str> = None;
        match rule {
            Some(Fate::Drop) => lost = Some("scripted drop"),
            Some(Fate::Duplicate) => copies = 2,
            Some(Fate::DelayMs(ms)) => extra_us = ms * 1000,
            None => {}
        }
        if lost.is_none() && self.cut_off(from, to) {
            lost = Some("partition");
        }
        let loss_p = self.config.net.loss_probability;
        if lost.is_none()
            && self.phase == Phase::Safety
            && loss_p > 0.0
            && self.rng.gen_bool(loss_p)
        {
            lost = Some("loss");
        }
        let dup_p = self.config.net.duplicate_probability;
        if lost.is_some() {
            copies = 0;
            self.stats.dropped += 1;
        } else if dup_p > 0.0 && self.rng.gen_bool(dup_p) {
            copies += 1;
        }
        self.stats.duplicated += u64::from(copies.saturating_sub(1));
        let reply_gen = self.addr_gen[from.ordinal() as usize];
        let incarnation = self.incarnation_of(from);
        let mut delays = Vec::with_capacity(copies as usize);
        for copy in 0..copies {
            // A scripted duplicate follows its original by 1 ms.
            let delay = self.sample_delay_us() + extra_us + u64::from(copy) * 1000;
            delays.push(delay);
            self.schedule(
                Time(self.now.0 + delay),
                Event::Deliver {
                    from,
                    incarnation,
                    reply_gen,
                    to,
                    to_gen,
                    body: body.clone(),
                    peers: peers.clone(),
                },
            );
        }
        self.trace.mix(&[to.ordinal(), u64::from(copies)]);
        match lost {
            Some(why) => trace!(self, Some(from), "send {shown} to {to}: LOST ({why})"),
            None => {
                let delays: Vec<String> = delays.iter().map(|d| fmt_time(Time(*d))).collect();
                trace!(
                    self,
                    Some(from),
                    "send {shown} to {to}, arrives in {}",
                    delays.join(" and ")
                );
            }
        }
        copies
    }

    /// The frame `body` from `from` (in its life and at its address of
    /// generation `sender`) arrives for `to` at its address of generation
    /// `to_gen`.
    fn deliver(
        &mut self,
        from: NodeId,
        sender: (u64, u32),
        to: NodeId,
        to_gen: u32,
        (body, peers): (PeerBody, Vec<PeerHint>),
    ) {
        let (incarnation, reply_gen) = sender;
        let (kind, xid) = match &body {
            PeerBody::Message(m) => (m.kind(), m.xid.0 as u64),
            PeerBody::Hello => ("HELLO", 0),
            PeerBody::Welcome => ("WELCOME", 0),
        };
        self.trace.mix_str(kind);
        self.trace.mix(&[from.ordinal(), to.ordinal(), xid]);
        let shown = match (&body, self.trace.enabled()) {
            (PeerBody::Message(m), true) => show(m),
            _ => kind.to_string(),
        };
        if self.cut_off(from, to) {
            self.stats.dropped += 1;
            trace!(self, Some(to), "recv {shown} from {from}: LOST (partition)");
            return;
        }
        if !self.is_up(to) {
            self.stats.dropped += 1;
            trace!(self, Some(to), "recv {shown} from {from}: LOST (node down)");
            return;
        }
        if self.addr_gen[to.ordinal() as usize] != to_gen {
            self.stats.dropped += 1;
            trace!(
                self,
                Some(to),
                "recv {shown} from {from}: LOST (sent to an address it has left)"
            );
            return;
        }
        trace!(self, Some(to), "recv {shown} from {from}");
        let now = self.node_now(to);
        let envelope = PeerEnvelope {
            from: from.name(),
            reply_to: self.addr_string(from, reply_gen),
            incarnation,
            peers,
            body,
        };
        match to {
            NodeId::Coordinator => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.on_peer(now, envelope);
                }
                self.run_coordinator();
            }
            NodeId::Participant(i) => {
                let before = self.epoch_state(i, &envelope);
                if let Some(p) = self.participants[i].as_mut() {
                    p.on_peer(now, envelope);
                }
                if let Some(before) = before {
                    self.check_epoch(i, before);
                }
                self.run_participant(i);
            }
        }
    }

    /// The incarnation `node` sends with its frames now (0 while down:
    /// only injected frames are sent then).
    fn incarnation_of(&self, node: NodeId) -> u64 {
        match node {
            NodeId::Coordinator => self.coordinator.as_ref().map_or(0, |c| c.incarnation()),
            NodeId::Participant(i) => self.participants[i].as_ref().map_or(0, |p| p.incarnation()),
        }
    }

    /// `node`'s address of generation `gen` ("p0@2").
    fn addr_string(&self, node: NodeId, gen: u32) -> String {
        format!("{}@{gen}", node.name())
    }

    /// `node`'s address now.
    pub fn addr_of(&self, node: NodeId) -> String {
        self.addr_string(node, self.addr_gen[node.ordinal() as usize])
    }

    /// The node an address names, with the address's generation (the
    /// node may have moved on since).
    fn node_at(&self, addr: &str) -> Option<(NodeId, u32)> {
        let (name, gen) = addr.split_once('@')?;
        let node = NodeId::from_name(name).filter(|n| self.exists(*n))?;
        Some((node, gen.parse().ok()?))
    }

    // ----- the scripted scenarios' handles ----------------------------------

    /// Submit a transaction now (scripted scenarios): branches are
    /// (participant index, operations). Returns its xid.
    pub fn submit(&mut self, branches: Vec<(usize, Vec<KvOp>)>) -> Xid {
        self.submit_shaped(branches, Shape::Centralized)
    }

    /// [`World::submit`] in `shape` (linear: in the order of `branches`).
    pub fn submit_shaped(&mut self, branches: Vec<(usize, Vec<KvOp>)>, shape: Shape) -> Xid {
        self.submit_tree(branches, shape, Vec::new())
    }

    /// [`World::submit`] as a tree: `parents` as in `Request::Begin`
    /// (0: the coordinator, `k`: branch `k - 1`).
    pub fn submit_tree(
        &mut self,
        branches: Vec<(usize, Vec<KvOp>)>,
        shape: Shape,
        parents: Vec<u32>,
    ) -> Xid {
        let client = self.add_client(TxnPlan {
            submit_at: self.now,
            branches,
            intent: Intent::Transfer,
            shape,
            parents,
        });
        self.submit_client(client);
        self.clients[client].xid
    }

    /// Run events until `done(world)` holds (checked after every event) or
    /// `ms_max` of virtual time passes; returns whether `done` held.
    pub fn run_until(&mut self, ms_max: u64, mut done: impl FnMut(&World) -> bool) -> bool {
        let deadline = self.now.plus_ms(ms_max);
        loop {
            if done(self) {
                return true;
            }
            match self.queue.peek() {
                Some(Reverse(next)) if next.at <= deadline => {}
                _ => return false,
            }
            if !self.step() {
                return done(self);
            }
        }
    }

    /// Run every event due in the next `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let deadline = self.now.plus_ms(ms);
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > deadline || !self.step() {
                break;
            }
        }
        self.now = self.now.max(deadline);
    }

    /// Run until nothing is left to happen, at most `ms_max`; returns
    /// whether the world went quiet.
    pub fn run_until_quiet(&mut self, ms_max: u64) -> bool {
        let deadline = self.now.plus_ms(ms_max);
        loop {
            match self.queue.peek() {
                None => {
                    self.quiescent = true;
                    return true;
                }
                Some(Reverse(next)) if next.at > deadline => return false,
                Some(_) => {
                    if !self.step() {
                        return self.quiescent;
                    }
                }
            }
        }
    }

    /// Add a scripted message rule (drop, duplicate, delay).
    pub fn add_rule(&mut self, rule: MessageRule) {
        self.rules.push(rule);
    }

    /// Cut `node` off from everyone for `ms` (scripted partitions).
    pub fn isolate(&mut self, node: NodeId, ms: u64) {
        self.partition(node, Cut::Both, ms);
    }

    /// Lose `node`'s messages in the direction `cut` for `ms`.
    pub fn partition(&mut self, node: NodeId, cut: Cut, ms: u64) {
        let until = self.now.plus_ms(ms);
        self.isolate_until(node, cut, until);
    }

    /// Put a hand-made message on the wire from `from` to `to` (a stale
    /// message from an earlier coordinator, say). It arrives after the
    /// usual delay and bypasses the persist-then-send check: no node sent it.
    pub fn inject(&mut self, from: NodeId, to: NodeId, message: Message) {
        trace!(self, Some(from), "inject {} to {to}", show(&message));
        let delay = self.sample_delay_us();
        let (reply_gen, to_gen) = (
            self.addr_gen[from.ordinal() as usize],
            self.addr_gen[to.ordinal() as usize],
        );
        let incarnation = self.incarnation_of(from);
        self.schedule(
            Time(self.now.0 + delay),
            Event::Deliver {
                from,
                incarnation,
                reply_gen,
                to,
                to_gen,
                body: PeerBody::Message(message),
                peers: Vec::new(),
            },
        );
    }

    /// Log compactions started so far (every node).
    pub fn compactions(&self) -> u64 {
        self.stats.compactions
    }

    /// Whether `node`'s log is being rewritten by a compaction right now.
    pub fn compacting(&self, node: NodeId) -> bool {
        match node {
            NodeId::Coordinator => self.coordinator_disk.rewriting(),
            NodeId::Participant(i) => self.participant_disks[i].rewriting(),
        }
    }

    /// Crashes so far (scripted or random).
    pub fn crashes(&self) -> u64 {
        self.stats.crashes
    }

    /// Restarts so far (the first start of a node is not one).
    pub fn restarts(&self) -> u64 {
        self.stats.restarts
    }

    pub fn now(&self) -> Time {
        self.now
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The coordinator's protocol core, if it is up.
    pub fn coordinator(&self) -> Option<&Coordinator> {
        self.coordinator.as_ref().map(|c| c.core())
    }

    /// The coordinator node (the layer the server ships), if it is up.
    pub fn coordinator_node(&self) -> Option<&CoordinatorNode> {
        self.coordinator.as_ref()
    }

    pub fn participant(&self, i: usize) -> Option<&ParticipantNode<SimResource>> {
        self.participants
            .get(i)
            .and_then(|p| p.as_ref())
            .map(|p| p.inner())
    }

    /// Everything appended to the coordinator's log (durable or not).
    pub fn coordinator_log(&self) -> &[CoordinatorRecord] {
        self.coordinator_disk.records()
    }

    pub fn coordinator_durable_log(&self) -> &[CoordinatorRecord] {
        self.coordinator_disk.durable_records()
    }

    /// Everything appended to participant `i`'s log (durable or not).
    pub fn participant_log(&self, i: usize) -> &[ParticipantRecord] {
        self.participant_disks[i].records()
    }

    pub fn participant_durable_log(&self, i: usize) -> &[ParticipantRecord] {
        self.participant_disks[i].durable_records()
    }

    /// Forced writes of `node` still waiting for their fsync.
    pub fn fsyncs_waiting(&self, node: NodeId) -> usize {
        match node {
            NodeId::Coordinator => self.coordinator_disk.waiting(),
            NodeId::Participant(i) => self.participant_disks[i].waiting(),
        }
    }

    /// What the client of `xid` knows.
    pub fn client_outcome(&self, xid: Xid) -> ClientOutcome {
        self.client_of
            .get(&xid)
            .map(|c| self.clients[*c].outcome)
            .unwrap_or(ClientOutcome::Pending)
    }

    /// Committed balances of participant `i` (empty if it is down).
    pub fn balances(&self, i: usize) -> BTreeMap<String, i64> {
        self.participant(i)
            .map(|p| p.resource().kv().balances().clone())
            .unwrap_or_default()
    }

    /// Every message sent so far (scripted worlds only; empty otherwise).
    pub fn sent(&self) -> &[SentMessage] {
        self.sent_log.as_deref().unwrap_or(&[])
    }

    /// How many messages of `kind` went from `from` to `to` about `xid`.
    pub fn count_sent(&self, from: NodeId, to: NodeId, kind: &str, xid: Xid) -> usize {
        self.sent()
            .iter()
            .filter(|m| m.from == from && m.to == to && m.kind == kind && m.xid == xid)
            .count()
    }

    pub fn trace_lines(&self) -> &[String] {
        self.trace.lines()
    }

    /// The first invariant found broken so far, if any.
    pub fn failure(&self) -> Option<&SimFailure> {
        self.failure.as_ref()
    }

    /// Check every end-of-run invariant now (scripted scenarios call this
    /// once the world is quiet).
    pub fn check_invariants(&mut self) -> Result<(), SimFailure> {
        if self.failure.is_none() {
            self.check_final();
        }
        match &self.failure {
            Some(f) => {
                let mut f = f.clone();
                f.trace = self.trace.lines().into();
                Err(f)
            }
            None => Ok(()),
        }
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Record a broken invariant; the first one wins and stops the run.
    pub(crate) fn fail(&mut self, invariant: &'static str, xid: Option<Xid>, detail: String) {
        if self.failure.is_some() {
            return;
        }
        trace!(self, None, "INVARIANT {invariant} VIOLATED: {detail}");
        self.failure = Some(SimFailure {
            seed: self.config.seed,
            shape: self.config.shape,
            invariant,
            xid,
            at: self.now,
            detail,
            trace: Box::default(),
        });
    }
}

/// A message in a trace line: "PREPARE xid:00000001 e1".
fn show(message: &Message) -> String {
    match &message.body {
        concord_proto::Body::State(state) => {
            format!("STATE {state:?} {:?} e{}", message.xid, message.epoch)
        }
        _ => format!("{} {:?} e{}", message.kind(), message.xid, message.epoch),
    }
}

fn show_durability(durability: Durability) -> String {
    match durability {
        Durability::Forced(ticket) => format!("forced #{}", ticket.0),
        Durability::Lazy => "lazy".into(),
    }
}

fn show_coordinator_record(record: &CoordinatorRecord) -> String {
    match record {
        CoordinatorRecord::Epoch { epoch } => format!("EPOCH {epoch}"),
        CoordinatorRecord::Begin { xid, participants } => {
            format!("BEGIN {xid:?} {participants:?}")
        }
        CoordinatorRecord::Decision {
            xid,
            decision,
            participants,
        } => format!("DECISION {decision:?} {xid:?} {participants:?}"),
        CoordinatorRecord::End { xid } => format!("END {xid:?}"),
        CoordinatorRecord::Peer { id, addr, .. } => format!("PEER {id} at {addr}"),
        CoordinatorRecord::Audit(entry) => format!(
            "AUDIT #{} {} {:?} {:?}",
            entry.seq,
            entry.action.describe(),
            entry.xid,
            entry.result
        ),
    }
}

/// A participant record without its work bytes (the submit line shows the
/// operations).
fn show_participant_record(record: &ParticipantRecord) -> String {
    match record {
        ParticipantRecord::Ready {
            xid,
            epoch,
            participants,
            ..
        } => format!("READY {xid:?} e{epoch} {participants:?}"),
        ParticipantRecord::Outcome { xid, decision } => format!("OUTCOME {decision:?} {xid:?}"),
        ParticipantRecord::Finished { outcomes } => format!("FINISHED {outcomes:?}"),
        ParticipantRecord::Resource { body } => format!("RESOURCE ({} bytes)", body.len()),
        ParticipantRecord::Peer {
            id,
            addr,
            incarnation,
        } => format!("PEER {id} at {addr} (life {incarnation})"),
        ParticipantRecord::Started { incarnation, addr } => {
            format!("STARTED life {incarnation} at {addr}")
        }
        ParticipantRecord::PeerHint {
            id,
            addr,
            incarnation,
        } => format!("PEER HINT {id} at {addr} (life {incarnation})"),
        ParticipantRecord::OnePhase { xid, epoch, .. } => format!("ONE-PHASE {xid:?} e{epoch}"),
        ParticipantRecord::Heuristic { xid, decision, .. } => {
            format!("HEURISTIC {decision:?} {xid:?}")
        }
        ParticipantRecord::SubtreeReady {
            xid,
            epoch,
            participants,
            children,
            ..
        } => format!("SUBTREE READY {xid:?} e{epoch} {participants:?} children {children:?}"),
    }
}

/// "p1: acct-13 -27, acct-14 -18; p2: acct-1 +27".
fn show_branches(branches: &[(usize, Vec<KvOp>)]) -> String {
    let parts: Vec<String> = branches
        .iter()
        .map(|(p, ops)| {
            let ops: Vec<String> = ops
                .iter()
                .map(|o| format!("{} {:+}", o.account, o.delta))
                .collect();
            format!("p{p}: {}", ops.join(", "))
        })
        .collect();
    parts.join("; ")
}
