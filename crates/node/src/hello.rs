//! Hellos: how a node that (re)started, perhaps on a new address, is
//! found again. At start a node says hello to every peer it knows of (the
//! coordinator: its configured participants; a participant: the
//! coordinators in its log's directory), and says it again, with a
//! doubling backoff, to each one it has not heard from since (a
//! participant until it is heard, a coordinator for at most
//! [`HELLO_ROUNDS_MAX`] rounds), until it answers with a welcome, which is
//! not answered. Only a welcome counts: any frame shows the peer reached
//! us, but a welcome also says it has our address durably. A hello from a new address is welcomed only once that
//! address is durable in the receiver's log ([`Welcomes`]). A participant
//! never stops: a coordinator that lost its address (its configuration is
//! stale) could otherwise never reach it again with a COMMIT it still owes
//! it. A coordinator's hellos only speed things up (participants find it
//! through their INQUIREs too), so they stop.
//!
//! One node-wide timer, keyed with xid 0 (never minted) and
//! [`TimerKind::Hello`].

use crate::directory::Directory;
use concord_proto::gate::Gate;
use concord_proto::{NodeId, PersistTicket, Time, TimerKey, TimerKind, Xid};
use std::collections::BTreeSet;

/// Tickets of the node layer's own forced writes start here, far above any
/// the protocol cores hand out: `on_durable` tells them apart by range.
pub const NODE_TICKETS_FROM: u64 = 1 << 63;

/// Whether `ticket` is the node layer's (see [`NODE_TICKETS_FROM`]).
pub fn is_node_ticket(ticket: PersistTicket) -> bool {
    ticket.0 >= NODE_TICKETS_FROM
}

/// Welcomes that wait for a forced `Peer` record: a node answers a hello
/// from a peer at a new address only once that address is durable, so the
/// peer (which stops saying hello once welcomed) is never forgotten by a
/// crash of ours.
#[derive(Debug)]
pub struct Welcomes {
    gate: Gate<(NodeId, String)>,
}

impl Default for Welcomes {
    fn default() -> Self {
        Welcomes {
            gate: Gate::starting_at(NODE_TICKETS_FROM),
        }
    }
}

impl Welcomes {
    /// Welcome `to` at `addr` once the write with the returned ticket is
    /// durable.
    pub fn park(&mut self, to: NodeId, addr: String) -> PersistTicket {
        self.gate.park((to, addr))
    }

    /// The write of `ticket` is durable: the welcome to send now.
    pub fn release(&mut self, ticket: PersistTicket) -> Option<(NodeId, String)> {
        self.gate.release(ticket)
    }
}

/// A frame that carries no protocol message, only where its sender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// "Here I am"; answered with a welcome.
    Hello,
    /// The answer to a hello.
    Welcome,
}

/// `peers` with the addresses the directory has for them (a peer with
/// none is skipped: nowhere to send to).
pub fn addressed(directory: &Directory, peers: Vec<NodeId>) -> Vec<(NodeId, String)> {
    peers
        .into_iter()
        .filter_map(|id| {
            let addr = directory.addr_of(&id)?.to_string();
            Some((id, addr))
        })
        .collect()
}

/// Rounds of hellos after which a silent peer is left alone (with the
/// backoff capped at the node's resend or inquire maximum, minutes).
pub const HELLO_ROUNDS_MAX: u32 = 12;

/// The timer that repeats hellos.
pub fn hello_timer() -> TimerKey {
    TimerKey::new(Xid(0), TimerKind::Hello)
}

/// The timer that repeats a moved participant's hellos to its peers.
pub fn peer_hello_timer() -> TimerKey {
    TimerKey::new(Xid(1), TimerKind::Hello)
}

/// Peers not heard from since start, and when to say hello again.
#[derive(Debug)]
pub struct Hellos {
    unheard: BTreeSet<NodeId>,
    wait_ms: u64,
    wait_ms_max: u64,
    due: Option<Time>,
    rounds: u32,
    /// None: until every peer is heard from.
    rounds_max: Option<u32>,
    timer: TimerKey,
}

