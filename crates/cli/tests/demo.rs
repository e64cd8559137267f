//! `concord demo` itself, smaller: the main job must pass its own checks
//! (atomicity, validity, durability, termination, conservation, made from
//! the participants' durable logs) with a participant and the coordinator
//! killed -9 mid-run. Uses the real binary and real processes; with
//! `--postgres`, real PostgreSQL clusters too.

use std::process::Command;

/// Run `concord demo` with `extra` flags; its stdout, once it passed.
fn demo(extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "demo",
            "--transfers",
            "1500",
            "--clients",
            "16",
            "--seed",
            "7",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run concord demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    for check in [
        "atomicity: PASS",
        "validity: PASS",
        "durability: PASS",
        "termination: PASS",
        "conservation: PASS",
        "demo PASSED",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
    // Both kills happened and both processes reported what they recovered.
    assert_eq!(stdout.matches("kill -9").count(), 2, "{stdout}");
    assert!(stdout.contains("bank-b: recovery:"), "{stdout}");
    assert!(stdout.contains("coordinator: recovery:"), "{stdout}");
    stdout
}

#[test]
fn demo_passes_every_check_with_kill9_of_a_participant_and_the_coordinator() {
    let stdout = demo(&[]);
    assert!(
        stdout.contains("replayed from the participants' logs"),
        "{stdout}"
    );
}

#[test]
fn demo_with_postgres_participants_passes_every_check_and_leaves_nothing_prepared() {
    let stdout = demo(&["--postgres"]);
    for check in [
        "in the databases, by SQL",
        "nothing left prepared: PASS",
        "PostgreSQL (one throwaway cluster each, fsync on)",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}
