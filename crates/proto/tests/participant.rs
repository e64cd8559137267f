//! Engine tests of the participant: feed events, assert the exact actions.
//! Each test names the SPEC §1 rule it checks.

use concord_proto::*;

const C: &str = "coord:1";
const P1: &str = "p1:1";
const P2: &str = "p2:1";

fn config() -> ParticipantConfig {
    ParticipantConfig {
        id: P1.into(),
        inquire_ms_initial: 10,
        inquire_ms_max: 40,
        finished_max: 1000,
        apply_retry_ms_initial: 5,
        apply_retry_ms_max: 20,
        branches_in_flight_max: 1000,
    }
}

/// Admission: past `branches_in_flight_max` live branches a PREPARE gets
/// VOTE ABORT "busy" at once, is remembered as aborted (a duplicate gets
/// the same vote), and takes nothing from the resource.
#[test]
fn admission_limit_votes_abort_busy_and_remembers_it() {
    let mut p = Participant::new(ParticipantConfig {
        branches_in_flight_max: 1,
        ..config()
    });
    ready(&mut p, Xid(5));
    p.on_message(ms(3), prepare(Xid(6)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Prepare { .. })));
    match &sent(&actions)[..] {
        [(_, Body::Vote(Vote::Abort { reason }))] => {
            assert!(reason.starts_with("busy:"), "{reason}")
        }
        other => panic!("expected VOTE ABORT busy, got {other:?}"),
    }
    assert_eq!(p.state_of(Xid(6)), TxnState::Aborted);
    // Once xid 5 is finished (committed, recorded, ACKed) there is room.
    let (t, _) = forced(&commit_now(&mut p, ms(4), Xid(5))).expect("COMMITTED forced");
    p.on_durable(ms(4), t);
    p.drain_actions().for_each(drop);
    p.on_message(ms(5), prepare(Xid(7)));
    assert!(p
        .drain_actions()
        .any(|a| matches!(a, ParticipantAction::Prepare { xid: Xid(7), .. })));
}

fn ms(v: u64) -> Time {
    Time(v * 1000)
}

fn from_coordinator(xid: Xid, epoch: Epoch, body: Body) -> Message {
    Message {
        xid,
        epoch,
        from: C.into(),
        body,
    }
}

fn prepare(xid: Xid) -> Message {
    from_coordinator(
        xid,
        1,
        Body::Prepare {
            participants: vec![P1.into(), P2.into()],
            work: vec![42],
            deadline_ms: 100,
        },
    )
}

fn decision(xid: Xid, d: Decision) -> Message {
    from_coordinator(xid, 1, Body::Decision(d))
}

fn sent(actions: &[ParticipantAction]) -> Vec<(String, Body)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ParticipantAction::Send { to, message } => Some((to.clone(), message.body.clone())),
            _ => None,
        })
        .collect()
}

fn forced(actions: &[ParticipantAction]) -> Option<(PersistTicket, ParticipantRecord)> {
    actions.iter().find_map(|a| match a {
        ParticipantAction::Persist {
            record,
            durability: Durability::Forced(t),
        } => Some((*t, record.clone())),
        _ => None,
    })
}

/// The one record `actions` persist: the forced abort of `xid`.
fn one_forced_abort(actions: &[ParticipantAction], xid: Xid) -> PersistTicket {
    let persisted = actions
        .iter()
        .filter(|a| matches!(a, ParticipantAction::Persist { .. }))
        .count();
    assert_eq!(persisted, 1, "one record for the abort: {actions:?}");
    let (ticket, record) = forced(actions).expect("the abort is forced");
    assert_eq!(
        record,
        ParticipantRecord::Outcome {
            xid,
            decision: Decision::Abort
        }
    );
    ticket
}

/// Prepare xid and make its READY record durable; returns the actions of
/// the durable step.
fn ready(p: &mut Participant, xid: Xid) -> Vec<ParticipantAction> {
    p.on_message(ms(0), prepare(xid));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(
        actions,
        vec![ParticipantAction::Prepare {
            xid,
            work: vec![42]
        }]
    );
    p.on_prepared(ms(1), xid, Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    let (ticket, record) = forced(&actions).expect("READY record is forced");
    assert!(matches!(record, ParticipantRecord::Ready { epoch: 1, .. }));
    assert!(sent(&actions).is_empty(), "no vote before READY is durable");
    p.on_durable(ms(2), ticket);
    p.drain_actions().collect()
}

/// Deliver COMMIT and have the resource commit at once: the actions of
/// both steps.
fn commit_now(p: &mut Participant, at: Time, xid: Xid) -> Vec<ParticipantAction> {
    p.on_message(at, decision(xid, Decision::Commit));
    let mut actions: Vec<_> = p.drain_actions().collect();
    p.on_committed(at, xid, Ok(()));
    actions.extend(p.drain_actions());
    actions
}

fn apply_retry(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Apply)
}

#[test]
fn persist_then_send_vote_ready_only_after_ready_record_is_durable() {
    let mut p = Participant::new(config());
    let actions = ready(&mut p, Xid(5));
    assert_eq!(sent(&actions), vec![(C.into(), Body::Vote(Vote::Ready))]);
    // First inquiry no earlier than the PREPARE deadline + inquire delay.
    assert!(actions.contains(&ParticipantAction::SetTimer {
        key: inquire(Xid(5)),
        at: ms(110)
    }));
    assert_eq!(p.in_doubt(), vec![Xid(5)]);
}

