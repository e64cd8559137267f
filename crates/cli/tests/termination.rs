//! Cooperative termination (SPEC §1.6) between real processes, with the
//! coordinator killed (-9): READY branches ask each other for their state.
//! A COMMITTED peer lets the others commit without the coordinator; with
//! every branch READY they stay blocked and say why (`concord status
//! --participant`, `concord accounts`); when the coordinator comes back
//! everything resolves. After each: no branch in doubt, no lock held, and
//! the money conserved.

mod common;

use common::*;
use concord_client::{self as client, ClientError};
use concord_proto::TxnState;
use concord_server::failpoint;
use concord_server::wire::CoordinatorState;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(10);

/// Poll participant `i` until its state of `xid` is `want`.
async fn wait_branch(cluster: &Cluster, i: usize, xid: concord_proto::Xid, want: TxnState) {
    let deadline = Instant::now() + SETTLE;
    let addr = cluster.participant_listen_addr(i);
    loop {
        let state = client::branch_state(&addr, xid).await;
        if matches!(&state, Ok(s) if *s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "p{i}: state of {xid} is {state:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// p0 commits; p1 and p2 die (-9) on receiving COMMIT, before writing
/// their outcome; the coordinator is killed too. Restarted, p1 and p2 are
/// in doubt with nobody to ask but their peers (whose addresses their logs
/// kept): p0 says COMMITTED, and they commit with the coordinator down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_one_branch_committed_the_rest_commit_without_it() {
    bounded(async {
        let mut cluster = Cluster::new(3, 1, 100);
        let die_on_commit = [(
            failpoint::ENV_FAILPOINT,
            failpoint::PARTICIPANT_BEFORE_COMMIT_WRITE,
        )];
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &die_on_commit);
        cluster.start_participant(2, &die_on_commit);
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        let branches = client::kv_branches(&[
            ("p0".into(), "acct-0".into(), -10),
            ("p1".into(), "acct-0".into(), 4),
            ("p2".into(), "acct-0".into(), 6),
        ]);
        let result = cluster
            .client()
            .await
            .transact(branches)
            .await
            .expect("the coordinator decides");
        assert!(result.committed(), "{result:?}");
        let xid = result.xid;
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");
        assert_killed(cluster.participant_proc(2).wait_exit(EXIT), "p2");
        wait_branch(&cluster, 0, xid, TxnState::Committed).await;
        cluster.coordinator_proc().kill();

        cluster.start_participant(1, &[]);
        cluster.start_participant(2, &[]);
        for i in 1..3 {
            wait_listening(&cluster.participant_listen_addr(i)).await;
        }
        for i in 1..3 {
            wait_branch(&cluster, i, xid, TxnState::Committed).await;
        }
        assert!(!cluster.coordinator_proc().is_running(), "without it");
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(90));
        assert_eq!(reports[1].balance("acct-0"), Some(104));
        assert_eq!(reports[2].balance("acct-0"), Some(106));
        assert_conserved(&cluster, &reports);
        let log = cluster.participant_proc_log(1);
        assert!(
            log.contains("asking the coordinator and the peers"),
            "{log}"
        );

        // The coordinator, back, re-sends COMMIT and collects the ACKs.
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        wait_coordinator_state(&cluster, xid, &[CoordinatorState::Committed]).await;
    })
    .await;
}

/// Every vote is in and the coordinator dies (-9) before deciding: all
/// branches are READY. Asking each other tells them nothing, so they stay
/// blocked, holding their locks, and say so; when the coordinator comes
/// back it aborts (presumed abort) and everything resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_branches_ready_stay_blocked_say_why_and_resolve_when_the_coordinator_returns() {
    bounded(async {
        let mut cluster = Cluster::new(2, 1, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        cluster
            .start_coordinator(&[(failpoint::ENV_FAILPOINT, failpoint::COORDINATOR_AFTER_BEGIN)]);
        cluster.wait_all_listening().await;
        let result = cluster
            .client()
            .await
            .transfer_with_timeout(("p0", "acct-0"), ("p1", "acct-0"), 10, Some(300))
            .await;
        let xid = match result {
            Err(ClientError::OutcomeUnknown { xid, .. }) => xid,
            other => panic!("expected the coordinator to die, got {other:?}"),
        };
        assert_killed(cluster.coordinator_proc().wait_exit(EXIT), "coordinator");

        // Long enough for several rounds of asking the peers.
        let deadline = Instant::now() + SETTLE;
        let addrs: Vec<String> = (0..2).map(|i| cluster.participant_listen_addr(i)).collect();
        loop {
            let mut blocked = 0;
            for addr in &addrs {
                if let Ok((state, Some(why))) = client::branch_report(addr, xid).await {
                    assert_eq!(state, TxnState::Ready, "{why}");
                    if why.contains("peers asked") {
                        blocked += 1;
                    }
                }
            }
            if blocked == addrs.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the branches did not ask their peers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec!["status"];
        for addr in &addrs {
            args.extend(["--participant", addr.as_str()]);
        }
        let xid_text = xid.to_string();
        args.push(&xid_text);
        let output = run_cli(&args);
        let (stdout, stderr) = output_text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert_eq!(stdout.matches("READY and blocked").count(), 2, "{stdout}");
        assert!(
            stdout.contains("p0: READY") && stdout.contains("p1: READY"),
            "{stdout}"
        );
        assert!(
            stdout.contains("coordinator coordinator: no answer"),
            "{stdout}"
        );
        for i in 0..2 {
            let report = cluster.accounts(i).await;
            assert_eq!(report.in_doubt, vec![xid], "p{i}: {report:?}");
            assert_eq!(report.locks.len(), 1, "p{i} still holds its lock");
            assert!(report.waiting[0].1.contains("blocked"), "{report:?}");
        }

        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(100));
        assert_eq!(reports[1].balance("acct-0"), Some(100));
        assert_conserved(&cluster, &reports);
        for i in 0..2 {
            wait_branch(&cluster, i, xid, TxnState::Aborted).await;
        }
    })
    .await;
}
