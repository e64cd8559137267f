//! The random simulation over many seeds (VOPR style): each seed builds
//! its own cluster, workload and fault schedule, runs the safety phase and
//! the liveness phase and checks every invariant. The seed ranges are split
//! over several tests so that the harness runs them in parallel; together
//! they cover `SEEDS_PER_TEST * 8` centralized seeds, and 2,000 seeds each
//! of linear and mixed (each transaction drawing its shape) runs.
//!
//! A failure prints the broken invariant, the seed, the xid and the command
//! that replays the run with a full trace.

use concord_sim::{run_seed, ShapeMode, SimOptions};

const SEEDS_PER_TEST: u64 = 1000;

fn run_range(part: u64) {
    run_shape(part, ShapeMode::Centralized);
}

fn run_shape(part: u64, shape: ShapeMode) {
    let options = SimOptions {
        shape,
        ..SimOptions::default()
    };
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

#[test]
fn linear_seeds_0() {
    run_shape(0, ShapeMode::Linear);
}

#[test]
fn linear_seeds_1() {
    run_shape(1, ShapeMode::Linear);
}

#[test]
fn hierarchical_seeds_0() {
    run_shape(0, ShapeMode::Hierarchical);
}

#[test]
fn hierarchical_seeds_1() {
    run_shape(1, ShapeMode::Hierarchical);
}

#[test]
fn mixed_seeds_0() {
    run_shape(0, ShapeMode::Mixed);
}

#[test]
fn mixed_seeds_1() {
    run_shape(1, ShapeMode::Mixed);
}
