//! Linear 2PC with real processes and kill -9: the chain p0 → p1 → p2,
//! p2 deciding. The middle of the chain killed after its READY and before
//! passing the chain on, and the decider killed after its decision record
//! and before sending COMMIT back. Afterwards: one outcome everywhere, no
//! lock held, nothing in doubt, money conserved.

mod common;

use common::*;
use concord_client::{self as client, ClientError, Shape, TxnResult};
use concord_proto::TxnState;
use concord_server::failpoint;
use concord_server::wire::Outcome;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(10);

/// 30 from p0's acct-0 to p2's acct-1, with p1 moving 1 between its two
/// accounts (so it writes and holds locks), as a chain in that order.
async fn run_chain(cluster: &Cluster) -> tokio::task::JoinHandle<Result<TxnResult, ClientError>> {
    let client = cluster.client().await;
    let branches = client::kv_branches(&[
        ("p0".into(), "acct-0".into(), -30),
        ("p1".into(), "acct-0".into(), -1),
        ("p1".into(), "acct-1".into(), 1),
        ("p2".into(), "acct-1".into(), 30),
    ]);
    tokio::spawn(async move {
        client
            .transact_shaped(branches, Some(300), Shape::Linear)
            .await
    })
}

/// A cluster of three participants, `armed` killing itself at fail-point
/// `point`, running the chain; back once that participant is dead.
async fn chain_member_dies(
    armed: usize,
    point: &'static str,
) -> (
    Cluster,
    tokio::task::JoinHandle<Result<TxnResult, ClientError>>,
) {
    let mut cluster = Cluster::new(3, 2, 100);
    for i in 0..3 {
        let env: &[(&str, &str)] = if i == armed {
            &[(failpoint::ENV_FAILPOINT, point)]
        } else {
            &[]
        };
        cluster.start_participant(i, env);
    }
    cluster.start_coordinator(&[]);
    cluster.wait_all_listening().await;
    let pending = run_chain(&cluster).await;
    let name = format!("p{armed}");
    assert_killed(cluster.participant_proc(armed).wait_exit(EXIT), &name);
    (cluster, pending)
}

/// The middle member dies after its READY record and before passing the
/// chain on: the decider never hears of it. Asked by the coordinator, it
/// aborts for good; the first member and the restarted middle one ask it
/// (CHAIN INQUIRE) and abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_middle_member_killed_after_ready_the_chain_aborts() {
    bounded(async {
        let (mut cluster, pending) =
            chain_member_dies(1, failpoint::PARTICIPANT_AFTER_READY_DURABLE).await;
        let result = pending.await.expect("client task").expect("an outcome");
        assert!(
            matches!(&result.outcome, Outcome::Aborted { .. }),
            "{result:?}"
        );
        cluster.start_participant(1, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        // `status` names the chain and its decider.
        let status = status_text(&cluster, result.xid).await;
        assert!(
            status.contains("shape: linear: chain p0 → p1 → p2 (p2 decides)"),
            "{status}"
        );
        for r in &reports {
            assert_eq!(r.balance("acct-0"), Some(100));
            assert_eq!(r.balance("acct-1"), Some(100));
        }
        assert_conserved(&cluster, &reports);
        assert_state_everywhere(&states(&cluster, result.xid).await, TxnState::Aborted);
    })
    .await;
}

/// The decider dies after its decision record and before COMMIT went
/// back: the chain is committed. Restarted, it still is, holds its locks
/// until the chain confirms, and the members that ask commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_decider_killed_after_its_decision_the_chain_commits() {
    bounded(async {
        let (mut cluster, pending) =
            chain_member_dies(2, failpoint::PARTICIPANT_AFTER_COMMIT_DURABLE).await;
        // Down past the coordinator's timeout: it asks, nobody answers.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.start_participant(2, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(70));
        assert_eq!(reports[1].balance("acct-0"), Some(99));
        assert_eq!(reports[1].balance("acct-1"), Some(101));
        assert_eq!(reports[2].balance("acct-1"), Some(130));
        assert_conserved(&cluster, &reports);
        let xid = match pending.await.expect("client task") {
            Ok(result) => {
                assert_eq!(result.outcome, Outcome::Committed, "{result:?}");
                result.xid
            }
            Err(ClientError::OutcomeUnknown { xid, .. }) => xid,
            Err(e) => panic!("expected committed or unknown, got {e}"),
        };
        wait_state_everywhere(&cluster, xid, TxnState::Committed).await;
    })
    .await;
}