#[test]
fn resource_failure_votes_abort_with_the_reason_and_is_remembered() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), prepare(Xid(5)));
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(1), Xid(5), Err("unknown account x".into()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(
        sent(&actions),
        vec![(
            C.into(),
            Body::Vote(Vote::Abort {
                reason: "unknown account x".into()
            })
        )]
    );
    assert!(forced(&actions).is_none());
    // A duplicate PREPARE gets the same vote, without preparing again.
    p.on_message(ms(2), prepare(Xid(5)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(matches!(
        &sent(&actions)[..],
        [(_, Body::Vote(Vote::Abort { .. }))]
    ));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Prepare { .. })));
}

#[test]
fn prepare_finished_after_the_deadline_votes_abort_and_releases() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), prepare(Xid(5)));
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(101), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Abort { xid: Xid(5) }));
    assert!(
        matches!(&sent(&actions)[..], [(_, Body::Vote(Vote::Abort { reason }))] if reason.contains("deadline"))
    );
}

#[test]
fn duplicate_prepare_while_ready_repeats_vote_ready() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(ms(3), prepare(Xid(5)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(sent(&actions), vec![(C.into(), Body::Vote(Vote::Ready))]);
}

#[test]
fn commit_applies_then_forces_outcome_then_acks_and_duplicate_commit_is_reacked() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(ms(3), decision(Xid(5), Decision::Commit));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(actions[0], ParticipantAction::Commit { xid: Xid(5) });
    assert!(forced(&actions).is_none() && sent(&actions).is_empty());
    // The resource answers later: nothing is recorded until it has.
    p.on_committed(ms(3), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    let (ticket, record) = forced(&actions).expect("COMMITTED is forced");
    assert_eq!(
        record,
        ParticipantRecord::Outcome {
            xid: Xid(5),
            decision: Decision::Commit
        }
    );
    assert!(sent(&actions).is_empty(), "no ACK before durable");
    // A duplicate COMMIT while the record is being forced: nothing twice.
    p.on_message(ms(3), decision(Xid(5), Decision::Commit));
    assert!(p.drain_actions().next().is_none());
    p.on_durable(ms(4), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(C.into(), Body::Ack)]
    );
    // Message loss 4: the ACK was lost, the coordinator re-sends COMMIT.
    p.on_message(ms(50), decision(Xid(5), Decision::Commit));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(actions.len(), 1);
    assert_eq!(sent(&actions), vec![(C.into(), Body::Ack)]);
    assert!(p.in_doubt().is_empty());
}

#[test]
fn message_loss_3_decision_lost_ready_participant_inquires_with_backoff_and_never_decides() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    let mut now = 110;
    let mut waits = Vec::new();
    for attempt in 1..=4 {
        p.on_timer(ms(now), inquire(Xid(5)));
        let actions: Vec<_> = p.drain_actions().collect();
        let asked = Body::Inquire {
            prepared_ms_ago: Some(now),
        };
        // The coordinator first; from the second attempt on the peers too
        // while the coordinator is silent (cooperative termination), with
        // the PREPARE's age. It answers UNKNOWN from the second on: the
        // third and fourth ask only it.
        let mut expected = vec![(C.to_string(), asked.clone())];
        if attempt == 2 {
            expected.push((P2.into(), asked));
        }
        assert_eq!(sent(&actions), expected, "attempt {attempt}");
        assert!(!actions.iter().any(|a| matches!(
            a,
            ParticipantAction::Commit { .. } | ParticipantAction::Abort { .. }
        )));
        let at = actions
            .iter()
            .find_map(|a| match a {
                ParticipantAction::SetTimer { at, .. } => Some(*at),
                _ => None,
            })
            .expect("re-armed");
        waits.push(at.ms_since(ms(now)));
        now = at.0 / 1000;
        // "Not decided yet" changes nothing (the first INQUIRE's answer is
        // lost).
        if attempt >= 2 {
            p.on_message(
                ms(now),
                from_coordinator(Xid(5), 1, Body::State(TxnState::Unknown)),
            );
        }
        assert!(p.drain_actions().next().is_none());
    }
    assert_eq!(waits, vec![20, 40, 40, 40]);
    p.on_message(
        ms(now),
        from_coordinator(Xid(5), 1, Body::State(TxnState::Aborted)),
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Abort { xid: Xid(5) }));
    assert!(p.in_doubt().is_empty());
}

#[test]
fn abort_before_prepare_reordered_makes_late_prepare_vote_abort() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), decision(Xid(5), Decision::Abort));
    p.drain_actions().for_each(drop);
    p.on_message(ms(1), prepare(Xid(5)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(matches!(
        &sent(&actions)[..],
        [(_, Body::Vote(Vote::Abort { .. }))]
    ));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Prepare { .. })));
}

#[test]
fn abort_while_preparing_releases_once_prepare_returns_and_sends_no_ready() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), prepare(Xid(5)));
    p.drain_actions().for_each(drop);
    p.on_message(ms(1), decision(Xid(5), Decision::Abort));
    p.on_prepared(ms(2), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Abort { xid: Xid(5) }));
    assert!(sent(&actions).is_empty());
    assert!(forced(&actions).is_none());
    // The release is retried until it succeeds, though nobody waits for it.
    p.on_aborted(ms(3), Xid(5), Err("connection reset".into()));
    assert!(p.drain_actions().any(|a| a
        == ParticipantAction::SetTimer {
            key: apply_retry(Xid(5)),
            at: ms(8)
        }));
    p.on_timer(ms(8), apply_retry(Xid(5)));
    assert_eq!(
        p.drain_actions().collect::<Vec<_>>(),
        vec![ParticipantAction::Abort { xid: Xid(5) }]
    );
    p.on_aborted(ms(9), Xid(5), Ok(()));
    assert!(p.applying().is_empty());
}

