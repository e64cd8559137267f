//! Scripted scenarios: every failure case of SPEC §1.5 as a named,
//! deterministic test, plus duplicated, reordered and stale-epoch messages.
//!
//! Each runs a quiet simulated cluster (1 ms per message, 0.5 ms per fsync,
//! no random faults), injects exactly the fault it is about, lets the world
//! go quiet, asserts who committed or aborted, that no lock is left and what
//! the balances are, and finally runs every invariant checker.

mod courses;

use concord_participant::kv::KvOp;
use concord_proto::{Body, CoordinatorRecord, Decision, Message, ParticipantRecord, TxnState, Xid};
use concord_sim::{ClientOutcome, Cut, Fate, KeepUnsynced, MessageRule, SimConfig, World};
use courses::*;

fn world() -> World {
    World::scripted(SimConfig::scripted(2))
}

/// p0's acct-0 and p1's acct-1 moved by `amount` (0: untouched).
fn assert_transferred(w: &World, amount: i64) {
    assert_eq!(w.balances(0)["acct-0"], 100 - amount, "p0 acct-0");
    assert_eq!(w.balances(1)["acct-1"], 100 + amount, "p1 acct-1");
}

fn has_ready(w: &World, p: usize, xid: Xid, durable: bool) -> bool {
    let log = if durable {
        w.participant_durable_log(p)
    } else {
        w.participant_log(p)
    };
    log.iter()
        .any(|r| matches!(r, ParticipantRecord::Ready { xid: x, .. } if *x == xid))
}

fn trace_has(w: &World, needle: &str) -> bool {
    w.trace_lines().iter().any(|l| l.contains(needle))
}

#[test]
fn happy_path_commits_everywhere() {
    let mut w = world();
    let x = w.submit(transfer(10));
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_eq!(state(&w, 1, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
    assert!(w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x }));
}

