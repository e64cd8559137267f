//! Engine tests of the coordinator: feed events, assert the exact actions.
//! Each test names the SPEC §1 rule it checks.

use concord_proto::*;

const C: &str = "coord:1";
const P1: &str = "p1:1";
const P2: &str = "p2:1";

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        id: C.into(),
        resend_ms_initial: 10,
        resend_ms_max: 40,
        // Single-branch tests here are about 2PC; one-phase commit has its own.
        one_phase: false,
        two_phase_only: Vec::new(),
    }
}

fn ms(v: u64) -> Time {
    Time(v * 1000)
}

/// A fresh coordinator whose epoch record is already durable.
fn started() -> Coordinator {
    let mut c = Coordinator::new(config(), ms(0));
    let actions: Vec<_> = c.drain_actions().collect();
    let ticket = forced_ticket(&actions).expect("epoch record is forced");
    c.on_durable(ms(0), ticket);
    c.drain_actions().for_each(drop);
    c
}

fn forced_ticket(actions: &[CoordinatorAction]) -> Option<PersistTicket> {
    actions.iter().find_map(|a| match a {
        CoordinatorAction::Persist {
            durability: Durability::Forced(t),
            ..
        } => Some(*t),
        _ => None,
    })
}

fn sends(actions: &[CoordinatorAction]) -> Vec<(String, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Send { to, message } => Some((to.clone(), message.kind())),
            _ => None,
        })
        .collect()
}

fn outcome(actions: &[CoordinatorAction]) -> Option<TxnOutcome> {
    actions.iter().find_map(|a| match a {
        CoordinatorAction::Outcome { outcome, .. } => Some(outcome.clone()),
        _ => None,
    })
}

/// A participant's INQUIRE about `xid`, from P1.
fn inquiry(c: &Coordinator, xid: Xid) -> Message {
    msg(
        c,
        xid,
        P1,
        Body::Inquire {
            prepared_ms_ago: None,
        },
    )
}

fn msg(c: &Coordinator, xid: Xid, from: &str, body: Body) -> Message {
    Message {
        xid,
        epoch: c.epoch(),
        from: from.into(),
        body,
    }
}

fn begin(c: &mut Coordinator, xid: Xid) -> Vec<CoordinatorAction> {
    c.begin(
        ms(0),
        xid,
        vec![(P1.into(), vec![1]), (P2.into(), vec![2])],
        100,
    )
    .expect("begin");
    c.drain_actions().collect()
}

#[test]
fn begin_writes_lazy_begin_record_then_sends_prepare_to_all_and_arms_wait_timer() {
    let mut c = started();
    let actions = begin(&mut c, Xid(7));
    assert!(matches!(
        &actions[0],
        CoordinatorAction::Persist {
            record: CoordinatorRecord::Begin { .. },
            durability: Durability::Lazy
        }
    ));
    assert_eq!(
        sends(&actions),
        vec![(P1.into(), "PREPARE"), (P2.into(), "PREPARE")]
    );
    match &actions[1] {
        CoordinatorAction::Send { message, .. } => match &message.body {
            Body::Prepare {
                participants,
                deadline_ms,
                ..
            } => {
                assert_eq!(participants, &vec![P1.to_string(), P2.to_string()]);
                assert_eq!(*deadline_ms, 100);
            }
            other => panic!("expected PREPARE, got {other:?}"),
        },
        other => panic!("expected a send, got {other:?}"),
    }
    assert!(actions.contains(&CoordinatorAction::SetTimer {
        key: TimerKey::new(Xid(7), TimerKind::Votes),
        at: ms(100)
    }));
}