/// Resources that answer later: a commit that fails is asked for again
/// with a doubling backoff (capped), never abandoned; nothing is recorded
/// and no ACK leaves until it succeeds; duplicate COMMITs and stale
/// answers change nothing meanwhile.
#[test]
fn failed_commit_is_retried_with_backoff_until_it_succeeds_and_only_then_acked() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(ms(3), decision(Xid(5), Decision::Commit));
    p.drain_actions().for_each(drop);
    let mut now = 3;
    let mut waits = Vec::new();
    for attempt in 1..=5u32 {
        p.on_committed(ms(now), Xid(5), Err(format!("db down {attempt}")));
        let actions: Vec<_> = p.drain_actions().collect();
        assert!(
            forced(&actions).is_none(),
            "nothing recorded after a failure"
        );
        assert!(sent(&actions).is_empty(), "no ACK after a failure");
        let wait = actions
            .iter()
            .find_map(|a| match a {
                ParticipantAction::Notice(ParticipantNotice::ApplyFailed {
                    attempt: n,
                    retry_in_ms,
                    error,
                    ..
                }) => {
                    assert_eq!(*n, attempt);
                    assert!(error.contains("db down"));
                    Some(*retry_in_ms)
                }
                _ => None,
            })
            .expect("the failure is reported");
        waits.push(wait);
        // A duplicate COMMIT and an answer out of turn change nothing.
        p.on_message(ms(now), decision(Xid(5), Decision::Commit));
        p.on_committed(ms(now), Xid(5), Ok(()));
        assert!(p.drain_actions().next().is_none());
        // An early timer does nothing; the due one asks again.
        p.on_timer(ms(now + wait - 1), apply_retry(Xid(5)));
        assert!(p.drain_actions().next().is_none());
        now += wait;
        p.on_timer(ms(now), apply_retry(Xid(5)));
        assert_eq!(
            p.drain_actions().collect::<Vec<_>>(),
            vec![ParticipantAction::Commit { xid: Xid(5) }]
        );
        assert_eq!(p.state_of(Xid(5)), TxnState::Ready, "not committed yet");
    }
    assert_eq!(waits, vec![5, 10, 20, 20, 20]);
    p.on_committed(ms(now), Xid(5), Ok(()));
    let (ticket, _) = forced(&p.drain_actions().collect::<Vec<_>>()).expect("COMMITTED forced");
    p.on_durable(ms(now + 1), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(C.into(), Body::Ack)]
    );
    assert_eq!(p.state_of(Xid(5)), TxnState::Committed);
    assert!(p.applying().is_empty());
}

/// An abort that fails is retried the same way; the branch counts as
/// aborted for anyone who asks, and its outcome is recorded only once the
/// resource has let go.
#[test]
fn failed_abort_is_retried_and_recorded_only_after_it_succeeds() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(ms(3), decision(Xid(5), Decision::Abort));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(actions[0], ParticipantAction::Abort { xid: Xid(5) });
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Persist { .. })));
    assert_eq!(p.state_of(Xid(5)), TxnState::Aborted);
    p.on_aborted(ms(4), Xid(5), Err("timeout".into()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Persist { .. })));
    p.on_timer(ms(9), apply_retry(Xid(5)));
    assert_eq!(
        p.drain_actions().collect::<Vec<_>>(),
        vec![ParticipantAction::Abort { xid: Xid(5) }]
    );
    p.on_aborted(ms(10), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Persist {
        record: ParticipantRecord::Outcome {
            xid: Xid(5),
            decision: Decision::Abort
        },
        durability: Durability::Lazy
    }));
    assert!(p.in_doubt().is_empty() && p.applying().is_empty());
}

/// A compaction while a commit is still being carried out keeps the
/// branch's READY record: after a crash it is in doubt again, learns the
/// decision again and commits then.
#[test]
fn compaction_keeps_the_ready_record_of_a_branch_whose_commit_has_not_succeeded() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(ms(3), decision(Xid(5), Decision::Commit));
    p.on_committed(ms(3), Xid(5), Err("down".into()));
    p.drain_actions().for_each(drop);
    let snapshot = p.snapshot_records();
    assert!(
        snapshot
            .iter()
            .any(|r| matches!(r, ParticipantRecord::Ready { xid: Xid(5), .. })),
        "{snapshot:?}"
    );
    let q = Participant::recover(config(), snapshot, ms(10));
    assert_eq!(q.in_doubt(), vec![Xid(5)]);
}

#[test]
fn stale_epoch_decision_is_rejected() {
    let mut p = Participant::new(config());
    p.on_message(
        ms(0),
        from_coordinator(
            Xid(5),
            3,
            Body::Prepare {
                participants: vec![P1.into()],
                work: vec![],
                deadline_ms: 100,
            },
        ),
    );
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(0), Xid(5), Ok(()));
    let (t, _) = forced(&p.drain_actions().collect::<Vec<_>>()).expect("forced");
    p.on_durable(ms(0), t);
    p.drain_actions().for_each(drop);
    p.on_message(
        ms(1),
        from_coordinator(Xid(5), 2, Body::Decision(Decision::Abort)),
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(matches!(
        &actions[..],
        [ParticipantAction::Notice(ParticipantNotice::Ignored { .. })]
    ));
    assert_eq!(p.in_doubt(), vec![Xid(5)]);
}

