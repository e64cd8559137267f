//! Linear 2PC (SPEC §1.7) as scripted scenarios: the chain p0 → p1 → p2,
//! the last one deciding. The happy path's message count, a VOTE ABORT in
//! the middle, and a crash at each position: the first member, a middle
//! one, and the decider on either side of its one-phase record.

mod courses;

use concord_proto::{CoordinatorRecord, Shape, TxnState, Xid};
use concord_sim::{ClientOutcome, Fate, KeepUnsynced, MessageRule, SimConfig, World};
use courses::*;

/// 10 from p0's acct-0 to p2's acct-2, with p1 moving 0 between two of
/// its accounts and back (so it writes, and holds locks).
fn chain(w: &mut World) -> Xid {
    w.submit_shaped(
        vec![
            (0, vec![op("acct-0", -10)]),
            (1, vec![op("acct-1", -1), op("acct-2", 1)]),
            (2, vec![op("acct-2", 10)]),
        ],
        Shape::Linear,
    )
}

fn committed_everywhere(w: &World, x: Xid) -> bool {
    (0..3).all(|p| state(w, p, x) == TxnState::Committed)
}

fn assert_committed_balances(w: &World) {
    assert_eq!(w.balances(0)["acct-0"], 90);
    assert_eq!(w.balances(1)["acct-1"], 99);
    assert_eq!(w.balances(2)["acct-2"], 110);
    assert_no_locks(w);
}

/// The chain commits with 2n + 1 messages (n CHAIN PREPAREs forward, n − 1
/// COMMITs back, the first member's ACK to the coordinator and to the
/// decider), and the coordinator forces nothing: its records are lazy.
#[test]
fn linear_commit_takes_2n_plus_1_messages_and_no_coordinator_forced_write() {
    let mut w = World::scripted(SimConfig::scripted(3));
    let x = chain(&mut w);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.sent().iter().filter(|m| m.xid == x).count(), 7);
    assert_eq!(w.count_sent(P1, P2, "CHAIN PREPARE", x), 1);
    assert_eq!(w.count_sent(P2, P1, "COMMIT", x), 1);
    assert_eq!(w.count_sent(P0, C, "ACK", x), 1);
    assert_eq!(
        w.count_sent(P0, P2, "ACK", x),
        1,
        "the chain's end, to the decider"
    );
    let coordinator: Vec<&CoordinatorRecord> = w
        .coordinator_log()
        .iter()
        .filter(|r| {
            matches!(r, CoordinatorRecord::Begin { xid, .. }
                | CoordinatorRecord::Decision { xid, .. }
                | CoordinatorRecord::End { xid } if *xid == x)
        })
        .collect();
    assert_eq!(
        coordinator.len(),
        2,
        "a lazy decision and END: {coordinator:?}"
    );
    assert_committed_balances(&w);
}

/// A VOTE ABORT in the middle stops the chain: the decider never hears of
/// it, the abort travels back to the coordinator, and nothing commits.
#[test]
fn linear_vote_abort_in_the_middle_stops_the_chain() {
    let mut w = World::scripted(SimConfig::scripted(3));
    let x = w.submit_shaped(
        vec![
            (0, vec![op("acct-0", -10)]),
            (1, vec![op("acct-missing", 0)]),
            (2, vec![op("acct-2", 10)]),
        ],
        Shape::Linear,
    );
    settle(&mut w);
    assert!(matches!(w.client_outcome(x), ClientOutcome::Aborted));
    assert_eq!(w.count_sent(P1, P2, "CHAIN PREPARE", x), 0, "stopped at p1");
    assert_eq!(w.count_sent(P1, P0, "VOTE ABORT", x), 1);
    assert_eq!(w.count_sent(P0, C, "VOTE ABORT", x), 1);
    assert_eq!(w.balances(0)["acct-0"], 100);
    assert_eq!(w.balances(2)["acct-2"], 100);
    assert_no_locks(&w);
}

/// The first member dies after passing the chain on: the others commit;
/// restarted in doubt, it asks the decider (CHAIN INQUIRE), commits, and
/// its ACK lets the decider apply its own part.
#[test]
fn linear_first_member_crash_after_passing_the_chain_on() {
    let mut w = World::scripted(SimConfig::scripted(3));
    let x = chain(&mut w);
    assert!(w.run_until(1_000, |w| w.count_sent(P0, P1, "CHAIN PREPARE", x) == 1));
    w.crash(P0, KeepUnsynced::All);
    assert!(w.run_until(1_000, |w| state(w, 1, x) == TxnState::Committed));
    w.restart(P0);
    settle(&mut w);
    assert!(committed_everywhere(&w, x));
    assert!(w.count_sent(P0, P2, "CHAIN INQUIRE", x) >= 1);
    assert_committed_balances(&w);
}

/// A middle member's COMMIT is lost and it dies in doubt: after its
/// restart it asks the decider and commits; the first member gets COMMIT
/// only after that.
#[test]
fn linear_middle_member_crash_in_doubt_recovers_from_the_decider() {
    let mut w = World::scripted(SimConfig::scripted(3));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P1).times(1));
    let x = chain(&mut w);
    assert!(w.run_until(1_000, |w| state(w, 2, x) == TxnState::Committed));
    w.crash(P1, KeepUnsynced::Nothing);
    w.run_for(100);
    assert_eq!(state(&w, 0, x), TxnState::Ready, "p0 waits for p1");
    w.restart(P1);
    settle(&mut w);
    assert!(committed_everywhere(&w, x));
    assert!(w.count_sent(P1, P2, "CHAIN INQUIRE", x) >= 1);
    assert_committed_balances(&w);
}

/// The decider dies after its one-phase record (COMMIT decided) and
/// before COMMIT left: restarted, it is still decided, holds its locks
/// until the chain confirms, and tells the members that ask.
#[test]
fn linear_decider_crash_after_its_record_commits_the_chain() {
    let mut w = World::scripted(SimConfig::scripted(3));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).from(P2).times(1));
    let x = chain(&mut w);
    assert!(w.run_until(1_000, |w| state(w, 2, x) == TxnState::Committed));
    w.crash(P2, KeepUnsynced::Nothing);
    w.run_for(100);
    w.restart(P2);
    assert_eq!(
        state(&w, 2, x),
        TxnState::Committed,
        "its record decided it"
    );
    settle(&mut w);
    assert!(committed_everywhere(&w, x));
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_committed_balances(&w);
}

/// The decider dies before its one-phase record is durable: nothing is
/// decided. Asked after its restart, it aborts for good, and every member
/// and the client hear ABORTED.
#[test]
fn linear_decider_crash_before_its_record_aborts_the_chain() {
    let mut w = World::scripted(SimConfig::scripted(3));
    let x = chain(&mut w);
    assert!(w.run_until(1_000, |w| w.count_sent(P1, P2, "CHAIN PREPARE", x) == 1));
    w.run_for(1);
    w.crash(P2, KeepUnsynced::Nothing);
    w.run_for(100);
    w.restart(P2);
    settle(&mut w);
    for p in 0..3 {
        assert_eq!(state(&w, p, x), TxnState::Aborted, "p{p}");
    }
    assert!(matches!(w.client_outcome(x), ClientOutcome::Aborted));
    assert_eq!(w.balances(0)["acct-0"], 100);
    assert_eq!(w.balances(2)["acct-2"], 100);
    assert_no_locks(&w);
}
