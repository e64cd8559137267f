//! Engine tests of the READ-ONLY vote and one-phase commit: feed events to
//! the cores, assert the exact actions (what is written, what is sent).

use concord_proto::*;

const C: &str = "coord:1";
const P1: &str = "p1:1";
const P2: &str = "p2:1";

fn ms(v: u64) -> Time {
    Time(v * 1000)
}

fn participant_config() -> ParticipantConfig {
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

fn coordinator() -> Coordinator {
    let mut c = Coordinator::new(
        CoordinatorConfig {
            id: C.into(),
            resend_ms_initial: 10,
            resend_ms_max: 40,
            one_phase: true,
            two_phase_only: Vec::new(),
        },
        ms(0),
    );
    let ticket = c.drain_actions().find_map(|a| match a {
        CoordinatorAction::Persist {
            durability: Durability::Forced(t),
            ..
        } => Some(t),
        _ => None,
    });
    c.on_durable(ms(0), ticket.expect("epoch record is forced"));
    c.drain_actions().for_each(drop);
    c
}

fn to_participant(xid: Xid, body: Body) -> Message {
    Message {
        xid,
        epoch: 1,
        from: C.into(),
        body,
    }
}

fn to_coordinator(c: &Coordinator, xid: Xid, from: &str, body: Body) -> Message {
    Message {
        xid,
        epoch: c.epoch(),
        from: from.into(),
        body,
    }
}

fn prepare(xid: Xid) -> Message {
    to_participant(
        xid,
        Body::Prepare {
            participants: vec![P1.into(), P2.into()],
            work: vec![42],
            deadline_ms: 100,
        },
    )
}

fn sent<'a>(actions: impl IntoIterator<Item = &'a ParticipantAction>) -> Vec<Body> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            ParticipantAction::Send { message, .. } => Some(message.body.clone()),
            _ => None,
        })
        .collect()
}

fn persisted(actions: &[ParticipantAction]) -> Vec<(ParticipantRecord, Durability)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ParticipantAction::Persist { record, durability } => {
                Some((record.clone(), *durability))
            }
            _ => None,
        })
        .collect()
}

fn coordinator_sends(actions: &[CoordinatorAction]) -> Vec<(&str, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Send { to, message } => Some((to.as_str(), message.kind())),
            _ => None,
        })
        .collect()
}

fn coordinator_forced(actions: &[CoordinatorAction]) -> usize {
    actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                CoordinatorAction::Persist {
                    durability: Durability::Forced(_),
                    ..
                }
            )
        })
        .count()
}

/// A read-only prepare votes READ-ONLY with nothing written; a duplicate
/// PREPARE gets the same vote without preparing again, and a peer that
/// asks hears READY (a yes whose outcome it does not know), never ABORTED.
#[test]
fn read_only_vote_writes_nothing_repeats_itself_and_tells_peers_ready() {
    let mut p = Participant::new(participant_config());
    let x = Xid(1);
    p.on_message(ms(0), prepare(x));
    p.drain_actions().for_each(drop);
    p.on_prepared_read_only(ms(1), x);
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(persisted(&actions).is_empty(), "{actions:?}");
    assert_eq!(sent(&actions), vec![Body::Vote(Vote::ReadOnly)]);
    p.on_message(ms(2), prepare(x));
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(sent(&actions), vec![Body::Vote(Vote::ReadOnly)]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ParticipantAction::Prepare { .. })));
    let ask = Message {
        xid: x,
        epoch: 1,
        from: P2.into(),
        body: Body::Inquire {
            prepared_ms_ago: Some(3),
        },
    };
    p.on_message(ms(3), ask);
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(sent(&actions), vec![Body::State(TxnState::Ready)]);
    assert!(persisted(&actions).is_empty());
}

