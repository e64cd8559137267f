//! Coordinator HA chaos (SPEC §1.8), as real processes: three coordinator
//! instances (`serve --store postgres://… --lease 1s`) over one throwaway
//! PostgreSQL cluster (fsync on), three participants, and clients that
//! use any instance, under load. Faults, one after another while the load
//! runs:
//!
//! - kill -9 of an instance, several rounds (each killed instance is
//!   started again later and asks for its log back);
//! - SIGSTOP of an instance for three leases, then SIGCONT: the zombie,
//!   which must notice it lost its log and decide nothing more for it;
//! - the PostgreSQL server restarted (`pg_ctl restart -m immediate`).
//!
//! Afterwards: every transaction is resolved (no branch in doubt, no lock
//! held), money is conserved, every instance commits again (so each holds
//! its own log once more), no xid has two decisions (its participants'
//! states agree with each other and with the outcome its client heard,
//! for every transaction a client began, and no participant ever saw a
//! decision contradict its branch's), any instance's HTTP API answers for
//! a transaction any other began, and the takeover times (kill → the successor's
//! recovery of the dead instance's log, which decides what it left:
//! COMMITs re-sent, undecided ones aborted) are printed against the lease.

mod common;

use common::*;
use concord_pgcluster::{Cluster as PgCluster, ClusterOptions};
use concord_proto::{TxnState, Xid};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const INSTANCES: usize = 3;
const LEASE_MS: u64 = 1000;
const KILL_ROUNDS: usize = 5;

struct Instances {
    addrs: Vec<String>,
    /// Their HTTP APIs.
    https: Vec<String>,
    procs: Vec<Option<Proc>>,
    dsn: String,
}

impl Instances {
    fn name(i: usize) -> String {
        format!("c{i}")
    }

