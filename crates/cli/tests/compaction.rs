//! Compaction between real processes (SPEC §1.10): servers that compact
//! their logs often still recover everything after kill -9, and their logs
//! hold only the live state.

mod common;

use common::*;
use concord_proto::codec::decode;
use concord_proto::{CoordinatorRecord, ParticipantRecord};
use concord_store::{FileLog, FileLogOptions};
use std::time::Duration;

const TRANSFERS: usize = 300;

fn log_records<R: serde::de::DeserializeOwned>(dir: &std::path::Path) -> Vec<R> {
    let (_log, recovered) = FileLog::open(dir, FileLogOptions::default()).expect("open log");
    recovered
        .records
        .iter()
        .map(|b| decode("log record", b).expect("record decodes"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_logs_survive_kill_9_and_hold_only_live_state() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut cluster = Cluster::new(2, 4, 1_000);
        let compact = ["--compact-after-records".to_string(), "20".to_string()];
        cluster.coordinator_flags.extend(compact.iter().cloned());
        for p in &mut cluster.participants {
            p.extra_flags.extend(compact.iter().cloned());
        }
        for i in 0..2 {
            cluster.start_participant(i, &[]);
        }
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;

        let client = cluster.client().await;
        let mut committed = 0;
        for i in 0..TRANSFERS {
            let from = format!("acct-{}", i % 4);
            let to = format!("acct-{}", (i + 1) % 4);
            let result = client
                .transfer(("p0", from.as_str()), ("p1", to.as_str()), 1)
                .await
                .expect("transfer");
            if result.outcome == concord_server::wire::Outcome::Committed {
                committed += 1;
            }
        }
        assert_eq!(committed, TRANSFERS, "no faults: every transfer commits");
        let before: Vec<_> = vec![cluster.accounts(0).await, cluster.accounts(1).await];

        // kill -9 everything, then look at the logs.
        cluster.coordinator_proc().kill();
        cluster.participant_proc(0).kill();
        cluster.participant_proc(1).kill();
        let coordinator: Vec<CoordinatorRecord> = log_records(&cluster.coordinator.data_dir);
        // Uncompacted: an epoch, then begin, decision and end for each of
        // the 300 transfers.
        assert!(
            coordinator.len() < 60,
            "the coordinator log was compacted: {} records",
            coordinator.len()
        );
        // A participant keeps every outcome of the last 60 s (so here all
        // of them) in its snapshot; what compaction drops is the READY
        // records and the seed's history. Its log starts from a snapshot.
        for i in 0..2 {
            let records: Vec<ParticipantRecord> = log_records(&cluster.participants[i].data_dir);
            match records.first() {
                Some(ParticipantRecord::Resource { body }) => {
                    let first: concord_participant::kv::KvRecord =
                        decode("kv record", body).expect("kv record");
                    assert!(
                        matches!(first, concord_participant::kv::KvRecord::Snapshot { .. }),
                        "p{i}'s log starts from a balance snapshot, not the seed: {first:?}"
                    );
                }
                other => panic!("p{i}'s log starts with {other:?}"),
            }
            let remembered: usize = records
                .iter()
                .map(|r| match r {
                    ParticipantRecord::Finished { outcomes } => outcomes.len(),
                    _ => 0,
                })
                .sum();
            assert!(remembered > 0, "p{i} keeps its finished outcomes");
        }

        // Restart from the compacted logs: the same balances, and the
        // system goes on working. The participants listen first: the
        // coordinator re-sends a recovered COMMIT at once, and a
        // participant that refused that connection is in reconnect backoff
        // for a few ms, during which the transfer's PREPARE would be
        // dropped and the transfer would abort after the 3 s prepare
        // timeout (a lost PREPARE, SPEC §1.5: correct, but not what this
        // test is about).
        for i in 0..2 {
            cluster.start_participant(i, &[]);
        }
        for i in 0..2 {
            wait_listening(&cluster.participant_listen_addr(i)).await;
        }
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let after: Vec<_> = vec![cluster.accounts(0).await, cluster.accounts(1).await];
        assert_eq!(before[0].balances, after[0].balances, "p0 after restart");
        assert_eq!(before[1].balances, after[1].balances, "p1 after restart");
        let client = cluster.client().await;
        let result = client
            .transfer(("p0", "acct-0"), ("p1", "acct-1"), 5)
            .await
            .expect("transfer after restart");
        assert_eq!(result.outcome, concord_server::wire::Outcome::Committed);
        let reports = cluster.wait_settled(Duration::from_secs(15)).await;
        assert_eq!(
            reports.iter().map(|r| r.total()).sum::<i64>(),
            cluster.total_seeded(),
            "money conserved across compactions and kill -9"
        );
    })
    .await
    .expect("test timed out");
}
