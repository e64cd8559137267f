//! Each deliberately broken rule (concord-proto's test-only mutants) is
//! caught: replayed at the first seed of `concord-sim --mutant NAME` that
//! catches it, the run fails with the invariant named for that rule, and
//! the same seed passes with the rule intact. If a change to the simulator
//! moves the first catching seed, `concord-sim --features mutants --
//! --mutant all --seeds 20000` prints the new one.

mod courses;

use concord_participant::kv::KvOp;
use concord_proto::mutant::set as set_mutant;
use concord_proto::{Body, Decision, Message, TxnState, Vote, Xid};
use concord_sim::{
    run_seed, ClientOutcome, Fate, KeepUnsynced, MessageRule, Mutant, NodeId, ShapeMode, SimConfig,
    SimFailure, SimOptions, World,
};

/// (mutant, first seed that catches it, the invariant that does).
const CAUGHT: [(Mutant, u64, &str); 19] = [
    (Mutant::AnswerBeforePersist, 0, "answers_persist_first"),
    (Mutant::VoteBeforeReadyDurable, 0, "persist_then_send"),
    (Mutant::CommitOnFirstReady, 0, "validity"),
    (Mutant::ForgetCommittedOnRecovery, 12, "termination_agrees"),
    (Mutant::SkipFundsCheck, 2, "no_overdraft"),
    (Mutant::SkipLockConflict, 0, "isolation"),
    (Mutant::CompactionDropsInDoubt, 42, "persist_then_send"),
    (Mutant::CompactionDropsUnended, 15, "persist_then_send"),
    (Mutant::AckBeforeApplied, 1, "termination"),
    (Mutant::AbandonFailedApply, 1, "durability"),
    (Mutant::DirectoryIgnoresMoves, 0, "termination"),
    (Mutant::ForgottenCommitNotAcked, 20423, "termination"),
    (Mutant::AdmitBeyondLimit, 7, "admission"),
    (Mutant::WelcomeBeforeDurable, 84, "termination"),
    (Mutant::WatchdogRevote, 12, "atomicity"),
    (
        Mutant::PreparingPeerKeepsVoting,
        213,
        "answers_persist_first",
    ),
    (Mutant::ReadOnlySkipsVotes, 0, "validity"),
    (Mutant::OnePhaseAckBeforeDurable, 0, "persist_then_send"),
    (Mutant::RetryCommitsUndecided, 4, "validity"),
];

/// Mutants no random seed can reach yet, each caught by a script that
/// injects what only a later feature makes possible: (mutant, script, the
/// invariant that catches it).
type Script = fn() -> Result<(), SimFailure>;
const CAUGHT_BY_SCRIPT: [(Mutant, Script, &str); 5] = [
    (Mutant::AdoptOlderEpoch, stale_epoch_abort, "epoch"),
    (
        Mutant::WatchdogRevote,
        watchdog_revote,
        "termination_agrees",
    ),
    (
        Mutant::ForgottenPeerAborts,
        peer_forgot_a_commit,
        "termination_agrees",
    ),
    (
        Mutant::LateVoteAbortHonoured,
        late_vote_abort,
        "no_violation_notice",
    ),
    (
        Mutant::ReadOnlyForgottenAcrossRestart,
        read_only_voter_restarted,
        "termination_agrees",
    ),
];

/// The two scripts' common course: in a quiet two-participant world `w`,
/// a transfer p0 → p1 whose COMMIT to `slow` is held back `delay_ms`;
/// once `ready(w, xid)`, `message(w, xid)` is injected from `from` to
/// `to`; then the world settles and every invariant is checked.
fn inject_into_a_transfer(
    mut w: World,
    slow: NodeId,
    delay_ms: u64,
    ready: impl Fn(&World, Xid) -> bool,
    (from, to): (NodeId, NodeId),
    message: impl FnOnce(&World, Xid) -> Message,
) -> Result<(), SimFailure> {
    w.add_rule(MessageRule::new("COMMIT", Fate::DelayMs(delay_ms)).to(slow));
    let op = |account: &str, delta| KvOp {
        account: account.into(),
        delta,
    };
    let x = w.submit(vec![
        (0, vec![op("acct-0", -10)]),
        (1, vec![op("acct-1", 10)]),
    ]);
    w.run_until(100, |w| ready(w, x));
    let message = message(&w, x);
    w.inject(from, to, message);
    w.run_until_quiet(60_000);
    w.check_invariants()
}

