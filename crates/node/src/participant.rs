//! The participant node: everything `concord participant` decides that is
//! not IO.
//!
//! It owns a [`ParticipantNode`] (the protocol core wired to a resource:
//! the key-value store, or in tests a wrapper that answers late and fails
//! on purpose) and around it the timeout policy (measured vote → decision
//! time → the READY inquire delay), client request handling, counters and
//! typed events. Events go in with `now`; [`ParticipantNodeAction`]s come
//! out of `drain_actions` in order. The tokio server and the simulator both
//! drive this type. It must never touch a socket, a file or the clock.

use crate::compaction::{CompactionPolicy, COMPACT_AFTER_RECORDS_DEFAULT};
use crate::directory::{Addr, Directory, DirectoryEvent, Learnt, LEARNT_MAX};
use crate::hello::{self, Greeting, Hellos, Welcomes};
use crate::latency::LatencyHistogram;
use crate::timeouts::{ParticipantTimeouts, PhaseSettings, PREPARE_SAFETY_FACTOR};
use concord_api::{
    AccountsReport, PeerBody, PeerEnvelope, PeerHint, Reply, Request, TimeoutsReport,
};
use concord_participant::kv::KvStore;
use concord_participant::pg::{PgReply, PgResource};
use concord_participant::resource::Accounts;
use concord_participant::{ParticipantNode, Resource, ResourceOp};
use concord_proto::{
    Body, Decision, Durability, Message, NodeId, ParticipantAction, ParticipantConfig,
    ParticipantNotice, ParticipantRecord, PersistTicket, Time, TimerKey, TxnState, Vote, Xid,
};
use std::collections::{BTreeSet, HashMap};

pub use crate::coordinator::ClientId;

/// Settings of a participant node.
#[derive(Clone, Debug)]
pub struct ParticipantNodeConfig {
    /// This participant's id (`--name`): the name the coordinator knows
    /// it by (`--participant NAME=ADDR`).
    pub id: NodeId,
    /// Where peers reach it (its advertised address), sent with every
    /// frame.
    pub addr: String,
    /// Delay past the PREPARE deadline before the first INQUIRE until
    /// measured, and its bounds; INQUIREs double up to `inquire_ms_max`.
    pub inquire_ms_initial: u64,
    pub inquire_ms_min: u64,
    pub inquire_ms_max: u64,
    pub timeout_samples_min: u64,
    /// Hierarchical 2PC, as a sub-coordinator: the smallest measured cap
    /// on the time a child is given to vote (twice its PREPARE → VOTE rto,
    /// once `timeout_samples_min` samples exist).
    pub child_prepare_timeout_ms_min: u64,
    /// Finished branches remembered for answering duplicates.
    pub finished_max: usize,
    /// Compact the log once this many records were appended since the last
    /// compaction (and twice the last snapshot); `u64::MAX`: never.
    pub compact_after_records: u64,
    /// Wait before a failed resource commit or abort is tried again;
    /// doubles per failure up to the max. Never given up.
    pub apply_retry_ms_initial: u64,
    pub apply_retry_ms_max: u64,
    /// Admission: PREPAREs for new branches beyond this many live ones get
    /// VOTE ABORT "busy, retry later".
    pub branches_in_flight_max: usize,
    /// Branches with nothing to change vote READ-ONLY (`--no-read-only`
    /// turns it off: they vote READY and take both phases).
    pub read_only_votes: bool,
}

impl ParticipantNodeConfig {
    /// The defaults of `concord participant`.
    pub fn new(id: impl Into<NodeId>, addr: impl Into<String>) -> ParticipantNodeConfig {
        ParticipantNodeConfig {
            id: id.into(),
            addr: addr.into(),
            inquire_ms_initial: 200,
            inquire_ms_min: 10,
            inquire_ms_max: 5000,
            timeout_samples_min: 8,
            child_prepare_timeout_ms_min: 100,
            finished_max: 100_000,
            compact_after_records: COMPACT_AFTER_RECORDS_DEFAULT,
            apply_retry_ms_initial: 10,
            apply_retry_ms_max: 5000,
            branches_in_flight_max: 100_000,
            read_only_votes: true,
        }
    }

