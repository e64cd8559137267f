//! The random simulation over many seeds (VOPR style): each seed builds
//! its own cluster, workload and fault schedule, runs the safety phase and
//! the liveness phase and checks every invariant. The seed ranges are split
//! over several tests so that the harness runs them in parallel; together
//! they cover `SEEDS_PER_TEST * 8` seeds.
//!
//! A failure prints the broken invariant, the seed, the xid and the command
//! that replays the run with a full trace.

use concord_sim::{run_seed, SimOptions};

const SEEDS_PER_TEST: u64 = 1000;

fn run_range(part: u64) {
    let options = SimOptions::default();
    let start = part * SEEDS_PER_TEST;
    let mut failures = Vec::new();
    let mut committed = 0;
    for seed in start..start + SEEDS_PER_TEST {
        match run_seed(seed, &options) {
            Ok(report) => committed += report.committed_in_fact,
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SEEDS_PER_TEST} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A sweep that never commits anything checks nothing interesting.
    assert!(committed > SEEDS_PER_TEST, "only {committed} commits");
}

#[test]
fn seeds_0() {
    run_range(0);
}

#[test]
fn seeds_1() {
    run_range(1);
}

#[test]
fn seeds_2() {
    run_range(2);
}

#[test]
fn seeds_3() {
    run_range(3);
}

#[test]
fn seeds_4() {
    run_range(4);
}

#[test]
fn seeds_5() {
    run_range(5);
}

#[test]
fn seeds_6() {
    run_range(6);
}

#[test]
fn seeds_7() {
    run_range(7);
}