#[test]
fn site_failure_2_restart_with_ready_record_restores_locks_and_inquires_at_once() {
    let records = vec![
        ParticipantRecord::Ready {
            xid: Xid(5),
            coordinator: C.into(),
            epoch: 1,
            participants: vec![P1.into(), P2.into()],
            work: vec![42],
        },
        ParticipantRecord::Ready {
            xid: Xid(6),
            coordinator: C.into(),
            epoch: 1,
            participants: vec![P1.into(), P2.into()],
            work: vec![43],
        },
        ParticipantRecord::Outcome {
            xid: Xid(6),
            decision: Decision::Commit,
        },
    ];
    let mut p = Participant::recover(config(), records, ms(0));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Restore {
        xid: Xid(5),
        work: vec![42]
    }));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Restore { xid: Xid(6), .. })));
    assert_eq!(p.in_doubt(), vec![Xid(5)]);
    p.on_timer(ms(0), inquire(Xid(5)));
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(
            C.into(),
            Body::Inquire {
                prepared_ms_ago: None
            }
        )]
    );
    // The finished branch answers duplicates from memory rebuilt from the log.
    p.on_message(ms(1), decision(Xid(6), Decision::Commit));
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(C.into(), Body::Ack)]
    );
}

#[test]
fn site_failure_1_restart_without_ready_record_knows_nothing_presumed_abort() {
    let mut p = Participant::recover(config(), vec![], ms(0));
    p.drain_actions().for_each(drop);
    assert!(p.in_doubt().is_empty());
    assert_eq!(p.state_of(Xid(5)), TxnState::Unknown);
}

#[test]
fn cooperative_termination_seam_peer_inquiry_of_unknown_xid_aborts_it_unilaterally() {
    let mut p = Participant::new(config());
    let inquire_from = |from: &str| Message {
        xid: Xid(5),
        epoch: 1,
        from: from.into(),
        body: Body::Inquire {
            prepared_ms_ago: Some(1),
        },
    };
    p.on_message(ms(0), inquire_from(P2));
    // Answers persist first: the unilateral abort is forced, and nothing
    // is said before it is durable.
    let actions: Vec<_> = p.drain_actions().collect();
    let ticket = match &actions[..] {
        [ParticipantAction::Persist {
            record:
                ParticipantRecord::Outcome {
                    xid: Xid(5),
                    decision: Decision::Abort,
                },
            durability: Durability::Forced(ticket),
        }] => *ticket,
        other => panic!("expected exactly the forced abort record, got {other:?}"),
    };
    // A second asker while the abort is being forced waits too.
    p.on_message(ms(1), inquire_from(C));
    assert_eq!(p.drain_actions().collect::<Vec<_>>(), vec![]);
    p.on_durable(ms(2), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![
            (P2.into(), Body::State(TxnState::Aborted)),
            (C.into(), Body::State(TxnState::Aborted))
        ]
    );
    // From now on the answer is immediate: the abort is durable.
    p.on_message(ms(3), inquire_from(P2));
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(P2.into(), Body::State(TxnState::Aborted))]
    );
    p.on_message(ms(4), prepare(Xid(5)));
    assert!(matches!(
        &sent(&p.drain_actions().collect::<Vec<_>>())[..],
        [(_, Body::Vote(Vote::Abort { .. }))]
    ));
}

#[test]
fn late_state_aborted_for_a_committed_branch_is_ignored() {
    let mut p = Participant::new(config());
    let _ = ready(&mut p, Xid(5));
    let (t, _) = forced(&commit_now(&mut p, ms(3), Xid(5))).expect("forced");
    p.on_durable(ms(4), t);
    p.drain_actions().for_each(drop);
    p.on_message(
        ms(5),
        from_coordinator(Xid(5), 1, Body::State(TxnState::Aborted)),
    );
    assert!(p.drain_actions().next().is_none());
    assert_eq!(p.state_of(Xid(5)), TxnState::Committed);
}

/// Found by concord-sim (seed 13871): a duplicated PREPARE, delayed in the
/// network, arrived after the participant had committed the branch and
/// forgotten it (`finished_max` reached). It prepared the branch again and
/// voted READY a second time; had the coordinator still had the
/// transaction in flight, its INQUIRE would have been answered COMMITTED
/// and the branch applied twice. Finished branches younger than
/// FINISHED_MS_MIN are therefore never forgotten.
#[test]
fn duplicates_harmless_finished_branch_not_forgotten_before_finished_ms_min() {
    let mut p = Participant::new(ParticipantConfig {
        finished_max: 1,
        ..config()
    });
    // Commit x = 5, then finish y = 6 (an abort): past finished_max.
    let _ = ready(&mut p, Xid(5));
    let (t, _) = forced(&commit_now(&mut p, ms(3), Xid(5))).expect("forced");
    p.on_durable(ms(4), t);
    p.drain_actions().for_each(drop);
    p.on_message(ms(5), decision(Xid(6), Decision::Abort));
    p.drain_actions().for_each(drop);
    assert_eq!(p.state_of(Xid(5)), TxnState::Committed, "still remembered");
    // The late duplicate PREPARE is answered from memory, not prepared.
    p.on_message(ms(1_000), prepare(Xid(5)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(sent(&actions), vec![(C.into(), Body::Vote(Vote::Ready))]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Prepare { .. })));
    assert!(p.in_doubt().is_empty());
    // Once FINISHED_MS_MIN has passed, the next finished branch pushes the
    // old ones out: memory stays bounded by finished_max.
    p.on_message(ms(5 + FINISHED_MS_MIN), decision(Xid(7), Decision::Abort));
    p.drain_actions().for_each(drop);
    assert_eq!(p.state_of(Xid(5)), TxnState::Unknown);
    assert_eq!(p.state_of(Xid(6)), TxnState::Unknown);
    assert_eq!(p.state_of(Xid(7)), TxnState::Aborted);
}