/// A correct participant never votes ABORT after voting READY, so no seed
/// sends a VOTE ABORT after the decision; a misbehaving one could. Here p1
/// "votes ABORT" once the coordinator has decided COMMIT and p0 has
/// committed (p1's COMMIT is held back so the transaction is still in
/// flight).
fn late_vote_abort() -> Result<(), SimFailure> {
    let p1 = NodeId::Participant(1);
    inject_into_a_transfer(
        World::scripted(SimConfig::scripted(2)),
        p1,
        30,
        |w, x| {
            w.participant(0)
                .is_some_and(|p| p.core().state_of(x) == TxnState::Committed)
        },
        (p1, NodeId::Coordinator),
        |w, x| Message {
            xid: x,
            epoch: w.coordinator().map_or(1, |c| c.epoch()),
            from: p1.name(),
            body: Body::Vote(Vote::Abort {
                reason: "changed its mind".into(),
            }),
        },
    )
}

/// With one coordinator, a message from an older epoch never carries a
/// decision other than the current one, so no seed can tell whether the
/// epoch check works; after a takeover (coordinator HA) one will. Here the
/// older instance's ABORT is injected while p0 is READY under epoch 2.
fn stale_epoch_abort() -> Result<(), SimFailure> {
    let mut w = World::scripted(SimConfig::scripted(2));
    w.crash(NodeId::Coordinator, KeepUnsynced::All);
    w.restart(NodeId::Coordinator);
    let p0 = NodeId::Participant(0);
    inject_into_a_transfer(
        w,
        p0,
        20,
        |w, x| {
            w.participant(0)
                .is_some_and(|p| p.core().in_doubt().contains(&x))
        },
        (NodeId::Coordinator, p0),
        |_, x| Message {
            xid: x,
            epoch: 1,
            from: NodeId::Coordinator.name(),
            body: Body::Decision(Decision::Abort),
        },
    )
}

/// Cooperative termination with the coordinator's ABORT lost: READY peers
/// must stay blocked (random seeds rarely keep a coordinator down with
/// every participant READY; the script does).
fn watchdog_revote() -> Result<(), SimFailure> {
    let (w, _) = courses::abort_lost_then_coordinator_down(5_000);
    restart_and_settle(w)
}

/// A peer that forgot a commit (over a minute later): no random seed
/// runs that long with one branch cut off.
fn peer_forgot_a_commit() -> Result<(), SimFailure> {
    let (w, _) = courses::peer_forgot_a_commit();
    restart_and_settle(w)
}

/// A read-only voter that restarted, asked by READY peers (no random
/// seed lines up both lost COMMITs, the coordinator's crash and the
/// restart).
fn read_only_voter_restarted() -> Result<(), SimFailure> {
    let (w, _) = courses::read_only_voter_restarted();
    restart_and_settle(w)
}

fn restart_and_settle(mut w: World) -> Result<(), SimFailure> {
    w.restart(NodeId::Coordinator);
    w.run_until_quiet(120_000);
    w.check_invariants()
}

/// The rules of the other shapes, each broken by a mutant and caught in
/// a run of that shape: linear 2PC's persist-then-send rules (a member
/// passes the chain on only from a durable READY record; COMMIT goes back
/// only from a durable decider record), and hierarchical 2PC's "a
/// sub-coordinator votes READY only once all its children did".
const CAUGHT_SHAPED: [(Mutant, ShapeMode, u64, &str, &str); 3] = [
    (
        Mutant::VoteBeforeReadyDurable,
        ShapeMode::Linear,
        0,
        "persist_then_send",
        "CHAIN PREPARE passed on before the READY record was durable",
    ),
    (
        Mutant::OnePhaseAckBeforeDurable,
        ShapeMode::Linear,
        0,
        "persist_then_send",
        "COMMIT passed on before its decider's or coordinator's record was durable",
    ),
    (
        Mutant::SubtreeVotesBeforeChildren,
        ShapeMode::Hierarchical,
        0,
        "validity",
        "in a sub-coordinator's subtree, has no durable READY record",
    ),
];

