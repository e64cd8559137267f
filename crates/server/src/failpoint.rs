//! Fail-points for crash tests: kill this process at an exact protocol step.
//!
//! `CONCORD_FAILPOINT=<name>` arms one fail-point; when the driver reaches
//! that step the process kills itself with SIGKILL (exactly what `kill -9`
//! does: no destructors, no flushing, the log file keeps only what was
//! written to the kernel). `CONCORD_FAILPOINT_SKIP=N` lets the first N hits
//! pass and fires on hit N+1.
//!
//! The environment is read once, by [`init_from_env`] at start-up; a hit on
//! an unarmed process is one load and one branch.
//!
//! | name | where it fires |
//! |---|---|
//! | `participant.before_ready_write` | prepare succeeded, before the READY (or one-phase) record is submitted to the log (site failure 1) |
//! | `participant.after_ready_durable` | READY record durable, before VOTE READY (or, in a linear chain, the CHAIN PREPARE to the next member) is sent (site failure 2) |
//! | `participant.before_commit_write` | COMMIT received and READY held, before the COMMITTED record is submitted (site failure 2, commit path) |
//! | `participant.after_commit_durable` | COMMITTED (or one-phase) record durable, before the ACK (or, in a linear chain, the COMMIT passed back) is sent |
//! | `coordinator.after_begin` | PREPAREs sent and every vote received, before the decision record is submitted (site failure 3) |
//! | `coordinator.after_decision_durable` | COMMIT record durable, before any COMMIT is sent (site failure 4) |
//! | `coordinator.after_end` | END record written to the log (site failure 5) |
//!
//! Never arm a fail-point in production: it exists for tests and demos.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable naming the armed fail-point.
pub const ENV_FAILPOINT: &str = "CONCORD_FAILPOINT";
/// Environment variable: how many hits pass before the fail-point fires.
pub const ENV_FAILPOINT_SKIP: &str = "CONCORD_FAILPOINT_SKIP";

pub const PARTICIPANT_BEFORE_READY_WRITE: &str = "participant.before_ready_write";
pub const PARTICIPANT_AFTER_READY_DURABLE: &str = "participant.after_ready_durable";
pub const PARTICIPANT_BEFORE_COMMIT_WRITE: &str = "participant.before_commit_write";
pub const PARTICIPANT_AFTER_COMMIT_DURABLE: &str = "participant.after_commit_durable";
pub const COORDINATOR_AFTER_BEGIN: &str = "coordinator.after_begin";
pub const COORDINATOR_AFTER_DECISION_DURABLE: &str = "coordinator.after_decision_durable";
pub const COORDINATOR_AFTER_END: &str = "coordinator.after_end";

/// Every fail-point name this build knows.
pub const ALL: &[&str] = &[
    PARTICIPANT_BEFORE_READY_WRITE,
    PARTICIPANT_AFTER_READY_DURABLE,
    PARTICIPANT_BEFORE_COMMIT_WRITE,
    PARTICIPANT_AFTER_COMMIT_DURABLE,
    COORDINATOR_AFTER_BEGIN,
    COORDINATOR_AFTER_DECISION_DURABLE,
    COORDINATOR_AFTER_END,
];

struct Armed {
    name: String,
    skip: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Read `CONCORD_FAILPOINT` / `CONCORD_FAILPOINT_SKIP` once. An unknown
/// name or a bad skip count is an error, so a typo in a test cannot
/// silently disarm it.
pub fn init_from_env() -> Result<(), String> {
    let name = match std::env::var(ENV_FAILPOINT) {
        Ok(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => {
            let _ = ARMED.set(None);
            return Ok(());
        }
    };
    if !ALL.contains(&name.as_str()) {
        return Err(format!(
            "{ENV_FAILPOINT}={name:?} is not a fail-point (known: {})",
            ALL.join(", ")
        ));
    }
    let skip = match std::env::var(ENV_FAILPOINT_SKIP) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{ENV_FAILPOINT_SKIP}={s:?} is not a count: {e}"))?,
        Err(_) => 0,
    };
    tracing::warn!(
        failpoint = %name,
        skip,
        "fail-point armed: this process will kill itself with SIGKILL at that step"
    );
    let _ = ARMED.set(Some(Armed {
        name,
        skip,
        hits: AtomicU64::new(0),
    }));
    Ok(())
}

/// Whether `name` is the armed fail-point (for callers that must prepare
/// something before the step, such as a post-write hook).
pub fn is_armed(name: &str) -> bool {
    matches!(ARMED.get(), Some(Some(armed)) if armed.name == name)
}

/// The driver reached step `name`: die here if it is armed and its skip
/// count is used up.
pub fn hit(name: &str) {
    let Some(Some(armed)) = ARMED.get() else {
        return;
    };
    if armed.name != name {
        return;
    }
    let hit = armed.hits.fetch_add(1, Ordering::SeqCst);
    if hit < armed.skip {
        return;
    }
    // eprintln goes straight to the unbuffered stderr, so the line is out
    // before the signal lands.
    eprintln!(
        "concord: fail-point {name} fired (hit {}): killing this process with SIGKILL",
        hit + 1
    );
    // SAFETY: getpid and kill have no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; should kill somehow fail, still stop dead.
    std::process::abort();
}
