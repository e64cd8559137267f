//! PostgreSQL participants with real processes and real databases
//! (SPEC §4 PostgreSQL, §8 dangling prepared transactions): a bank schema
//! spread over 3 throwaway PostgreSQL clusters, each behind a `concord
//! pg-participant`, and a coordinator. After every case, no row is left
//! in any `pg_prepared_xacts` and the money is conserved, both checked by
//! SQL directly.
//!
//! The clusters come from the PostgreSQL server binaries on the machine
//! (Debian's `postgresql` package); without them every test here fails
//! with the command that installs them.

mod common;

use common::*;
use concord_api::BranchRequest;
use concord_api::Outcome;
use concord_client::pg as sdk;
use concord_participant::pg::{PgStatement, PgWork};
use concord_pgcluster::{Cluster as PgCluster, ClusterOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const ACCOUNTS: usize = 20;
const BALANCE: i64 = 1_000;

/// 3 databases with the bank schema, and a concord cluster whose 3
/// participants are PostgreSQL participants for them.
struct PgBank {
    dbs: Vec<PgCluster>,
    cluster: Cluster,
}

fn start_databases(n: usize, options: &ClusterOptions) -> Vec<PgCluster> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || PgCluster::start(&options))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .expect("cluster thread")
                .unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL cluster: {e}"))
        })
        .collect()
}

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {dsn}: {e}"));
    tokio::spawn(connection);
    client
}

impl PgBank {
    async fn start() -> PgBank {
        let bank = PgBank::databases().await;
        bank.start_processes().await
    }

    /// The databases and the layout, with nothing of concord running.
    async fn databases() -> PgBank {
        let dbs = start_databases(3, &ClusterOptions::default());
        for db in &dbs {
            let client = connect(&db.dsn()).await;
            client
                .batch_execute(&format!(
                    "CREATE TABLE accounts (id text PRIMARY KEY, \
                     balance bigint NOT NULL CHECK (balance >= 0)); \
                     INSERT INTO accounts SELECT 'acct-' || i, {BALANCE} \
                     FROM generate_series(0, {}) AS i",
                    ACCOUNTS - 1
                ))
                .await
                .expect("create the bank schema");
        }
        let mut cluster = Cluster::new(3, ACCOUNTS, BALANCE);
        for (p, db) in cluster.participants.iter_mut().zip(&dbs) {
            p.pg_dsn = Some(db.dsn());
        }
        PgBank { dbs, cluster }
    }

    async fn start_processes(mut self) -> PgBank {
        for i in 0..3 {
            self.cluster.start_participant(i, &[]);
        }
        self.cluster.start_coordinator(&[]);
        self.cluster.wait_all_listening().await;
        self
    }

    async fn db(&self, i: usize) -> tokio_postgres::Client {
        connect(&self.dbs[i].dsn()).await
    }

    /// Total money over the 3 databases, by SQL.
    async fn total(&self) -> i64 {
        let mut total = 0;
        for i in 0..3 {
            let row = self
                .db(i)
                .await
                .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
                .await
                .expect("sum balances");
            total += row.get::<_, i64>(0);
        }
        total
    }

