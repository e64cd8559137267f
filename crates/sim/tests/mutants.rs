//! Each deliberately broken rule (concord-proto's test-only mutants) is
//! caught: replayed at the first seed of `concord-sim --mutant NAME` that
//! catches it, the run fails with the invariant named for that rule, and
//! the same seed passes with the rule intact. If a change to the simulator
//! moves the first catching seed, `concord-sim --features mutants --
//! --mutant all --seeds 20000` prints the new one.

use concord_proto::mutant::set as set_mutant;
use concord_sim::{run_seed, Mutant, SimOptions};

/// (mutant, first seed that catches it, the invariant that does).
const CAUGHT: [(Mutant, u64, &str); 11] = [
    (Mutant::AnswerBeforePersist, 6, "answers_persist_first"),
    (Mutant::VoteBeforeReadyDurable, 0, "persist_then_send"),
    (Mutant::CommitOnFirstReady, 0, "validity"),
    (Mutant::ForgetCommittedOnRecovery, 0, "atomicity"),
    (Mutant::SkipFundsCheck, 4, "no_overdraft"),
    (Mutant::SkipLockConflict, 0, "isolation"),
    (Mutant::CompactionDropsInDoubt, 19, "persist_then_send"),
    (Mutant::CompactionDropsUnended, 15, "persist_then_send"),
    (Mutant::AckBeforeApplied, 1, "termination"),
    (Mutant::AbandonFailedApply, 1, "durability"),
    (Mutant::DirectoryIgnoresMoves, 0, "durability"),
];

#[test]
fn every_mutant_is_listed_here() {
    for m in Mutant::ALL {
        assert!(
            CAUGHT.iter().any(|(c, _, _)| *c == m),
            "mutant {} has no entry in CAUGHT",
            m.name()
        );
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