#[test]
fn site_failure_1_participant_crashes_before_writing_ready() {
    let mut w = world();
    let x = w.submit(transfer(10));
    // PREPARE reached p0, which appended READY and waits for its fsync.
    assert!(w.run_until(100, |w| w.fsyncs_waiting(P0) > 0));
    assert!(has_ready(&w, 0, x, false) && !has_ready(&w, 0, x, true));
    w.crash(P0, KeepUnsynced::Nothing);
    // The coordinator hears no vote from p0, times out and aborts.
    assert!(w.run_until(200, |w| w.client_outcome(x) == ClientOutcome::Aborted));
    assert!(trace_has(&w, "WAIT (votes)"));
    w.restart(P0);
    // No READY record survived: nothing in doubt, nothing locked, and p0
    // aborts the xid without asking anyone (presumed abort).
    let p0 = w.participant(0).expect("up");
    assert!(p0.core().in_doubt().is_empty());
    assert!(p0.resource().inner().locks().is_empty());
    settle(&mut w);
    assert_eq!(w.count_sent(P0, C, "INQUIRE", x), 0);
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 0);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn site_failure_2_participant_crashes_after_writing_ready() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| w.count_sent(P0, C, "VOTE READY", x) == 1));
    w.crash(P0, KeepUnsynced::Nothing);
    assert!(
        has_ready(&w, 0, x, true),
        "READY was forced before the vote"
    );
    // The others finish: the coordinator commits, p1 commits.
    assert!(w.run_until(100, |w| state(w, 1, x) == TxnState::Committed));
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    w.run_for(50);
    // On restart p0 finds its READY record: in doubt, locks held again.
    w.restart(P0);
    assert_eq!(w.participant(0).expect("up").core().in_doubt(), vec![x]);
    assert_eq!(locked(&w, 0), vec!["acct-0".to_string()]);
    settle(&mut w);
    // It asked the coordinator and carried out the answer.
    assert!(w.count_sent(P0, C, "INQUIRE", x) >= 1);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn site_failure_3_coordinator_crashes_before_decision_begin_record_kept() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| {
        state(w, 0, x) == TxnState::Ready && state(w, 1, x) == TxnState::Ready
    }));
    w.crash(C, KeepUnsynced::All);
    assert!(w
        .coordinator_durable_log()
        .iter()
        .any(|r| matches!(r, CoordinatorRecord::Begin { xid, .. } if *xid == x)));
    // While the coordinator is down the READY participants inquire and
    // wait: they never guess, and keep their locks.
    w.run_for(300);
    for p in 0..2 {
        assert_eq!(w.participant(p).expect("up").core().in_doubt(), vec![x]);
    }
    assert!(w.count_sent(P0, C, "INQUIRE", x) >= 1);
    assert_eq!(locked(&w, 0), vec!["acct-0".to_string()]);
    // On restart the coordinator finds a begin record and no decision:
    // presumed abort, and it tells the participants.
    w.restart(C);
    assert_eq!(w.coordinator().expect("up").epoch(), 2);
    settle(&mut w);
    assert!(w.count_sent(C, P0, "ABORT", x) >= 1);
    assert_eq!(w.client_outcome(x), ClientOutcome::Unknown);
    assert_eq!(state(&w, 0, x), TxnState::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn site_failure_3_coordinator_crashes_before_decision_begin_record_lost() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| {
        state(w, 0, x) == TxnState::Ready && state(w, 1, x) == TxnState::Ready
    }));
    // The begin record is lazy: this crash loses it.
    w.crash(C, KeepUnsynced::Nothing);
    assert!(w
        .coordinator_log()
        .iter()
        .all(|r| !matches!(r, CoordinatorRecord::Begin { .. })));
    w.run_for(100);
    w.restart(C);
    settle(&mut w);
    // The new coordinator knows nothing of x: it answers the participants'
    // INQUIRE with ABORTED (presumed abort) and sends no ABORT of its own.
    assert_eq!(w.count_sent(C, P0, "ABORT", x), 0);
    assert!(w.count_sent(C, P0, "STATE", x) >= 1);
    assert_eq!(state(&w, 0, x), TxnState::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_eq!(w.client_outcome(x), ClientOutcome::Unknown);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn site_failure_4_coordinator_crashes_after_decision_before_end() {
    let mut w = world();
    let x = w.submit(transfer(10));
    // The COMMIT record is durable and COMMIT is on its way.
    assert!(w.run_until(100, |w| w.client_outcome(x) == ClientOutcome::Committed));
    w.crash(C, KeepUnsynced::Nothing);
    // Both participants commit; their ACKs find the coordinator down.
    assert!(w.run_until(100, |w| {
        state(w, 0, x) == TxnState::Committed && state(w, 1, x) == TxnState::Committed
    }));
    assert!(!w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x }));
    w.restart(C);
    settle(&mut w);
    // The restarted coordinator re-sent COMMIT; the participants, already
    // finished, ACKed again and nothing else happened.
    for p in [P0, P1] {
        assert!(w.count_sent(C, p, "COMMIT", x) >= 2);
        assert!(w.count_sent(p, C, "ACK", x) >= 2);
    }
    assert!(w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x }));
    assert_eq!(w.coordinator().expect("up").in_flight(), 0);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn site_failure_5_coordinator_crashes_after_end() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x })));
    w.crash(C, KeepUnsynced::All);
    w.restart(C);
    // Nothing to do: no transaction in flight, nothing re-sent.
    assert_eq!(w.coordinator().expect("up").in_flight(), 0);
    settle(&mut w);
    assert_eq!(w.count_sent(C, P0, "COMMIT", x), 1);
    assert_eq!(w.count_sent(C, P1, "COMMIT", x), 1);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn message_loss_1_vote_lost() {
    let mut w = world();
    w.add_rule(MessageRule::new("VOTE READY", Fate::Drop).from(P0).times(1));
    let x = w.submit(transfer(10));
    settle(&mut w);
    // The coordinator timed out and aborted; p0, which voted READY, was
    // told ABORT. Nobody failed, so nobody ran a restart procedure.
    assert!(trace_has(&w, "WAIT (votes)"));
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    assert_eq!(state(&w, 0, x), TxnState::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_eq!((w.crashes(), w.restarts()), (0, 0));
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn message_loss_2_prepare_lost() {
    let mut w = world();
    w.add_rule(MessageRule::new("PREPARE", Fate::Drop).to(P0).times(1));
    let x = w.submit(transfer(10));
    settle(&mut w);
    assert!(trace_has(&w, "WAIT (votes)"));
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 0);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_eq!((w.crashes(), w.restarts()), (0, 0));
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn message_loss_3_decision_lost_participant_inquires() {
    let mut w = world();
    // Every COMMIT to p0 is lost, re-sends included: only its own INQUIRE
    // can tell p0 the outcome.
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P0));
    let x = w.submit(transfer(10));
    settle(&mut w);
    assert!(w.count_sent(P0, C, "INQUIRE", x) >= 1);
    assert!(trace_has(&w, "recv STATE Committed"));
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert!(w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x }));
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn message_loss_4_ack_lost_coordinator_resends() {
    let mut w = world();
    w.add_rule(MessageRule::new("ACK", Fate::Drop).from(P0).times(1));
    let x = w.submit(transfer(10));
    settle(&mut w);
    // The coordinator timed out and re-sent COMMIT to p0 only; p0, long
    // finished, ACKed again.
    assert!(trace_has(&w, "COMMIT (acks)"));
    assert_eq!(w.count_sent(C, P0, "COMMIT", x), 2);
    assert_eq!(w.count_sent(C, P1, "COMMIT", x), 1);
    assert_eq!(w.count_sent(P0, C, "ACK", x), 2);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn duplicated_messages_are_harmless() {
    let mut w = world();
    w.add_rule(MessageRule::any(Fate::Duplicate));
    let x = w.submit(transfer(10));
    settle(&mut w);
    let y = w.submit(transfer(5));
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(w.client_outcome(y), ClientOutcome::Committed);
    assert!(w.count_sent(P0, C, "VOTE READY", x) >= 1);
    assert_transferred(&w, 15);
    assert_no_locks(&w);
}

#[test]
fn reordered_abort_overtakes_prepare() {
    let mut w = world();
    // p0's PREPARE arrives long after the prepare timeout, and so after
    // the ABORT the coordinator sent when it timed out.
    w.add_rule(MessageRule::new("PREPARE", Fate::DelayMs(200)).to(P0));
    let x = w.submit(transfer(10));
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    // p0 remembered the ABORT, so the late PREPARE got VOTE ABORT and took
    // no lock.
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 0);
    assert_eq!(w.count_sent(P0, C, "VOTE ABORT", x), 1);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn late_duplicate_prepare_after_commit_is_answered_not_redone() {
    let mut w = world();
    let x = w.submit(transfer(10));
    settle(&mut w);
    // A copy of the PREPARE that wandered the network arrives now.
    let prepare = Message {
        xid: x,
        epoch: 1,
        from: C.name(),
        body: Body::Prepare {
            participants: vec![P0.name(), P1.name()],
            work: concord_participant::kv::encode_work(&[op("acct-0", -10)]),
            deadline_ms: 50,
        },
    };
    w.inject(C, P0, prepare);
    settle(&mut w);
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 2, "same vote again");
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn stale_epoch_message_rejected() {
    let mut w = world();
    // A coordinator restart: it now runs with epoch 2.
    w.crash(C, KeepUnsynced::All);
    w.restart(C);
    assert_eq!(w.coordinator().expect("up").epoch(), 2);
    w.add_rule(MessageRule::new("COMMIT", Fate::DelayMs(20)).to(P0));
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| state(w, 0, x) == TxnState::Ready));
    // An ABORT from the previous coordinator instance (epoch 1) arrives
    // while p0 is READY under epoch 2: it must be ignored.
    let stale = Message {
        xid: x,
        epoch: 1,
        from: C.name(),
        body: Body::Decision(Decision::Abort),
    };
    w.inject(C, P0, stale);
    assert!(w.run_until(10, |w| trace_has(
        w,
        "older epoch than this branch has seen"
    )));
    assert_eq!(state(&w, 0, x), TxnState::Ready);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn one_way_partition_participant_hears_but_is_not_heard() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| w.client_outcome(x) == ClientOutcome::Committed));
    // p0 receives COMMIT and commits, but nothing it sends gets out for a
    // while: the coordinator keeps re-sending, p0 keeps re-ACKing.
    w.partition(P0, Cut::Outbound, 200);
    w.run_for(150);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_eq!(w.coordinator().expect("up").in_flight(), 1);
    settle(&mut w);
    assert!(w.count_sent(C, P0, "COMMIT", x) >= 3);
    assert!(w.count_sent(P0, C, "ACK", x) >= 3);
    assert_eq!(w.coordinator().expect("up").in_flight(), 0);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

