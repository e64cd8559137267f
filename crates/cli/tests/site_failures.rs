//! SPEC §1.5 site failures as real-process kill -9 tests.
//!
//! Each test arms one fail-point (`CONCORD_FAILPOINT`) in one process, runs
//! a transfer so that the process kills itself with SIGKILL at exactly that
//! step, restarts it from its data dir, and checks after recovery: the
//! expected outcome, no branch left in doubt, no lock held, and the money
//! conserved.

mod common;

use common::*;
use concord_client::{self as client, ClientError, TxnResult};
use concord_proto::{TxnState, Xid};
use concord_server::failpoint;
use concord_server::wire::{CoordinatorState, Outcome};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(10);

/// The xid of a transaction whose client either got the outcome or lost
/// the coordinator after `Begun`.
fn xid_of(result: &Result<TxnResult, ClientError>) -> Xid {
    match result {
        Ok(result) => result.xid,
        Err(ClientError::OutcomeUnknown { xid, .. }) => *xid,
        Err(e) => panic!("expected an xid, got {e}"),
    }
}

fn failpoint_env(name: &'static str) -> [(&'static str, &'static str); 1] {
    [(failpoint::ENV_FAILPOINT, name)]
}

/// The text a process logged since its last start.
fn last_run_log(proc: &Proc) -> String {
    let text = proc.log_text();
    match text.rfind("===== start") {
        Some(i) => text[i..].to_string(),
        None => text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_1_participant_crashes_before_ready_write() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &failpoint_env(failpoint::PARTICIPANT_BEFORE_READY_WRITE));
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        // p1 dies before its READY record exists: no vote arrives, the
        // coordinator times out and aborts.
        let result = cluster
            .client()
            .await
            .transfer_with_timeout(("p0", "acct-0"), ("p1", "acct-0"), 10, Some(300))
            .await
            .expect("the coordinator decides");
        let Outcome::Aborted { reason } = &result.outcome else {
            panic!("expected an abort, got {result:?}");
        };
        assert!(reason.contains("no vote within 300 ms from p1"), "{reason}");
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");
        assert!(cluster
            .participant_proc(1)
            .log_text()
            .contains("fail-point participant.before_ready_write fired"));

        // On restart p1 has no READY record: it aborts without asking.
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(100));
        assert_eq!(reports[1].balance("acct-0"), Some(100));
        assert_conserved(&cluster, &reports);
        let log = last_run_log(cluster.participant_proc(1));
        assert!(log.contains("recovery: 0 branches in doubt"), "{log}");
        let state = client::branch_state(&cluster.participants[1].addr, result.xid)
            .await
            .expect("branch state");
        assert!(
            matches!(state, TxnState::Unknown | TxnState::Aborted),
            "{state:?}"
        );

        // And the system goes on.
        let again = cluster
            .client()
            .await
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 10)
            .await
            .expect("runs");
        assert!(again.committed(), "{again:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_2_participant_crashes_after_ready_before_vote() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(
            1,
            &failpoint_env(failpoint::PARTICIPANT_AFTER_READY_DURABLE),
        );
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        // READY is durable at p1 but its vote never leaves: the
        // coordinator times out and aborts.
        let result = cluster
            .client()
            .await
            .transfer_with_timeout(("p0", "acct-1"), ("p1", "acct-1"), 25, Some(300))
            .await
            .expect("the coordinator decides");
        assert!(
            matches!(&result.outcome, Outcome::Aborted { reason } if reason.contains("no vote")),
            "{result:?}"
        );
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");

        // On restart p1 finds the READY record, takes its lock back, asks
        // the coordinator, and aborts.
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        let log = last_run_log(cluster.participant_proc(1));
        assert!(log.contains("recovery: 1 branches in doubt"), "{log}");
        assert_eq!(reports[0].balance("acct-1"), Some(100));
        assert_eq!(reports[1].balance("acct-1"), Some(100));
        assert_conserved(&cluster, &reports);
        let state = client::branch_state(&cluster.participants[1].addr, result.xid)
            .await
            .expect("branch state");
        assert_eq!(state, TxnState::Aborted);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_2_participant_crashes_after_ready_keeps_locks_and_commits() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(
            1,
            &failpoint_env(failpoint::PARTICIPANT_BEFORE_COMMIT_WRITE),
        );
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        // Both vote READY, the coordinator commits; p1 dies on receiving
        // COMMIT, before writing its outcome.
        let result = cluster
            .client()
            .await
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 10)
            .await
            .expect("the coordinator decides");
        assert!(result.committed(), "{result:?}");
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");

        // Take the coordinator away too, and p0 (which may have committed
        // already: cooperative termination would tell p1), so the
        // restarted p1 cannot learn the outcome yet: it must hold its lock
        // and stay in doubt.
        cluster.coordinator_proc().kill();
        cluster.participant_proc(0).kill();
        cluster.start_participant(1, &[]);
        wait_listening(&cluster.participants[1].addr).await;
        tokio::time::sleep(Duration::from_millis(400)).await; // several INQUIRE rounds
        let p1 = cluster.accounts(1).await;
        assert_eq!(p1.in_doubt, vec![result.xid], "{p1:?}");
        assert_eq!(p1.locks, vec![("acct-0".to_string(), result.xid)], "{p1:?}");
        assert_eq!(p1.balance("acct-0"), Some(100), "not committed yet");
        // (p0 may or may not have got its COMMIT before it was killed:
        // either way it finishes after the restart.)

        // The coordinator comes back, re-sends COMMIT: p1 commits.
        cluster.start_participant(0, &[]);
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(90));
        assert_eq!(reports[1].balance("acct-0"), Some(110));
        assert_conserved(&cluster, &reports);
        wait_coordinator_state(&cluster, result.xid, &[CoordinatorState::Committed]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_3_coordinator_crashes_before_decision() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        cluster.start_coordinator(&failpoint_env(failpoint::COORDINATOR_AFTER_BEGIN));
        cluster.wait_all_listening().await;

        // Both participants vote READY; the coordinator dies before any
        // decision record.
        let result = cluster
            .client()
            .await
            .transfer_with_timeout(("p0", "acct-0"), ("p1", "acct-1"), 10, Some(300))
            .await;
        assert!(
            matches!(result, Err(ClientError::OutcomeUnknown { .. })),
            "{result:?}"
        );
        let xid = xid_of(&result);
        assert_killed(cluster.coordinator_proc().wait_exit(EXIT), "coordinator");

        // READY participants wait and inquire; they never guess.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for i in 0..2 {
            let report = cluster.accounts(i).await;
            assert_eq!(report.in_doubt, vec![xid], "p{i}: {report:?}");
            assert_eq!(report.locks.len(), 1, "p{i}: {report:?}");
        }

        // On restart the coordinator aborts (presumed abort) and tells them.
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(100));
        assert_eq!(reports[1].balance("acct-1"), Some(100));
        assert_conserved(&cluster, &reports);
        for i in 0..2 {
            let state = client::branch_state(&cluster.participants[i].addr, xid)
                .await
                .expect("branch state");
            assert_eq!(state, TxnState::Aborted, "p{i}");
        }
        wait_coordinator_state(
            &cluster,
            xid,
            &[CoordinatorState::Aborted, CoordinatorState::NoRecord],
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_4_coordinator_crashes_after_decision_before_end() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        cluster.start_coordinator(&failpoint_env(
            failpoint::COORDINATOR_AFTER_DECISION_DURABLE,
        ));
        cluster.wait_all_listening().await;

        // The COMMIT record is durable but no COMMIT was sent.
        let result = cluster
            .client()
            .await
            .transfer(("p0", "acct-1"), ("p1", "acct-0"), 30)
            .await;
        assert!(
            matches!(result, Err(ClientError::OutcomeUnknown { .. })),
            "{result:?}"
        );
        let xid = xid_of(&result);
        assert_killed(cluster.coordinator_proc().wait_exit(EXIT), "coordinator");
        for i in 0..2 {
            let report = cluster.accounts(i).await;
            assert_eq!(report.in_doubt, vec![xid], "p{i}: {report:?}");
        }

        // On restart the coordinator re-sends COMMIT to everyone.
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-1"), Some(70));
        assert_eq!(reports[1].balance("acct-0"), Some(130));
        assert_conserved(&cluster, &reports);
        wait_coordinator_state(&cluster, xid, &[CoordinatorState::Committed]).await;
        let log = last_run_log(cluster.coordinator_proc());
        assert!(
            log.contains("recovery: 1 committed transactions to finish"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_5_coordinator_crashes_after_end() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        // The first END passes; the process dies after writing the second.
        cluster.start_coordinator(&[
            (failpoint::ENV_FAILPOINT, failpoint::COORDINATOR_AFTER_END),
            (failpoint::ENV_FAILPOINT_SKIP, "1"),
        ]);
        cluster.wait_all_listening().await;
        let client = cluster.client().await;
        let first = client
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 1)
            .await
            .expect("first transfer");
        assert!(first.committed());
        wait_coordinator_state(&cluster, first.xid, &[CoordinatorState::Committed]).await;
        let second = client.transfer(("p0", "acct-1"), ("p1", "acct-1"), 2).await;
        if let Ok(second) = &second {
            assert!(second.committed(), "{second:?}");
        }
        let xid = xid_of(&second);
        assert_killed(cluster.coordinator_proc().wait_exit(EXIT), "coordinator");

        // Nothing left to do after END: participants are already settled.
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-1"), Some(98));
        assert_eq!(reports[1].balance("acct-1"), Some(102));
        assert_conserved(&cluster, &reports);

        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        wait_coordinator_state(&cluster, xid, &[CoordinatorState::Committed]).await;
        let log = last_run_log(cluster.coordinator_proc());
        assert!(
            log.contains("recovery: 0 committed transactions to finish"),
            "{log}"
        );
        let reports = cluster.wait_settled(SETTLE).await;
        assert_conserved(&cluster, &reports);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crashes_after_commit_durable_before_ack() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(
            1,
            &failpoint_env(failpoint::PARTICIPANT_AFTER_COMMIT_DURABLE),
        );
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        let result = cluster
            .client()
            .await
            .transfer(("p0", "acct-0"), ("p1", "acct-1"), 7)
            .await
            .expect("decided");
        assert!(result.committed(), "{result:?}");
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");
        // The coordinator keeps re-sending COMMIT to p1, which is down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = cluster.client().await;
        let status = client.status(result.xid).await.expect("status");
        assert_eq!(status.state, CoordinatorState::CommittedWaitingForAcks);

        // Restarted, p1 finds its COMMITTED record and ACKs the resend.
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        wait_coordinator_state(&cluster, result.xid, &[CoordinatorState::Committed]).await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(93));
        assert_eq!(reports[1].balance("acct-1"), Some(107));
        assert_conserved(&cluster, &reports);
    })
    .await;
}

