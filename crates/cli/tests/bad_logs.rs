//! "Bad input" on disk (issue 2): a torn last log record is dropped with a
//! warning and the process starts; damage before the tail, or a record that
//! does not decode, stops start-up with an error that says where.

mod common;

use common::*;
use concord_store::{FileLog, FileLogOptions, LogStore};
use std::io::Write;
use std::time::Duration;

/// A cluster whose participant 0 has a few committed transfers in its log,
/// then is killed.
async fn cluster_with_history() -> Cluster {
    let mut cluster = Cluster::start(2, 2, 100).await;
    let client = cluster.client().await;
    for _ in 0..3 {
        let r = client
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 5)
            .await
            .expect("runs");
        assert!(r.committed(), "{r:?}");
    }
    cluster.wait_settled(Duration::from_secs(5)).await;
    cluster.participant_proc(0).kill();
    cluster
}

fn log_file(cluster: &Cluster, i: usize) -> std::path::PathBuf {
    cluster.participants[i]
        .data_dir
        .join(concord_store::file_log::FILE_NAME)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_is_dropped_with_a_warning() {
    bounded(async {
        let mut cluster = cluster_with_history().await;
        // Half a record: a header announcing 50 bytes, and 2 of them.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(log_file(&cluster, 0))
            .expect("open log");
        file.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9, 9])
            .expect("append");
        drop(file);

        cluster.start_participant(0, &[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(85));
        let log = cluster.participant_proc(0).log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("log recovery") && l.contains("offset")),
            "no warning about the torn tail:\n{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_tail_stops_startup_naming_the_offset() {
    bounded(async {
        let mut cluster = cluster_with_history().await;
        // Flip a byte inside the first record's payload (the seed record,
        // right after the 12-byte file header and the 8-byte record header).
        let path = log_file(&cluster, 0);
        let mut bytes = std::fs::read(&path).expect("read log");
        bytes[12 + 8 + 1] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write log");

        cluster.start_participant(0, &[]);
        let status = cluster
            .participant_proc(0)
            .wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{status:?}");
        let log = cluster.participant_proc_log(0);
        assert!(
            log.contains("corrupt log at byte offset 12"),
            "error does not say where:\n{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_record_stops_startup_naming_it() {
    bounded(async {
        let mut cluster = cluster_with_history().await;
        let dir = cluster.participants[0].data_dir.clone();
        let (mut log, recovered) =
            FileLog::open(&dir, FileLogOptions::default()).expect("open the log");
        let index = recovered.records.len();
        log.append(&[&[0xff, 0xfe, 0xfd]]).expect("append");
        log.sync().expect("sync");
        drop(log);

        cluster.start_participant(0, &[]);
        let status = cluster
            .participant_proc(0)
            .wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{status:?}");
        let log = cluster.participant_proc_log(0);
        assert!(
            log.contains(&format!("record #{index} (3 bytes) does not decode")),
            "error does not name the record:\n{log}"
        );
    })
    .await;
}
