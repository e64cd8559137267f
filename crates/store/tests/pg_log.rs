//! The PostgreSQL log store against a throwaway cluster (fsync on): the
//! same conformance suite as the file log, where a "machine crash" is the
//! database stopped with `pg_ctl stop -m immediate` (or, for odd seeds,
//! this process's connection dropped without a goodbye); then what only a
//! shared store has: fencing. Without the PostgreSQL server binaries the
//! test fails with the command that installs them.

use concord_pgcluster::{Cluster, ClusterOptions};
use concord_store::conformance::{self, Harness};
use concord_store::{LogStore, PgLog, StoreError};
use std::cell::RefCell;
use std::rc::Rc;

fn cluster() -> Rc<RefCell<Cluster>> {
    let cluster = Cluster::start(&ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{e} (install the server: apt-get install -y postgresql)"));
    Rc::new(RefCell::new(cluster))
}

struct PgHarness {
    cluster: Rc<RefCell<Cluster>>,
    name: String,
    log: Option<PgLog>,
}

impl PgHarness {
    fn open(&mut self) -> Vec<Vec<u8>> {
        self.log = None;
        let dsn = self.cluster.borrow().dsn();
        let (log, records) = PgLog::open(&dsn, &self.name).expect("open the log");
        self.log = Some(log);
        records
    }
}

impl Harness for PgHarness {
    fn store(&mut self) -> &mut dyn LogStore {
        if self.log.is_none() {
            self.open();
        }
        self.log.as_mut().expect("opened")
    }

    fn reopen(&mut self) -> Vec<Vec<u8>> {
        self.open()
    }

    fn crash(&mut self, seed: u64) -> Vec<Vec<u8>> {
        // The connection goes without a goodbye either way.
        self.log = None;
        if seed % 2 == 0 {
            let mut cluster = self.cluster.borrow_mut();
            cluster
                .restart()
                .unwrap_or_else(|e| panic!("restart: {e}\n{}", cluster.server_log()));
        }
        self.open()
    }
}

#[test]
fn the_postgresql_store_passes_the_conformance_suite_and_fences_stale_owners() {
    let cluster = cluster();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        PgHarness {
            cluster: Rc::clone(&cluster),
            name: format!("conformance-{n}"),
            log: None,
        }
    });

    // Fencing: a second open takes the log over; the first may not write
    // again (append or rewrite), and what it wrote before is kept.
    let dsn = cluster.borrow().dsn();
    let (mut first, records) = PgLog::open(&dsn, "fenced").expect("open");
    assert!(records.is_empty());
    first.append(&[b"one", b"two"]).expect("append");
    let (mut second, records) = PgLog::open(&dsn, "fenced").expect("take over");
    assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(second.epoch() > first.epoch());
    match first.append(&[b"stale"]) {
        Err(StoreError::Fenced { epoch, .. }) => assert_eq!(epoch, first.epoch() as u64),
        other => panic!("a stale owner's append must be fenced: {other:?}"),
    }
    assert!(
        matches!(first.rewrite(&[b"x"]), Err(StoreError::Poisoned { .. })),
        "fail-stop after being fenced"
    );
    second.append(&[b"three"]).expect("the new owner writes");
    // A stale owner's rewrite is fenced too (a third takes over).
    let (mut third, records) = PgLog::open(&dsn, "fenced").expect("take over again");
    assert_eq!(records.len(), 3);
    assert!(matches!(
        second.rewrite(&[b"gone"]),
        Err(StoreError::Fenced { .. })
    ));
    third.rewrite(&[b"compacted"]).expect("rewrite");
    let (_, records) = PgLog::open(&dsn, "fenced").expect("reopen");
    assert_eq!(records, vec![b"compacted".to_vec()]);

    // Logs of different names are apart.
    let (mut other, records) = PgLog::open(&dsn, "other").expect("open another");
    assert!(records.is_empty());
    other.append(&[b"mine"]).expect("append");
    let (_, records) = PgLog::open(&dsn, "fenced").expect("reopen");
    assert_eq!(records, vec![b"compacted".to_vec()]);

    // The database down: a clear error, then fail-stop.
    let (mut log, _) = PgLog::open(&dsn, "down").expect("open");
    cluster.borrow_mut().stop_immediate().expect("stop");
    match log.append(&[b"lost?"]) {
        Err(StoreError::Database { op, .. }) => assert_eq!(op, "append"),
        other => panic!("append with the database down: {other:?}"),
    }
    assert!(matches!(log.sync(), Err(StoreError::Poisoned { .. })));
}
