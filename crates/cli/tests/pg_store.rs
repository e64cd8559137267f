//! `concord serve --store postgres://…` against a throwaway PostgreSQL
//! cluster (fsync on), as real processes: transfers commit with the log
//! in the database; kill -9 of the coordinator mid-load and a restart
//! from the database resolve everything with money conserved; and a
//! second instance of the same coordinator taking the log over fences
//! the first, which stops (fail-stop) at its next write instead of
//! deciding anything more, and whose half-begun transaction the new owner
//! aborts; and the database stopped: the coordinator answers "store
//! unavailable", decides nothing, and resumes by itself once it is back.

mod common;

use common::*;
use concord_pgcluster::{Cluster as PgCluster, ClusterOptions};
use std::time::Duration;

fn database() -> PgCluster {
    PgCluster::start(&ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{e} (install the server: apt-get install -y postgresql)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_log_in_postgresql_survives_kill_9_and_fences_a_stale_instance() {
    let mut db = database();
    bounded(async {
        let mut cluster = Cluster::new(2, 4, 1_000);
        cluster.coordinator_flags = vec!["--store".into(), db.dsn()];
        for i in 0..2 {
            cluster.start_participant(i, &[]);
        }
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let client = cluster.client().await;
        for i in 0..4 {
            let r = client
                .transfer(("p0", &format!("acct-{i}")), ("p1", "acct-0"), 5)
                .await
                .expect("transfer");
            assert_eq!(r.outcome, concord_api::Outcome::Committed);
        }
        let log = std::fs::read_to_string(cluster.log_path("coordinator")).unwrap_or_default();
        assert!(log.contains("PostgreSQL, log \"coordinator\""), "{log}");

        // kill -9 under load, then a restart from the database.
        let load = {
            let client = cluster.client().await;
            tokio::spawn(async move {
                for i in 0..200 {
                    let from = format!("acct-{}", i % 4);
                    if client
                        .transfer(("p0", &from), ("p1", "acct-1"), 1)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.coordinator_proc().kill();
        let _ = load.await;
        cluster.start_coordinator(&[]);
        wait_listening(&cluster.coordinator.addr).await;
        let reports = cluster.wait_settled(Duration::from_secs(20)).await;
        assert_conserved(&cluster, &reports);

        // A second instance under the same name takes the log over: the
        // first is fenced and stops at its next write.
        let first = cluster.coordinator.proc.take().expect("running");
        let first_addr = cluster.coordinator.addr.clone();
        cluster.coordinator.addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        cluster.coordinator.data_dir = cluster.dir.path().join("coordinator-b");
        cluster.start_coordinator(&[]);
        wait_listening(&cluster.coordinator.addr).await;
        let mut first = first;
        let stale = concord_client::Client::connect(&first_addr)
            .await
            .expect("connect");
        let refused = stale.transfer(("p0", "acct-0"), ("p1", "acct-2"), 1).await;
        assert!(refused.is_err(), "a fenced instance decided: {refused:?}");
        let status = first.wait_exit(Duration::from_secs(10));
        assert!(
            !status.success(),
            "the fenced instance must stop with an error"
        );
        let text = first.log_text();
        assert!(text.contains("fenced off"), "{text}");
        // Its PREPAREs went out before the write that failed: the
        // branches it left READY learn ABORTED from the new owner
        // (presumed abort: no decision of it is in the log). Then the new
        // owner decides.
        let reports = cluster.wait_settled(Duration::from_secs(20)).await;
        assert_conserved(&cluster, &reports);
        let client = cluster.client().await;
        let r = client
            .transfer(("p0", "acct-0"), ("p1", "acct-2"), 1)
            .await
            .expect("transfer through the new owner");
        assert_eq!(r.outcome, concord_api::Outcome::Committed);
        let reports = cluster.wait_settled(Duration::from_secs(20)).await;
        assert_conserved(&cluster, &reports);

        // The database down: the coordinator stops deciding but keeps
        // answering, "store unavailable", and resumes by itself once the
        // database is back; what was in flight is resolved.
        db.stop_immediate().expect("stop the database");
        let during = client.transfer(("p0", "acct-1"), ("p1", "acct-3"), 1).await;
        assert!(during.is_err(), "decided without its store: {during:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let answer = match concord_client::Client::connect(&cluster.coordinator.addr).await {
                Ok(c) => c.transfer(("p0", "acct-1"), ("p1", "acct-3"), 1).await,
                Err(e) => Err(e),
            };
            match answer {
                Err(e) if e.to_string().contains("store unavailable") => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "never said store unavailable: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        db.restart().expect("start the database again");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = match concord_client::Client::connect(&cluster.coordinator.addr).await {
                Ok(c) => c.transfer(("p0", "acct-2"), ("p1", "acct-3"), 1).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) if r.outcome == concord_api::Outcome::Committed => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "did not resume after the database came back: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let reports = cluster.wait_settled(Duration::from_secs(20)).await;
        assert_conserved(&cluster, &reports);
        let text = std::fs::read_to_string(cluster.log_path("coordinator")).unwrap_or_default();
        // It said why it stopped deciding, and took its log again after.
        let down = text
            .rfind("the coordinator over log coordinator stopped")
            .unwrap_or_else(|| panic!("never said the store failed: {text}"));
        assert!(
            text[down..].contains("the coordinator log failed"),
            "did not say why: {}",
            &text[down..]
        );
        assert!(
            text[down..].contains("took this instance's log"),
            "did not take its log again: {text}"
        );
    })
    .await;
}
