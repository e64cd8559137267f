//! Per-transaction timelines (SPEC §8 "no insight into one transaction"):
//! every message the coordinator sent (peer, kind, attempt) and received,
//! each vote, each timeout with the estimate that set it, each log record
//! and when it became durable, delivery failures and the decision.
//!
//! Built from what the node already emits, not from a shadow tracker: the
//! node hands this module its actions as the driver drains them (sends,
//! persists, typed events), the frames it opened, and the tickets that
//! became durable. So the simulator builds the same timelines under every
//! seed.
//!
//! Memory is bounded twice: at most [`ENTRIES_PER_TXN_MAX`] entries per
//! transaction (later ones are counted, not kept), and at most
//! `timelines_max` transactions (the oldest finished timelines are dropped
//! first; with none finished, a new transaction gets no timeline).

use crate::coordinator::{CoordinatorEvent, CoordinatorNodeAction};
use crate::timeouts::TimeoutChoice;
use concord_api::{TimelineEntry, TimelineEvent, TimelineView};
use concord_proto::{
    Body, CoordinatorRecord, Decision, Durability, NodeId, PersistTicket, Time, Xid,
};
use std::collections::{HashMap, VecDeque};

/// Entries kept per transaction; enough for a 3-participant transaction
/// with a few dozen resends.
pub const ENTRIES_PER_TXN_MAX: usize = 128;
/// Transactions with a timeline, by default (`TIMELINES_MAX_DEFAULT` ×
/// about 2.5 KB for a 3-participant transaction: ~25 MB at most).
pub const TIMELINES_MAX_DEFAULT: usize = 10_000;
/// Entries reserved up front: a 3-participant transaction's usual count.
const ENTRIES_RESERVED: usize = 16;

/// Most distinct peers named in timelines; beyond (a peer can put any id
/// in a frame), entries name no peer rather than grow the table.
const PEERS_MAX: usize = 4096;

/// One entry as kept: compact, since this runs for every message. Text is
/// made only when a timeline is asked for.
#[derive(Debug)]
struct Entry {
    at: Time,
    event: TimelineEvent,
    /// Index into [`Timelines::peers`].
    peer: Option<u16>,
    message: Option<&'static str>,
    /// 0: not a send.
    attempt: u32,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    None,
    Static(&'static str),
    Text(String),
    /// A begin's phase-1 timeout and the estimate that set it.
    Prepare(Box<TimeoutChoice>),
}

#[derive(Debug, Default)]
struct Timeline {
    began: Option<Time>,
    entries: Vec<Entry>,
    dropped: u64,
    finished: bool,
    /// Sends so far per (peer, message kind): the attempt numbers.
    sends: Vec<(Option<u16>, &'static str, u32)>,
}

#[derive(Debug)]
pub struct Timelines {
    timelines_max: usize,
    txns: HashMap<Xid, Timeline>,
    /// Finished timelines, oldest first (dropped first at the bound).
    finished: VecDeque<Xid>,
    /// Forced writes not yet durable: which transaction's record.
    forcing: HashMap<PersistTicket, (Xid, &'static str)>,
    /// Transactions that got no timeline (the bound was full of
    /// unfinished ones).
    untracked: u64,
    /// The peers entries name (interned: a timeline entry holds an index).
    peers: Vec<NodeId>,
    peer_index: HashMap<NodeId, u16>,
}

impl Timelines {
    pub fn new(timelines_max: usize) -> Timelines {
        Timelines {
            timelines_max,
            txns: HashMap::new(),
            finished: VecDeque::new(),
            forcing: HashMap::new(),
            untracked: 0,
            peers: Vec::new(),
            peer_index: HashMap::new(),
        }
    }

    /// The node's actions of one event, as the driver drains them.
    pub fn observe(&mut self, now: Time, actions: &[CoordinatorNodeAction]) {
        if self.timelines_max == 0 {
            return;
        }
        for action in actions {
            match action {
                CoordinatorNodeAction::Send { to, message, .. } => {
                    if !self.txns.contains_key(&message.xid) {
                        continue;
                    }
                    let kind = message.kind();
                    let peer = self.peer(to);
                    if let Some(t) = self.timeline(message.xid, false) {
                        let attempt = t.attempt(peer, kind);
                        t.push(
                            now,
                            TimelineEvent::Sent,
                            peer,
                            Some(kind),
                            attempt,
                            Detail::None,
                        );
                    }
                }
                CoordinatorNodeAction::Persist { record, durability } => {
                    let Some(xid) = record_xid(record) else {
                        continue;
                    };
                    if !self.txns.contains_key(&xid) {
                        continue;
                    }
                    let name = record_name(record);
                    let forced = matches!(durability, Durability::Forced(_));
                    if let Durability::Forced(ticket) = durability {
                        self.forcing.insert(*ticket, (xid, name));
                    }
                    if let Some(t) = self.timeline(xid, false) {
                        let detail = if forced { "forced (fsync)" } else { "lazy" };
                        let detail = Detail::Static(detail);
                        t.push(now, TimelineEvent::Logged, None, Some(name), 0, detail);
                    }
                }
                CoordinatorNodeAction::Event(event) => self.on_event(now, event),
                _ => {}
            }
        }
    }