#[test]
fn shape_rules_are_caught_by_their_checks_and_the_seed_passes_without_them() {
    for (mutant, shape, seed, invariant, detail) in CAUGHT_SHAPED {
        let options = SimOptions {
            shape,
            ..SimOptions::default()
        };
        set_mutant(Some(mutant));
        let broken = run_seed(seed, &options);
        set_mutant(None);
        match broken {
            Err(f) => {
                assert_eq!(f.invariant, invariant, "mutant {}: {f}", mutant.name());
                assert!(f.detail.contains(detail), "mutant {}: {f}", mutant.name());
            }
            Ok(_) => panic!(
                "mutant {} not caught at {} seed {seed}",
                mutant.name(),
                shape.name()
            ),
        }
        if let Err(f) = run_seed(seed, &options) {
            panic!("{} seed {seed} fails without any mutant: {f}", shape.name());
        }
    }
}

/// Rules whose breaking is safe but costly: no invariant is broken (an
/// abort is always allowed), so the course's outcome is what shows it.
const CAUGHT_BY_OUTCOME: [Mutant; 1] = [Mutant::ChildQuestionAbortsGathering];

/// A sub-coordinator that takes its child's question for a vote aborts a
/// tree that would commit: with the mutant the course ends ABORTED (p0
/// voted ABORT, citing the question), without it COMMITTED, and every
/// invariant holds either way.
#[test]
fn a_childs_question_taken_for_a_vote_aborts_the_tree_and_the_course_commits_without_it() {
    let run = |mutant: Option<Mutant>| {
        set_mutant(mutant);
        let (mut w, x) = courses::child_asks_while_its_parent_gathers();
        w.run_until_quiet(60_000);
        set_mutant(None);
        (w, x)
    };
    let (mut broken, x) = run(Some(Mutant::ChildQuestionAbortsGathering));
    assert_eq!(broken.client_outcome(x), ClientOutcome::Aborted);
    assert_eq!(
        broken.count_sent(courses::P0, courses::C, "VOTE ABORT", x),
        1,
        "p0 voted ABORT on the question"
    );
    if let Err(f) = broken.check_invariants() {
        panic!("an abort is allowed, so no invariant breaks: {f}");
    }
    let (mut intact, x) = run(None);
    assert_eq!(intact.client_outcome(x), ClientOutcome::Committed);
    if let Err(f) = intact.check_invariants() {
        panic!("the course fails without the mutant: {f}");
    }
}

#[test]
fn every_mutant_is_listed_here() {
    for m in Mutant::ALL {
        assert!(
            CAUGHT.iter().any(|(c, _, _)| *c == m)
                || CAUGHT_BY_SCRIPT.iter().any(|(c, _, _)| *c == m)
                || CAUGHT_SHAPED.iter().any(|(c, ..)| *c == m)
                || CAUGHT_BY_OUTCOME.contains(&m),
            "mutant {} has no entry in CAUGHT, CAUGHT_BY_SCRIPT, CAUGHT_SHAPED or \
             CAUGHT_BY_OUTCOME",
            m.name()
        );
    }
}

#[test]
fn each_scripted_mutant_is_caught_by_its_invariant_and_the_script_passes_without_it() {
    for (mutant, script, invariant) in CAUGHT_BY_SCRIPT {
        set_mutant(Some(mutant));
        let broken = script();
        set_mutant(None);
        match broken {
            Err(f) => assert_eq!(f.invariant, invariant, "mutant {}: {f}", mutant.name()),
            Ok(()) => panic!("mutant {} not caught by its script", mutant.name()),
        }
        if let Err(f) = script() {
            panic!(
                "the script of {} fails without the mutant: {f}",
                mutant.name()
            );
        }
    }
}

#[test]
fn each_mutant_is_caught_by_its_invariant_and_the_seed_passes_without_it() {
    let options = SimOptions::default();
    for (mutant, seed, invariant) in CAUGHT {
        set_mutant(Some(mutant));
        let broken = run_seed(seed, &options);
        set_mutant(None);
        match broken {
            Err(f) => assert_eq!(
                f.invariant,
                invariant,
                "mutant {} at seed {seed}: caught by another invariant: {f}",
                mutant.name()
            ),
            Ok(_) => panic!("mutant {} not caught at seed {seed}", mutant.name()),
        }
        if let Err(f) = run_seed(seed, &options) {
            panic!("seed {seed} fails without any mutant: {f}");
        }
    }
}
