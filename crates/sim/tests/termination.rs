//! Cooperative termination (SPEC §1.6) as scripted scenarios: a READY
//! participant that cannot reach its coordinator asks its peers for their
//! STATE. COMMITTED or ABORTED from a peer ends the branch; READY or no
//! answer keeps it blocked; and it is never a new vote.

mod courses;

use concord_proto::{Body, Message, ParticipantRecord, TxnState};
use concord_sim::{ClientOutcome, Fate, KeepUnsynced, MessageRule, SimConfig, World};
use courses::*;

/// The coordinator decided COMMIT, p0 got it and committed, and the
/// coordinator died before its COMMITs reached p1 and p2: they learn the
/// outcome from p0 without it, and their ACKs wait for it.
#[test]
fn cooperative_termination_one_peer_committed_the_others_commit_without_the_coordinator() {
    let mut w = World::scripted(SimConfig::scripted(3));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P1).times(1));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P2).times(1));
    let x = w.submit(vec![
        (0, vec![op("acct-0", -10)]),
        (1, vec![op("acct-1", 5)]),
        (2, vec![op("acct-2", 5)]),
    ]);
    assert!(w.run_until(1_000, |w| state(w, 0, x) == TxnState::Committed));
    w.crash(C, KeepUnsynced::All);
    assert!(w.run_until(5_000, |w| {
        state(w, 1, x) == TxnState::Committed && state(w, 2, x) == TxnState::Committed
    }));
    assert!(!w.is_up(C), "without the coordinator");
    assert!(w.count_sent(P1, P0, "INQUIRE", x) >= 1);
    assert!(w.count_sent(P0, P1, "STATE", x) >= 1);
    assert_no_locks(&w);
    w.restart(C);
    settle(&mut w);
    assert_eq!(w.balances(1)["acct-1"], 105);
    assert_eq!(w.balances(2)["acct-2"], 105);
}

/// SPEC §1.6, the forbidden "watchdog re-vote": the coordinator decided
/// ABORT and every ABORT was lost. The READY participants ask each other,
/// hear READY, and stay blocked, saying why; they commit nothing. When
/// the coordinator is back, presumed abort tells them ABORTED.
#[test]
fn watchdog_revote_is_never_done_ready_peers_stay_blocked_until_the_coordinator_answers() {
    let (mut w, x) = abort_lost_then_coordinator_down(5_000);
    for p in 0..2 {
        let node = w.participant(p).expect("up");
        assert_eq!(node.core().in_doubt(), vec![x], "p{p} still in doubt");
        let why = node.core().in_doubt_report(x).expect("in doubt").why();
        assert!(why.contains("blocked"), "p{p}: {why}");
        assert!(why.contains("READY"), "p{p}: {why}");
    }
    assert!(
        w.count_sent(P0, P1, "INQUIRE", x) >= 2,
        "they asked each other"
    );
    assert!(w.count_sent(P1, P0, "STATE", x) >= 1);
    w.restart(C);
    settle(&mut w);
    assert_eq!(state(&w, 0, x), TxnState::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_eq!(w.balances(0)["acct-0"], 100);
    assert_no_locks(&w);
}

/// A peer with no record of a transaction whose PREPARE is old may have
/// committed it and forgotten it: it answers UNKNOWN (writing nothing),
/// the asker stays blocked, and commits when the coordinator is back.
#[test]
fn cooperative_termination_a_peer_that_forgot_a_commit_never_answers_aborted() {
    let (mut w, x) = peer_forgot_a_commit();
    assert_eq!(w.participant(1).expect("up").core().in_doubt(), vec![x]);
    assert!(w.count_sent(P1, P0, "INQUIRE", x) >= 1, "p1 asked p0");
    assert!(w
        .trace_lines()
        .iter()
        .any(|l| l.contains("p0") && l.contains("send STATE Unknown")));
    assert_eq!(state(&w, 0, x), TxnState::Unknown, "p0 wrote nothing");
    w.restart(C);
    settle(&mut w);
    assert_eq!(state(&w, 1, x), TxnState::Committed);
    assert_eq!(w.balances(1)["acct-1"], 110);
}

/// A peer still preparing when asked (its resource answers late) aborts
/// first: durably, telling the coordinator at once with VOTE ABORT, and
/// only then answers ABORTED. It never votes READY, and the prepare's
/// locks are released when the resource returns.
#[test]
fn cooperative_termination_a_peer_still_preparing_aborts_before_it_answers() {
    let mut config = SimConfig::scripted(2);
    config.resource.delay.prepare_ms = 30;
    let mut w = World::scripted(config);
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| state(w, 0, x) == TxnState::Initial));
    let asked = Message {
        xid: x,
        epoch: 1,
        from: P1.name(),
        body: Body::Inquire {
            prepared_ms_ago: Some(1),
        },
    };
    w.inject(P1, P0, asked);
    settle(&mut w);
    let vote = w.count_sent(P0, C, "VOTE ABORT", x);
    assert_eq!(vote, 1, "told the coordinator at once");
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 0);
    assert_eq!(w.count_sent(P0, P1, "STATE", x), 1);
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_eq!(w.balances(0)["acct-0"], 100);
    assert_no_locks(&w);
}

/// As above, but p1 crashes while READY and restarts with the coordinator
/// down: its log holds where p0 is (a PREPARE told it), so it still finds
/// p0 and commits.
#[test]
fn cooperative_termination_after_a_restart_finds_the_peers_from_the_log() {
    let mut w = World::scripted(SimConfig::scripted(2));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P1).times(1));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| state(w, 0, x) == TxnState::Committed));
    w.crash(C, KeepUnsynced::All);
    w.crash(P1, KeepUnsynced::Nothing);
    w.restart(P1);
    assert!(w
        .participant_log(1)
        .iter()
        .any(|r| matches!(r, ParticipantRecord::PeerHint { id, .. } if *id == P0.name())));
    assert!(w.run_until(5_000, |w| state(w, 1, x) == TxnState::Committed));
    assert!(!w.is_up(C));
    w.restart(C);
    settle(&mut w);
    assert_eq!(w.balances(1)["acct-1"], 110);
}

/// The peers' addresses survive compaction: p1's log is compacted after
/// the PREPARE told it where p0 is (so the `PeerHint` record it appended
/// is gone with the rest of the old log), and after a crash with the
/// coordinator down p1 still finds p0 from the compacted log.
#[test]
fn cooperative_termination_peer_addresses_survive_compaction() {
    let mut config = SimConfig::scripted(2);
    config.compact_after_records = 6;
    let mut w = World::scripted(config);
    for amount in [1, 2, 3] {
        let y = w.submit(transfer(amount));
        assert!(w.run_until(1_000, |w| state(w, 1, y) == TxnState::Committed));
    }
    assert!(w.run_until(1_000, |w| !w.compacting(P1)));
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P1).times(1));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| state(w, 0, x) == TxnState::Committed));
    w.crash(C, KeepUnsynced::All);
    w.crash(P1, KeepUnsynced::Nothing);
    assert!(w.compactions() > 0, "p1's log was compacted");
    let hints = |w: &World| {
        w.participant_durable_log(1)
            .iter()
            .filter(|r| matches!(r, ParticipantRecord::PeerHint { id, .. } if *id == P0.name()))
            .count()
    };
    assert!(hints(&w) >= 1, "the compacted log keeps where p0 is");
    w.restart(P1);
    assert!(w.run_until(5_000, |w| state(w, 1, x) == TxnState::Committed));
    w.restart(C);
    settle(&mut w);
}
