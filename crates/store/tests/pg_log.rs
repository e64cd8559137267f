//! The PostgreSQL log store against a throwaway cluster (fsync on): the
//! same conformance suite as the file log, where a "machine crash" is the
//! database stopped with `pg_ctl stop -m immediate` (or, for odd seeds,
//! this process's connection dropped without a goodbye); then what only a
//! shared store has: fencing. Without the PostgreSQL server binaries the
//! test fails with the command that installs them.

use concord_pgcluster::{Cluster, ClusterOptions};
use concord_store::conformance::{self, Harness};
use concord_store::{Acquired, LogStore, PgLeases, PgLog, Renewal, StoreError};
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

/// Leases (`PgLeases`, what `serve --store` runs on): granted, renewed and
/// compared by the database's clock; a takeover raises the epoch and the
/// old holder's writes fail even before anyone takes the log; hand-back.
#[test]
fn leases_are_granted_renewed_taken_over_and_handed_back_by_the_database_clock() {
    let cluster = cluster();
    let dsn = cluster.borrow().dsn();
    let http = |addr: &str| Some(addr.to_string());
    let mut a = PgLeases::connect(&dsn)
        .expect("connect a")
        .serving_http(http("127.0.0.1:7001"));
    let mut b = PgLeases::connect(&dsn)
        .expect("connect b")
        .serving_http(http("127.0.0.1:7002"));
    let lease = 500;
    let Acquired::Took { epoch: e1 } = a.acquire("a", "a", lease, None).expect("acquire") else {
        panic!("a new log is free");
    };
    let (mut log, records) = PgLog::open_leased(&dsn, "a", e1).expect("open leased");
    assert!(records.is_empty());
    log.append(&[b"one"]).expect("append under a live lease");

    // While the lease runs nobody else takes it, and a namesake that
    // started later (its last life at an older epoch) does not either.
    assert_eq!(b.adopt("a", "b", e1, lease).expect("adopt"), None);
    assert!(matches!(
        a.acquire("a", "a", lease, Some(e1 - 1)).expect("acquire"),
        Acquired::HeldBy { ref holder, .. } if holder == "a"
    ));
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(lease / 4));
        assert_eq!(
            a.renew("a", "a", e1, lease, 3).expect("renew"),
            Renewal::Held { wanted_by: None }
        );
    }
    log.append(&[b"two"]).expect("renewed: still ours");
    let rows = b.scan().expect("scan");
    let row = rows.iter().find(|r| r.log == "a").expect("row");
    assert!(!row.expired && row.in_flight == 3 && row.holder.as_deref() == Some("a"));
    assert_eq!(
        row.http,
        http("127.0.0.1:7001"),
        "where its holder serves HTTP"
    );

    // No renewal for longer than the lease: the lease ran out by the
    // database's clock. The holder's writes fail though nobody took the
    // log yet, and its renewal says so.
    std::thread::sleep(std::time::Duration::from_millis(lease + 200));
    assert!(matches!(
        log.append(&[b"late"]),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        a.renew("a", "a", e1, lease, 0).expect("renew"),
        Renewal::Lost {
            holder: Some("a".into()),
            epoch: e1
        }
    );
    let row = b
        .scan()
        .expect("scan")
        .into_iter()
        .find(|r| r.log == "a")
        .expect("row");
    assert!(row.expired && row.lease_left_ms < 0, "{row:?}");

    // Taken over at the epoch seen; a second adopter at that epoch loses.
    let e2 = b
        .adopt("a", "b", row.epoch, lease)
        .expect("adopt")
        .expect("taken");
    assert!(e2 > e1);
    assert_eq!(b.adopt("a", "c", row.epoch, lease).expect("adopt"), None);
    let http_of_a = |l: &mut PgLeases| {
        let rows = l.scan().expect("scan");
        rows.into_iter().find(|r| r.log == "a").and_then(|r| r.http)
    };
    assert_eq!(
        http_of_a(&mut a),
        http("127.0.0.1:7002"),
        "served by its adopter now"
    );
    let (mut adopted, records) = PgLog::open_leased(&dsn, "a", e2).expect("open adopted");
    assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(matches!(
        PgLog::open_leased(&dsn, "a", e1),
        Err(StoreError::Fenced { .. })
    ));
    adopted.append(&[b"three"]).expect("the adopter writes");

    // The log's instance is back: held by b, so it asks; b sees the ask
    // on its next renewal and hands the log back; a takes it (a higher
    // epoch) and b's writes fail.
    assert!(matches!(
        a.acquire("a", "a", lease, Some(e1)).expect("acquire"),
        Acquired::HeldBy { ref holder, .. } if holder == "b"
    ));
    a.want("a", "a").expect("want");
    assert_eq!(
        b.renew("a", "b", e2, lease, 1).expect("renew"),
        Renewal::Held {
            wanted_by: Some("a".into())
        }
    );
    assert!(b.hand_back("a", e2, "a", lease).expect("hand back"));
    assert_eq!(http_of_a(&mut a), None, "handed back: served nowhere");
    // Let go means fenced off at once, before a takes it.
    assert!(matches!(
        adopted.append(&[b"stale"]),
        Err(StoreError::Fenced { .. })
    ));
    let Acquired::Took { epoch: e3 } = a.acquire("a", "a", lease, Some(e1)).expect("acquire")
    else {
        panic!("handed back to a");
    };
    assert!(e3 > e2);
    assert!(matches!(
        PgLog::open_leased(&dsn, "a", e2),
        Err(StoreError::Fenced { .. })
    ));
    let (_, records) = PgLog::open_leased(&dsn, "a", e3).expect("open again");
    assert_eq!(records.len(), 3);
    assert!(matches!(
        b.renew("a", "b", e2, lease, 0).expect("renew"),
        Renewal::Lost { holder: Some(ref h), epoch } if h == "a" && epoch == e3
    ));
}
