//! The classic 2PC optimizations as scripted scenarios: the READ-ONLY vote
//! (a branch with nothing to change logs nothing and gets no phase 2) and
//! one-phase commit (a single branch decides: no coordinator forced write,
//! one round trip), each with the failures that test its recovery.

mod courses;

use concord_proto::{CoordinatorRecord, ParticipantRecord, TxnState};
use concord_sim::{ClientOutcome, Fate, KeepUnsynced, MessageRule, SimConfig, World};
use courses::*;

/// Records in `log` about `xid`, by the name `show` gives them.
fn kinds<R>(log: &[R], show: impl Fn(&R) -> Option<&'static str>) -> Vec<&'static str> {
    log.iter().filter_map(show).collect()
}

fn participant_kinds(w: &World, p: usize, x: concord_proto::Xid) -> Vec<&'static str> {
    kinds(w.participant_log(p), |r| match r {
        ParticipantRecord::Ready { xid, .. } if *xid == x => Some("READY"),
        ParticipantRecord::OnePhase { xid, .. } if *xid == x => Some("ONE-PHASE"),
        ParticipantRecord::Outcome { xid, .. } if *xid == x => Some("OUTCOME"),
        _ => None,
    })
}

fn coordinator_kinds(w: &World, x: concord_proto::Xid) -> Vec<&'static str> {
    kinds(w.coordinator_log(), |r| match r {
        CoordinatorRecord::Begin { xid, .. } if *xid == x => Some("BEGIN"),
        CoordinatorRecord::Decision { xid, .. } if *xid == x => Some("DECISION"),
        CoordinatorRecord::End { xid } if *xid == x => Some("END"),
        _ => None,
    })
}

/// A branch that only reads votes READ-ONLY: it logs nothing, the
/// decision record leaves it out, and it gets neither COMMIT nor ABORT.
/// The writers commit as usual.
#[test]
fn read_only_branch_logs_nothing_and_gets_no_phase_two() {
    let mut w = World::scripted(SimConfig::scripted(3));
    let x = w.submit(vec![
        (0, vec![op("acct-0", -10)]),
        (1, vec![op("acct-1", 10)]),
        (2, vec![op("acct-2", 0), op("acct-3", 0)]),
    ]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.count_sent(P2, C, "VOTE READ-ONLY", x), 1);
    assert_eq!(w.count_sent(C, P2, "COMMIT", x), 0, "no phase 2");
    assert!(participant_kinds(&w, 2, x).is_empty(), "p2 logged nothing");
    let decision = w.coordinator_log().iter().find_map(|r| match r {
        CoordinatorRecord::Decision {
            xid, participants, ..
        } if *xid == x => Some(participants.clone()),
        _ => None,
    });
    assert_eq!(decision, Some(vec!["p0".to_string(), "p1".to_string()]));
    assert_eq!(w.balances(0)["acct-0"], 90);
    assert_eq!(w.balances(1)["acct-1"], 110);
    assert_no_locks(&w);
}

/// Every branch reads only: no forced write anywhere, no phase 2, and the
/// client hears COMMITTED after one round.
#[test]
fn all_read_only_transaction_commits_with_no_forced_write_and_no_phase_two() {
    let mut w = World::scripted(SimConfig::scripted(2));
    let x = w.submit(vec![(0, vec![op("acct-0", 0)]), (1, vec![op("acct-1", 0)])]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.count_sent(C, P0, "COMMIT", x), 0);
    assert_eq!(w.count_sent(C, P1, "COMMIT", x), 0);
    assert!(participant_kinds(&w, 0, x).is_empty());
    assert!(participant_kinds(&w, 1, x).is_empty());
    assert_eq!(coordinator_kinds(&w, x), vec!["BEGIN", "DECISION"]);
}

/// A read-only vote is a yes: a branch that reads an account another
/// transaction holds still votes ABORT (it would read a value that may
/// change), and the transaction aborts.
#[test]
fn read_only_branch_on_a_locked_account_votes_abort() {
    let mut w = World::scripted(SimConfig::scripted(2));
    w.add_rule(MessageRule::new("COMMIT", Fate::DelayMs(200)).to(P1));
    let holder = w.submit(transfer(5));
    assert!(w.run_until(1_000, |w| w.client_outcome(holder)
        == ClientOutcome::Committed));
    let reader = w.submit(vec![(0, vec![op("acct-0", 0)]), (1, vec![op("acct-1", 0)])]);
    assert!(w.run_until(1_000, |w| w.client_outcome(reader)
        == ClientOutcome::Aborted));
    assert_eq!(w.count_sent(P1, C, "VOTE ABORT", reader), 1);
    settle(&mut w);
}

/// The hazard the READ-ONLY vote brings to cooperative termination: the
/// read-only voter restarted and forgot its vote. Asked by the writers
/// (their COMMITs lost, the coordinator down), it must say nothing it
/// does not know; they stay blocked and commit when the coordinator is
/// back.
#[test]
fn read_only_voter_restarted_does_not_tell_peers_aborted() {
    let (mut w, x) = read_only_voter_restarted();
    assert!(w.count_sent(P0, P2, "INQUIRE", x) >= 1, "p2 was asked");
    assert_eq!(state(&w, 0, x), TxnState::Ready, "p0 still blocked");
    assert_eq!(state(&w, 1, x), TxnState::Ready, "p1 still blocked");
    w.restart(C);
    settle(&mut w);
    assert_eq!(w.balances(0)["acct-0"], 90);
    assert_eq!(w.balances(1)["acct-1"], 110);
}