    /// A message from `from` reached the core.
    pub fn received(&mut self, now: Time, xid: Xid, from: &str, body: &Body) {
        if !self.txns.contains_key(&xid) {
            return;
        }
        let peer = self.peer(from);
        if let Some(t) = self.timeline(xid, false) {
            let detail = match body {
                Body::Vote(concord_proto::Vote::Abort { reason }) => Detail::Text(reason.clone()),
                _ => Detail::None,
            };
            t.push(
                now,
                TimelineEvent::Received,
                peer,
                Some(body.kind()),
                0,
                detail,
            );
        }
    }

    /// A forced write became durable.
    pub fn durable(&mut self, now: Time, ticket: PersistTicket) {
        let Some((xid, name)) = self.forcing.remove(&ticket) else {
            return;
        };
        if let Some(t) = self.timeline(xid, false) {
            t.push(
                now,
                TimelineEvent::Durable,
                None,
                Some(name),
                0,
                Detail::None,
            );
        }
    }

    /// The transport could not deliver a message (HTTP participants).
    pub fn delivery_failed(&mut self, now: Time, xid: Xid, to: &str, kind: &str, error: &str) {
        if !self.txns.contains_key(&xid) {
            return;
        }
        let peer = self.peer(to);
        if let Some(t) = self.timeline(xid, false) {
            let detail = Detail::Text(error.to_string());
            t.push(
                now,
                TimelineEvent::DeliveryFailed,
                peer,
                static_kind(kind),
                0,
                detail,
            );
        }
    }

    /// The timeline of `xid`, if one is kept.
    pub fn view(&self, now: Time, xid: Xid) -> Option<TimelineView> {
        let t = self.txns.get(&xid)?;
        let entries = t
            .entries
            .iter()
            .map(|e| TimelineEntry {
                at_us: e.at.0,
                event: e.event,
                peer: e.peer.and_then(|i| self.peers.get(usize::from(i))).cloned(),
                message: e.message.map(str::to_string),
                attempt: (e.attempt > 0).then_some(e.attempt),
                detail: match &e.detail {
                    Detail::None => String::new(),
                    Detail::Static(text) => text.to_string(),
                    Detail::Text(text) => text.clone(),
                    Detail::Prepare(choice) => {
                        format!("phase-1 timeout {} ms: {choice}", choice.timeout_ms)
                    }
                },
            })
            .collect();
        Some(TimelineView {
            xid,
            now_us: now.0,
            began_us: t.began.map(|b| b.0),
            entries,
            dropped: t.dropped,
            finished: t.finished,
        })
    }

    /// How many timelines are kept, and how many transactions got none.
    pub fn counts(&self) -> (usize, u64) {
        (self.txns.len(), self.untracked)
    }

