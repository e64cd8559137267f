//! The HA world (`concord-sim --ha`): several coordinator instances over
//! one shared store, with leases, takeovers, crashes, zombies (pauses
//! longer than the lease), clock rates that differ, partitions from the
//! store and store outages. Seeds pass, replay exactly, and each broken
//! HA rule is caught at its recorded seed (and that seed passes intact).
//! If a change to the HA world moves a first catching seed,
//! `cargo run --release -p concord-sim --features mutants -- --ha --mutant
//! all --seeds 2000` prints the new one.

use concord_proto::mutant::set as set_mutant;
use concord_sim::{run_ha_seed, HaOptions, Mutant};

#[test]
fn ha_seeds_decide_every_xid_once_and_heal() {
    let options = HaOptions::default();
    let mut takeovers = 0;
    let mut fenced = 0;
    let mut lookups_decided = 0;
    for seed in 0..300 {
        let report = run_ha_seed(seed, &options, false).unwrap_or_else(|f| panic!("{f}"));
        assert!(report.xids > 0 && report.committed > 0, "{report}");
        takeovers += report.takeovers;
        lookups_decided += report.lookups_decided;
        fenced += report.fenced_writes;
    }
    // The faults do bite: logs change hands, and stale writes are refused.
    assert!(takeovers > 100, "only {takeovers} takeovers");
    assert!(fenced > 0, "no write was ever fenced off");
    // Lookups at any instance do decide xids (no record: abort; a
    // COMMIT record: commit), so the rule that may say "no record" runs.
    assert!(
        lookups_decided > 100,
        "only {lookups_decided} lookups decided"
    );
}

#[test]
fn an_ha_seed_replays_exactly() {
    let options = HaOptions::default();
    for seed in 0..20 {
        let a = run_ha_seed(seed, &options, true);
        let b = run_ha_seed(seed, &options, true);
        assert_eq!(a, b, "seed {seed} ran differently twice");
        assert_eq!(
            a.expect("passes"),
            run_ha_seed(seed, &options, false).expect("passes"),
            "tracing changed seed {seed}"
        );
    }
}

/// (mutant, first seed that catches it, what the failure says).
const CAUGHT: [(Mutant, u64, &str); 5] = [
    (Mutant::UnfencedAppend, 1, "decided"),
    (Mutant::TakeoverSkipsRecovery, 0, "decided"),
    // Liveness: the healed world must give every instance its log back.
    (Mutant::NeverHandBack, 0, "does not run its own log"),
    // A lookup at any instance said "no record" (so the participant
    // aborted) for an xid its log then committed.
    (
        Mutant::LookupIgnoresUnknown,
        0,
        "decided Abort and then Commit",
    ),
    (
        Mutant::LookupTrustsStaleScan,
        3,
        "decided Abort and then Commit",
    ),
];

#[test]
fn each_broken_ha_rule_is_caught() {
    let options = HaOptions::default();
    for m in Mutant::HA {
        assert!(
            CAUGHT.iter().any(|(c, ..)| *c == m),
            "{} has no seed",
            m.name()
        );
    }
    for (mutant, seed, says) in CAUGHT {
        set_mutant(Some(mutant));
        let failure = run_ha_seed(seed, &options, false);
        let again = run_ha_seed(seed, &options, false);
        set_mutant(None);
        let failure = failure.expect_err(mutant.name());
        assert!(failure.what.contains(says), "{}: {failure}", mutant.name());
        assert_eq!(Err(failure), again, "{} did not replay", mutant.name());
        run_ha_seed(seed, &options, false)
            .unwrap_or_else(|f| panic!("seed {seed} fails without {}: {f}", mutant.name()));
    }
}