impl Hellos {
    /// Say hello to `peers` now; repeat after `wait_ms`, doubling up to
    /// `wait_ms_max`. Returns the peers to greet now and the timer to set.
    pub fn start(
        peers: impl IntoIterator<Item = NodeId>,
        now: Time,
        wait_ms: u64,
        wait_ms_max: u64,
        rounds_max: Option<u32>,
    ) -> (Hellos, Vec<NodeId>, Option<(TimerKey, Time)>) {
        let mut hellos = Hellos {
            unheard: peers.into_iter().collect(),
            wait_ms: wait_ms.max(1),
            wait_ms_max: wait_ms_max.max(wait_ms).max(1),
            due: None,
            rounds: 1,
            rounds_max,
            timer: hello_timer(),
        };
        let greet: Vec<NodeId> = hellos.unheard.iter().cloned().collect();
        let timer = hellos.arm(now);
        (hellos, greet, timer)
    }

    /// The same, on timer `key` (for a second set of hellos at one node).
    pub fn with_timer(mut self, key: TimerKey) -> Hellos {
        self.timer = key;
        self
    }

    /// Say hello to `peer` too, from now on until it welcomes us: returns
    /// the timer to set if none was armed.
    pub fn add(&mut self, peer: NodeId, now: Time) -> Option<(TimerKey, Time)> {
        self.unheard.insert(peer);
        if self.due.is_some() {
            return None;
        }
        self.arm(now)
    }

    /// `peer` welcomed us.
    pub fn heard(&mut self, peer: &str) {
        self.unheard.remove(peer);
    }

    /// The hello timer fired: the peers to greet again and the next timer.
    pub fn on_timer(&mut self, now: Time) -> (Vec<NodeId>, Option<(TimerKey, Time)>) {
        match self.due {
            Some(due) if now >= due => {}
            _ => return (Vec::new(), None), // stale
        }
        self.due = None;
        if self.rounds_max.is_some_and(|max| self.rounds >= max) {
            self.unheard.clear();
            return (Vec::new(), None);
        }
        self.rounds += 1;
        let greet: Vec<NodeId> = self.unheard.iter().cloned().collect();
        self.wait_ms = self.wait_ms.saturating_mul(2).min(self.wait_ms_max);
        let timer = self.arm(now);
        (greet, timer)
    }

    /// Peers still not heard from.
    pub fn unheard(&self) -> usize {
        self.unheard.len()
    }

    fn arm(&mut self, now: Time) -> Option<(TimerKey, Time)> {
        if self.unheard.is_empty() {
            return None;
        }
        let at = now.plus_ms(self.wait_ms);
        self.due = Some(at);
        Some((self.timer, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_repeat_with_backoff_until_every_peer_is_heard_from() {
        let (mut h, greet, timer) = Hellos::start(["a".into(), "b".into()], Time(0), 10, 40, None);
        assert_eq!(greet, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(timer, Some((hello_timer(), Time(10_000))));
        h.heard("a");
        assert_eq!(h.on_timer(Time(5_000)), (vec![], None), "early: stale");
        let (greet, timer) = h.on_timer(Time(10_000));
        assert_eq!(greet, vec!["b".to_string()]);
        assert_eq!(timer, Some((hello_timer(), Time(30_000))));
        let (_, timer) = h.on_timer(Time(30_000));
        assert_eq!(timer, Some((hello_timer(), Time(70_000))));
        let (_, timer) = h.on_timer(Time(70_000));
        assert_eq!(timer, Some((hello_timer(), Time(110_000))), "capped");
        h.heard("b");
        assert_eq!(h.on_timer(Time(110_000)), (vec![], None), "all heard");
        assert_eq!(h.unheard(), 0);
    }

    #[test]
    fn a_silent_peer_is_left_alone_after_the_last_round() {
        let (mut h, _, mut timer) =
            Hellos::start(["a".into()], Time(0), 1, 1, Some(HELLO_ROUNDS_MAX));
        let mut rounds = 1;
        while let Some((_, at)) = timer {
            let (greet, next) = h.on_timer(at);
            rounds += usize::from(!greet.is_empty());
            timer = next;
        }
        assert_eq!(rounds, HELLO_ROUNDS_MAX as usize);
        assert_eq!(h.unheard(), 0);
    }
}
