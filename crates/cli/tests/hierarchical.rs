//! Hierarchical 2PC with real processes and kill -9: the tree p0(p1,p2),
//! p0 the sub-coordinator of p1 and p2. The sub-coordinator killed after
//! its READY record and before the decision, and killed after the
//! decision reached it and before it reached its children. Afterwards:
//! one outcome everywhere, no lock held, nothing in doubt, money
//! conserved.

mod common;

use common::*;
use concord_client::{self as client, ClientError, Tree, TxnResult};
use concord_proto::TxnState;
use concord_server::failpoint;
use concord_server::wire::Outcome;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(10);

/// 30 from p1's acct-0 to p2's acct-1, with p0 moving 1 between its two
/// accounts (so the sub-coordinator writes and holds locks too).
async fn run_tree(cluster: &Cluster) -> tokio::task::JoinHandle<Result<TxnResult, ClientError>> {
    let client = cluster.client().await;
    let branches = client::kv_branches(&[
        ("p0".into(), "acct-0".into(), -1),
        ("p0".into(), "acct-1".into(), 1),
        ("p1".into(), "acct-0".into(), -30),
        ("p2".into(), "acct-1".into(), 30),
    ]);
    let tree = Tree::parse("p0(p1,p2)").expect("a tree");
    tokio::spawn(async move { client.transact_tree(branches, Some(300), Some(&tree)).await })
}

/// Three participants, p0 killing itself at fail-point `point`, running
/// the tree; back once p0 is dead.
async fn sub_coordinator_dies(
    point: &'static str,
) -> (
    Cluster,
    tokio::task::JoinHandle<Result<TxnResult, ClientError>>,
) {
    let mut cluster = Cluster::new(3, 2, 100);
    cluster.start_participant(0, &[(failpoint::ENV_FAILPOINT, point)]);
    cluster.start_participant(1, &[]);
    cluster.start_participant(2, &[]);
    cluster.start_coordinator(&[]);
    cluster.wait_all_listening().await;
    let pending = run_tree(&cluster).await;
    assert_killed(cluster.participant_proc(0).wait_exit(EXIT), "p0");
    (cluster, pending)
}

/// The sub-coordinator dies after its READY record (its children READY
/// too) and before its vote left: the coordinator times out and aborts.
/// Restarted in doubt, p0 asks, hears ABORTED, and passes it down; its
/// children, blocked meanwhile, abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchical_sub_coordinator_killed_after_its_ready_aborts_the_tree() {
    bounded(async {
        let (mut cluster, pending) =
            sub_coordinator_dies(failpoint::PARTICIPANT_AFTER_READY_DURABLE).await;
        let result = pending.await.expect("client task").expect("an outcome");
        assert!(
            matches!(&result.outcome, Outcome::Aborted { .. }),
            "{result:?}"
        );
        cluster.start_participant(0, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        for r in &reports {
            assert_eq!(r.balance("acct-0"), Some(100));
            assert_eq!(r.balance("acct-1"), Some(100));
        }
        assert_conserved(&cluster, &reports);
        assert_state_everywhere(&states(&cluster, result.xid).await, TxnState::Aborted);
    })
    .await;
}

/// The COMMIT reached the sub-coordinator, which dies before passing it
/// to its children: they stay READY. Restarted in doubt (its READY record
/// names them), p0 asks the coordinator, which still waits for its ACK,
/// hears COMMIT, passes it down, and commits once both children ACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchical_sub_coordinator_killed_after_the_decision_commits_the_tree() {
    bounded(async {
        let (mut cluster, pending) =
            sub_coordinator_dies(failpoint::PARTICIPANT_AFTER_COMMIT_DURABLE).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // While p0 is down: `status` shows the tree, the coordinator's
        // view of its root (READY, no ACK yet) and the children below it.
        let xid = wait_in_flight_xid(&cluster).await;
        let (code, status, stderr) = status_output(&cluster, xid).await;
        assert_eq!(code, Some(2), "p0 could not be asked: {status}\n{stderr}");
        assert!(stderr.contains("could not ask p0"), "{stderr}");
        assert!(
            status.contains("shape: hierarchical: tree p0(p1,p2)"),
            "{status}"
        );
        assert!(
            status.contains("\n  p0 (") && status.contains("voted READY yes, ACKed no"),
            "{status}"
        );
        for child in ["p1", "p2"] {
            let line = status
                .lines()
                .find(|l| l.starts_with(&format!("    {child} (")))
                .unwrap_or_else(|| panic!("{child} indented below p0: {status}"));
            assert!(line.contains("): READY"), "{status}");
        }
        cluster.start_participant(0, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(99));
        assert_eq!(reports[0].balance("acct-1"), Some(101));
        assert_eq!(reports[1].balance("acct-0"), Some(70));
        assert_eq!(reports[2].balance("acct-1"), Some(130));
        assert_conserved(&cluster, &reports);
        let result = pending.await.expect("client task").expect("an outcome");
        assert_eq!(result.outcome, Outcome::Committed, "{result:?}");
        wait_state_everywhere(&cluster, result.xid, TxnState::Committed).await;
        let status = status_text(&cluster, result.xid).await;
        assert!(
            status.contains("shape: hierarchical: tree p0(p1,p2)"),
            "{status}"
        );
        let p2 = status.lines().find(|l| l.starts_with("    p2 ("));
        assert!(p2.is_some_and(|l| l.contains("): COMMITTED")), "{status}");
    })
    .await;
}

/// The one xid the coordinator has in flight (the test's transaction).
async fn wait_in_flight_xid(cluster: &Cluster) -> concord_proto::Xid {
    let client = cluster.client().await;
    for _ in 0..200 {
        if let Some(xid) = client
            .in_flight()
            .await
            .ok()
            .and_then(|x| x.first().copied())
        {
            return xid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no transaction in flight at the coordinator");
}
