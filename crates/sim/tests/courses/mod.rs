//! What the scripted tests share: the helpers every scenario uses (a
//! transfer, a participant's state and locks, settling a world and
//! checking every invariant), the trees of hierarchical 2PC, and the
//! courses of cooperative termination (SPEC §1.6) and of a child's
//! question to its sub-coordinator (SPEC §1.7) that both the scenario
//! tests (which assert what happens) and the mutant tests (which show
//! that breaking a rule is caught) run.
//! Each course returns the world when the interesting part is over,
//! before it settles.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use concord_participant::kv::KvOp;
use concord_proto::{Shape, TxnState, Xid};
use concord_sim::{
    ClientOutcome, Fate, KeepUnsynced, MessageRule, NodeId, SimConfig, SimFailure, World,
};

pub const C: NodeId = NodeId::Coordinator;
pub const P0: NodeId = NodeId::Participant(0);
pub const P1: NodeId = NodeId::Participant(1);
pub const P2: NodeId = NodeId::Participant(2);

pub fn op(account: &str, delta: i64) -> KvOp {
    KvOp {
        account: account.into(),
        delta,
    }
}

/// p0's acct-0 pays `amount` to p1's acct-1.
pub fn transfer(amount: i64) -> Vec<(usize, Vec<KvOp>)> {
    vec![
        (0, vec![op("acct-0", -amount)]),
        (1, vec![op("acct-1", amount)]),
    ]
}

pub fn explain(f: SimFailure) -> String {
    format!("{f}\n--- trace ---\n{}", f.trace.join("\n"))
}

/// Let everything finish, then run every invariant checker.
pub fn settle(w: &mut World) {
    assert!(w.run_until_quiet(120_000), "world did not go quiet");
    if let Err(f) = w.check_invariants() {
        panic!("{}", explain(f));
    }
}

pub fn state(w: &World, p: usize, xid: Xid) -> TxnState {
    w.participant(p)
        .expect("participant is up")
        .core()
        .state_of(xid)
}

pub fn locked(w: &World, p: usize) -> Vec<String> {
    let mut accounts: Vec<String> = w
        .participant(p)
        .expect("participant is up")
        .resource()
        .inner()
        .locks()
        .keys()
        .cloned()
        .collect();
    accounts.sort();
    accounts
}

pub fn assert_no_locks(w: &World) {
    for p in 0..w.config().participants {
        assert!(locked(w, p).is_empty(), "p{p} holds {:?}", locked(w, p));
    }
}

/// The "watchdog re-vote" of the source material: p1's VOTE READY is
/// lost, so the coordinator times out and decides ABORT; every ABORT is
/// lost too, and the coordinator crashes and stays down for `down_ms`.
/// Both participants voted READY and can only ask each other: their
/// states say nothing about the outcome, so they must stay blocked (a
/// re-vote would commit what the coordinator aborted).
pub fn abort_lost_then_coordinator_down(down_ms: u64) -> (World, Xid) {
    let mut w = World::scripted(SimConfig::scripted(2));
    w.add_rule(MessageRule::new("VOTE READY", Fate::Drop).from(P1));
    w.add_rule(MessageRule::new("ABORT", Fate::Drop));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| w.client_outcome(x) == ClientOutcome::Aborted));
    w.crash(C, KeepUnsynced::All);
    w.run_for(down_ms);
    (w, x)
}