/// Logical node identity: p1 dies holding a COMMIT it has not carried out
/// and comes back on another port, under the same --name and data dir,
/// while the coordinator's --participant still names the old address. p1's
/// READY record names the coordinator by id and its log keeps where the
/// coordinator is: it inquires, commits, and says hello; the coordinator
/// follows it to the new address, keeps that across its own restart, and
/// new transactions reach p1 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_restarted_on_a_new_address_is_found_again() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        cluster.start_participant(
            1,
            &failpoint_env(failpoint::PARTICIPANT_BEFORE_COMMIT_WRITE),
        );
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let result = cluster
            .client()
            .await
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 10)
            .await
            .expect("the coordinator decides");
        assert!(result.committed(), "{result:?}");
        assert_killed(cluster.participant_proc(1).wait_exit(EXIT), "p1");

        // Back on a new port; the coordinator was told the old one.
        let old = cluster.participants[1].addr.clone();
        let new = format!("127.0.0.1:{}", free_ports(1)[0]);
        cluster.participants[1].addr = new.clone();
        cluster.start_participant(1, &[]);
        wait_listening(&new).await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[1].balance("acct-0"), Some(110), "p1 committed");
        wait_coordinator_state(&cluster, result.xid, &[CoordinatorState::Committed]).await;
        let log = cluster.coordinator_proc().log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("p1 moved from") && l.contains(&old) && l.contains(&new)),
            "the coordinator does not say p1 moved:\n{log}"
        );

        // The coordinator restarts with its stale --participant p1=OLD:
        // the new address came back from its log.
        cluster.coordinator_proc().kill();
        cluster.participants[1].addr = old.clone();
        cluster.start_coordinator(&[]);
        cluster.participants[1].addr = new.clone();
        wait_listening(&cluster.coordinator.addr).await;
        let client = cluster.client().await;
        let again = client
            .transfer(("p0", "acct-1"), ("p1", "acct-1"), 5)
            .await
            .expect("runs");
        assert!(again.committed(), "{again:?}");
        let status = client.status(again.xid).await.expect("status");
        assert!(
            status.branches.iter().any(|b| b.addr == new),
            "status names p1 at its new address: {status:?}"
        );
    })
    .await;
}