    fn start(&mut self, cluster: &Cluster, i: usize) {
        let (name, lease) = (Self::name(i), format!("{LEASE_MS}ms"));
        let args = cluster.serve_args(&[
            "--name",
            &name,
            "--listen",
            &self.addrs[i],
            "--http-listen",
            &self.https[i],
            "--store",
            &self.dsn,
            "--lease",
            &lease,
            // Longer than the zombie's pause, measured or not: votes
            // that reach it while it is stopped are still counted when it
            // resumes, so it would decide COMMIT if nothing stopped it.
            "--prepare-timeout-ms",
            "10000",
            "--prepare-timeout-ms-min",
            "10000",
        ]);
        let log = cluster.log_path(&name);
        if let Some(mut old) = self.procs[i].take() {
            old.kill();
        }
        self.procs[i] = Some(Proc::spawn(&Self::name(i), &args, &[], &log));
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.procs[i]
            .as_ref()
            .and_then(|p| p.pid())
            .expect("running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// What the clients saw: every outcome heard, by xid.
#[derive(Default)]
struct Seen {
    /// With the two participants of the transfer.
    outcomes: Vec<(Xid, concord_api::Outcome, [usize; 2])>,
    unknown: Vec<(Xid, [usize; 2])>,
    refused: u64,
}

/// One client: its transfers go round the instances, one each, so every
/// instance has transactions in flight when a fault hits it; an instance
/// that fails one (refused, store unavailable, lost) is connected again
/// for the next.
async fn load(
    worker: usize,
    addrs: Vec<String>,
    participants: usize,
    accounts: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut clients: Vec<Option<concord_client::Client>> = addrs.iter().map(|_| None).collect();
    let mut n: usize = worker * 7919;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let at = (worker + n) % addrs.len();
        if clients[at].is_none() {
            match concord_client::Client::connect(&addrs[at]).await {
                Ok(c) => clients[at] = Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let from_p = n % participants;
        let to_p = (n / participants + 1 + from_p) % participants;
        let to_p = if to_p == from_p {
            (to_p + 1) % participants
        } else {
            to_p
        };
        let from = format!("acct-{}", n % accounts);
        let to = format!("acct-{}", (n / 3) % accounts);
        let Some(c) = clients[at].as_ref() else {
            continue;
        };
        let result = c
            .transfer(
                (&format!("p{from_p}"), &from),
                (&format!("p{to_p}"), &to),
                1,
            )
            .await;
        let failed = {
            let mut seen = seen.lock().expect("seen");
            match result {
                Ok(r) => {
                    seen.outcomes.push((r.xid, r.outcome, [from_p, to_p]));
                    false
                }
                Err(concord_client::ClientError::OutcomeUnknown { xid, .. }) => {
                    seen.unknown.push((xid, [from_p, to_p]));
                    true
                }
                Err(_) => {
                    seen.refused += 1;
                    true
                }
            }
        };
        if failed {
            clients[at] = None;
        }
    }
}

/// When the first instance other than `dead` recovered `dead`'s log after
/// `after`, by the timestamps of their logs.
fn takeover_at(cluster: &Cluster, dead: usize, after: SystemTime) -> Option<SystemTime> {
    let marker = format!("log{{name={}", Instances::name(dead));
    (0..INSTANCES)
        .filter(|&i| i != dead)
        .flat_map(|i| {
            let text =
                std::fs::read_to_string(cluster.log_path(&Instances::name(i))).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains(&marker) && l.contains("recovery: "))
                .filter_map(|l| humantime::parse_rfc3339_weak(l.split_whitespace().next()?).ok())
                .filter(|t| *t > after)
                .collect::<Vec<_>>()
        })
        .min()
}

/// With CONCORD_KEEP_LOGS=DIR, the run's logs are copied there.
struct KeepLogs(std::path::PathBuf);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if let Some(to) = std::env::var_os("CONCORD_KEEP_LOGS") {
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(&self.0)
                .arg(to)
                .status();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_kills_a_zombie_and_a_database_restart_under_load() {
    let mut db = PgCluster::start(&ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{e} (install the server: apt-get install -y postgresql)"));
    let accounts = 8;
    let mut cluster = Cluster::new(3, accounts, 1_000);
    for i in 0..3 {
        cluster.start_participant(i, &[]);
    }
    let ports: Vec<String> = free_ports(2 * INSTANCES)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut instances = Instances {
        addrs: ports[..INSTANCES].to_vec(),
        https: ports[INSTANCES..].to_vec(),
        procs: (0..INSTANCES).map(|_| None).collect(),
        dsn: db.dsn(),
    };
    for i in 0..INSTANCES {
        instances.start(&cluster, i);
    }
    let _keep = KeepLogs(cluster.dir.path().to_path_buf());
    let test = async {
        for i in 0..3 {
            wait_listening(&cluster.participant_listen_addr(i)).await;
        }
        for addr in &instances.addrs {
            wait_listening(addr).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let workers: Vec<_> = (0..6)
            .map(|w| {
                tokio::spawn(load(
                    w,
                    instances.addrs.clone(),
                    3,
                    accounts,
                    stop.clone(),
                    seen.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // kill -9, several rounds: the successor's takeover is timed.
        let mut takeovers_ms = Vec::new();
        for round in 0..KILL_ROUNDS {
            let victim = round % INSTANCES;
            let killed_at = SystemTime::now();
            instances.procs[victim].as_mut().expect("running").kill();
            let deadline = Instant::now() + Duration::from_secs(20);
            let taken = loop {
                if let Some(at) = takeover_at(&cluster, victim, killed_at) {
                    break at;
                }
                assert!(
                    Instant::now() < deadline,
                    "nobody took over {}'s log within 20 s",
                    Instances::name(victim)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            takeovers_ms.push(
                taken
                    .duration_since(killed_at)
                    .unwrap_or_default()
                    .as_millis() as u64,
            );
            // Back: it asks for its log, which is handed back once idle.
            tokio::time::sleep(Duration::from_millis(300)).await;
            instances.start(&cluster, victim);
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }

        // The zombie: stopped for three leases, then resumed. Another
        // instance takes its log; once resumed it must stop deciding for
        // it, and its late writes fail.
        let zombie = 1;
        let paused_at = SystemTime::now();
        instances.signal(zombie, "-STOP");
        tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
        assert!(
            takeover_at(&cluster, zombie, paused_at).is_some(),
            "nobody took over the paused instance's log"
        );
        instances.signal(zombie, "-CONT");
        tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
        let text = std::fs::read_to_string(cluster.log_path("c1")).unwrap_or_default();
        assert!(
            text.contains("stopped deciding for log c1"),
            "the zombie did not notice it lost its log"
        );

        // The database restarted under everyone.
        db.restart().expect("pg_ctl stop -m immediate, then start");
        tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;

        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }
        // Every instance serves again, and the system still commits.
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in &instances.addrs {
            loop {
                let answer = match concord_client::Client::connect(addr).await {
                    Ok(c) => c.transfer(("p0", "acct-0"), ("p1", "acct-0"), 1).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(r) if r.committed() => {
                        let seen = &mut seen.lock().expect("seen").outcomes;
                        seen.push((r.xid, r.outcome, [0, 1]));
                        break;
                    }
                    other => assert!(
                        Instant::now() < deadline,
                        "{addr} does not commit after the faults: {other:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        let reports = cluster.wait_settled(Duration::from_secs(60)).await;
        // `status --instances` from the store: each instance holds its
        // own log again, under a live lease.
        let output = run_cli(&["status", "--instances", "--store", &instances.dsn, "--json"]);
        let (stdout, stderr) = output_text(&output);
        assert!(output.status.success(), "{stdout}{stderr}");
        let table: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        let logs = table["logs"].as_array().expect("logs");
        assert_eq!(logs.len(), INSTANCES, "{table}");
        for log in logs {
            assert_eq!(log["holder"], log["log"], "{table}");
            assert_eq!(log["expired"], serde_json::Value::Bool(false), "{table}");
        }
        let output = run_cli(&["status", "--instances", "--store", &instances.dsn]);
        let (text, _) = output_text(&output);
        for i in 0..INSTANCES {
            assert!(
                text.contains(&format!("log c{i} (its own): held by c{i}")),
                "{text}"
            );
        }
        let seen = std::mem::take(&mut *seen.lock().expect("seen"));
        let committed = seen
            .outcomes
            .iter()
            .filter(|(_, o, _)| *o == concord_api::Outcome::Committed)
            .count();
        assert!(
            committed > 100,
            "too little committed to mean anything: {committed}"
        );
        // One decision per xid: no participant contradicts what a client
        // was told, no two participants contradict each other, and none
        // saw a decision contradict its branch's (which it logs as a
        // peer's protocol violation, and does not act upon).
        let mut clients = Vec::new();
        for i in 0..3 {
            let addr = cluster.participant_listen_addr(i);
            clients.push(
                concord_client::Client::connect(&addr)
                    .await
                    .expect("participant"),
            );
        }
        let clients = &clients;
        let checks: Vec<(Xid, Option<concord_api::Outcome>, [usize; 2])> = seen
            .outcomes
            .iter()
            .map(|(x, o, w)| (*x, Some(o.clone()), *w))
            .chain(seen.unknown.iter().map(|(x, w)| (*x, None, *w)))
            .collect();
        let checked: Vec<_> = futures::stream::iter(checks)
            .map(|(xid, outcome, which)| async move {
                let mut states = Vec::new();
                for p in which {
                    states.push(clients[p].branch_state(xid).await.expect("branch state"));
                }
                (xid, outcome, states)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (xid, outcome, states) in &checked {
            assert!(
                !(states.contains(&TxnState::Committed) && states.contains(&TxnState::Aborted)),
                "{xid}: two decisions: {states:?}"
            );
            assert!(
                !states.contains(&TxnState::Ready),
                "{xid} in doubt: {states:?}"
            );
            let contradicting = match outcome {
                Some(concord_api::Outcome::Committed) => Some(TxnState::Aborted),
                Some(_) => Some(TxnState::Committed),
                None => None,
            };
            assert!(
                !matches!(contradicting, Some(c) if states.contains(&c)),
                "{xid}: the client heard {outcome:?}, participants say {states:?}"
            );
        }
        // Asked about an xid another instance began, an instance says it
        // has no record and that it answers only for its own log.
        let (xid, _, _) = seen.outcomes.last().expect("an outcome");
        let mut elsewhere = 0;
        for addr in &instances.addrs {
            let client = concord_client::Client::connect(addr)
                .await
                .expect("instance");
            let status = client.status(*xid).await.expect("status");
            if status.state == concord_api::CoordinatorState::NoRecord {
                assert!(status.detail.contains("shares its store"), "{status:?}");
                elsewhere += 1;
            }
        }
        assert!(
            elsewhere >= INSTANCES - 1,
            "{xid}: {elsewhere} instances without a record"
        );
        // Over HTTP, though, any instance answers for any of them: the
        // last transfers, one begun at each instance after the faults,
        // are committed at every instance's `GET /v1/transactions/{xid}`.
        for (xid, _, _) in &seen.outcomes[seen.outcomes.len() - INSTANCES..] {
            for http in &instances.https {
                let path = format!("/v1/transactions/{xid}");
                let response = common::http::call(http, "GET", &path, None, "").await;
                assert_eq!(response.status, 200, "{http}{path}: {}", response.body);
                assert_eq!(response.json()["state"], "committed", "{http}{path}");
            }
        }
        for i in 0..3 {
            let text = cluster.participant_proc_log(i);
            let violation = text.lines().find(|l| l.contains("protocol violation"));
            assert!(violation.is_none(), "p{i}: {violation:?}");
        }
        assert_conserved(&cluster, &reports);
        takeovers_ms.sort_unstable();
        println!(
            "HA chaos: {} outcomes heard ({committed} committed), {} unknown to their \
             client, {} refused or lost (clients moved on); takeover after kill -9 with a \
             {LEASE_MS} ms lease over {KILL_ROUNDS} kills: p50 {} ms, p99 {} ms, max {} ms \
             (all: {takeovers_ms:?})",
            seen.outcomes.len(),
            seen.unknown.len(),
            seen.refused,
            percentile(&takeovers_ms, 0.5),
            percentile(&takeovers_ms, 0.99),
            takeovers_ms.last().copied().unwrap_or(0),
        );
        // The lease bounds it: expiry, then a scan (a quarter lease), then
        // recovery.
        assert!(
            takeovers_ms.iter().all(|&t| t < 4 * LEASE_MS),
            "takeover far beyond the lease: {takeovers_ms:?}"
        );
    };
    tokio::time::timeout(Duration::from_secs(240), test)
        .await
        .expect("the HA chaos test exceeded 240 s");
}