    /// Refuse settings that contradict each other, naming the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("--name must not be empty".into());
        }
        if self.inquire_ms_initial == 0 {
            return Err("--inquire-ms-initial must be at least 1 ms".into());
        }
        if self.inquire_ms_max < self.inquire_ms_initial {
            return Err(format!(
                "--inquire-ms-max ({}) is below --inquire-ms-initial ({})",
                self.inquire_ms_max, self.inquire_ms_initial
            ));
        }
        if self.inquire_ms_min == 0 || self.inquire_ms_min > self.inquire_ms_max {
            return Err(format!(
                "--inquire-ms-min ({}) must be at least 1 and at most --inquire-ms-max ({})",
                self.inquire_ms_min, self.inquire_ms_max
            ));
        }
        if self.child_prepare_timeout_ms_min == 0 {
            return Err("--child-prepare-timeout-ms-min must be at least 1 ms".into());
        }
        if self.branches_in_flight_max == 0 {
            return Err("--branches-in-flight-max must be at least 1".into());
        }
        if self.apply_retry_ms_initial == 0 || self.apply_retry_ms_max < self.apply_retry_ms_initial
        {
            return Err(format!(
                "the resource retry delay must be at least 1 ms and at most its max \
                 (initial {} ms, max {} ms)",
                self.apply_retry_ms_initial, self.apply_retry_ms_max
            ));
        }
        Ok(())
    }
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantNodeAction {
    /// Append `record`; for `Durability::Forced(t)` sync, then call
    /// `on_durable(t)`. `deferrable`: only an ACK waits for this forced
    /// record (the coordinator re-sends COMMIT until it comes), so its
    /// fsync may wait briefly to be shared with the next urgent one.
    Persist {
        record: ParticipantRecord,
        durability: Durability,
        deferrable: bool,
    },
    /// Send `message` to node `to` at `addr` (from the directory).
    Send {
        to: NodeId,
        addr: Addr,
        message: Message,
        /// Directory hints: where the other members of a chain are, for a
        /// CHAIN PREPARE passed on (empty otherwise).
        peers: Vec<PeerHint>,
    },
    /// Send node `to` (at `addr`) a frame that only says where this node
    /// is now.
    Greet {
        to: NodeId,
        addr: String,
        greeting: Greeting,
    },
    SetTimer {
        key: TimerKey,
        at: Time,
    },
    Reply {
        client: ClientId,
        reply: Reply,
    },
    /// Answer `Request::Stats` with the driver's log and network counters.
    Stats {
        client: ClientId,
        request_id: u64,
    },
    /// Replace the whole log with `records` (atomically, after every record
    /// asked for before this action is written), then call
    /// `on_compacted`. A crash during it must leave the old log or the new.
    Compact {
        records: Vec<ParticipantRecord>,
    },
    Event(ParticipantEvent),
}

/// Typed events of the participant node, for logs, metrics and timelines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantEvent {
    /// The READY timer fired and an INQUIRE went out (the core's
    /// `TimeoutFired`, with the estimate that set the delay).
    InquireFired {
        xid: Xid,
        phase: &'static str,
        timeout_ms: u64,
        attempt: u32,
        /// The estimate that set the delay.
        basis: String,
    },
    /// Hierarchical 2PC: children did not vote in time and the subtree
    /// aborts; `basis` explains the caps they were given.
    ChildrenSilent {
        xid: Xid,
        silent: Vec<NodeId>,
        timeout_ms: u64,
        basis: String,
    },
    /// A compaction started: the log is rewritten with `records` records.
    Compacting { records: usize },
    /// An operator's heuristic decision was accepted for `xid` (its record
    /// is being forced, then the resource carries it out).
    Heuristic {
        xid: Xid,
        decision: Decision,
        audit: String,
    },
    /// Peers that moved, messages with no address to go to.
    Directory(DirectoryEvent),
    /// Anything else the core noticed (an outcome, an ignored message, a
    /// violation, recovery), as the core said it.
    Core(ParticipantNotice),
}

/// Monotonic counters of the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantCounters {
    pub committed: u64,
    pub aborted: u64,
    pub inquiries: u64,
    pub violations: u64,
    /// Resource commits and aborts that failed (and were retried).
    pub apply_failures: u64,
    /// Decisions contrary to an operator's heuristic decision (not
    /// carried out: the branches of that transaction disagree).
    pub heuristic_conflicts: u64,
}