#[test]
fn global_commit_rule_commit_only_when_every_vote_is_ready_and_only_after_forced_write() {
    let mut c = started();
    begin(&mut c, Xid(7));
    c.on_message(ms(1), msg(&c, Xid(7), P1, Body::Vote(Vote::Ready)));
    assert!(sends(&c.drain_actions().collect::<Vec<_>>()).is_empty());
    c.on_message(ms(2), msg(&c, Xid(7), P2, Body::Vote(Vote::Ready)));
    let actions: Vec<_> = c.drain_actions().collect();
    // Persist-then-send: the COMMIT record is forced and nothing is sent yet.
    let ticket = forced_ticket(&actions).expect("COMMIT record is forced");
    assert!(sends(&actions).is_empty(), "{actions:?}");
    assert_eq!(
        outcome(&actions),
        None,
        "client hears nothing before durable"
    );
    // An inquiry now must not hear COMMITTED: the decision could still be lost.
    c.on_message(ms(3), inquiry(&c, Xid(7)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(
        matches!(&actions[0], CoordinatorAction::Send { message, .. } if message.body == Body::State(TxnState::Unknown))
    );
    c.on_durable(ms(4), ticket);
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(
        sends(&actions),
        vec![(P1.into(), "COMMIT"), (P2.into(), "COMMIT")]
    );
    assert_eq!(outcome(&actions), Some(TxnOutcome::Committed));
}

#[test]
fn global_commit_rule_one_vote_abort_aborts_with_the_reason_and_presumed_abort_forgets() {
    let mut c = started();
    begin(&mut c, Xid(7));
    c.on_message(
        ms(1),
        msg(
            &c,
            Xid(7),
            P2,
            Body::Vote(Vote::Abort {
                reason: "insufficient funds".into(),
            }),
        ),
    );
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(
        forced_ticket(&actions).is_none(),
        "presumed abort: ABORT is not forced"
    );
    assert_eq!(
        sends(&actions),
        vec![(P1.into(), "ABORT"), (P2.into(), "ABORT")]
    );
    match outcome(&actions) {
        Some(TxnOutcome::Aborted { reason }) => {
            assert!(reason.contains("insufficient funds") && reason.contains(P2))
        }
        other => panic!("expected abort, got {other:?}"),
    }
    assert_eq!(c.in_flight(), 0);
    // A late READY from the other participant changes nothing.
    c.on_message(ms(2), msg(&c, Xid(7), P1, Body::Vote(Vote::Ready)));
    assert!(sends(&c.drain_actions().collect::<Vec<_>>()).is_empty());
}

#[test]
fn message_loss_1_and_2_missing_vote_times_out_into_abort() {
    let mut c = started();
    begin(&mut c, Xid(7));
    c.on_message(ms(1), msg(&c, Xid(7), P1, Body::Vote(Vote::Ready)));
    c.drain_actions().for_each(drop);
    c.on_timer(ms(50), votes(Xid(7))); // early: ignored
    assert!(c.drain_actions().next().is_none());
    c.on_timer(ms(100), resend(Xid(7))); // another phase's timer: ignored
    assert!(c.drain_actions().next().is_none());
    c.on_timer(ms(100), votes(Xid(7)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(actions.iter().any(|a| matches!(a,
        CoordinatorAction::Notice(CoordinatorNotice::TimeoutFired { timeout_ms: 100, waiting_for, .. }) if waiting_for == &vec![P2.to_string()])));
    match outcome(&actions) {
        Some(TxnOutcome::Aborted { reason }) => assert!(reason.contains("no vote"), "{reason}"),
        other => panic!("expected abort, got {other:?}"),
    }
}

fn committed(c: &mut Coordinator, xid: Xid) {
    begin(c, xid);
    c.on_message(ms(1), msg(c, xid, P1, Body::Vote(Vote::Ready)));
    c.on_message(ms(1), msg(c, xid, P2, Body::Vote(Vote::Ready)));
    let actions: Vec<_> = c.drain_actions().collect();
    c.on_durable(ms(2), forced_ticket(&actions).expect("forced"));
    c.drain_actions().for_each(drop);
}

#[test]
fn message_loss_4_missing_ack_resends_decision_with_backoff_forever() {
    let mut c = started();
    committed(&mut c, Xid(7));
    c.on_message(ms(3), msg(&c, Xid(7), P1, Body::Ack));
    c.drain_actions().for_each(drop);
    let mut now = 2;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let status = c.status(ms(now), Xid(7)).expect("still in flight");
        assert_eq!(status.phase, CoordinatorPhase::Committed);
        // find the next timer
        c.on_timer(ms(now + 1000), resend(Xid(7)));
        let actions: Vec<_> = c.drain_actions().collect();
        assert_eq!(sends(&actions), vec![(P2.into(), "COMMIT")]);
        let at = actions
            .iter()
            .find_map(|a| match a {
                CoordinatorAction::SetTimer { at, .. } => Some(*at),
                _ => None,
            })
            .expect("re-armed");
        delays.push(at.ms_since(ms(now + 1000)));
        now += 1000;
    }
    assert_eq!(delays, vec![20, 40, 40, 40, 40], "doubles, capped at max");
    c.on_message(ms(now), msg(&c, Xid(7), P2, Body::Ack));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(actions.iter().any(|a| matches!(
        a,
        CoordinatorAction::Persist {
            record: CoordinatorRecord::End { .. },
            durability: Durability::Lazy
        }
    )));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn presumed_abort_inquire_for_unknown_xid_answers_aborted() {
    let mut c = started();
    c.on_message(ms(0), inquiry(&c, Xid(99)));
    let actions: Vec<_> = c.drain_actions().collect();
    match &actions[..] {
        [CoordinatorAction::Send { to, message }] => {
            assert_eq!(to, P1);
            assert_eq!(message.body, Body::State(TxnState::Aborted));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stale_epoch_votes_are_rejected() {
    let mut c = started();
    begin(&mut c, Xid(7));
    let mut stale = msg(&c, Xid(7), P1, Body::Vote(Vote::Ready));
    stale.epoch -= 1;
    c.on_message(ms(1), stale);
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(matches!(
        &actions[..],
        [CoordinatorAction::Notice(CoordinatorNotice::Ignored { .. })]
    ));
    assert!(!c.status(ms(1), Xid(7)).expect("in flight").branches[0].voted_ready);
}

#[test]
fn site_failure_3_coordinator_restart_without_decision_aborts_and_tells_participants() {
    let records = vec![
        CoordinatorRecord::Epoch { epoch: 4 },
        CoordinatorRecord::Begin {
            xid: Xid(7),
            participants: vec![P1.into(), P2.into()],
        },
    ];
    let mut c = Coordinator::recover(config(), records, ms(0));
    assert_eq!(c.epoch(), 5, "epoch grows at every start");
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(matches!(
        &actions[0],
        CoordinatorAction::Persist {
            record: CoordinatorRecord::Epoch { epoch: 5 },
            durability: Durability::Forced(_)
        }
    ));
    assert_eq!(
        sends(&actions),
        vec![(P1.into(), "ABORT"), (P2.into(), "ABORT")]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn site_failure_4_coordinator_restart_after_commit_resends_it_once_epoch_is_durable() {
    let records = vec![
        CoordinatorRecord::Epoch { epoch: 1 },
        CoordinatorRecord::Begin {
            xid: Xid(7),
            participants: vec![P1.into(), P2.into()],
        },
        CoordinatorRecord::Decision {
            xid: Xid(7),
            decision: Decision::Commit,
            participants: vec![P1.into(), P2.into()],
        },
    ];
    let mut c = Coordinator::recover(config(), records, ms(0));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(sends(&actions).is_empty());
    // Recovered COMMIT is known before the re-send: inquiries hear COMMITTED.
    c.on_message(ms(0), inquiry(&c, Xid(7)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(
        matches!(&actions[0], CoordinatorAction::Send { message, .. } if message.body == Body::State(TxnState::Committed))
    );
    c.on_durable(ms(1), forced_ticket(&recovered_actions()).expect("epoch"));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(
        sends(&actions),
        vec![(P1.into(), "COMMIT"), (P2.into(), "COMMIT")]
    );
    assert_eq!(
        outcome(&actions),
        None,
        "no client waits for a recovered txn"
    );
    for p in [P1, P2] {
        c.on_message(ms(2), msg(&c, Xid(7), p, Body::Ack));
    }
    assert_eq!(c.in_flight(), 0);
}

/// The actions of a recovery identical to the one above; tickets are
/// deterministic, so the ticket found here is the one the coordinator holds.
fn recovered_actions() -> Vec<CoordinatorAction> {
    let mut c = Coordinator::recover(config(), vec![], ms(0));
    c.drain_actions().collect()
}

#[test]
fn site_failure_5_coordinator_restart_after_end_has_nothing_to_do() {
    let p = vec![P1.to_string(), P2.to_string()];
    let records = vec![
        CoordinatorRecord::Epoch { epoch: 1 },
        CoordinatorRecord::Begin {
            xid: Xid(7),
            participants: p.clone(),
        },
        CoordinatorRecord::Decision {
            xid: Xid(7),
            decision: Decision::Commit,
            participants: p,
        },
        CoordinatorRecord::End { xid: Xid(7) },
    ];
    let mut c = Coordinator::recover(config(), records, ms(0));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(sends(&actions).is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn begin_rejects_bad_input_with_clear_errors() {
    let mut c = started();
    assert_eq!(
        c.begin(ms(0), Xid(1), vec![], 10),
        Err(BeginError::NoBranches)
    );
    assert_eq!(
        c.begin(
            ms(0),
            Xid(1),
            vec![(P1.into(), vec![]), (P1.into(), vec![])],
            10
        ),
        Err(BeginError::DuplicateParticipant(P1.into()))
    );
    let many: Vec<_> = (0..PARTICIPANTS_MAX + 1)
        .map(|i| (format!("p{i}"), vec![]))
        .collect();
    assert!(matches!(
        c.begin(ms(0), Xid(1), many, 10),
        Err(BeginError::TooManyParticipants { .. })
    ));
    begin(&mut c, Xid(1));
    assert_eq!(
        c.begin(ms(0), Xid(1), vec![(P1.into(), vec![])], 10),
        Err(BeginError::DuplicateXid(Xid(1)))
    );
}

fn next_timer(actions: &[CoordinatorAction]) -> Option<Time> {
    actions.iter().find_map(|a| match a {
        CoordinatorAction::SetTimer { at, .. } => Some(*at),
        _ => None,
    })
}

/// Timers from measured latency (SPEC §3): a driver may give one
/// transaction its own first COMMIT resend delay; later resends double from
/// it and stay capped by the config.
#[test]
fn timers_from_measured_latency_per_transaction_resend_delay() {
    let mut c = started();
    c.begin_with_resend(
        ms(0),
        Xid(8),
        vec![(P1.into(), vec![1]), (P2.into(), vec![2])],
        100,
        3,
    )
    .expect("begin");
    c.drain_actions().for_each(drop);
    c.on_message(ms(1), msg(&c, Xid(8), P1, Body::Vote(Vote::Ready)));
    c.on_message(ms(1), msg(&c, Xid(8), P2, Body::Vote(Vote::Ready)));
    let actions: Vec<_> = c.drain_actions().collect();
    c.on_durable(ms(2), forced_ticket(&actions).expect("forced"));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(next_timer(&actions), Some(ms(5)), "first resend after 3 ms");
    c.on_timer(ms(5), resend(Xid(8)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(sends(&actions).len(), 2, "COMMIT re-sent to both");
    assert_eq!(next_timer(&actions), Some(ms(11)), "then doubles: 6 ms");
    let fired = actions.iter().find_map(|a| match a {
        CoordinatorAction::Notice(CoordinatorNotice::TimeoutFired { timeout_ms, .. }) => {
            Some(*timeout_ms)
        }
        _ => None,
    });
    assert_eq!(fired, Some(3), "the notice names the delay in force");
}

#[test]
fn timers_from_measured_latency_resend_delay_is_bounded_by_the_config() {
    for (asked, want) in [(0, 1), (1000, 40)] {
        let mut c = started();
        c.begin_with_resend(ms(0), Xid(9), vec![(P1.into(), vec![1])], 100, asked)
            .expect("begin");
        c.drain_actions().for_each(drop);
        c.on_message(ms(1), msg(&c, Xid(9), P1, Body::Vote(Vote::Ready)));
        let actions: Vec<_> = c.drain_actions().collect();
        c.on_durable(ms(2), forced_ticket(&actions).expect("forced"));
        let actions: Vec<_> = c.drain_actions().collect();
        assert_eq!(next_timer(&actions), Some(ms(2 + want)), "asked {asked}");
    }
}

#[test]
fn timers_from_measured_latency_plain_begin_keeps_the_config_resend_delay() {
    let mut c = started();
    committed(&mut c, Xid(10));
    c.on_timer(ms(12), resend(Xid(10)));
    let actions: Vec<_> = c.drain_actions().collect();
    let fired = actions.iter().find_map(|a| match a {
        CoordinatorAction::Notice(CoordinatorNotice::TimeoutFired { timeout_ms, .. }) => {
            Some(*timeout_ms)
        }
        _ => None,
    });
    assert_eq!(fired, Some(10), "config resend_ms_initial");
}

fn votes(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Votes)
}

fn resend(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Resend)
}

fn samples(actions: &[CoordinatorAction]) -> Vec<(String, LatencyPhase, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Notice(CoordinatorNotice::LatencySample {
                peer,
                phase,
                elapsed_us,
                ..
            }) => Some((peer.clone(), *phase, *elapsed_us)),
            _ => None,
        })
        .collect()
}

#[test]
fn timers_from_measured_latency_the_core_reports_prepare_and_decision_samples_once() {
    let mut c = started();
    begin(&mut c, Xid(7));
    c.on_message(ms(4), msg(&c, Xid(7), P1, Body::Vote(Vote::Ready)));
    c.on_message(ms(5), msg(&c, Xid(7), P1, Body::Vote(Vote::Ready))); // duplicate
    c.on_message(ms(9), msg(&c, Xid(7), P2, Body::Vote(Vote::Ready)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(
        samples(&actions),
        vec![
            (P1.into(), LatencyPhase::Prepare, 4000),
            (P2.into(), LatencyPhase::Prepare, 9000)
        ]
    );
    c.on_durable(ms(10), forced_ticket(&actions).expect("forced"));
    c.drain_actions().for_each(drop);
    c.on_message(ms(13), msg(&c, Xid(7), P1, Body::Ack));
    c.on_message(ms(14), msg(&c, Xid(7), P1, Body::Ack)); // duplicate
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(
        samples(&actions),
        vec![(P1.into(), LatencyPhase::Decision, 3000)]
    );
}

#[test]
fn timers_from_measured_latency_karn_no_decision_sample_after_a_resend() {
    let mut c = started();
    committed(&mut c, Xid(8));
    // The resend timer fires: COMMIT goes out again to both.
    c.on_timer(ms(1000), TimerKey::new(Xid(8), TimerKind::Resend));
    c.drain_actions().for_each(drop);
    c.on_message(ms(1001), msg(&c, Xid(8), P1, Body::Ack));
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(samples(&actions).is_empty(), "{actions:?}");
}

#[test]
fn timers_from_measured_latency_vote_abort_gives_no_sample() {
    let mut c = started();
    begin(&mut c, Xid(9));
    c.on_message(
        ms(2),
        msg(
            &c,
            Xid(9),
            P1,
            Body::Vote(Vote::Abort {
                reason: "no".into(),
            }),
        ),
    );
    let actions: Vec<_> = c.drain_actions().collect();
    assert!(samples(&actions).is_empty());
}

#[test]
fn compaction_snapshot_keeps_the_epoch_undecided_and_unended_transactions_only() {
    let mut c = started();
    committed(&mut c, Xid(1)); // COMMIT sent, waiting for ACKs
    begin(&mut c, Xid(2)); // WAIT
    committed(&mut c, Xid(3));
    c.on_message(ms(3), msg(&c, Xid(3), P1, Body::Ack));
    c.on_message(ms(3), msg(&c, Xid(3), P2, Body::Ack)); // ended
    c.drain_actions().for_each(drop);
    let snapshot = c.snapshot_records();
    let participants = vec![P1.to_string(), P2.to_string()];
    assert_eq!(
        snapshot,
        vec![
            CoordinatorRecord::Epoch { epoch: 1 },
            CoordinatorRecord::Decision {
                xid: Xid(1),
                decision: Decision::Commit,
                participants: participants.clone()
            },
            CoordinatorRecord::Begin {
                xid: Xid(2),
                participants
            },
        ]
    );
    // Recovery from it: the next epoch, COMMIT re-sent for 1, 2 aborted.
    let mut r = Coordinator::recover(
        CoordinatorConfig {
            id: C.into(),
            resend_ms_initial: 10,
            resend_ms_max: 40,
            // Single-branch tests here are about 2PC; one-phase commit has its own.
            one_phase: false,
            two_phase_only: Vec::new(),
        },
        snapshot,
        ms(100),
    );
    assert_eq!(r.epoch(), 2);
    assert_eq!(r.in_flight_xids(), vec![Xid(1)]);
    let actions: Vec<_> = r.drain_actions().collect();
    assert!(
        sends(&actions).contains(&(P1.into(), "ABORT")),
        "{actions:?}"
    );
}

/// §1.8: a life over a log taken from a shared store runs at least at the
/// epoch the store granted, even when the log's own epoch records say
/// less (the previous holder's epoch record may never have become
/// durable); without a grant the epoch is one above the log's.
#[test]
fn recovery_runs_at_the_epoch_the_store_granted_or_above() {
    let records = vec![CoordinatorRecord::Epoch { epoch: 3 }];
    let granted = Coordinator::recover_at_least(config(), records.clone(), ms(0), 9);
    assert_eq!(granted.epoch(), 9);
    let below = Coordinator::recover_at_least(config(), records.clone(), ms(0), 2);
    assert_eq!(below.epoch(), 4);
    assert_eq!(Coordinator::recover(config(), records, ms(0)).epoch(), 4);
    let mut granted = granted;
    assert!(granted.drain_actions().any(|a| matches!(
        a,
        CoordinatorAction::Persist {
            record: CoordinatorRecord::Epoch { epoch: 9 },
            ..
        }
    )));
}
