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
use crate::timeouts::{ParticipantTimeouts, PhaseSettings};
use concord_api::{AccountsReport, Reply, Request, TimeoutsReport};
use concord_participant::kv::{KvStore, KvView};
use concord_participant::{ParticipantNode, Resource, ResourceOp};
use concord_proto::{
    Body, Decision, Durability, Message, ParticipantAction, ParticipantConfig, ParticipantNotice,
    ParticipantRecord, PeerAddr, PersistTicket, Time, TimerKey, Vote, Xid,
};

pub use crate::coordinator::ClientId;

/// Settings of a participant node.
#[derive(Clone, Debug)]
pub struct ParticipantNodeConfig {
    /// This participant's protocol address.
    pub addr: PeerAddr,
    /// Delay past the PREPARE deadline before the first INQUIRE until
    /// measured, and its bounds; INQUIREs double up to `inquire_ms_max`.
    pub inquire_ms_initial: u64,
    pub inquire_ms_min: u64,
    pub inquire_ms_max: u64,
    pub timeout_samples_min: u64,
    /// Finished branches remembered for answering duplicates.
    pub finished_max: usize,
    /// Compact the log once this many records were appended since the last
    /// compaction (and twice the last snapshot); `u64::MAX`: never.
    pub compact_after_records: u64,
    /// Wait before a failed resource commit or abort is tried again;
    /// doubles per failure up to the max. Never given up.
    pub apply_retry_ms_initial: u64,
    pub apply_retry_ms_max: u64,
}

impl ParticipantNodeConfig {
    /// The defaults of `concord participant`.
    pub fn new(addr: impl Into<PeerAddr>) -> ParticipantNodeConfig {
        ParticipantNodeConfig {
            addr: addr.into(),
            inquire_ms_initial: 200,
            inquire_ms_min: 10,
            inquire_ms_max: 5000,
            timeout_samples_min: 8,
            finished_max: 100_000,
            compact_after_records: COMPACT_AFTER_RECORDS_DEFAULT,
            apply_retry_ms_initial: 10,
            apply_retry_ms_max: 5000,
        }
    }

    /// Refuse settings that contradict each other, naming the flags.
    pub fn validate(&self) -> Result<(), String> {
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
    Send {
        to: PeerAddr,
        message: Message,
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
    /// A compaction started: the log is rewritten with `records` records.
    Compacting { records: usize },
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
}

/// Generic over the resource so that tests and the simulator can run the
/// same node over a resource that answers late ([`Resource`]); it must
/// hold key-value accounts ([`KvView`]) for the `accounts` request.
pub struct ParticipantServerNode<R: Resource = KvStore> {
    node: ParticipantNode<R>,
    timeouts: ParticipantTimeouts,
    counters: ParticipantCounters,
    compaction: CompactionPolicy,
    /// Scratch space for the node's IO actions while they are translated.
    core_actions: Vec<ParticipantAction>,
    actions: Vec<ParticipantNodeAction>,
}

impl<R: Resource + KvView> ParticipantServerNode<R> {
    /// Rebuild from the log: `resource` must already reflect the committed
    /// history (`KvStore::replay` of the same records).
    pub fn recover(
        config: ParticipantNodeConfig,
        records: impl IntoIterator<Item = ParticipantRecord>,
        resource: R,
        now: Time,
    ) -> ParticipantServerNode<R> {
        let timeouts = ParticipantTimeouts::new(PhaseSettings {
            min_ms: config.inquire_ms_min,
            max_ms: config.inquire_ms_max,
            default_ms: config.inquire_ms_initial,
            samples_min: config.timeout_samples_min,
            // An INQUIRE is cheap and idempotent: the RTO as it is.
            factor: 1.0,
            flag: "--inquire-ms",
            default_flag: "--inquire-ms-initial",
        });
        let core_config = ParticipantConfig {
            addr: config.addr,
            inquire_ms_initial: config.inquire_ms_initial,
            inquire_ms_max: config.inquire_ms_max,
            finished_max: config.finished_max,
            apply_retry_ms_initial: config.apply_retry_ms_initial,
            apply_retry_ms_max: config.apply_retry_ms_max,
        };
        let mut node = ParticipantServerNode {
            node: ParticipantNode::recover(core_config, records, resource, now),
            timeouts,
            counters: ParticipantCounters::default(),
            compaction: CompactionPolicy::new(config.compact_after_records),
            core_actions: Vec::new(),
            actions: Vec::new(),
        };
        node.pump();
        node
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

    pub fn on_message(&mut self, now: Time, message: Message) {
        if let Body::Prepare { deadline_ms, .. } = &message.body {
            let chosen = self
                .timeouts
                .on_prepare(now, message.xid, &message.from, *deadline_ms);
            if let Some(inquire_ms) = chosen {
                // A new branch gets the measured delay.
                self.node.set_inquire_ms_initial(inquire_ms);
            }
        }
        self.node.on_message(now, message);
        self.pump();
    }

    pub fn on_timer(&mut self, now: Time, key: TimerKey) {
        self.node.on_timer(now, key);
        self.pump();
    }

    pub fn on_durable(&mut self, now: Time, ticket: PersistTicket) {
        self.node.on_durable(now, ticket);
        self.pump();
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
        self.pump();
    }

    pub fn on_request(&mut self, client: ClientId, request: Request) {
        let reply = match request {
            Request::Accounts { request_id } => {
                let kv = self.node.resource().kv();
                let mut locks: Vec<(String, Xid)> =
                    kv.locks().iter().map(|(a, x)| (a.clone(), *x)).collect();
                locks.sort();
                let accounts = AccountsReport {
                    balances: kv.balances().iter().map(|(a, b)| (a.clone(), *b)).collect(),
                    in_doubt: self.node.core().in_doubt(),
                    locks,
                };
                Reply::Accounts {
                    request_id,
                    accounts,
                }
            }
            Request::BranchState { request_id, xid } => Reply::BranchState {
                request_id,
                xid,
                state: self.node.core().state_of(xid),
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
        let records = self.node.snapshot_records();
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

    fn pump(&mut self) {
        // A buffer kept across events: this runs for every message.
        let mut actions = std::mem::take(&mut self.core_actions);
        actions.extend(self.node.drain_io());
        for action in actions.drain(..) {
            match action {
                ParticipantAction::Persist { record, durability } => {
                    self.compaction.appended(1);
                    let deferrable = matches!(record, ParticipantRecord::Outcome { .. });
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
                    self.actions
                        .push(ParticipantNodeAction::Send { to, message });
                }
                ParticipantAction::SetTimer { key, at } => self
                    .actions
                    .push(ParticipantNodeAction::SetTimer { key, at }),
                ParticipantAction::Notice(notice) => self.on_notice(notice),
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

    fn on_notice(&mut self, notice: ParticipantNotice) {
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
                match decision {
                    Decision::Commit => self.counters.committed += 1,
                    Decision::Abort => self.counters.aborted += 1,
                }
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
        };
        self.push_event(event);
    }

    fn push_event(&mut self, event: ParticipantEvent) {
        self.actions.push(ParticipantNodeAction::Event(event));
    }
}