/// 10 from p0 to p1, with a short phase-1 timeout.
async fn ten_to_p1(cluster: &Cluster) -> TxnResult {
    cluster
        .client()
        .await
        .transfer_with_timeout(("p0", "acct-0"), ("p1", "acct-0"), 10, Some(300))
        .await
        .expect("the coordinator decides")
}

/// A participant restarted at a new address before it ever heard from the
/// coordinator knows no one to tell: transactions to it cannot reach it
/// (the coordinator's --participant names the old address). Given
/// `--coordinator NAME=ADDR`, it says hello there, and is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_moved_before_any_contact_is_found_with_its_coordinator_flag() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        cluster.start_participant(0, &[]);
        // The coordinator is told p1's first address, where p1 never is.
        cluster.start_coordinator(&[]);
        let new = format!("127.0.0.1:{}", free_ports(1)[0]);
        cluster.participants[1].addr = new.clone();
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        let lost = ten_to_p1(&cluster).await;
        assert!(
            matches!(&lost.outcome, Outcome::Aborted { reason } if reason.contains("no vote")),
            "{lost:?}"
        );

        // The operator tells it where the coordinator is.
        cluster.participants[1].extra_flags = vec![
            "--coordinator".into(),
            format!("coordinator={}", cluster.coordinator.addr),
        ];
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        let mut committed = None;
        for _ in 0..50 {
            let result = ten_to_p1(&cluster).await;
            if result.committed() {
                committed = Some(result);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(committed.is_some(), "p1 was never reached at {new}");
        let log = cluster.coordinator_proc().log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("p1 moved from") && l.contains(&new)),
            "the coordinator does not say p1 moved:\n{log}"
        );
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[1].balance("acct-0"), Some(110));
        assert_conserved(&cluster, &reports);
    })
    .await;
}
