//! Runs the shared conformance suite (`concord_store::conformance`) on every
//! `LogStore` implementation in this crate.

use concord_store::conformance::{self, FileHarness, MemHarness};

#[test]
fn file_log_passes_the_conformance_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut case = 0;
    conformance::run_all(|| {
        case += 1;
        FileHarness::new(&root.path().join(format!("case-{case}")))
    });
}

#[test]
fn mem_log_passes_the_conformance_suite() {
    conformance::run_all(MemHarness::default);
}