/// After a restart, a peer's INQUIRE about an unknown xid whose PREPARE may
/// predate the restart is answered UNKNOWN (a READ-ONLY vote of the earlier
/// life left no record); in a first life the same question aborts it.
#[test]
fn after_a_restart_an_unknown_xid_is_not_aborted_for_a_peer() {
    let ask = |x| Message {
        xid: x,
        epoch: 1,
        from: P2.into(),
        body: Body::Inquire {
            prepared_ms_ago: Some(5),
        },
    };
    let started = |n| ParticipantRecord::Started {
        incarnation: n,
        addr: "here".into(),
    };
    let mut first = Participant::recover(participant_config(), [started(1)], ms(0));
    first.drain_actions().for_each(drop);
    first.on_message(ms(10), ask(Xid(2)));
    let actions: Vec<_> = first.drain_actions().collect();
    assert!(
        matches!(
            &persisted(&actions)[..],
            [(
                ParticipantRecord::Outcome {
                    decision: Decision::Abort,
                    ..
                },
                Durability::Forced(_)
            )]
        ),
        "a first life aborts it: {actions:?}"
    );
    let mut again = Participant::recover(participant_config(), [started(1), started(2)], ms(0));
    again.drain_actions().for_each(drop);
    again.on_message(ms(10), ask(Xid(2)));
    let actions: Vec<_> = again.drain_actions().collect();
    assert!(persisted(&actions).is_empty(), "{actions:?}");
    assert_eq!(sent(&actions), vec![Body::State(TxnState::Unknown)]);
    // Once this life is older than the PREPARE plus the margin, it may.
    again.on_message(ms(40_000), ask(Xid(3)));
    assert!(!persisted(&again.drain_actions().collect::<Vec<_>>()).is_empty());
}

/// The coordinator leaves a READ-ONLY voter out of the decision record and
/// of phase 2; with every branch READ-ONLY it forces nothing.
#[test]
fn coordinator_leaves_read_only_voters_out_of_the_decision_and_phase_two() {
    let mut c = coordinator();
    let x = Xid(4);
    c.begin(
        ms(0),
        x,
        vec![(P1.into(), vec![1]), (P2.into(), vec![2])],
        100,
    )
    .expect("begin");
    c.drain_actions().for_each(drop);
    c.on_message(ms(1), to_coordinator(&c, x, P2, Body::Vote(Vote::ReadOnly)));
    c.on_message(ms(1), to_coordinator(&c, x, P1, Body::Vote(Vote::Ready)));
    let actions: Vec<_> = c.drain_actions().collect();
    let record = actions.iter().find_map(|a| match a {
        CoordinatorAction::Persist {
            record: CoordinatorRecord::Decision { participants, .. },
            durability: Durability::Forced(t),
        } => Some((participants.clone(), *t)),
        _ => None,
    });
    let (participants, ticket) = record.expect("COMMIT forced");
    assert_eq!(participants, vec![P1.to_string()]);
    c.on_durable(ms(2), ticket);
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(coordinator_sends(&actions), vec![(P1, "COMMIT")]);

    let y = Xid(5);
    c.begin(
        ms(3),
        y,
        vec![(P1.into(), vec![1]), (P2.into(), vec![2])],
        100,
    )
    .expect("begin");
    c.drain_actions().for_each(drop);
    c.on_message(ms(4), to_coordinator(&c, y, P1, Body::Vote(Vote::ReadOnly)));
    c.on_message(ms(4), to_coordinator(&c, y, P2, Body::Vote(Vote::ReadOnly)));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(coordinator_forced(&actions), 0, "{actions:?}");
    assert!(coordinator_sends(&actions).is_empty());
    assert!(actions.contains(&CoordinatorAction::Outcome {
        xid: y,
        outcome: TxnOutcome::Committed
    }));
    assert!(!c.is_in_flight(y));
}

