//! Determinism: the same seed gives the same run, byte for byte: the same
//! report (with the hash of every event) and the same trace. Runs of one
//! seed are compared within one process, where every `HashMap` gets fresh
//! random keys, so any iteration order leaking into a decision shows up.

use concord_sim::{run_seed, SimOptions};

#[test]
fn same_seed_same_trace_byte_for_byte() {
    let options = SimOptions {
        trace: true,
        ..SimOptions::default()
    };
    for seed in 0..40 {
        let a = run_seed(seed, &options);
        let b = run_seed(seed, &options);
        assert_eq!(a, b, "seed {seed} ran differently twice");
        let report = a.expect("seed passes");
        assert!(!report.trace.is_empty());
    }
}

#[test]
fn same_seed_same_report_and_trace_hash() {
    let options = SimOptions::default();
    for seed in 1000..1500 {
        let a = run_seed(seed, &options).expect("seed passes");
        let b = run_seed(seed, &options).expect("seed passes");
        assert_eq!(a, b, "seed {seed} ran differently twice");
    }
}

#[test]
fn tracing_does_not_change_the_run() {
    let quiet = SimOptions::default();
    let traced = SimOptions {
        trace: true,
        ..SimOptions::default()
    };
    for seed in 0..40 {
        let mut a = run_seed(seed, &traced).expect("seed passes");
        let b = run_seed(seed, &quiet).expect("seed passes");
        a.trace.clear();
        assert_eq!(a, b, "seed {seed}: tracing changed the run");
    }
}

#[test]
fn different_seeds_differ() {
    let options = SimOptions::default();
    let a = run_seed(1, &options).expect("seed passes");
    let b = run_seed(2, &options).expect("seed passes");
    assert_ne!(a.trace_hash, b.trace_hash);
}