    async fn prepared(&self, i: usize) -> Vec<String> {
        self.db(i)
            .await
            .query("SELECT gid FROM pg_prepared_xacts ORDER BY gid", &[])
            .await
            .expect("read pg_prepared_xacts")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Wait until no database has a prepared transaction but those in
    /// `keep`, then check the money.
    async fn assert_settled(&self, keep: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut left = Vec::new();
            for i in 0..3 {
                left.extend(
                    self.prepared(i)
                        .await
                        .into_iter()
                        .filter(|g| !keep.contains(&g.as_str()))
                        .map(|g| format!("db{i}: {g}")),
                );
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                // What the participants said about them.
                let mut said = String::new();
                for i in 0..3 {
                    let log = self.cluster.participant_proc_log(i);
                    for gid in &left {
                        let xid = gid.split(':').nth(4).unwrap_or("?");
                        for line in log.lines().filter(|l| l.contains(xid)) {
                            said.push_str(&format!("p{i}: {line}\n"));
                        }
                    }
                }
                panic!("prepared transactions left dangling: {left:?}\n{said}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            self.total().await,
            3 * ACCOUNTS as i64 * BALANCE,
            "money is not conserved"
        );
    }
}

/// One branch of shipped SQL: add `delta` to `account` (taking out only
/// what is there: exactly one row must change, else VOTE ABORT).
fn shipped(participant: &str, account: &str, delta: i64) -> BranchRequest {
    let statement = if delta < 0 {
        PgStatement::new(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1",
            vec![json!(-delta), json!(account)],
        )
    } else {
        PgStatement::new(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            vec![json!(delta), json!(account)],
        )
    };
    BranchRequest {
        participant: participant.into(),
        work: PgWork {
            gids: vec![],
            statements: vec![statement.expect_rows(1)],
        }
        .encode(),
    }
}

fn transfer(from: (usize, usize), to: (usize, usize), amount: i64) -> Vec<BranchRequest> {
    vec![
        shipped(
            &format!("p{}", from.0),
            &format!("acct-{}", from.1),
            -amount,
        ),
        shipped(&format!("p{}", to.0), &format!("acct-{}", to.1), amount),
    ]
}

/// Random transfers between the databases by `workers` clients until
/// `stop`; errors (a participant being killed) are expected and skipped.
async fn load(addr: String, workers: usize, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = addr.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            let mut n = w as u64 * 7919;
            while !*stop.borrow() {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (a, b) = ((n >> 33) % 3, (n >> 40) % 3);
                let (x, y) = ((n >> 20) as usize % ACCOUNTS, (n >> 50) as usize % ACCOUNTS);
                let branches =
                    transfer((a as usize, x), (b as usize, y), 1 + (n >> 10) as i64 % 50);
                let Ok(client) = concord_client::Client::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if let Ok(Ok(result)) =
                    tokio::time::timeout(Duration::from_secs(5), client.transact(branches)).await
                {
                    committed += usize::from(result.outcome == Outcome::Committed);
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap_or(0);
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_sql_commits_everywhere_and_a_failed_expectation_aborts_everywhere() {
    bounded(async {
        let bank = PgBank::start().await;
        let client = bank.cluster.client().await;
        let result = client
            .transact(transfer((0, 1), (1, 2), 300))
            .await
            .unwrap();
        assert_eq!(result.outcome, Outcome::Committed);
        let balance = |i: usize, account: &'static str| {
            let bank = &bank;
            async move {
                bank.db(i)
                    .await
                    .query_one("SELECT balance FROM accounts WHERE id = $1", &[&account])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        };
        // The outcome comes back once the decision is durable; phase 2
        // reaches the databases just after.
        bank.assert_settled(&[]).await;
        assert_eq!(balance(0, "acct-1").await, BALANCE - 300);
        assert_eq!(balance(1, "acct-2").await, BALANCE + 300);
        // More than acct-1 holds: its UPDATE touches no row, so p0 votes
        // ABORT, and p1's prepared credit is rolled back.
        let result = client
            .transact(transfer((0, 1), (1, 2), BALANCE))
            .await
            .unwrap();
        let Outcome::Aborted { reason } = result.outcome else {
            panic!("an unmet row-count expectation must abort");
        };
        assert!(reason.contains("touched 0 rows"), "{reason}");
        // A statement error (no such table) aborts too, with the database's words.
        let bad = BranchRequest {
            participant: "p2".into(),
            work: PgWork {
                gids: vec![],
                statements: vec![PgStatement::new("UPDATE nowhere SET x = 1", vec![])],
            }
            .encode(),
        };
        let mut branches = transfer((0, 3), (1, 4), 1);
        branches.push(bad);
        let Outcome::Aborted { reason } = client.transact(branches).await.unwrap().outcome else {
            panic!("a failing statement must abort");
        };
        assert!(reason.contains("does not exist"), "{reason}");
        bank.assert_settled(&[]).await;
        assert_eq!(balance(0, "acct-3").await, BALANCE);
        assert_eq!(balance(1, "acct-2").await, BALANCE + 300);
        // A parameter that cannot be the placeholder's type fails in the
        // client library, before it is sent: the statements around it are
        // pipelined, so PREPARE TRANSACTION ran without it. The branch
        // votes ABORT and rolls its own gid back at once (reconciliation
        // must not be what cleans it up).
        let mistyped = BranchRequest {
            participant: "p2".into(),
            work: PgWork {
                gids: vec![],
                statements: vec![
                    PgStatement::new(
                        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                        vec![json!(5), json!("acct-6")],
                    ),
                    PgStatement::new(
                        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                        vec![json!("lots"), json!("acct-7")],
                    ),
                ],
            }
            .encode(),
        };
        let mut branches = transfer((0, 5), (1, 5), 1);
        branches.push(mistyped);
        let Outcome::Aborted { reason } = client.transact(branches).await.unwrap().outcome else {
            panic!("a mistyped parameter must abort");
        };
        assert!(
            reason.contains("statement 2 failed") && reason.contains("cannot be a int8"),
            "{reason}"
        );
        bank.assert_settled(&[]).await;
        assert_eq!(balance(2, "acct-6").await, BALANCE);
        // A statement failing in the database aborts its transaction, and
        // the pipelined PREPARE TRANSACTION is then a ROLLBACK: nothing to
        // roll back, and nothing to warn about.
        let failing = BranchRequest {
            participant: "p2".into(),
            work: PgWork {
                gids: vec![],
                statements: vec![PgStatement::new(
                    "UPDATE accounts SET balance = balance / $1 WHERE id = $2",
                    vec![json!(0), json!("acct-8")],
                )],
            }
            .encode(),
        };
        let mut branches = transfer((0, 8), (1, 8), 1);
        branches.push(failing);
        let Outcome::Aborted { reason } = client.transact(branches).await.unwrap().outcome else {
            panic!("a statement failing in the database must abort");
        };
        assert!(reason.contains("division by zero"), "{reason}");
        bank.assert_settled(&[]).await;
        let log = bank.cluster.participant_proc_log(2);
        assert!(!log.contains("reconciliation rolled back"), "{log}");
        assert!(!log.contains("cannot roll back"), "{log}");
        bank.assert_settled(&[]).await;
    })
    .await;
}

/// The main way in: the application's own SQL on its own connection,
/// prepared under a gid from concord and registered (the SDK helper);
/// a gid that was never prepared votes ABORT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_branches_prepared_by_the_application_commit_or_abort() {
    bounded(async {
        let bank = PgBank::start().await;
        let concord = bank.cluster.client().await;
        let txn = concord.open_txn(Some(20_000), None).await.unwrap();
        for (i, delta) in [(0usize, -70i64), (2, 70)] {
            let db = bank.db(i).await;
            db.batch_execute("BEGIN").await.unwrap();
            db.execute(
                "UPDATE accounts SET balance = balance + $1 WHERE id = 'acct-5'",
                &[&delta],
            )
            .await
            .unwrap();
            let gid = sdk::prepare_and_register(&concord, &txn, &format!("p{i}"), "app", &db)
                .await
                .unwrap();
            assert!(
                gid.starts_with(&format!("cc1:coordinator:p{i}:{}:app:", txn.xid)),
                "{gid}"
            );
        }
        let result = concord.commit(txn.xid).await.unwrap();
        assert_eq!(result.outcome, Outcome::Committed);
        bank.assert_settled(&[]).await;
        let row = bank
            .db(2)
            .await
            .query_one("SELECT balance FROM accounts WHERE id = 'acct-5'", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), BALANCE + 70);

        // Registered but never prepared: the participant votes ABORT.
        let txn = concord.open_txn(Some(20_000), None).await.unwrap();
        let gid = sdk::gid(&txn, "p1", "app").unwrap();
        concord
            .register(txn.xid, vec![sdk::branch("p1", vec![gid.clone()])])
            .await
            .unwrap();
        let Outcome::Aborted { reason } = concord.commit(txn.xid).await.unwrap().outcome else {
            panic!("a gid that is not prepared must vote ABORT");
        };
        assert!(reason.contains("not prepared"), "{reason}");
        // Someone else's gid (another participant's name) is refused.
        let txn = concord.open_txn(Some(20_000), None).await.unwrap();
        let other = sdk::gid(&txn, "p0", "app").unwrap();
        concord
            .register(txn.xid, vec![sdk::branch("p1", vec![other])])
            .await
            .unwrap();
        let Outcome::Aborted { reason } = concord.commit(txn.xid).await.unwrap().outcome else {
            panic!("another participant's gid must vote ABORT");
        };
        assert!(reason.contains("is for participant p0"), "{reason}");
        bank.assert_settled(&[]).await;
    })
    .await;
}

/// Kill -9 of a PostgreSQL participant at each step of its branch, under
/// load: after PREPARE TRANSACTION and before the READY record (an
/// orphan: rolled back at restart), after the READY record (in doubt:
/// resolved by inquiry), and between COMMIT PREPARED and the outcome
/// record (COMMIT PREPARED again finds it gone: a done commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_at_each_step_leaves_nothing_prepared() {
    bounded(async {
        let mut bank = PgBank::start().await;
        // Each step, and what the restarted participant's log must show.
        for (failpoint, evidence) in [
            (
                "participant.before_ready_write",
                "reconciliation rolled back",
            ),
            ("participant.after_ready_durable", "in doubt at restart"),
            ("participant.before_commit_write", "COMMIT PREPARED found"),
        ] {
            let log_before = bank.cluster.participant_proc_log(1).len();
            bank.cluster.start_participant(
                1,
                &[
                    ("CONCORD_FAILPOINT", failpoint),
                    ("CONCORD_FAILPOINT_SKIP", "5"),
                ],
            );
            wait_listening(&bank.cluster.participant_listen_addr(1)).await;
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let load = tokio::spawn(load(bank.cluster.coordinator.addr.clone(), 4, stop));
            wait_killed(bank.cluster.participant_proc(1), failpoint).await;
            bank.cluster.start_participant(1, &[]);
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop_tx.send(true).unwrap();
            let committed = load.await.unwrap();
            assert!(committed > 0, "{failpoint}: no transfer committed");
            bank.assert_settled(&[]).await;
            let log = bank.cluster.participant_proc_log(1);
            let log = &log[log_before..];
            // Recovery says how many branches it found READY.
            let in_doubt = log.lines().any(|l| {
                l.split("recovery: ")
                    .nth(1)
                    .is_some_and(|rest| !rest.starts_with("0 "))
            });
            assert!(
                log.contains(evidence) || (evidence == "in doubt at restart" && in_doubt),
                "{failpoint}: the restarted participant's log does not show {evidence:?}"
            );
        }
    })
    .await;
}

/// The application crashes after PREPARE TRANSACTION and before it
/// registers the branch: reconciliation rolls the orphan back once its
/// hold (lifetime + margin) ran out. A foreign tool's prepared
/// transaction is left alone, and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_rolled_back_after_its_hold_and_a_foreign_gid_is_left_alone() {
    bounded(async {
        let mut bank = PgBank::databases().await;
        let metrics_port = free_ports(1)[0];
        bank.cluster.participants[0].extra_flags =
            vec!["--http-listen".into(), format!("127.0.0.1:{metrics_port}")];
        let bank = bank.start_processes().await;
        let concord = bank.cluster.client().await;
        let db = bank.db(0).await;
        db.batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE id = 'acct-0'; PREPARE TRANSACTION 'foreign-tool-1'")
            .await
            .unwrap();
        let txn = concord.open_txn(Some(1_000), None).await.unwrap();
        let gid = sdk::gid(&txn, "p0", "crashed").unwrap();
        db.batch_execute(&format!(
            "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = 'acct-1'; \
             PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .unwrap();
        // ... and the application is gone. Within the hold it stays.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert!(bank.prepared(0).await.contains(&gid), "rolled back before its hold ran out");
        let hold = Duration::from_secs(1 + sdk::HOLD_MARGIN_S);
        let started = Instant::now();
        bank.assert_settled(&["foreign-tool-1"]).await;
        assert!(started.elapsed() < hold + Duration::from_secs(5));
        assert_eq!(bank.prepared(0).await, vec!["foreign-tool-1".to_string()]);
        let metrics = common::http::call(
            &format!("127.0.0.1:{metrics_port}"),
            "GET",
            "/metrics",
            None,
            "",
        )
        .await;
        let text = metrics.body.clone();
        assert!(text.contains("concord_pg_prepared_transactions{kind=\"unresolvable\"} 1"), "{text}");
        assert!(text.contains("concord_pg_reconciled_total{outcome=\"rolled_back\"} 1"), "{text}");
        let log = bank.cluster.participant_proc_log(0);
        assert!(log.contains("presumed abort"), "{log}");
        assert!(log.contains("not this participant's to resolve"), "{log}");
        // And in status, with its age (by the database's clock).
        let output = std::process::Command::new(BIN)
            .args(["status", "--participant", &bank.cluster.participants[0].addr, "--prepared", "--json"])
            .output()
            .expect("run concord status");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
        let status: serde_json::Value = serde_json::from_str(&text).expect("status --json");
        let report = &status[0]["prepared"];
        assert_eq!(report["unresolvable"], 1, "{report}");
        assert_eq!(report["rollbacks"], 1, "{report}");
        assert_eq!(report["unresolved"][0]["gid"], "foreign-tool-1", "{report}");
        assert_eq!(report["unresolved"][0]["owner"], "foreign", "{report}");
        assert!(report["unresolved"][0]["age_ms"].as_u64().is_some_and(|ms| ms >= 1_000), "{report}");
        // Asked of a server that is not a PostgreSQL participant: an error.
        let output = std::process::Command::new(BIN)
            .args(["status", "--participant", &bank.cluster.coordinator.addr, "--prepared"])
            .output()
            .expect("run concord status");
        assert_eq!(output.status.code(), Some(2));
        db.batch_execute("ROLLBACK PREPARED 'foreign-tool-1'").await.unwrap();
        bank.assert_settled(&[]).await;
    })
    .await;
}

/// A database without two-phase commit is refused at start-up, naming the
/// setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_transactions_zero_is_refused_with_the_setting_to_change() {
    bounded(async {
        let options = ClusterOptions {
            max_prepared_transactions: 0,
            ..ClusterOptions::default()
        };
        let db = start_databases(1, &options).pop().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args([
                    "pg-participant",
                    "--name",
                    "p0",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                ])
                .arg(dir.path())
                .args(["--dsn", &db.dsn()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let (_, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("max_prepared_transactions = 0"), "{stderr}");
        assert!(
            stderr.contains("ALTER SYSTEM SET max_prepared_transactions"),
            "{stderr}"
        );
    })
    .await;
}

/// PostgreSQL itself crashes (`pg_ctl stop -m immediate`) under load and
/// during phase 2, and comes back: COMMIT PREPARED is retried until it
/// succeeds, prepares vote ABORT meanwhile, nothing is lost. To be sure
/// a branch is in phase 2 while the databases are down, the coordinator
/// is first killed right after a COMMIT decision (its branches prepared
/// and READY), the databases stopped, and the coordinator restarted: its
/// COMMITs meet databases that are down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_immediately_during_phase_2_then_restarted() {
    bounded(async {
        let mut bank = PgBank::start().await;
        let (stop_tx, load) = bank
            .load_until_the_coordinator_dies_after_a_decision(20)
            .await;
        for db in bank.dbs.iter_mut() {
            tokio::task::block_in_place(|| db.stop_immediate()).expect("stop PostgreSQL");
        }
        bank.cluster.start_coordinator(&[]);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for db in bank.dbs.iter_mut() {
            tokio::task::block_in_place(|| db.restart()).expect("restart PostgreSQL");
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop_tx.send(true).unwrap();
        assert!(load.await.unwrap() > 0, "no transfer committed");
        bank.assert_settled(&[]).await;
        let phase2_failed = (0..3).any(|i| {
            bank.cluster
                .participant_proc_log(i)
                .contains("the resource failed to carry out Commit")
        });
        assert!(
            phase2_failed,
            "no COMMIT PREPARED failed while PostgreSQL was down"
        );
    })
    .await;
}

impl PgBank {
    /// Arm the coordinator to die (kill -9) right after its COMMIT record
    /// is durable, `skip` decisions in, start the load, and wait for it to
    /// die. Returns the load's stop switch and task.
    async fn load_until_the_coordinator_dies_after_a_decision(
        &mut self,
        skip: u32,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<usize>,
    ) {
        let failpoint = "coordinator.after_decision_durable";
        let skip = skip.to_string();
        self.cluster.start_coordinator(&[
            ("CONCORD_FAILPOINT", failpoint),
            ("CONCORD_FAILPOINT_SKIP", &skip),
        ]);
        wait_listening(&self.cluster.coordinator.addr).await;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let load = tokio::spawn(load(self.cluster.coordinator.addr.clone(), 4, stop));
        wait_killed(self.cluster.coordinator_proc(), failpoint).await;
        (stop_tx, load)
    }
}

/// Wait for a process armed with a fail-point to kill itself.
async fn wait_killed(proc: &mut Proc, failpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proc.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_killed(proc.wait_exit(Duration::from_secs(1)), failpoint);
}

/// The coordinator killed -9 after its COMMIT record is durable and
/// before any COMMIT left: the PostgreSQL branches stay prepared (READY,
/// in doubt) until the restarted coordinator sends COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_its_decision_leaves_nothing_prepared() {
    bounded(async {
        let mut bank = PgBank::start().await;
        let (stop_tx, load) = bank
            .load_until_the_coordinator_dies_after_a_decision(10)
            .await;
        // Its branches are prepared in the databases now, waiting.
        let mut prepared = 0;
        for i in 0..3 {
            prepared += bank.prepared(i).await.len();
        }
        assert!(
            prepared > 0,
            "the decided transaction's branches should be prepared"
        );
        bank.cluster.start_coordinator(&[]);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop_tx.send(true).unwrap();
        load.await.unwrap();
        bank.assert_settled(&[]).await;
    })
    .await;
}

/// Run the Python example (examples/pg-transfer/transfer.py: psycopg and
/// the HTTP API) with `args`; its status and stdout.
async fn python_transfer(args: Vec<String>) -> (Option<i32>, String) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/pg-transfer/transfer.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(&args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 {}: {e} (install: apt-get install python3)",
                script.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'psycopg'"),
        "the example needs psycopg: python3 -m pip install 'psycopg[binary]>=3.1,<4' (scripts/test does)"
    );
    eprintln!(
        "transfer.py {args:?}: {:?}\n{stdout}{stderr}",
        output.status.code()
    );
    (output.status.code(), stdout)
}

/// The application-branch flow from another language: the Python example
/// commits a transfer, aborts an overdraft (nothing changed), and when it
/// crashes between PREPARE TRANSACTION and registering its branches the
/// orphans are rolled back by reconciliation once their hold has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_psycopg_example_commits_aborts_and_its_crash_leaves_nothing_prepared() {
    bounded(async {
        let mut bank = PgBank::databases().await;
        let http = format!("127.0.0.1:{}", free_ports(1)[0]);
        bank.cluster.coordinator_flags = vec!["--http-listen".into(), http.clone()];
        let bank = bank.start_processes().await;
        wait_listening(&http).await;
        let args = |from: usize, amount: i64, extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = vec![
                "--concord".into(),
                format!("http://{http}"),
                "--from".into(),
                format!("p0={}", bank.dbs[0].dsn()),
                "--to".into(),
                format!("p1={}", bank.dbs[1].dsn()),
                "--from-account".into(),
                format!("acct-{from}"),
                "--to-account".into(),
                "acct-0".into(),
                "--amount".into(),
                amount.to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let balance = |db: usize, account: &'static str| {
            let bank = &bank;
            async move {
                bank.db(db)
                    .await
                    .query_one("SELECT balance FROM accounts WHERE id = $1", &[&account])
                    .await
                    .expect("read a balance")
                    .get::<_, i64>(0)
            }
        };

        let (status, out) = python_transfer(args(0, 100, &[])).await;
        assert_eq!(status, Some(0), "{out}");
        let result: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(result["outcome"], "committed", "{result}");
        bank.assert_settled(&[]).await;
        assert_eq!(
            (balance(0, "acct-0").await, balance(1, "acct-0").await),
            (900, 1100)
        );

        let (status, out) = python_transfer(args(1, 5_000, &[])).await;
        assert_eq!(status, Some(0), "{out}");
        let result: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(result["outcome"], "aborted", "{result}");
        assert!(
            result["reason"]
                .as_str()
                .is_some_and(|r| r.contains("below zero")),
            "{result}"
        );
        bank.assert_settled(&[]).await;
        assert_eq!(
            (balance(0, "acct-1").await, balance(1, "acct-0").await),
            (1000, 1100)
        );

        let (status, out) = python_transfer(args(
            2,
            10,
            &["--lifetime-ms", "1000", "--crash-after-prepare"],
        ))
        .await;
        assert_eq!(status, Some(3), "{out}");
        let orphans = [bank.prepared(0).await, bank.prepared(1).await].concat();
        assert_eq!(
            orphans.len(),
            2,
            "both branches prepared, none registered: {orphans:?}"
        );
        let hold = Duration::from_secs(1 + sdk::HOLD_MARGIN_S);
        let started = Instant::now();
        bank.assert_settled(&[]).await;
        assert!(started.elapsed() < hold + Duration::from_secs(5));
        assert_eq!(
            (balance(0, "acct-2").await, balance(1, "acct-0").await),
            (1000, 1100)
        );
        let log = bank.cluster.participant_proc_log(0);
        assert!(log.contains("presumed abort"), "{log}");
    })
    .await;
}