/// One-phase commit: a single-branch transaction takes one round trip,
/// the coordinator forces nothing, and the branch's one-phase record is
/// its only forced write.
#[test]
fn one_phase_commit_is_one_round_trip_with_one_forced_write() {
    let mut w = World::scripted(SimConfig::scripted(1));
    let x = w.submit(vec![(0, vec![op("acct-0", -7), op("acct-1", 7)])]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.count_sent(C, P0, "ONE-PHASE COMMIT", x), 1);
    assert_eq!(w.count_sent(P0, C, "ACK", x), 1);
    assert_eq!(w.sent().iter().filter(|m| m.xid == x).count(), 2);
    assert_eq!(participant_kinds(&w, 0, x), vec!["ONE-PHASE", "OUTCOME"]);
    assert_eq!(coordinator_kinds(&w, x), vec!["DECISION", "END"]);
    assert_eq!(w.balances(0)["acct-0"], 93);
}

/// With one-phase commit off, the same transaction takes both phases.
#[test]
fn without_one_phase_a_single_branch_takes_both_phases() {
    let mut config = SimConfig::scripted(1);
    config.one_phase = false;
    let mut w = World::scripted(config);
    let x = w.submit(vec![(0, vec![op("acct-0", -7), op("acct-1", 7)])]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.sent().iter().filter(|m| m.xid == x).count(), 4);
    assert_eq!(participant_kinds(&w, 0, x), vec!["READY", "OUTCOME"]);
}

/// The ACK of a one-phase commit is lost: the coordinator never aborts
/// over the branch's head; it asks, hears COMMITTED, and tells the client.
#[test]
fn one_phase_ack_lost_the_coordinator_asks_and_hears_committed() {
    let mut w = World::scripted(SimConfig::scripted(1));
    w.add_rule(MessageRule::new("ACK", Fate::Drop).times(1));
    let x = w.submit(vec![(0, vec![op("acct-0", -7), op("acct-1", 7)])]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert!(w.count_sent(C, P0, "ONE-PHASE STATUS", x) >= 1);
    assert_eq!(w.balances(0)["acct-0"], 93);
}

/// The branch crashes after its one-phase record is durable and before
/// the resource applied it: recovery commits it without asking anyone,
/// and the coordinator's question is answered COMMITTED.
#[test]
fn one_phase_branch_crashed_after_its_record_commits_on_recovery() {
    let mut w = World::scripted(SimConfig::scripted(1));
    w.add_rule(MessageRule::new("ACK", Fate::Drop).times(1));
    let x = w.submit(vec![(0, vec![op("acct-0", -7), op("acct-1", 7)])]);
    assert!(w.run_until(1_000, |w| w.count_sent(P0, C, "ACK", x) == 1));
    w.crash(P0, KeepUnsynced::Nothing);
    w.run_for(100);
    w.restart(P0);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.balances(0)["acct-0"], 93);
    assert_eq!(
        w.count_sent(P0, C, "INQUIRE", x),
        0,
        "it decides: never asks"
    );
}

/// The one-phase request is lost: asked by the coordinator, the branch
/// (which never saw it) aborts it durably and says ABORTED; the client is
/// told so, and the request arriving late can no longer commit it.
#[test]
fn one_phase_request_lost_the_branch_aborts_it_for_good() {
    let mut w = World::scripted(SimConfig::scripted(1));
    w.add_rule(MessageRule::new("ONE-PHASE COMMIT", Fate::DelayMs(500)));
    let x = w.submit(vec![(0, vec![op("acct-0", -7), op("acct-1", 7)])]);
    assert!(w.run_until(1_000, |w| w.client_outcome(x) == ClientOutcome::Aborted));
    assert_eq!(participant_kinds(&w, 0, x), vec!["OUTCOME"], "abort logged");
    settle(&mut w);
    assert_eq!(w.balances(0)["acct-0"], 100, "the late request did nothing");
    assert_eq!(w.count_sent(P0, C, "VOTE ABORT", x), 1);
}

/// A one-phase branch that cannot commit votes ABORT only once its abort
/// is durable: the branch decides, so after a crash a duplicate request
/// must find the abort.
#[test]
fn one_phase_vote_abort_leaves_after_the_abort_is_durable() {
    let mut w = World::scripted(SimConfig::scripted(1));
    let x = w.submit(vec![(0, vec![op("acct-0", -1_000)])]);
    settle(&mut w);
    assert!(matches!(w.client_outcome(x), ClientOutcome::Aborted));
    assert_eq!(participant_kinds(&w, 0, x), vec!["OUTCOME"]);
    assert!(w
        .participant_durable_log(0)
        .iter()
        .any(|r| matches!(r, ParticipantRecord::Outcome { xid, .. } if *xid == x)));
}