/// Timers from measured latency (SPEC §3): the driver sets the inquire
/// delay from what it measured; it applies to branches prepared from then
/// on, still counted from the PREPARE deadline, and is bounded by the
/// config's maximum.
#[test]
fn timers_from_measured_latency_inquire_delay_set_by_the_driver() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.set_inquire_ms_initial(3);
    assert_eq!(p.inquire_ms_initial(), 3);
    let actions = ready(&mut p, Xid(6));
    assert!(
        actions.contains(&ParticipantAction::SetTimer {
            key: inquire(Xid(6)),
            at: ms(103)
        }),
        "deadline 100 ms + 3 ms: {actions:?}"
    );
    // Xid 5 keeps the delay it was prepared with.
    p.on_timer(ms(103), inquire(Xid(5)));
    assert!(p.drain_actions().next().is_none(), "not due before 110 ms");
    p.set_inquire_ms_initial(1000);
    assert_eq!(p.inquire_ms_initial(), 40, "capped at inquire_ms_max");
    p.set_inquire_ms_initial(0);
    assert_eq!(p.inquire_ms_initial(), 1, "at least 1 ms");
}

fn inquire(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Inquire)
}

#[test]
fn answers_persist_first_unilateral_abort_survives_a_crash_and_a_late_prepare_votes_abort() {
    let mut p = Participant::new(config());
    p.on_message(
        ms(0),
        Message {
            xid: Xid(5),
            epoch: 1,
            from: P2.into(),
            body: Body::Inquire {
                prepared_ms_ago: Some(1),
            },
        },
    );
    let (_, record) = forced(&p.drain_actions().collect::<Vec<_>>()).expect("forced abort");
    // Restart from a log holding that record: the PREPARE that arrives
    // late must still get VOTE ABORT, never READY.
    let mut p = Participant::recover(config(), vec![record], ms(10));
    p.drain_actions().for_each(drop);
    p.on_message(ms(11), prepare(Xid(5)));
    assert!(matches!(
        &sent(&p.drain_actions().collect::<Vec<_>>())[..],
        [(_, Body::Vote(Vote::Abort { .. }))]
    ));
}

#[test]
fn answers_persist_first_a_vote_abort_kept_only_in_memory_is_forced_before_a_peer_hears_aborted() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), prepare(Xid(6)));
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(1), Xid(6), Err("insufficient funds".into()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(
        forced(&actions).is_none(),
        "a VOTE ABORT alone forces nothing"
    );
    p.on_message(
        ms(2),
        Message {
            xid: Xid(6),
            epoch: 1,
            from: P2.into(),
            body: Body::Inquire {
                prepared_ms_ago: Some(1),
            },
        },
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(
        sent(&actions).is_empty(),
        "no answer before the abort is durable"
    );
    let ticket = one_forced_abort(&actions, Xid(6));
    p.on_durable(ms(3), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(P2.into(), Body::State(TxnState::Aborted))]
    );
}

#[test]
fn an_abort_decided_by_the_coordinator_is_answered_at_once() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(7));
    p.on_message(ms(5), decision(Xid(7), Decision::Abort));
    p.drain_actions().for_each(drop);
    p.on_message(
        ms(6),
        Message {
            xid: Xid(7),
            epoch: 1,
            from: P2.into(),
            body: Body::Inquire {
                prepared_ms_ago: Some(1),
            },
        },
    );
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(P2.into(), Body::State(TxnState::Aborted))]
    );
}

fn samples(actions: &[ParticipantAction]) -> Vec<(String, LatencyPhase, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ParticipantAction::Notice(ParticipantNotice::LatencySample {
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
fn timers_from_measured_latency_vote_to_decision_sample_only_for_one_vote_and_no_inquiry() {
    // Voted once, decision came: one sample, from the vote.
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5)); // VOTE READY at 2 ms
    p.on_message(ms(9), decision(Xid(5), Decision::Commit));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(
        samples(&actions),
        vec![(C.into(), LatencyPhase::VoteToDecision, 7000)]
    );
    // Voted twice (duplicate PREPARE): no sample.
    ready(&mut p, Xid(6));
    p.on_message(ms(3), prepare(Xid(6)));
    p.drain_actions().for_each(drop);
    p.on_message(ms(9), decision(Xid(6), Decision::Commit));
    assert!(samples(&p.drain_actions().collect::<Vec<_>>()).is_empty());
    // Inquired, then learned the outcome: no sample.
    ready(&mut p, Xid(8));
    p.on_timer(ms(500), inquire(Xid(8)));
    p.drain_actions().for_each(drop);
    p.on_message(ms(501), decision(Xid(8), Decision::Abort));
    assert!(samples(&p.drain_actions().collect::<Vec<_>>()).is_empty());
}

#[test]
fn compaction_snapshot_recovers_the_same_in_doubt_branches_and_remembered_outcomes() {
    let mut p = Participant::new(config());
    // Xid 1: committed and ACKed. Xid 2: in doubt. Xid 3: committing (its
    // COMMITTED record not durable yet). Xid 4: voted ABORT.
    ready(&mut p, Xid(1));
    let (t1, _) = forced(&commit_now(&mut p, ms(3), Xid(1))).expect("forced");
    p.on_durable(ms(4), t1);
    p.drain_actions().for_each(drop);
    ready(&mut p, Xid(2));
    ready(&mut p, Xid(3));
    let _ = commit_now(&mut p, ms(5), Xid(3));
    p.on_message(ms(6), prepare(Xid(4)));
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(6), Xid(4), Err("no".into()));
    p.drain_actions().for_each(drop);

    let snapshot = p.snapshot_records();
    match &snapshot[..] {
        [ParticipantRecord::Finished { outcomes }, ParticipantRecord::Ready { xid: Xid(2), .. }] => {
            assert_eq!(
                outcomes,
                &vec![
                    (Xid(1), Decision::Commit),
                    (Xid(4), Decision::Abort),
                    (Xid(3), Decision::Commit)
                ]
            )
        }
        other => panic!("unexpected snapshot {other:?}"),
    }
    let mut q = Participant::recover(config(), snapshot, ms(10));
    assert_eq!(q.in_doubt(), vec![Xid(2)]);
    for (xid, state) in [
        (Xid(1), TxnState::Committed),
        (Xid(2), TxnState::Ready),
        (Xid(3), TxnState::Committed),
        (Xid(4), TxnState::Aborted),
    ] {
        assert_eq!(q.state_of(xid), state, "{xid:?}");
    }
    // The in-doubt branch takes its locks back and asks at once.
    let actions: Vec<_> = q.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Restore {
        xid: Xid(2),
        work: vec![42]
    }));
}