    fn on_event(&mut self, now: Time, event: &CoordinatorEvent) {
        use CoordinatorEvent as E;
        let (xid, what, peer, detail, finishes) = match event {
            E::Begun {
                xid,
                timeout_ms,
                prepare,
                ..
            } => {
                // The timeout in force (a chain's or tree's is a multiple
                // of the estimate's) and the estimate behind it.
                let mut choice = prepare.clone();
                choice.timeout_ms = *timeout_ms;
                let detail = Detail::Prepare(Box::new(choice));
                if let Some(t) = self.timeline(*xid, true) {
                    t.began = Some(now);
                }
                (*xid, TimelineEvent::Begun, None, detail, false)
            }
            E::Opened { xid, lifetime_ms } => {
                let detail = Detail::Text(format!("open-ended, lifetime {lifetime_ms} ms"));
                if let Some(t) = self.timeline(*xid, true) {
                    t.began = Some(now);
                }
                (*xid, TimelineEvent::Begun, None, detail, false)
            }
            E::TimeoutFired {
                xid,
                phase,
                timeout_ms,
                waiting_for,
                basis,
            } => (
                *xid,
                TimelineEvent::Timeout,
                None,
                Detail::Text(format!(
                    "{phase} after {timeout_ms} ms, waiting for {}: {basis}",
                    waiting_for.join(", ")
                )),
                false,
            ),
            E::Decided {
                xid,
                decision,
                reason,
                ..
            } => {
                let d = match decision {
                    Decision::Commit => Detail::Static("COMMIT"),
                    Decision::Abort => {
                        Detail::Text(format!("ABORT: {}", reason.as_deref().unwrap_or("")))
                    }
                };
                // An abort is final (presumed abort: nothing more is sent
                // but the ABORTs in the same batch).
                (
                    *xid,
                    TimelineEvent::Decided,
                    None,
                    d,
                    *decision == Decision::Abort,
                )
            }
            E::Ended { xid } => (*xid, TimelineEvent::Ended, None, Detail::None, true),
            E::NeedsAttention {
                xid,
                participant,
                attempts,
                last_error,
                pending_ms,
            } => (
                *xid,
                TimelineEvent::NeedsAttention,
                Some(participant.clone()),
                Detail::Text(format!(
                    "{attempts} attempts over {pending_ms} ms; last error: {}",
                    last_error.as_deref().unwrap_or("none reported")
                )),
                false,
            ),
            E::AttentionCleared {
                xid,
                participant,
                attempts,
            } => (
                *xid,
                TimelineEvent::AttentionCleared,
                Some(participant.clone()),
                Detail::Text(format!("acknowledged after {attempts} attempts")),
                false,
            ),
            E::OutcomeUnknown { xid, participant } => (
                *xid,
                TimelineEvent::Ended,
                Some(participant.clone()),
                Detail::Static("one-phase branch asked too late: outcome unknown here"),
                true,
            ),
            _ => return,
        };
        // Attention events name the participant by its display name.
        let peer = peer.and_then(|p: String| self.peer(&p));
        if let Some(t) = self.timeline(xid, false) {
            t.push(now, what, peer, None, 0, detail);
            if finishes && !t.finished {
                t.finished = true;
                self.finished.push_back(xid);
            }
        }
    }

    /// The interned index of `peer` (`None` once the table is full).
    fn peer(&mut self, peer: &str) -> Option<u16> {
        if let Some(i) = self.peer_index.get(peer) {
            return Some(*i);
        }
        if self.peers.len() >= PEERS_MAX {
            return None;
        }
        let i = self.peers.len() as u16;
        self.peers.push(peer.to_string());
        self.peer_index.insert(peer.to_string(), i);
        Some(i)
    }