/// The record a driver must make durable before it starts the node at
/// `addr` on `records` (and append to them): the next incarnation. Forced
/// before anything is sent, so no two lives share a number.
pub fn started_record(records: &[ParticipantRecord], addr: &str) -> ParticipantRecord {
    let last = records
        .iter()
        .filter_map(|r| match r {
            ParticipantRecord::Started { incarnation, .. } => Some(*incarnation),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    ParticipantRecord::Started {
        incarnation: last + 1,
        addr: addr.to_string(),
    }
}

/// Generic over the resource so that tests and the simulator can run the
/// same node over a resource that answers late ([`Resource`]), and the
/// PostgreSQL participant over its database; `accounts` answers from a
/// key-value one ([`Accounts`]).
pub struct ParticipantServerNode<R: Resource = KvStore> {
    node: ParticipantNode<R>,
    /// Coordinators (and peers) by id: learnt from frames, kept in the log
    /// as `Peer` records.
    directory: Directory,
    /// This node's life, from its last `Started` record.
    incarnation: u64,
    /// Where it is (its advertised address).
    addr: String,
    /// Peers that acted as a coordinator (sent a PREPARE or a decision):
    /// their addresses are kept in the log and greeted at start.
    coordinators: BTreeSet<NodeId>,
    hellos: Hellos,
    /// After a move: hellos to the peers a coordinator's welcome named, so
    /// that they (a linear chain's members, which ask one another) learn
    /// where this node is now. At most `HELLO_ROUNDS_MAX` rounds.
    peer_hellos: Hellos,
    /// This life started at another address than the last.
    moved: bool,
    /// Peers with a `PeerHint` record in the log: a hint about a peer
    /// known only in memory (heard from, never hinted) is written once.
    hint_records: BTreeSet<NodeId>,
    welcomes: Welcomes,
    timeouts: ParticipantTimeouts,
    counters: ParticipantCounters,
    /// Branches that voted READY in this life, and since when: their
    /// locks are held until the outcome (`lock_hold`). Bounded by the
    /// branches in flight (admission).
    holding: HashMap<Xid, Time>,
    /// READY vote → outcome, the time each branch held its locks.
    lock_hold: LatencyHistogram,
    /// Operators' heuristic decisions being carried out: the request to
    /// answer once the branch's outcome is reached.
    heuristic_waiting: HashMap<Xid, (ClientId, u64)>,
    compaction: CompactionPolicy,
    /// Scratch space for the node's IO actions while they are translated.
    core_actions: Vec<ParticipantAction>,
    actions: Vec<ParticipantNodeAction>,
}

impl ParticipantServerNode<PgResource> {
    /// The database answered command `id` of the PostgreSQL resource: the
    /// branch result it makes, if any, for [`Self::on_resource_done`].
    /// Reconciliation reads what the protocol knows of finished xids.
    pub fn finish_pg(
        &mut self,
        now: Time,
        id: u64,
        reply: PgReply,
    ) -> Option<(Xid, ResourceOp, Result<(), String>)> {
        let (core, resource) = self.node.core_and_resource_mut();
        let outcome_of = |xid: Xid| match core.state_of(xid) {
            TxnState::Committed => Some(Decision::Commit),
            TxnState::Aborted => Some(Decision::Abort),
            _ => None,
        };
        resource.finish(now, id, reply, &outcome_of)
    }
}

impl<R: Resource + Accounts> ParticipantServerNode<R> {
    /// Rebuild from the log: `resource` must already reflect the committed
    /// history (`KvStore::replay` of the same records). Every peer in the
    /// log's directory hears where this node is now.
    pub fn recover(
        config: ParticipantNodeConfig,
        records: Vec<ParticipantRecord>,
        resource: R,
        now: Time,
    ) -> ParticipantServerNode<R> {
        let mut directory = Directory::new(&[]);
        let mut incarnation = 0;
        // Where the last two lives started: this one's (the driver wrote
        // it) and the one before.
        let mut started_at: [Option<&str>; 2] = [None, None];
        let mut coordinators: BTreeSet<NodeId> = BTreeSet::new();
        let mut hint_records: BTreeSet<NodeId> = BTreeSet::new();
        for record in &records {
            match record {
                ParticipantRecord::Peer {
                    id,
                    addr,
                    incarnation,
                } => {
                    directory.learn(id, addr, *incarnation);
                    coordinators.insert(id.clone());
                }
                ParticipantRecord::PeerHint {
                    id,
                    addr,
                    incarnation,
                } => {
                    directory.learn(id, addr, *incarnation);
                    hint_records.insert(id.clone());
                }
                ParticipantRecord::Started {
                    incarnation: n,
                    addr,
                } => {
                    incarnation = incarnation.max(*n);
                    started_at = [started_at[1], Some(addr)];
                }
                _ => {}
            }
        }
        let timeouts = ParticipantTimeouts::new(
            PhaseSettings {
                min_ms: config.inquire_ms_min,
                max_ms: config.inquire_ms_max,
                default_ms: config.inquire_ms_initial,
                samples_min: config.timeout_samples_min,
                // An INQUIRE is cheap and idempotent: the RTO as it is.
                factor: 1.0,
                flag: "--inquire-ms",
                default_flag: "--inquire-ms-initial",
            },
            PhaseSettings {
                min_ms: config.child_prepare_timeout_ms_min,
                // Only ever lowers the deadline the child would get anyway.
                max_ms: u64::MAX,
                default_ms: u64::MAX,
                samples_min: config.timeout_samples_min,
                // As the coordinator's phase-1 timeout, and for the same
                // reason: a child too slow once aborts the whole tree.
                factor: PREPARE_SAFETY_FACTOR,
                flag: "--child-prepare-timeout-ms",
                default_flag: "--child-prepare-timeout-ms-min",
            },
        );
        // Moved since the last life: the coordinators this node has heard
        // from hear where it is now, until each welcomes it (and a
        // coordinator's welcome says where the participants are).
        let moved = matches!(started_at, [Some(before), Some(now)] if before != now);
        let greet_now: Vec<NodeId> = if moved {
            coordinators.iter().cloned().collect()
        } else {
            Vec::new()
        };
        let (hellos, greet, hello_timer) = Hellos::start(
            greet_now,
            now,
            config.inquire_ms_initial,
            config.inquire_ms_max,
            None,
        );
        let core_config = ParticipantConfig {
            id: config.id,
            inquire_ms_initial: config.inquire_ms_initial,
            inquire_ms_max: config.inquire_ms_max,
            finished_max: config.finished_max,
            apply_retry_ms_initial: config.apply_retry_ms_initial,
            apply_retry_ms_max: config.apply_retry_ms_max,
            branches_in_flight_max: config.branches_in_flight_max,
        };
        let mut node = ParticipantServerNode {
            node: ParticipantNode::recover(core_config, records, resource, now),
            directory,
            incarnation,
            addr: config.addr.clone(),
            coordinators,
            hellos,
            peer_hellos: Hellos::start(
                Vec::new(),
                now,
                config.inquire_ms_initial,
                config.inquire_ms_max,
                Some(hello::HELLO_ROUNDS_MAX),
            )
            .0
            .with_timer(hello::peer_hello_timer()),
            moved,
            hint_records,
            welcomes: Welcomes::default(),
            timeouts,
            counters: ParticipantCounters::default(),
            holding: HashMap::new(),
            heuristic_waiting: HashMap::new(),
            lock_hold: LatencyHistogram::new(),
            compaction: CompactionPolicy::new(config.compact_after_records),
            core_actions: Vec::new(),
            actions: Vec::new(),
        };
        node.node.set_read_only_votes(config.read_only_votes);
        node.greet(greet, hello_timer);
        node.pump(now);
        node
    }

    /// How long branches held their locks (READY vote → outcome).
    pub fn lock_hold(&self) -> &LatencyHistogram {
        &self.lock_hold
    }

    fn greet(&mut self, peers: Vec<NodeId>, timer: Option<(TimerKey, Time)>) {
        for (to, addr) in hello::addressed(&self.directory, peers) {
            self.actions.push(ParticipantNodeAction::Greet {
                to,
                addr,
                greeting: Greeting::Hello,
            });
        }
        if let Some((key, at)) = timer {
            self.actions
                .push(ParticipantNodeAction::SetTimer { key, at });
        }
    }

    /// A frame from a peer: its sender's address goes into the directory
    /// (and, if new or moved, into the log), then its message to the core.
    pub fn on_peer(&mut self, now: Time, envelope: PeerEnvelope) {
        // A CHAIN PREPARE's hints name the chain's members and, besides
        // them, the coordinator that began it: a coordinator of ours from
        // now on (kept, and greeted when this node moves).
        let chain_coordinator = match &envelope.body {
            PeerBody::Message(Message {
                body: Body::Chain { chain, .. },
                ..
            }) => envelope
                .peers
                .iter()
                .find(|h| !chain.contains(&h.id))
                .map(|h| h.id.clone()),
            _ => None,
        };
        // The ids a PREPARE or CHAIN PREPARE names that have no PeerHint
        // record yet. Every PREPARE passes here: nothing is copied unless
        // one is missing (rare once a peer was seen).
        let unrecorded: Vec<NodeId> = match &envelope.body {
            PeerBody::Message(Message {
                body: Body::Prepare { .. } | Body::Chain { .. } | Body::TreePrepare { .. },
                ..
            }) => envelope
                .peers
                .iter()
                .filter(|h| {
                    !self.hint_records.contains(&h.id) && !self.coordinators.contains(&h.id)
                })
                .map(|h| h.id.clone())
                .collect(),
            _ => Vec::new(),
        };
        let welcome_hints: Vec<NodeId> = match &envelope.body {
            PeerBody::Welcome if self.moved => {
                envelope.peers.iter().map(|h| h.id.clone()).collect()
            }
            _ => Vec::new(),
        };
        let opened = self.directory.open(envelope);
        if let Some(id) = chain_coordinator {
            self.adopt_coordinator(id);
        }
        if self.coordinators.contains(&opened.from) {
            // A coordinator welcomed us after our move and named the
            // participants: they hear where we are now too.
            let me = self.node.core().id().clone();
            for peer in welcome_hints {
                if peer != me && peer != opened.from {
                    let timer = self.peer_hellos.add(peer.clone(), now);
                    self.greet(vec![peer], timer);
                }
            }
        }
        let learnt = !matches!(opened.learnt, Learnt::Stale | Learnt::Full);
        if learnt && opened.welcome {
            self.hellos.heard(&opened.from);
            self.peer_hellos.heard(&opened.from);
        }
        // Coordinators (whoever sends a PREPARE, a one-phase commit or a
        // decision) are the
        // peers whose addresses are kept in the log and greeted at start:
        // an in-doubt branch must reach its coordinator after a restart.
        // Other peers (a participant asking for our state) are answered
        // from memory.
        let coordinator_role = matches!(
            opened.message.as_ref().map(|m| &m.body),
            Some(
                Body::Prepare { .. }
                    | Body::TreePrepare { .. }
                    | Body::Decision(_)
                    | Body::OnePhase { .. }
                    | Body::OnePhaseStatus { .. }
                    // A chain's members ask its decider as they would a
                    // coordinator: it must find them again if it moves.
                    | Body::Chain { .. }
                    | Body::ChainInquire
            )
        );
        // A stale frame still shows who is a coordinator.
        // (Every PREPARE passes here: the id is copied only when new.)
        let new_coordinator = coordinator_role
            && !self.coordinators.contains(&opened.from)
            && self.coordinators.len() < LEARNT_MAX
            && self.coordinators.insert(opened.from.clone());
        let is_coordinator = self.coordinators.contains(&opened.from);
        // A peer (not a coordinator) that moved and says so: its new
        // address is kept as a `PeerHint`, and, as for a coordinator, the
        // welcome waits until that is durable, since the peer stops saying
        // hello then (a chain's member must still find its decider after
        // a restart of its own).
        let peer_moved = opened.hello
            && !is_coordinator
            && learnt
            && matches!(opened.learnt, Learnt::New | Learnt::Moved { .. });
        if opened.hello && !is_coordinator && !peer_moved {
            self.actions.push(ParticipantNodeAction::Greet {
                to: opened.from.clone(),
                addr: opened.addr.clone(),
                greeting: Greeting::Welcome,
            });
        }
        if peer_moved {
            if let Some((addr, incarnation)) = self.directory.entry(&opened.from) {
                let ticket = self.welcomes.park(opened.from.clone(), opened.addr.clone());
                self.compaction.appended(1);
                self.actions.push(ParticipantNodeAction::Persist {
                    record: ParticipantRecord::PeerHint {
                        id: opened.from.clone(),
                        addr: addr.to_string(),
                        incarnation,
                    },
                    durability: Durability::Forced(ticket),
                    deferrable: false,
                });
            }
        }
        // A coordinator's new address goes into the log; its hello is
        // welcomed only once the address it came from is durable (it stops
        // saying hello then, so it must not be forgotten by a crash of
        // ours).
        let durability = if !is_coordinator {
            None
        } else if opened.hello && learnt {
            let ticket = self.welcomes.park(opened.from.clone(), opened.addr.clone());
            Some(Durability::Forced(ticket))
        } else if new_coordinator
            || (learnt && matches!(opened.learnt, Learnt::New | Learnt::Moved { .. }))
        {
            Some(Durability::Lazy)
        } else {
            None
        };
        // What the directory holds now: a stale frame's address is not it.
        let known = durability.and_then(|d| {
            let addr = self.directory.addr_of(&opened.from)?.to_string();
            Some((d, addr))
        });
        if let Some((durability, addr)) = known {
            let incarnation = self.directory.incarnation_of(&opened.from).unwrap_or(0);
            self.compaction.appended(1);
            self.actions.push(ParticipantNodeAction::Persist {
                record: ParticipantRecord::Peer {
                    id: opened.from.clone(),
                    addr,
                    incarnation,
                },
                durability,
                deferrable: false,
            });
        }
        // Other participants a PREPARE told of: kept so that cooperative
        // termination (and a chain's members) can reach them after a
        // restart. New or moved ones always; ones known only from memory
        // (heard from directly) once.
        let unrecorded = unrecorded
            .into_iter()
            .filter(|id| !opened.hinted.contains(id));
        let to_record: Vec<NodeId> = opened.hinted.iter().cloned().chain(unrecorded).collect();
        for id in &to_record {
            if self.coordinators.contains(id) || *id == *self.node.core().id() {
                continue; // kept as a `Peer` record already
            }
            if self.hint_records.len() < LEARNT_MAX {
                self.hint_records.insert(id.clone());
            }
            let Some((addr, incarnation)) = self.directory.entry(id) else {
                continue;
            };
            self.compaction.appended(1);
            self.actions.push(ParticipantNodeAction::Persist {
                record: ParticipantRecord::PeerHint {
                    id: id.clone(),
                    addr: addr.to_string(),
                    incarnation,
                },
                durability: Durability::Lazy,
                deferrable: false,
            });
        }
        if let Some(event) = opened.event {
            self.push_event(ParticipantEvent::Directory(event));
        }
        if let Some(message) = opened.message {
            self.on_message(now, message);
        }
    }

    /// An operator says where coordinator `id` is (`concord participant
    /// --coordinator NAME=ADDR`): for a participant that moved before it
    /// ever heard from it, and so has nobody to tell. It is kept like a coordinator
    /// heard from, and greeted until it welcomes this node. A coordinator
    /// it already knows is left alone: it is greeted by itself when this
    /// node moves (and a bug there must stay visible).
    pub fn introduce(&mut self, now: Time, id: NodeId, addr: &str) {
        if id == *self.node.core().id() || self.coordinators.contains(&id) {
            return;
        }
        self.directory.learn(&id, addr, 0);
        self.adopt_coordinator(id.clone());
        let timer = self.hellos.add(id.clone(), now);
        self.greet(vec![id], timer);
    }

    /// Take `id` for a coordinator (kept in the log as a `Peer` record,
    /// greeted when this node moves), if it is not one already.
    fn adopt_coordinator(&mut self, id: NodeId) {
        if self.coordinators.contains(&id) || self.coordinators.len() >= LEARNT_MAX {
            return;
        }
        let Some((addr, incarnation)) = self.directory.entry(&id) else {
            return;
        };
        self.coordinators.insert(id.clone());
        self.compaction.appended(1);
        self.actions.push(ParticipantNodeAction::Persist {
            record: ParticipantRecord::Peer {
                id,
                addr: addr.to_string(),
                incarnation,
            },
            durability: Durability::Lazy,
            deferrable: false,
        });
    }

    /// What this node sends as its incarnation in every frame.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The protocol core and its resource.
    pub fn inner(&self) -> &ParticipantNode<R> {
        &self.node
    }

    pub fn resource(&self) -> &R {
        self.node.resource()
    }

    /// For a driver that collects what a late-answering resource started.
    pub fn resource_mut(&mut self) -> &mut R {
        self.node.resource_mut()
    }

    pub fn counters(&self) -> ParticipantCounters {
        self.counters
    }

    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, ParticipantNodeAction> {
        self.actions.drain(..)
    }

    fn on_message(&mut self, now: Time, message: Message) {
        if let Body::Prepare { deadline_ms, .. } | Body::TreePrepare { deadline_ms, .. } =
            &message.body
        {
            let chosen = self
                .timeouts
                .on_prepare(now, message.xid, &message.from, *deadline_ms);
            if let Some(inquire_ms) = chosen {
                // A new branch gets the measured delay.
                self.node.set_inquire_ms_initial(inquire_ms);
                // And, as a sub-coordinator, its children their caps.
                if let Body::TreePrepare { tree, .. } = &message.body {
                    let kids: Vec<NodeId> = tree
                        .iter()
                        .filter(|e| e.parent == 0)
                        .map(|e| e.node.clone())
                        .collect();
                    for (kid, cap) in self.timeouts.on_children(message.xid, &kids) {
                        self.node.set_child_timeout_ms(kid, cap);
                    }
                }
            }
        }
        self.node.on_message(now, message);
        self.pump(now);
    }

    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        if key == hello::hello_timer() {
            let (greet, timer) = self.hellos.on_timer(now);
            return self.greet(greet, timer);
        }
        if key == hello::peer_hello_timer() {
            let (greet, timer) = self.peer_hellos.on_timer(now);
            return self.greet(greet, timer);
        }
        self.node.on_timer(now, key);
        self.pump(now);
    }

    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        if hello::is_node_ticket(ticket) {
            if let Some((to, addr)) = self.welcomes.release(ticket) {
                self.actions.push(ParticipantNodeAction::Greet {
                    to,
                    addr,
                    greeting: Greeting::Welcome,
                });
            }
            return;
        }
        self.node.on_durable(now, ticket);
        self.pump(now);
    }

    /// A resource that answered later finished `op` for `xid`.
    pub fn on_resource_done(
        &mut self,
        now: Time,
        xid: Xid,
        op: ResourceOp,
        result: Result<(), String>,
    ) {
        self.node.on_resource_done(now, xid, op, result);
        self.pump(now);
    }

    /// A client request. Answered at once, except `Heuristic`: that is
    /// answered (to `client`) once the branch's outcome is reached.
    pub fn on_request(&mut self, now: Time, client: ClientId, request: Request) {
        let reply = match request {
            Request::Heuristic {
                request_id,
                xid,
                decision,
                audit,
            } => match self.node.heuristic(now, xid, decision, audit.clone()) {
                Ok(()) => {
                    self.heuristic_waiting.insert(xid, (client, request_id));
                    self.actions
                        .push(ParticipantNodeAction::Event(ParticipantEvent::Heuristic {
                            xid,
                            decision,
                            audit,
                        }));
                    self.pump(now);
                    return;
                }
                Err(message) => Reply::Refused {
                    request_id,
                    refusal: concord_api::Refusal::NotNeeded,
                    message,
                },
            },
            Request::Accounts { request_id } => {
                let Some(kv) = self.node.resource().accounts() else {
                    let reply = Reply::Error {
                        request_id,
                        message: "this participant keeps no key-value accounts: its data is \
                                  in its database; ask the database"
                            .into(),
                    };
                    self.actions
                        .push(ParticipantNodeAction::Reply { client, reply });
                    return;
                };
                let mut locks: Vec<(String, Xid)> =
                    kv.locks().iter().map(|(a, x)| (a.clone(), *x)).collect();
                locks.sort();
                let core = self.node.core();
                let in_doubt = core.in_doubt();
                let waiting = in_doubt
                    .iter()
                    .filter_map(|x| Some((*x, core.in_doubt_report(*x)?.why())))
                    .collect();
                let accounts = AccountsReport {
                    balances: kv.balances().iter().map(|(a, b)| (a.clone(), *b)).collect(),
                    in_doubt,
                    locks,
                    waiting,
                };
                Reply::Accounts {
                    request_id,
                    accounts,
                }
            }
            Request::Prepared { request_id } => match self.node.resource().prepared() {
                Some(report) => Reply::Prepared {
                    request_id,
                    report: prepared_status(report),
                },
                None => Reply::Error {
                    request_id,
                    message: "this participant has no PostgreSQL prepared transactions: it is \
                              not a pg-participant"
                        .into(),
                },
            },
            Request::InDoubt { request_id } => {
                let core = self.node.core();
                let branches = core
                    .in_doubt()
                    .into_iter()
                    .filter_map(|xid| {
                        let report = core.in_doubt_report(xid)?;
                        Some(concord_api::InDoubtBranch {
                            xid,
                            coordinator: report.coordinator.clone(),
                            inquiries: report.inquiries,
                            why: report.why(),
                            held_ms: self.holding.get(&xid).map(|since| now.ms_since(*since)),
                        })
                    })
                    .collect();
                Reply::InDoubt {
                    request_id,
                    participant: core.id().clone(),
                    branches,
                }
            }
            Request::BranchState { request_id, xid } => Reply::BranchState {
                request_id,
                xid,
                state: self.node.core().state_of(xid),
                detail: self.node.core().in_doubt_report(xid).map(|r| r.why()),
            },
            Request::Timeouts { request_id } => Reply::Timeouts {
                request_id,
                report: TimeoutsReport {
                    role: "participant".into(),
                    phases: self.timeouts.report(),
                },
            },
            Request::Stats { request_id } => {
                self.actions
                    .push(ParticipantNodeAction::Stats { client, request_id });
                return;
            }
            other => Reply::Error {
                request_id: other.request_id(),
                message: format!(
                    "{} is a coordinator request, and this is a participant; send it to the \
                     coordinator",
                    other.kind()
                ),
            },
        };
        self.actions
            .push(ParticipantNodeAction::Reply { client, reply });
    }

    /// The driver rewrote the log with the last `Compact`'s records.
    pub fn on_compacted(&mut self) {
        self.compaction.finished();
    }

    /// Start a compaction if one is due, after all of an event's records.
    fn maybe_compact(&mut self) {
        if !self.compaction.due() {
            return;
        }
        let mut records = self.node.snapshot_records();
        records.push(ParticipantRecord::Started {
            incarnation: self.incarnation,
            addr: self.addr.clone(),
        });
        // Coordinators as `Peer` records (greeted after a move), everyone
        // else it knows (other participants) as hints.
        records.extend(
            self.directory
                .entries()
                .into_iter()
                .map(|(id, addr, incarnation)| {
                    if self.coordinators.contains(&id) {
                        ParticipantRecord::Peer {
                            id,
                            addr,
                            incarnation,
                        }
                    } else {
                        ParticipantRecord::PeerHint {
                            id,
                            addr,
                            incarnation,
                        }
                    }
                }),
        );
        // Weigh the snapshot by what it holds, not by its record count: one
        // `Finished` record carries every remembered outcome.
        let entries: usize = records
            .iter()
            .map(|r| match r {
                ParticipantRecord::Finished { outcomes } => outcomes.len().max(1),
                _ => 1,
            })
            .sum();
        self.compaction.started(entries as u64);
        self.push_event(ParticipantEvent::Compacting {
            records: records.len(),
        });
        self.actions
            .push(ParticipantNodeAction::Compact { records });
    }

    fn pump(&mut self, now: Time) {
        // A buffer kept across events: this runs for every message.
        let mut actions = std::mem::take(&mut self.core_actions);
        actions.extend(self.node.drain_io());
        for action in actions.drain(..) {
            match action {
                ParticipantAction::Persist { record, durability } => {
                    self.compaction.appended(1);
                    // Only a COMMIT outcome: its ACK just lets the
                    // coordinator forget. A forced ABORT outcome has
                    // someone waiting on it (a peer's answer, a one-phase
                    // client's VOTE ABORT).
                    // Not in a linear chain either: there the record
                    // gates the COMMIT passed back.
                    let deferrable = match &record {
                        ParticipantRecord::Outcome {
                            xid,
                            decision: Decision::Commit,
                        } => !self.node.core().in_chain(*xid),
                        _ => false,
                    };
                    self.actions.push(ParticipantNodeAction::Persist {
                        record,
                        durability,
                        deferrable,
                    });
                }
                ParticipantAction::Send { to, message } => {
                    if let Body::Vote(Vote::Abort { .. }) = message.body {
                        // It voted ABORT: no decision will follow to wait for.
                        self.timeouts.finish(message.xid);
                    }
                    if message.body == Body::Vote(Vote::Ready) {
                        // Its locks are held from here to the outcome.
                        self.holding.entry(message.xid).or_insert(now);
                    }
                    match self.directory.route(&to, &message) {
                        Ok(addr) => {
                            let peers = match &message.body {
                                Body::Chain { chain, .. } => self.directory.hints(chain, &to),
                                // A sub-coordinator's child learns where
                                // its siblings (and its own subtree) are.
                                Body::Prepare { .. } | Body::TreePrepare { .. } => {
                                    self.directory.hints(&message.body.named_nodes(), &to)
                                }
                                _ => Vec::new(),
                            };
                            self.actions.push(ParticipantNodeAction::Send {
                                to,
                                addr,
                                message,
                                peers,
                            })
                        }
                        Err(event) => self.push_event(ParticipantEvent::Directory(event)),
                    }
                }
                ParticipantAction::SetTimer { key, at } => self
                    .actions
                    .push(ParticipantNodeAction::SetTimer { key, at }),
                ParticipantAction::Notice(notice) => self.on_notice(now, notice),
                // ParticipantNode carries out resource actions itself.
                ParticipantAction::Prepare { xid, .. }
                | ParticipantAction::Commit { xid }
                | ParticipantAction::Abort { xid }
                | ParticipantAction::Restore { xid, .. } => {
                    self.push_event(ParticipantEvent::Core(ParticipantNotice::Violation {
                        xid,
                        detail: "a resource action reached the node's driver (a wiring bug)".into(),
                    }));
                }
            }
        }
        self.core_actions = actions;
        self.maybe_compact();
    }

    fn on_notice(&mut self, now: Time, notice: ParticipantNotice) {
        let event = match notice {
            ParticipantNotice::TimeoutFired {
                xid,
                phase,
                timeout_ms,
                attempt,
            } => {
                self.counters.inquiries += 1;
                let basis = self.timeouts.inquire_fired(xid).unwrap_or_else(|| {
                    "not measured (recovered branch): --inquire-ms-initial, doubling".to_string()
                });
                ParticipantEvent::InquireFired {
                    xid,
                    phase,
                    timeout_ms,
                    attempt,
                    basis,
                }
            }
            ParticipantNotice::Outcome { xid, decision } => {
                self.timeouts.finish(xid);
                if let Some((client, request_id)) = self.heuristic_waiting.remove(&xid) {
                    let reply = Reply::Heuristic {
                        request_id,
                        xid,
                        decision,
                    };
                    self.actions
                        .push(ParticipantNodeAction::Reply { client, reply });
                }
                if let Some(since) = self.holding.remove(&xid) {
                    self.lock_hold
                        .record(std::time::Duration::from_micros(now.us_since(since)));
                }
                match decision {
                    Decision::Commit => self.counters.committed += 1,
                    Decision::Abort => self.counters.aborted += 1,
                }
                ParticipantEvent::Core(notice)
            }
            ParticipantNotice::HeuristicConflict { .. } => {
                self.counters.heuristic_conflicts += 1;
                ParticipantEvent::Core(notice)
            }
            ParticipantNotice::Violation { .. } => {
                self.counters.violations += 1;
                ParticipantEvent::Core(notice)
            }
            ParticipantNotice::ApplyFailed { .. } => {
                self.counters.apply_failures += 1;
                ParticipantEvent::Core(notice)
            }
            ParticipantNotice::Ignored { .. } | ParticipantNotice::Recovered { .. } => {
                ParticipantEvent::Core(notice)
            }
            ParticipantNotice::LatencySample {
                peer,
                phase,
                elapsed_us,
                ..
            } => {
                self.timeouts.observe(&peer, phase, elapsed_us);
                return;
            }
            ParticipantNotice::ChildAborted {
                xid,
                child,
                elapsed_us,
            } => {
                self.timeouts.child_aborted(xid, &child, elapsed_us);
                return;
            }
            ParticipantNotice::ChildrenSilent {
                xid,
                silent,
                timeout_ms,
            } => {
                let basis = self.timeouts.children_silent(xid, &silent);
                ParticipantEvent::ChildrenSilent {
                    xid,
                    silent,
                    timeout_ms,
                    basis,
                }
            }
        };
        self.push_event(event);
    }

    fn push_event(&mut self, event: ParticipantEvent) {
        self.actions.push(ParticipantNodeAction::Event(event));
    }
}
/// A PostgreSQL resource's report as the API carries it.
fn prepared_status(r: &concord_participant::pg::PreparedReport) -> concord_api::PreparedStatus {
    use concord_participant::pg::reconcile::GidOwner;
    concord_api::PreparedStatus {
        reconciled: r.reconciled_at.is_some(),
        prepared: r.prepared as u64,
        max_prepared_transactions: r.max_prepared,
        held: r.held as u64,
        waiting: r.waiting as u64,
        unresolvable: r.unresolvable as u64,
        oldest_unresolved_ms: (r.oldest_unresolved_s * 1000.0) as u64,
        unresolved: r
            .unresolved
            .iter()
            .map(|u| concord_api::UnresolvedGid {
                gid: u.gid.clone(),
                age_ms: (u.age_s * 1000.0) as u64,
                owner: match &u.owner {
                    GidOwner::Mine => "waiting".into(),
                    GidOwner::OtherParticipant(name) => format!("participant {name}"),
                    GidOwner::Foreign => "foreign".into(),
                },
            })
            .collect(),
        commits: r.commits,
        rollbacks: r.rollbacks,
        last_error: r.last_error.clone(),
    }
}