#[test]
fn compaction_snapshot_splits_many_outcomes_into_bounded_records() {
    let mut p = Participant::new(ParticipantConfig {
        finished_max: usize::MAX,
        ..config()
    });
    let n = concord_proto::participant::FINISHED_PER_RECORD_MAX * 2 + 7;
    for i in 0..n {
        // An ABORT before PREPARE is remembered as finished.
        p.on_message(ms(0), decision(Xid(i as u128 + 1000), Decision::Abort));
    }
    p.drain_actions().for_each(drop);
    let snapshot = p.snapshot_records();
    assert_eq!(snapshot.len(), 3);
    let mut total = 0;
    for record in &snapshot {
        match record {
            ParticipantRecord::Finished { outcomes } => {
                assert!(outcomes.len() <= concord_proto::participant::FINISHED_PER_RECORD_MAX);
                assert!(concord_proto::codec::encode(record).len() < 4 << 20);
                total += outcomes.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, n);
    let q = Participant::recover(config(), snapshot, ms(1));
    assert_eq!(q.state_of(Xid(1000)), TxnState::Aborted);
    assert_eq!(q.state_of(Xid(n as u128 + 999)), TxnState::Aborted);
}

fn peer_inquiry(xid: Xid, prepared_ms_ago: Option<u64>) -> Message {
    Message {
        xid,
        epoch: 1,
        from: P2.into(),
        body: Body::Inquire { prepared_ms_ago },
    }
}

fn from_peer(xid: Xid, body: Body) -> Message {
    Message {
        xid,
        epoch: 1,
        from: P2.into(),
        body,
    }
}

/// SPEC §1.6: the coordinator does not answer, a peer says COMMITTED: the
/// branch commits, and its ACK still goes to the coordinator.
#[test]
fn cooperative_termination_a_committed_peer_makes_the_blocked_branch_commit() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_timer(ms(110), inquire(Xid(5)));
    p.on_timer(ms(130), inquire(Xid(5)));
    p.drain_actions().for_each(drop);
    let report = p.in_doubt_report(Xid(5)).expect("in doubt");
    assert_eq!(report.inquiries, 2);
    assert_eq!(report.peers, vec![P2.to_string()]);
    p.on_message(ms(131), from_peer(Xid(5), Body::State(TxnState::Committed)));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Commit { xid: Xid(5) }));
    p.on_committed(ms(131), Xid(5), Ok(()));
    let (ticket, _) = forced(&p.drain_actions().collect::<Vec<_>>()).expect("COMMITTED forced");
    p.on_durable(ms(132), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(C.into(), Body::Ack)]
    );
    assert_eq!(p.state_of(Xid(5)), TxnState::Committed);
}

/// SPEC §1.6: peers that are READY say nothing about the outcome: the
/// branch stays blocked, keeps asking, and its report says why.
#[test]
fn cooperative_termination_every_peer_ready_stays_blocked_and_says_why() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    for at in [110, 130, 170, 210] {
        p.on_timer(ms(at), inquire(Xid(5)));
        // The coordinator is down: only the peer answers.
        p.on_message(ms(at), from_peer(Xid(5), Body::State(TxnState::Ready)));
        let actions: Vec<_> = p.drain_actions().collect();
        assert!(!actions.iter().any(|a| matches!(
            a,
            ParticipantAction::Commit { .. } | ParticipantAction::Abort { .. }
        )));
    }
    assert_eq!(p.in_doubt(), vec![Xid(5)]);
    let why = p.in_doubt_report(Xid(5)).expect("in doubt").why();
    assert!(why.contains("blocked"), "{why}");
    assert!(why.contains("p2:1: READY"), "{why}");
    assert!(why.contains("coordinator coord:1: no answer"), "{why}");
    assert!(why.contains("asked 4 times"), "{why}");
}