    /// The timeline of `xid`; a new one only at its begin (`create`).
    fn timeline(&mut self, xid: Xid, create: bool) -> Option<&mut Timeline> {
        if !create || self.txns.contains_key(&xid) {
            return self.txns.get_mut(&xid);
        }
        while self.txns.len() >= self.timelines_max {
            // The oldest finished goes first; an xid in the queue whose
            // timeline was already dropped is skipped.
            let Some(old) = self.finished.pop_front() else {
                self.untracked += 1;
                return None;
            };
            self.txns.remove(&old);
        }
        Some(self.txns.entry(xid).or_insert_with(|| Timeline {
            entries: Vec::with_capacity(ENTRIES_RESERVED),
            ..Timeline::default()
        }))
    }
}

impl Timeline {
    fn attempt(&mut self, to: Option<u16>, kind: &'static str) -> u32 {
        match self
            .sends
            .iter_mut()
            .find(|(p, k, _)| *p == to && *k == kind)
        {
            Some((_, _, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.sends.push((to, kind, 1));
                1
            }
        }
    }

    fn push(
        &mut self,
        at: Time,
        event: TimelineEvent,
        peer: Option<u16>,
        message: Option<&'static str>,
        attempt: u32,
        detail: Detail,
    ) {
        if self.entries.len() >= ENTRIES_PER_TXN_MAX {
            self.dropped += 1;
            return;
        }
        self.entries.push(Entry {
            at,
            event,
            peer,
            message,
            attempt,
            detail,
        });
    }
}

fn record_xid(record: &CoordinatorRecord) -> Option<Xid> {
    match record {
        CoordinatorRecord::Begin { xid, .. }
        | CoordinatorRecord::Decision { xid, .. }
        | CoordinatorRecord::End { xid } => Some(*xid),
        _ => None,
    }
}

fn record_name(record: &CoordinatorRecord) -> &'static str {
    match record {
        CoordinatorRecord::Begin { .. } => "BEGIN record",
        CoordinatorRecord::Decision {
            decision: Decision::Commit,
            ..
        } => "COMMIT record",
        CoordinatorRecord::Decision { .. } => "ABORT record",
        CoordinatorRecord::End { .. } => "END record",
        _ => "record",
    }
}

/// The message kinds the transport reports failures for.
fn static_kind(kind: &str) -> Option<&'static str> {
    ["PREPARE", "COMMIT", "ABORT"]
        .into_iter()
        .find(|k| *k == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts::{Basis, TimeoutChoice};
    use concord_proto::{Message, Vote};

    fn begun(xid: Xid) -> CoordinatorNodeAction {
        CoordinatorNodeAction::Event(CoordinatorEvent::Begun {
            xid,
            request_id: 1,
            timeout_ms: 100,
            resend_ms: 10,
            prepare: TimeoutChoice {
                timeout_ms: 100,
                phase: "prepare",
                peer: None,
                basis: Basis::Default {
                    samples: 0,
                    needed: 8,
                },
                backoff_level: 0,
                clamped: None,
                flag: "--prepare-timeout-ms",
                default_flag: "--prepare-timeout-ms",
            },
        })
    }

    fn ended(xid: Xid) -> CoordinatorNodeAction {
        CoordinatorNodeAction::Event(CoordinatorEvent::Ended { xid })
    }

    fn prepare(xid: Xid, to: &str) -> CoordinatorNodeAction {
        CoordinatorNodeAction::Send {
            to: to.into(),
            addr: std::sync::Arc::from("a"),
            message: Message {
                xid,
                epoch: 1,
                from: "c".into(),
                body: Body::Prepare {
                    participants: vec![],
                    work: vec![],
                    deadline_ms: 100,
                },
            },
            peers: vec![],
        }
    }

    #[test]
    fn sends_are_numbered_and_votes_and_durable_records_are_kept() {
        let mut t = Timelines::new(10);
        let xid = Xid(1);
        t.observe(
            Time(0),
            &[begun(xid), prepare(xid, "p0"), prepare(xid, "p0")],
        );
        t.received(Time(5), xid, "p0", &Body::Vote(Vote::Ready));
        t.observe(
            Time(6),
            &[CoordinatorNodeAction::Persist {
                record: CoordinatorRecord::Decision {
                    xid,
                    decision: Decision::Commit,
                    participants: vec![],
                },
                durability: Durability::Forced(PersistTicket(9)),
            }],
        );
        t.durable(Time(8), PersistTicket(9));
        let view = t.view(Time(10), xid).expect("a timeline");
        let got: Vec<(TimelineEvent, Option<&str>, Option<u32>, u64)> = view
            .entries
            .iter()
            .map(|e| (e.event, e.message.as_deref(), e.attempt, e.at_us))
            .collect();
        assert_eq!(
            got,
            vec![
                (TimelineEvent::Begun, None, None, 0),
                (TimelineEvent::Sent, Some("PREPARE"), Some(1), 0),
                (TimelineEvent::Sent, Some("PREPARE"), Some(2), 0),
                (TimelineEvent::Received, Some("VOTE READY"), None, 5),
                (TimelineEvent::Logged, Some("COMMIT record"), None, 6),
                (TimelineEvent::Durable, Some("COMMIT record"), None, 8),
            ]
        );
        assert!(
            view.entries[0].detail.contains("phase-1 timeout 100 ms"),
            "{:?}",
            view.entries[0]
        );
    }

    #[test]
    fn the_oldest_finished_timeline_is_dropped_first_and_entries_are_bounded() {
        let mut t = Timelines::new(2);
        t.observe(Time(0), &[begun(Xid(1)), begun(Xid(2))]);
        // Both unfinished: a third gets no timeline.
        t.observe(Time(1), &[begun(Xid(3))]);
        assert!(t.view(Time(1), Xid(3)).is_none());
        assert_eq!(t.counts(), (2, 1));
        // Xid 2 finishes first: it is the one dropped for xid 4.
        t.observe(Time(2), &[ended(Xid(2)), ended(Xid(1)), begun(Xid(4))]);
        assert!(t.view(Time(2), Xid(2)).is_none());
        assert!(t.view(Time(2), Xid(1)).is_some());
        assert!(t.view(Time(2), Xid(4)).is_some());
        // Per transaction: later entries are counted, not kept.
        let sends: Vec<CoordinatorNodeAction> = (0..ENTRIES_PER_TXN_MAX + 5)
            .map(|_| prepare(Xid(4), "p0"))
            .collect();
        t.observe(Time(3), &sends);
        let view = t.view(Time(3), Xid(4)).expect("kept");
        assert_eq!(view.entries.len(), ENTRIES_PER_TXN_MAX);
        assert_eq!(view.dropped, 6);
    }
}