/// One-phase commit at the participant: the one-phase record is the only
/// forced write, the ACK leaves once it is durable, then the resource
/// commits and a lazy outcome record follows. Recovery from the record
/// alone commits without asking anyone.
#[test]
fn one_phase_branch_forces_its_record_acks_then_applies_and_recovers_committed() {
    let mut p = Participant::new(participant_config());
    let x = Xid(6);
    let request = to_participant(
        x,
        Body::OnePhase {
            work: vec![7],
            deadline_ms: 100,
        },
    );
    p.on_message(ms(0), request);
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(1), x, Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    let ticket = match &persisted(&actions)[..] {
        [(ParticipantRecord::OnePhase { xid, .. }, Durability::Forced(t))] if *xid == x => *t,
        other => panic!("expected the one-phase record forced, got {other:?}"),
    };
    assert!(sent(&actions).is_empty(), "nothing before it is durable");
    p.on_durable(ms(2), ticket);
    let actions: Vec<_> = p.drain_actions().collect();
    assert_eq!(sent(&actions), vec![Body::Ack]);
    assert!(actions.contains(&ParticipantAction::Commit { xid: x }));
    assert_eq!(p.state_of(x), TxnState::Committed);
    p.on_committed(ms(3), x, Ok(()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(matches!(
        &persisted(&actions)[..],
        [(
            ParticipantRecord::Outcome {
                decision: Decision::Commit,
                ..
            },
            Durability::Lazy
        )]
    ));
    assert!(sent(&actions).is_empty(), "one ACK only");

    let record = ParticipantRecord::OnePhase {
        xid: x,
        coordinator: C.into(),
        epoch: 1,
        work: vec![7],
        chain: Vec::new(),
    };
    let mut r = Participant::recover(participant_config(), [record], ms(10));
    let actions: Vec<_> = r.drain_actions().collect();
    assert!(actions.contains(&ParticipantAction::Restore {
        xid: x,
        work: vec![7]
    }));
    assert!(actions.contains(&ParticipantAction::Commit { xid: x }));
    assert!(sent(&actions).is_empty(), "it decides: no INQUIRE");
    assert!(r.in_doubt().is_empty());
}

/// One-phase commit at the coordinator: no record forced, no begin record,
/// ONE-PHASE COMMIT out; after the timeout it asks ONE-PHASE STATUS (never
/// aborts on its own) and reports what the branch says.
#[test]
fn coordinator_delegates_a_single_branch_and_asks_instead_of_aborting() {
    let mut c = coordinator();
    let x = Xid(7);
    c.begin(ms(0), x, vec![(P1.into(), vec![1])], 50)
        .expect("begin");
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(coordinator_sends(&actions), vec![(P1, "ONE-PHASE COMMIT")]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, CoordinatorAction::Persist { .. })));
    c.on_timer(ms(50), TimerKey::new(x, TimerKind::Votes));
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(coordinator_sends(&actions), vec![(P1, "ONE-PHASE STATUS")]);
    assert!(outcome_of(&actions).is_none(), "never aborts over its head");
    c.on_message(
        ms(51),
        to_coordinator(&c, x, P1, Body::State(TxnState::Committed)),
    );
    let actions: Vec<_> = c.drain_actions().collect();
    assert_eq!(outcome_of(&actions), Some(TxnOutcome::Committed));
    assert_eq!(coordinator_forced(&actions), 0);
    assert!(!c.is_in_flight(x));
}

/// The ticket of the one action, a forced ABORT outcome record.
fn forced_abort(actions: &[ParticipantAction]) -> PersistTicket {
    match &persisted(actions)[..] {
        [(
            ParticipantRecord::Outcome {
                decision: Decision::Abort,
                ..
            },
            Durability::Forced(t),
        )] => *t,
        other => panic!("expected a forced abort, got {other:?}"),
    }
}

fn outcome_of(actions: &[CoordinatorAction]) -> Option<TxnOutcome> {
    actions.iter().find_map(|a| match a {
        CoordinatorAction::Outcome { outcome, .. } => Some(outcome.clone()),
        _ => None,
    })
}

/// A branch asked about a one-phase commit it never received aborts it
/// durably before answering ABORTED; one that cannot commit votes ABORT
/// only once its abort is durable.
#[test]
fn one_phase_aborts_are_durable_before_anyone_hears_of_them() {
    let mut p = Participant::new(participant_config());
    let x = Xid(8);
    p.on_message(
        ms(0),
        to_participant(x, Body::OnePhaseStatus { sent_ms_ago: 20 }),
    );
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(sent(&actions).is_empty());
    let ticket = forced_abort(&actions);
    p.on_durable(ms(1), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![Body::State(TxnState::Aborted)]
    );

    let y = Xid(9);
    let request = to_participant(
        y,
        Body::OnePhase {
            work: vec![7],
            deadline_ms: 100,
        },
    );
    p.on_message(ms(2), request);
    p.drain_actions().for_each(drop);
    p.on_prepared(ms(3), y, Err("insufficient funds".into()));
    let actions: Vec<_> = p.drain_actions().collect();
    assert!(sent(&actions).is_empty(), "the vote waits for the record");
    let ticket = forced_abort(&actions);
    p.on_durable(ms(4), ticket);
    assert_eq!(
        sent(&p.drain_actions().collect::<Vec<_>>()),
        vec![Body::Vote(Vote::Abort {
            reason: "insufficient funds".into()
        })]
    );
}