/// SPEC §1.6: a peer that has not voted yet aborts on being asked (and
/// tells the coordinator), answers ABORTED only once that abort is
/// durable, and releases its prepare when the resource returns.
#[test]
fn cooperative_termination_a_preparing_peer_aborts_first_then_answers() {
    let mut p = Participant::new(config());
    p.on_message(ms(0), prepare(Xid(5)));
    p.drain_actions().for_each(drop);
    p.on_message(ms(1), peer_inquiry(Xid(5), Some(1)));
    let actions: Vec<_> = p.drain_actions().collect();
    match &sent(&actions)[..] {
        [(to, Body::Vote(Vote::Abort { reason }))] => {
            assert_eq!(to, C);
            assert!(reason.contains("unilaterally"), "{reason}");
        }
        other => panic!("expected VOTE ABORT to the coordinator, got {other:?}"),
    }
    let (ticket, _) = forced(&actions).expect("the abort is forced");
    p.on_durable(ms(2), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(P2.into(), Body::State(TxnState::Aborted))]
    );
    p.on_prepared(ms(3), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(actions, vec![ParticipantAction::Abort { xid: Xid(5) }]);
    assert_eq!(p.state_of(Xid(5)), TxnState::Aborted);
}

/// A peer with no record of an xid may have committed it and forgotten
/// it (after FINISHED_MS_MIN): asked about an old PREPARE, or by an asker
/// that restarted and no longer knows its age, it answers UNKNOWN and
/// writes nothing; asked about a young one, "no record" can only mean
/// "never prepared", and it aborts.
#[test]
fn cooperative_termination_no_record_means_never_prepared_only_for_a_young_prepare() {
    let mut p = Participant::new(ParticipantConfig {
        finished_max: 1,
        ..config()
    });
    ready(&mut p, Xid(5));
    let (t, _) = forced(&commit_now(&mut p, ms(3), Xid(5))).expect("forced");
    p.on_durable(ms(4), t);
    // Later branches push xid 5 out of memory once it is old enough.
    let later = FINISHED_MS_MIN + 10;
    p.on_message(ms(later), decision(Xid(6), Decision::Abort));
    p.on_message(ms(later + 1), decision(Xid(7), Decision::Abort));
    p.drain_actions().for_each(drop);
    assert_eq!(p.state_of(Xid(5)), TxnState::Unknown, "forgotten");
    for age in [None, Some(PEER_ABORT_AGE_MS_MAX + 1), Some(later)] {
        p.on_message(ms(later + 2), peer_inquiry(Xid(5), age));
        let actions: Vec<_> = p.drain_actions().collect();
        assert!(forced(&actions).is_none(), "{age:?}: nothing written");
        assert_eq!(
            sent(&actions),
            vec![(P2.into(), Body::State(TxnState::Unknown))],
            "{age:?}"
        );
    }
    p.on_message(
        ms(later + 3),
        peer_inquiry(Xid(8), Some(PEER_ABORT_AGE_MS_MAX)),
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(forced(&actions).is_some(), "young and unknown: aborted");
}

/// Only the coordinator and the peers of the branch are heard: a STATE
/// COMMITTED from any other node changes nothing.
#[test]
fn cooperative_termination_a_state_from_a_stranger_is_ignored() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_message(
        ms(120),
        Message {
            xid: Xid(5),
            epoch: 1,
            from: "stranger:1".into(),
            body: Body::State(TxnState::Committed),
        },
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(!actions.contains(&ParticipantAction::Commit { xid: Xid(5) }));
    assert_eq!(p.in_doubt(), vec![Xid(5)]);
    assert!(p
        .in_doubt_report(Xid(5))
        .expect("in doubt")
        .answers
        .is_empty());
}

/// Operator action (SPEC §8): a heuristic decision is refused for a
/// branch that is not overdue (it has not had to ask for its decision),
/// and for one that is not in doubt at all.
#[test]
fn heuristic_refused_unless_the_branch_is_in_doubt_and_overdue() {
    let mut p = Participant::new(config());
    let refused = p
        .heuristic(Xid(9), Decision::Abort, "c#1".into())
        .unwrap_err();
    assert!(refused.contains("no branch"), "{refused}");
    ready(&mut p, Xid(5));
    let refused = p
        .heuristic(Xid(5), Decision::Abort, "c#1".into())
        .unwrap_err();
    assert!(refused.contains("not overdue"), "{refused}");
    assert!(p.drain_actions().next().is_none(), "nothing done");
    // Committed already: not in doubt.
    let (t, _) = forced(&commit_now(&mut p, ms(3), Xid(5))).expect("COMMITTED forced");
    p.on_durable(ms(3), t);
    p.drain_actions().for_each(drop);
    let refused = p
        .heuristic(Xid(5), Decision::Abort, "c#1".into())
        .unwrap_err();
    assert!(refused.contains("committed already"), "{refused}");
}

/// A heuristic abort of an overdue in-doubt branch: its record is forced
/// before the resource is asked, a later contrary COMMIT is reported as a
/// conflict (never carried out, never ACKed), and a peer's INQUIRE is not
/// told the operator's decision.
#[test]
fn heuristic_abort_is_forced_first_and_a_contrary_commit_is_a_conflict() {
    let mut p = Participant::new(config());
    ready(&mut p, Xid(5));
    p.on_timer(ms(110), inquire(Xid(5)));
    p.drain_actions().for_each(drop);
    p.heuristic(Xid(5), Decision::Abort, "coord#7".into())
        .expect("overdue and in doubt");
    let actions: Vec<_> = p.drain_actions().collect();
    let (ticket, record) = forced(&actions).expect("heuristic record forced");
    assert_eq!(
        record,
        ParticipantRecord::Heuristic {
            xid: Xid(5),
            decision: Decision::Abort,
            audit: "coord#7".into()
        }
    );
    assert!(
        !actions.contains(&ParticipantAction::Abort { xid: Xid(5) }),
        "the resource waits for the record"
    );
    p.on_durable(ms(111), ticket);
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Abort { xid: Xid(5) }));
    p.on_aborted(ms(112), Xid(5), Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(
        actions.contains(&ParticipantAction::Notice(ParticipantNotice::Outcome {
            xid: Xid(5),
            decision: Decision::Abort
        }))
    );
    assert_eq!(p.heuristic_of(Xid(5)), Some(Decision::Abort));
    // The coordinator comes back with COMMIT: reported, not acted on.
    p.on_message(ms(200), decision(Xid(5), Decision::Commit));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(
        actions,
        vec![ParticipantAction::Notice(
            ParticipantNotice::HeuristicConflict {
                xid: Xid(5),
                heuristic: Decision::Abort,
                decided: Decision::Commit,
                from: C.into(),
            }
        )]
    );
    // A peer asking is told UNKNOWN, not the operator's ABORT.
    p.on_message(
        ms(201),
        Message {
            xid: Xid(5),
            epoch: 1,
            from: P2.into(),
            body: Body::Inquire {
                prepared_ms_ago: Some(1),
            },
        },
    );
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(P2.into(), Body::State(TxnState::Unknown))]
    );
}

