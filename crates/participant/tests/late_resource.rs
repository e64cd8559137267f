//! The key-value resource behind the test wrapper that answers late and
//! fails commits on purpose, driven through `ParticipantNode` by a tiny
//! hand-written driver: prepares and commits that finish later, and a
//! commit that fails N times, is retried with backoff, keeps its locks all
//! that time, applies exactly once, and is ACKed only at the end.

use concord_participant::delayed::{DelayConfig, Delayed};
use concord_participant::kv::{encode_work, seed_record, KvOp, KvStore};
use concord_participant::{ParticipantNode, ResourceOp};
use concord_proto::{
    Body, Decision, Durability, Message, ParticipantAction, ParticipantConfig, ParticipantNotice,
    ParticipantRecord, Time, TimerKey, TimerKind, Vote, Xid,
};

const ME: &str = "p1";
const C: &str = "coord";

fn node(delay: DelayConfig) -> ParticipantNode<Delayed<KvStore>> {
    let seed = seed_record(2, 100);
    let kv = KvStore::replay([&seed]).expect("seed replays");
    let config = ParticipantConfig {
        id: ME.into(),
        inquire_ms_initial: 1000,
        inquire_ms_max: 1000,
        finished_max: 100,
        apply_retry_ms_initial: 10,
        apply_retry_ms_max: 40,
        branches_in_flight_max: 100,
    };
    ParticipantNode::recover(config, [seed], Delayed::new(kv, delay), Time(0))
}

fn ms(v: u64) -> Time {
    Time(v * 1000)
}

fn message(xid: Xid, body: Body) -> Message {
    Message {
        xid,
        epoch: 1,
        from: C.into(),
        body,
    }
}

/// Everything the node asked its driver for, split up.
#[derive(Default, Debug)]
struct Io {
    sent: Vec<Body>,
    forced: Vec<(concord_proto::PersistTicket, ParticipantRecord)>,
    timers: Vec<(TimerKey, Time)>,
    failures: Vec<(u32, u64)>,
}

fn io(n: &mut ParticipantNode<Delayed<KvStore>>) -> Io {
    let mut io = Io::default();
    for action in n.drain_io() {
        match action {
            ParticipantAction::Send { message, .. } => io.sent.push(message.body),
            ParticipantAction::Persist {
                record,
                durability: Durability::Forced(t),
            } => io.forced.push((t, record)),
            ParticipantAction::SetTimer { key, at } => io.timers.push((key, at)),
            ParticipantAction::Notice(ParticipantNotice::ApplyFailed {
                attempt,
                retry_in_ms,
                ..
            }) => io.failures.push((attempt, retry_in_ms)),
            _ => {}
        }
    }
    io
}

/// Finish every operation the wrapper started (as a driver does when
/// their delay has passed).
fn finish_started(n: &mut ParticipantNode<Delayed<KvStore>>, now: Time) -> Vec<ResourceOp> {
    let started = n.resource_mut().take_started();
    let mut ops = Vec::new();
    for s in started {
        let result = n.resource_mut().finish(s.xid, s.op);
        n.on_resource_done(now, s.xid, s.op, result);
        ops.push(s.op);
    }
    ops
}

fn transfer() -> Vec<u8> {
    encode_work(&[
        KvOp {
            account: "acct-0".into(),
            delta: -30,
        },
        KvOp {
            account: "acct-1".into(),
            delta: 30,
        },
    ])
}

fn prepare(n: &mut ParticipantNode<Delayed<KvStore>>, xid: Xid, now: Time) {
    n.on_message(
        now,
        message(
            xid,
            Body::Prepare {
                participants: vec![ME.into()],
                work: transfer(),
                deadline_ms: 1000,
            },
        ),
    );
}

#[test]
fn a_late_prepare_votes_only_when_it_finishes_and_its_ready_record_is_durable() {
    let mut n = node(DelayConfig {
        prepare_ms: 50,
        ..DelayConfig::default()
    });
    prepare(&mut n, Xid(1), ms(0));
    let early = io(&mut n);
    assert!(
        early.sent.is_empty() && early.forced.is_empty(),
        "{early:?}"
    );
    assert!(n.resource().inner().locks().is_empty(), "nothing held yet");
    assert_eq!(finish_started(&mut n, ms(50)), vec![ResourceOp::Prepare]);
    let io1 = io(&mut n);
    assert_eq!(io1.forced.len(), 1, "READY record forced");
    assert_eq!(n.resource().inner().locks().len(), 2);
    n.on_durable(ms(51), io1.forced[0].0);
    assert_eq!(io(&mut n).sent, vec![Body::Vote(Vote::Ready)]);
}

#[test]
fn a_commit_failing_n_times_is_retried_keeps_its_locks_applies_once_and_acks_last() {
    let failures = 3;
    let mut n = node(DelayConfig {
        commit_ms: 5,
        commit_failures: failures,
        ..DelayConfig::default()
    });
    let xid = Xid(7);
    prepare(&mut n, xid, ms(0));
    let ready = io(&mut n);
    n.on_durable(ms(1), ready.forced[0].0);
    io(&mut n);
    n.on_message(ms(2), message(xid, Body::Decision(Decision::Commit)));
    let mut now = 2;
    let mut waits = Vec::new();
    for attempt in 1..=failures {
        now += 5;
        assert_eq!(finish_started(&mut n, ms(now)), vec![ResourceOp::Commit]);
        let step = io(&mut n);
        assert!(step.sent.is_empty(), "no ACK while the commit fails");
        assert!(step.forced.is_empty(), "no COMMITTED record either");
        assert_eq!(step.failures.len(), 1);
        assert_eq!(step.failures[0].0, attempt);
        waits.push(step.failures[0].1);
        // Locks held, nothing applied, while the commit keeps failing.
        let kv = n.resource().inner();
        assert_eq!(kv.locks().get("acct-0"), Some(&xid));
        assert_eq!(kv.balances()["acct-0"], 100);
        // Another transaction on the same account cannot prepare.
        prepare(&mut n, Xid(100 + u128::from(attempt)), ms(now));
        assert!(matches!(
            &io(&mut n).sent[..],
            [Body::Vote(Vote::Abort { reason })] if reason.contains("locked")
        ));
        let (key, at) = step.timers[0];
        assert_eq!(key, TimerKey::new(xid, TimerKind::Apply));
        now = at.0 / 1000;
        n.on_timer(at, key);
    }
    assert_eq!(waits, vec![10, 20, 40]);
    now += 5;
    assert_eq!(finish_started(&mut n, ms(now)), vec![ResourceOp::Commit]);
    let done = io(&mut n);
    assert!(done.sent.is_empty(), "ACK waits for the COMMITTED record");
    assert!(matches!(
        done.forced[..],
        [(
            _,
            ParticipantRecord::Outcome {
                decision: Decision::Commit,
                ..
            }
        )]
    ));
    let kv = n.resource().inner();
    assert_eq!(kv.balances()["acct-0"], 70, "applied exactly once");
    assert_eq!(kv.balances()["acct-1"], 130);
    assert!(kv.locks().is_empty());
    n.on_durable(ms(now + 1), done.forced[0].0);
    assert_eq!(io(&mut n).sent, vec![Body::Ack]);
}