/// A peer that committed a branch and forgot it: x commits at p0 while p1
/// (READY, its COMMITs lost) is cut off for 70 s. p0 forgets x once it is
/// older than FINISHED_MS_MIN and two later branches pass its
/// `finished_max` of 1. Then the coordinator crashes, p1's partition
/// heals, and p1 can only ask p0, which has no record of x: it must not
/// call that ABORTED. Returned 10 s after the partition healed.
pub fn peer_forgot_a_commit() -> (World, Xid) {
    let mut config = SimConfig::scripted(3);
    config.finished_max = 1;
    let mut w = World::scripted(config);
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P1));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| state(w, 0, x) == TxnState::Committed));
    let healed_at = w.now().plus_ms(70_000);
    w.isolate(P1, 70_000);
    w.run_for(61_000);
    for amount in [1, 2] {
        let y = w.submit(vec![
            (0, vec![op("acct-2", -amount)]),
            (2, vec![op("acct-2", amount)]),
        ]);
        assert!(w.run_until(1_000, |w| state(w, 0, y) == TxnState::Committed));
    }
    assert_eq!(state(&w, 0, x), TxnState::Unknown, "p0 forgot x");
    w.crash(C, KeepUnsynced::All);
    w.run_for(healed_at.ms_since(w.now()) + 10_000);
    (w, x)
}

/// The read-only voter forgets across a restart: x commits with p2 only
/// reading (VOTE READ-ONLY: nothing logged), both COMMITs to the writers
/// p0 and p1 are lost, the coordinator dies right after deciding, and p2
/// restarts. The writers, READY, ask their peers: p0 and p1 answer READY,
/// and p2, which has no record of x, must not call it ABORTED. Returned
/// 5 s later, the coordinator still down.
pub fn read_only_voter_restarted() -> (World, Xid) {
    let mut w = World::scripted(SimConfig::scripted(3));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).times(2));
    let x = w.submit(vec![
        (0, vec![op("acct-0", -10)]),
        (1, vec![op("acct-1", 10)]),
        (2, vec![op("acct-2", 0)]),
    ]);
    assert!(w.run_until(1_000, |w| w.client_outcome(x) == ClientOutcome::Committed));
    w.crash(C, KeepUnsynced::All);
    w.crash(P2, KeepUnsynced::All);
    w.restart(P2);
    w.run_for(5_000);
    (w, x)
}

/// 10 from p1's acct-1 to p2's acct-2, with p0 moving 1 between two of
/// its accounts and back (so the sub-coordinator writes and locks too).
pub fn tree(w: &mut World) -> Xid {
    tree_of(w, vec![0, 1, 1])
}

/// The same branches over the tree `parents` gives.
pub fn tree_of(w: &mut World, parents: Vec<u32>) -> Xid {
    w.submit_tree(
        vec![
            (0, vec![op("acct-0", -1), op("acct-3", 1)]),
            (1, vec![op("acct-1", -10)]),
            (2, vec![op("acct-2", 10)]),
        ],
        Shape::Hierarchical,
        parents,
    )
}

/// The scripted world with the coordinator's prepare timeout fixed at
/// `ms` (no adaptation).
pub fn fixed_prepare_timeout(ms: u64) -> SimConfig {
    let mut config = SimConfig::scripted(3);
    config.prepare_timeout_ms = ms;
    config.prepare_timeout_ms_min = ms;
    config.prepare_timeout_ms_max = ms;
    config
}

/// The next VOTE READY from `from` to `to` arrives `ms` late.
pub fn delay_next_vote(w: &mut World, from: NodeId, to: NodeId, ms: u64) {
    w.add_rule(
        MessageRule::new("VOTE READY", Fate::DelayMs(ms))
            .from(from)
            .to(to)
            .times(1),
    );
}

/// Hierarchical 2PC over `p0(p1,p2)`: a READY child asks its
/// sub-coordinator while the sub-coordinator still gathers votes within
/// its deadline. With a 1 s prepare timeout the coordinator gives p0 the
/// tree's height (2) times it, about 2 s, and p0 gives its children 7/8
/// of that; they ask 30 ms (the inquire delay) after their own deadline,
/// at about 1.78 s. p1's vote is 1.9 s late: within p0's deadline, after
/// both children asked. Returned before it settles.
pub fn child_asks_while_its_parent_gathers() -> (World, Xid) {
    let mut config = fixed_prepare_timeout(1_000);
    config.child_prepare_timeout_ms_min = 1_000;
    let mut w = World::scripted(config);
    delay_next_vote(&mut w, P1, P0, 1_900);
    let x = tree(&mut w);
    (w, x)
}