#[test]
fn partitioned_coordinator_blocks_ready_participants_until_healed() {
    let mut w = world();
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| w.client_outcome(x) == ClientOutcome::Committed));
    // COMMIT is in flight to both; cut p0 off so it never arrives.
    w.isolate(P0, 500);
    w.run_for(400);
    assert_eq!(w.participant(0).expect("up").core().in_doubt(), vec![x]);
    assert_eq!(state(&w, 1, x), TxnState::Committed);
    settle(&mut w);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

/// Found by this simulator (seed 13871, before the fix in concord-proto):
/// a participant with a short finished memory forgot a committed branch,
/// and a late duplicate of its PREPARE made it prepare the branch again.
/// Here the coordinator still has the transaction in flight (p1's ACKs are
/// lost), so the old participant inquired, heard COMMITTED and applied the
/// transfer twice. Finished branches are now kept for FINISHED_MS_MIN
/// whatever `finished_max` says.
#[test]
fn duplicates_harmless_late_prepare_after_finished_max_is_not_prepared_again() {
    let mut config = SimConfig::scripted(3);
    config.finished_max = 1;
    let mut w = World::scripted(config);
    w.add_rule(MessageRule::new("ACK", Fate::Drop).from(P1).times(3));
    let x = w.submit(transfer(10));
    assert!(w.run_until(100, |w| state(w, 0, x) == TxnState::Committed));
    // y finishes at p0 afterwards: past finished_max.
    let y = w.submit(vec![
        (0, vec![op("acct-2", -1)]),
        (2, vec![op("acct-2", 1)]),
    ]);
    assert!(w.run_until(100, |w| state(w, 0, y) == TxnState::Committed));
    assert_eq!(
        state(&w, 0, x),
        TxnState::Committed,
        "x is still remembered"
    );
    // Now a late duplicate of x's PREPARE reaches p0.
    let prepare = Message {
        xid: x,
        epoch: 1,
        from: C.name(),
        body: Body::Prepare {
            participants: vec![P0.name(), P1.name()],
            work: concord_participant::kv::encode_work(&[op("acct-0", -10)]),
            deadline_ms: 50,
        },
    };
    w.inject(C, P0, prepare);
    settle(&mut w);
    let readies = w
        .participant_log(0)
        .iter()
        .filter(|r| matches!(r, ParticipantRecord::Ready { xid, .. } if *xid == x))
        .count();
    assert_eq!(readies, 1, "x was not prepared again");
    assert_eq!(
        w.count_sent(P0, C, "VOTE READY", x),
        2,
        "the same vote, again"
    );
    assert_eq!(w.client_outcome(y), ClientOutcome::Committed);
    assert_eq!(w.balances(2)["acct-2"], 101);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

/// p1 asks p0 (as a peer running cooperative termination would) about a
/// transaction whose PREPARE has not reached p0 yet; p0 crashes right after
/// answering and loses everything it had not synced.
fn peer_asks_then_answerer_crashes(w: &mut World) -> Xid {
    w.add_rule(MessageRule::new("PREPARE", Fate::DelayMs(30)).to(P0));
    let x = w.submit(transfer(10));
    assert!(w.run_until(10, |w| w.count_sent(P1, C, "VOTE READY", x) == 1));
    w.inject(
        P1,
        P0,
        Message {
            xid: x,
            epoch: 1,
            from: P1.name(),
            body: Body::Inquire {
                prepared_ms_ago: Some(1),
            },
        },
    );
    assert!(w.run_until(10, |w| w.count_sent(P0, P1, "STATE", x) == 1));
    w.crash(P0, KeepUnsynced::Nothing);
    w.restart(P0);
    x
}

#[test]
fn answers_persist_first_a_unilateral_abort_told_to_a_peer_survives_a_crash() {
    let mut w = world();
    let x = peer_asks_then_answerer_crashes(&mut w);
    settle(&mut w);
    // p0's abort was durable before it answered: the late PREPARE gets
    // VOTE ABORT after the restart, and p1, which acted on the answer,
    // agrees with everyone.
    assert_eq!(w.count_sent(P0, C, "VOTE ABORT", x), 1);
    assert_eq!(w.count_sent(P0, C, "VOTE READY", x), 0);
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    assert_eq!(state(&w, 1, x), TxnState::Aborted);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

#[test]
fn answers_persist_first_is_caught_when_broken() {
    concord_proto::mutant::set(Some(concord_proto::mutant::Mutant::AnswerBeforePersist));
    let mut w = world();
    let _ = peer_asks_then_answerer_crashes(&mut w);
    w.run_until_quiet(60_000);
    let failure = w.check_invariants();
    concord_proto::mutant::set(None);
    match failure {
        Err(f) => assert_eq!(
            f.invariant,
            "answers_persist_first",
            "{}",
            explain(f.clone())
        ),
        Ok(()) => panic!("an answer sent before its abort was durable went unnoticed"),
    }
}

/// p0's `a0` pays `amount` to p1's `a1`.
fn transfer_between(a0: &str, a1: &str, amount: i64) -> Vec<(usize, Vec<KvOp>)> {
    vec![(0, vec![op(a0, -amount)]), (1, vec![op(a1, amount)])]
}

#[test]
fn compaction_keeps_an_in_doubt_branch_and_a_crash_inside_compaction_loses_nothing() {
    let mut config = SimConfig::scripted(2);
    config.compact_after_records = 4;
    let mut w = World::scripted(config);
    // Finished transactions: their records are compacted away.
    for _ in 0..4 {
        let y = w.submit(transfer_between("acct-2", "acct-3", 1));
        assert!(w.run_until(1000, |w| w.client_outcome(y) == ClientOutcome::Committed));
    }
    assert!(w.compactions() > 0, "the logs were compacted");
    // x is in doubt at p0: its first COMMIT is lost and its INQUIREs too
    // (it learns the outcome from the coordinator's resends).
    w.add_rule(MessageRule::new("COMMIT", Fate::Drop).to(P0).times(1));
    w.add_rule(MessageRule::new("INQUIRE", Fate::Drop).from(P0));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1000, |w| state(w, 0, x) == TxnState::Ready
        && state(w, 1, x) == TxnState::Committed));
    // More work on other accounts, until p0 is in the middle of a
    // compaction; then p0 loses power.
    let mut crashed = false;
    for _ in 0..20 {
        let y = w.submit(transfer_between("acct-2", "acct-3", 1));
        if w.run_until(1000, |w| {
            w.compacting(P0) || w.client_outcome(y) != ClientOutcome::Pending
        }) && w.compacting(P0)
        {
            w.crash(P0, KeepUnsynced::Nothing);
            crashed = true;
            break;
        }
    }
    assert!(crashed, "a compaction of p0's log was caught in progress");
    w.restart(P0);
    // The branch is still in doubt with its lock, from the old log (the
    // transfer in flight when the power went may be in doubt too).
    let in_doubt = w.participant(0).expect("up").core().in_doubt();
    assert!(in_doubt.contains(&x), "{in_doubt:?}");
    assert!(locked(&w, 0).contains(&"acct-0".to_string()));
    settle(&mut w);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

/// A cluster whose resources answer late (prepare 3 ms, commit 2 ms) and
/// fail the first `failures` commits of every branch.
fn late_failing_world(failures: u32) -> World {
    let mut config = SimConfig::scripted(2);
    config.resource.delay = concord_participant::delayed::DelayConfig {
        prepare_ms: 3,
        commit_ms: 2,
        abort_ms: 2,
        commit_failures: failures,
        abort_failures: 1,
    };
    World::scripted(config)
}

/// Resources that answer later: each participant's commit fails three
/// times. The decision stays COMMIT, the branches keep their locks while
/// their commits fail, the commits are retried until they succeed, and
/// the money moves exactly once.
#[test]
fn failing_commits_are_retried_with_the_locks_held_until_they_succeed() {
    let mut w = late_failing_world(3);
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| trace_has(w, "Commit of") && trace_has(w, "Err(")));
    assert_eq!(locked(&w, 0), vec!["acct-0".to_string()], "lock held");
    assert_eq!(state(&w, 0, x), TxnState::Ready, "not committed yet");
    assert_transferred(&w, 0);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_eq!(state(&w, 1, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
    let failures = w
        .trace_lines()
        .iter()
        .filter(|l| l.contains("resource Commit of") && l.contains("scripted Commit failure"))
        .count();
    assert_eq!(
        failures, 6,
        "three failed commits at each of two participants"
    );
}

/// A participant crashes while its commit keeps failing: its COMMITTED
/// record was never written, so after the restart it is in doubt again,
/// takes its locks back, learns COMMIT again and commits then.
#[test]
fn crash_while_a_commit_keeps_failing_recovers_and_commits_once() {
    let mut w = late_failing_world(2);
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| trace_has(w, "resource Commit of")));
    w.crash(P0, KeepUnsynced::All);
    w.run_for(50);
    w.restart(P0);
    assert_eq!(locked(&w, 0), vec!["acct-0".to_string()], "locks back");
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Committed);
    assert_eq!(state(&w, 0, x), TxnState::Committed);
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}