/// After a crash with the heuristic record durable but no outcome, the
/// branch is not in doubt again: recovery carries the operator's decision
/// out without asking anyone, and a compacted log keeps it.
#[test]
fn heuristic_decision_survives_a_restart_and_a_compaction() {
    let records = vec![
        ParticipantRecord::Ready {
            xid: Xid(5),
            coordinator: C.into(),
            epoch: 1,
            participants: vec![P1.into(), P2.into()],
            work: vec![42],
        },
        ParticipantRecord::Heuristic {
            xid: Xid(5),
            decision: Decision::Commit,
            audit: "coord#1".into(),
        },
    ];
    let mut p = Participant::recover(config(), records, ms(0));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Commit { xid: Xid(5) }));
    assert!(sent(&actions).is_empty(), "asks no one");
    assert!(p.in_doubt().is_empty());
    let snapshot = p.snapshot_records();
    assert!(snapshot
        .iter()
        .any(|r| matches!(r, ParticipantRecord::Ready { xid: Xid(5), .. })));
    assert!(snapshot.contains(&ParticipantRecord::Heuristic {
        xid: Xid(5),
        decision: Decision::Commit,
        audit: "coord#1".into()
    }));
    // Committed and recorded: the coordinator's COMMIT is ACKed as usual.
    p.on_committed(ms(1), Xid(5), Ok(()));
    let (t, _) = forced(&p.drain_actions().collect::<Vec<_>>()).expect("COMMITTED forced");
    p.on_durable(ms(2), t);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![(C.into(), Body::Ack)]
    );
}

/// Hierarchical 2PC (SPEC §1.7): a sub-coordinator is its children's
/// coordinator. Asked by a child while it still gathers votes within its
/// deadline, it answers "not decided yet" (UNKNOWN), as a coordinator in
/// WAIT does, and keeps gathering: the question is not a vote. Asked
/// again past its deadline, with its own prepare still running, it
/// aborts (durably, before anyone hears it) and tells its coordinator.
#[test]
fn a_sub_coordinator_answers_its_childs_question_undecided_until_its_deadline() {
    const K1: &str = "k1:1";
    const K2: &str = "k2:1";
    let mut p = Participant::new(config());
    let x = Xid(9);
    let kid = |node: &str| TreeEntry {
        node: node.into(),
        parent: 0,
        work: vec![1],
    };
    p.on_message(
        ms(0),
        from_coordinator(
            x,
            1,
            Body::TreePrepare {
                participants: vec![P1.into()],
                work: vec![42],
                tree: vec![kid(K1), kid(K2)],
                deadline_ms: 100,
            },
        ),
    );
    p.drain_actions().for_each(drop);
    let from_kid = |body: Body| Message {
        xid: x,
        epoch: 1,
        from: K1.into(),
        body,
    };
    p.on_message(ms(5), from_kid(Body::Vote(Vote::Ready)));
    p.drain_actions().for_each(drop);
    p.on_message(ms(60), from_kid(Body::ChainInquire));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(
        sent(&actions),
        vec![(K1.to_string(), Body::State(TxnState::Unknown))],
        "{actions:?}"
    );
    assert_eq!(forced(&actions), None, "nothing aborted");
    assert_ne!(p.state_of(x), TxnState::Aborted);
    // Past the deadline (the own prepare still has not returned).
    p.on_message(ms(101), from_kid(Body::ChainInquire));
    let actions: Vec<_> = p.drain_actions().collect();
    let ticket = one_forced_abort(&actions, x);
    assert!(
        sent(&actions).is_empty(),
        "nobody hears it before it is durable"
    );
    p.on_durable(ms(102), ticket);
    let told: Vec<_> = sent(&p.drain_actions().collect::<Vec<_>>());
    assert!(
        told.iter()
            .any(|(to, b)| to == C && matches!(b, Body::Vote(Vote::Abort { .. }))),
        "{told:?}"
    );
    assert!(
        told.contains(&(K1.to_string(), Body::State(TxnState::Aborted))),
        "{told:?}"
    );
}
