//! The CLI never hides the xid, as a new user meets it: `transfer`/`txn`
//! print it the moment the transaction has begun, so a timeout names the
//! transaction to check (with the real address in the hint); each way it
//! can end has its own exit code; `status --json` uses stable names, keeps
//! the votes and ACKs after the decision, and invents no branches for an
//! unknown xid; and a closed stdout is no panic.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn transfer(cluster: &Cluster, extra: &[&str]) -> std::process::Output {
    transfer_cli(
        &cluster.coordinator.addr,
        "p0:acct-0",
        "p1:acct-1",
        5,
        extra,
    )
}

fn json_status(cluster: &Cluster, xid: &str) -> (Option<i32>, serde_json::Value) {
    let coordinator = cluster.coordinator.addr.clone();
    let output = run_cli(&["status", "--coordinator", &coordinator, xid, "--json"]);
    let (stdout, stderr) = output_text(&output);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json ({e}): {stdout}\n{stderr}"));
    (output.status.code(), json)
}

/// A participant frozen (SIGSTOP) so the transaction cannot finish within
/// the CLI's --timeout-ms: the xid is out first, the exit code is 3 and
/// the hint names the real coordinator address. Thawed, it commits, and
/// `status --json` still shows who voted and ACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_times_out_still_names_its_xid() {
    bounded(async {
        let mut cluster = Cluster::start(2, 2, 100).await;
        let pid = cluster.participant_proc(1).pid().expect("p1 runs") as i32;
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let output = tokio::task::block_in_place(|| transfer(&cluster, &["--timeout-ms", "400"]));
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let (stdout, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
        let xid = stdout
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("xid "))
            .unwrap_or_else(|| panic!("the xid comes first: {stdout}"))
            .to_string();
        let hint = format!(
            "concord status --coordinator {} {xid}",
            cluster.coordinator.addr
        );
        assert!(stderr.contains(&hint), "{stderr}");
        assert!(!stderr.contains("ADDR"), "{stderr}");

        cluster.wait_settled(Duration::from_secs(10)).await;
        let (code, status) = tokio::task::block_in_place(|| json_status(&cluster, &xid));
        assert_eq!(code, Some(0), "{status}");
        assert_eq!(status["coordinator_state"], "committed", "{status}");
        for b in status["branches"].as_array().expect("branches") {
            assert!(
                ["p0", "p1"].contains(&b["participant"].as_str().unwrap_or("")),
                "{b}"
            );
            assert_eq!(b["voted_ready"], true, "kept after the decision: {b}");
            assert_eq!(b["acked"], true, "{b}");
            assert_eq!(b["participant_state"], "COMMITTED", "{b}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_status_of_an_unknown_xid() {
    bounded(async {
        let mut cluster = Cluster::start(2, 2, 100).await;
        tokio::task::block_in_place(|| {
            assert_eq!(transfer(&cluster, &[]).status.code(), Some(0), "committed");
            let coordinator = cluster.coordinator.addr.clone();
            let aborted = run_cli(&[
                "txn",
                "--coordinator",
                &coordinator,
                "--op",
                "p0:acct-0:-1000",
            ]);
            assert_eq!(aborted.status.code(), Some(1), "aborted");
            let unknown = run_cli(&["txn", "--coordinator", &coordinator, "--op", "zz:acct-0:1"]);
            assert_eq!(unknown.status.code(), Some(2), "not started");
            // No record: nothing invented, the participants only asked.
            let (code, status) = json_status(&cluster, "abc");
            assert_eq!(code, Some(0), "{status}");
            assert_eq!(status["coordinator_state"], "no_record", "{status}");
            assert_eq!(status["branches"], serde_json::json!([]), "{status}");
            assert_eq!(
                status["participants_asked"].as_array().map(Vec::len),
                Some(2)
            );
        });
        // A participant that cannot be asked: exit 2, saying which.
        cluster.participant_proc(1).kill();
        let output = tokio::task::block_in_place(|| {
            let coordinator = cluster.coordinator.addr.clone();
            run_cli(&["status", "--coordinator", &coordinator, "abc"])
        });
        let (_, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("could not ask p1"), "{stderr}");
    })
    .await;
}

/// `concord … | head`: the reader went away; the CLI ends without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_not_a_panic() {
    bounded(async {
        let cluster = Cluster::start(2, 2, 100).await;
        let coordinator = cluster.coordinator.addr.clone();
        let output = tokio::task::block_in_place(|| {
            let mut child = Command::new(BIN)
                .args(["status", "--coordinator", &coordinator, "--timeouts"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            drop(child.stdout.take());
            child.wait_with_output().expect("wait")
        });
        let (_, stderr) = output_text(&output);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_ne!(output.status.code(), Some(101), "{stderr}");
    })
    .await;
}