/// A vote ABORT elsewhere: the prepared branch's abort fails once, is
/// retried, and only then releases the locks.
#[test]
fn failing_abort_is_retried_and_releases_the_locks_only_then() {
    let mut w = late_failing_world(0);
    // p1 has no account "nope": it votes ABORT; p0's prepared branch must
    // be aborted through a failing abort.
    let x = w.submit(vec![(0, vec![op("acct-0", -5)]), (1, vec![op("nope", 5)])]);
    settle(&mut w);
    assert_eq!(w.client_outcome(x), ClientOutcome::Aborted);
    assert!(trace_has(&w, "scripted Abort failure 1 of 1"));
    assert_eq!(state(&w, 0, x), TxnState::Aborted);
    assert_transferred(&w, 0);
    assert_no_locks(&w);
}

/// Logical node identity: p0 commits, its ACK is lost, and it restarts at
/// a new address. It is not in doubt, so it never inquires; the
/// coordinator's configuration still names the old address, where its
/// COMMIT resends go unanswered. p0's hello (it moved) tells the
/// coordinator where it is, the coordinator welcomes it once the address
/// is durable, and the next resend reaches it: the transaction ends.
#[test]
fn a_participant_that_restarts_elsewhere_is_found_by_its_hello() {
    let mut w = world();
    w.add_rule(MessageRule::new("ACK", Fate::Drop).from(P0).times(1));
    let x = w.submit(transfer(10));
    assert!(w.run_until(1_000, |w| state(w, 0, x) == TxnState::Committed));
    w.crash(P0, KeepUnsynced::All);
    w.run_for(100);
    w.restart_elsewhere(P0);
    assert_eq!(w.addr_of(P0), "p0@1");
    settle(&mut w);
    assert!(trace_has(
        &w,
        "PeerMoved { id: \"p0\", from: \"p0@0\", to: \"p0@1\" }"
    ));
    assert!(trace_has(&w, "coord send Welcome to p0"));
    assert!(w
        .coordinator_log()
        .contains(&CoordinatorRecord::End { xid: x }));
    assert_eq!(
        w.count_sent(P0, C, "INQUIRE", x),
        0,
        "found by its hello alone"
    );
    assert_transferred(&w, 10);
    assert_no_locks(&w);
}
