//! One-phase commit with real processes and kill -9: a single-branch
//! transaction is decided by its branch (its forced one-phase record is the
//! commit point), so a crash of the branch on either side of that record,
//! or of the coordinator while it waits, must still end with one outcome,
//! no lock held and the money where the outcome says.

mod common;

use common::*;
use concord_client::{self as client, BranchRequest, ClientError};
use concord_participant::kv::{encode_work, KvOp};
use concord_proto::TxnState;
use concord_server::failpoint;
use concord_server::wire::{CoordinatorState, Outcome};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(10);

/// Move `amount` from acct-0 to acct-1, both at p0: one branch.
fn inside_p0(amount: i64) -> Vec<BranchRequest> {
    let ops = [
        KvOp {
            account: "acct-0".into(),
            delta: -amount,
        },
        KvOp {
            account: "acct-1".into(),
            delta: amount,
        },
    ];
    vec![BranchRequest {
        participant: "p0".into(),
        work: encode_work(&ops),
    }]
}

/// A coordinator and p0, armed to kill itself at fail-point `point`, running a
/// one-phase transfer of 30 inside p0 (its client waits in a task); back
/// once p0 is dead.
async fn branch_dies_at(
    point: &'static str,
) -> (
    Cluster,
    tokio::task::JoinHandle<Result<concord_client::TxnResult, ClientError>>,
) {
    let mut cluster = Cluster::new(1, 2, 100);
    cluster.start_participant(0, &[(failpoint::ENV_FAILPOINT, point)]);
    cluster.start_coordinator(&[]);
    cluster.wait_all_listening().await;
    let client = cluster.client().await;
    let pending =
        tokio::spawn(async move { client.transact_with_timeout(inside_p0(30), Some(200)).await });
    assert_killed(cluster.participant_proc(0).wait_exit(EXIT), "p0");
    (cluster, pending)
}

/// The branch dies after its one-phase record is durable and before its
/// ACK: it has committed. The coordinator asks it (ONE-PHASE STATUS) and
/// never aborts on its own; restarted, the branch commits from its record
/// and says COMMITTED, and the client is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_branch_killed_after_its_record_is_committed_after_restart() {
    bounded(async {
        let (mut cluster, pending) =
            branch_dies_at(failpoint::PARTICIPANT_AFTER_COMMIT_DURABLE).await;
        // Down for longer than the timeout: the coordinator keeps asking.
        tokio::time::sleep(Duration::from_millis(600)).await;
        cluster.start_participant(0, &[]);
        cluster.wait_all_listening().await;
        let result = pending.await.expect("client task").expect("an outcome");
        assert_eq!(result.outcome, Outcome::Committed, "{result:?}");
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(70));
        assert_eq!(reports[0].balance("acct-1"), Some(130));
        assert_conserved(&cluster, &reports);
        let state = client::branch_state(&cluster.participants[0].addr, result.xid)
            .await
            .expect("branch state");
        assert_eq!(state, TxnState::Committed);
        wait_coordinator_state(&cluster, result.xid, &[CoordinatorState::Committed]).await;
    })
    .await;
}

/// The branch dies after its prepare and before its one-phase record:
/// nothing is durable, so it never committed. Asked after its restart, it
/// aborts the transaction for good and the client is told ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_branch_killed_before_its_record_is_aborted_for_good() {
    bounded(async {
        let (mut cluster, pending) =
            branch_dies_at(failpoint::PARTICIPANT_BEFORE_READY_WRITE).await;
        cluster.start_participant(0, &[]);
        cluster.wait_all_listening().await;
        let result = pending.await.expect("client task").expect("an outcome");
        assert!(
            matches!(&result.outcome, Outcome::Aborted { .. }),
            "{result:?}"
        );
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(100));
        assert_eq!(reports[0].balance("acct-1"), Some(100));
        assert_conserved(&cluster, &reports);
        let state = client::branch_state(&cluster.participants[0].addr, result.xid)
            .await
            .expect("branch state");
        assert_eq!(state, TxnState::Aborted, "the abort is durable");
    })
    .await;
}

/// The coordinator dies while the branch decides (its decision record
/// is where it would log the branch's answer): the client loses it, the
/// branch has committed on its own record, and a restarted coordinator
/// has nothing to undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_during_a_one_phase_commit_leaves_the_branch_committed() {
    bounded(async {
        let mut cluster = Cluster::new(1, 2, 100);
        cluster.start_participant(0, &[]);
        cluster
            .start_coordinator(&[(failpoint::ENV_FAILPOINT, failpoint::COORDINATOR_AFTER_BEGIN)]);
        cluster.wait_all_listening().await;
        let result = cluster.client().await.transact(inside_p0(30)).await;
        let xid = match result {
            Err(ClientError::OutcomeUnknown { xid, .. }) => xid,
            other => panic!("expected the coordinator to die mid-transaction: {other:?}"),
        };
        assert_killed(cluster.coordinator_proc().wait_exit(EXIT), "coordinator");
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(70));
        assert_eq!(reports[0].balance("acct-1"), Some(130));
        assert_conserved(&cluster, &reports);
        let state = client::branch_state(&cluster.participants[0].addr, xid)
            .await
            .expect("branch state");
        assert_eq!(state, TxnState::Committed);
        // A new transaction goes through the restarted coordinator.
        let again = cluster
            .client()
            .await
            .transact(inside_p0(5))
            .await
            .expect("decided");
        assert!(again.committed(), "{again:?}");
    })
    .await;
}
