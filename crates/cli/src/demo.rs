//! `concord demo`: the main job, end to end, with no set-up.
//!
//! Starts a coordinator and three participants as separate processes of this
//! same binary on 127.0.0.1, with their logs in a temporary directory; runs
//! thousands of random transfers from concurrent clients; kills -9 and
//! restarts one participant and then the coordinator in the middle of the
//! run; waits until nothing is in doubt; stops the processes and checks
//! atomicity, validity, durability, termination and conservation of money
//! from the participants' own durable logs (not from what the processes
//! say). It must never report a check as passed that it did not make.
//!
//! With `--postgres` the participants are `concord pg-participant`s, one
//! per throwaway PostgreSQL cluster ([`crate::pgbank`]), and every
//! transfer is shipped SQL. The same kills, the same checks from the
//! participants' logs, and two more from the databases, by SQL: money is
//! conserved, and no prepared transaction is left in `pg_prepared_xacts`.

use crate::pgbank::{shipped_work, PgBank};
use crate::procs::{
    coordinator_args, free_ports, participant_args, pg_participant_args, wait_listening, Proc,
};
use anyhow::{bail, Context};
use concord_api::{BranchRequest, Outcome};
use concord_client::{Client, ClientError};
use concord_participant::kv::KvOp;
use concord_participant::kv::KvStore;
use concord_proto::codec::decode;
use concord_proto::{Decision, ParticipantRecord, Xid};
use concord_store::{FileLog, FileLogOptions};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Transfers to run in all.
    pub transfers: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Accounts per participant.
    pub accounts: usize,
    /// Starting balance of every account.
    pub balance: i64,
    /// Keep the processes' data here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Seed of the random workload.
    pub seed: u64,
    /// The concord binary to start the processes from.
    pub exe: PathBuf,
    /// PostgreSQL participants on throwaway clusters instead of key-value
    /// ones.
    pub postgres: bool,
}

/// Names of the participants the demo starts.
const PARTICIPANTS: [&str; 3] = ["bank-a", "bank-b", "bank-c"];
/// The participant that is killed -9 during the run.
const VICTIM: usize = 1;
/// How long a killed process stays down before it is restarted.
const DOWN_MS: u64 = 400;
/// How long the demo waits for in-doubt branches to resolve at the end.
const QUIESCE_TIMEOUT_S: u64 = 60;

/// What the clients saw.
#[derive(Default)]
struct Tally {
    committed: Vec<Xid>,
    aborted: BTreeMap<String, usize>,
    unknown: Vec<Xid>,
    not_started: usize,
}

/// Group abort reasons for the summary ("account acct-3 is locked by …" →
/// "lock conflict").
pub(crate) fn reason_class(reason: &str) -> String {
    for (needle, class) in [
        ("locked", "lock conflict"),
        // PostgreSQL gave up waiting for a row lock (--lock-timeout).
        ("lock timeout", "lock conflict"),
        ("insufficient funds", "insufficient funds"),
        ("no vote", "vote timeout"),
        ("restarted", "coordinator restarted"),
        ("deadline", "prepare past deadline"),
        // PostgreSQL's CHECK (balance >= 0) refusing an overdraft.
        ("check constraint", "insufficient funds"),
    ] {
        if reason.contains(needle) {
            return class.to_string();
        }
    }
    reason.chars().take(60).collect()
}

/// Run the demo; `Ok(true)` when every check passed.
pub async fn run_demo(options: DemoOptions) -> anyhow::Result<bool> {
    let temp;
    let root = match &options.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("concord-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let exe = &options.exe;
    let mut addrs: Vec<String> = free_ports(PARTICIPANTS.len() + 1)?
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let coordinator_addr = addrs.pop().unwrap_or_default();
    let participant_addrs = addrs;

    println!(
        "concord demo{}",
        if options.postgres { " --postgres" } else { "" }
    );
    let bank = match options.postgres {
        true => Some(
            PgBank::start(
                PARTICIPANTS.len(),
                &concord_pgcluster::ClusterOptions::default(),
                options.accounts,
                options.balance,
            )
            .await
            .context("concord demo --postgres runs on throwaway PostgreSQL clusters")?,
        ),
        false => None,
    };
    println!(
        "  coordinator + {} {}participants as separate processes on 127.0.0.1, data in {}",
        PARTICIPANTS.len(),
        if bank.is_some() {
            "PostgreSQL (one throwaway cluster each, fsync on) "
        } else {
            ""
        },
        root.display()
    );
    println!(
        "  each participant: {} accounts x {} = {}; every forced write is fsynced",
        options.accounts,
        options.balance,
        options.accounts as i64 * options.balance
    );

    let named: Vec<(String, String)> = PARTICIPANTS
        .iter()
        .map(|n| n.to_string())
        .zip(participant_addrs.iter().cloned())
        .collect();
    let mut participants = Vec::new();
    for (i, (name, addr)) in named.iter().enumerate() {
        // The final audit reads every READY and outcome record the run
        // wrote, so the logs keep their whole history.
        let mut extra = vec![
            "--inquire-ms-initial",
            "50",
            "--inquire-ms-max",
            "500",
            "--compact-after-records",
            "0",
        ];
        let dir = root.join(name);
        let args = match &bank {
            Some(bank) => {
                let dsn = bank.dsns.get(i).context("a database per participant")?;
                // Row locks are waited for in PostgreSQL: give up well
                // before the coordinator's 1 s prepare timeout (two
                // transfers can wait for each other across databases).
                extra.extend([
                    "--dsn",
                    dsn.as_str(),
                    "--reconcile-interval",
                    "1s",
                    "--lock-timeout",
                    "300ms",
                ]);
                pg_participant_args(name, addr, &dir, &extra)
            }
            None => participant_args(name, addr, &dir, options.accounts, options.balance, &extra),
        };
        participants.push(Proc::start(
            exe,
            name,
            args,
            root.join(format!("{name}.log")),
        )?);
    }
    let coordinator_args = coordinator_args(
        &coordinator_addr,
        &root.join("coordinator"),
        &named,
        &[
            "--compact-after-records",
            "0",
            "--prepare-timeout-ms",
            "1000",
            "--resend-ms-initial",
            "50",
            "--resend-ms-max",
            "500",
        ],
    );
    let mut coordinator = Proc::start(
        exe,
        "coordinator",
        coordinator_args,
        root.join("coordinator.log"),
    )?;
    for (name, addr) in PARTICIPANTS.iter().zip(&participant_addrs) {
        wait_listening(addr, name).await?;
    }
    wait_listening(&coordinator_addr, "coordinator").await?;

    println!(
        "  workload: {} random transfers from {} concurrent clients",
        options.transfers, options.clients
    );
    let issued = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..options.clients {
        let issued = issued.clone();
        let tally = tally.clone();
        let addr = coordinator_addr.clone();
        let total = options.transfers;
        let accounts = options.accounts;
        let seed = options.seed.wrapping_add(c as u64);
        let sql = bank.is_some();
        clients.push(tokio::spawn(async move {
            client_loop(addr, issued, total, accounts, seed, sql, tally).await
        }));
    }

    // Chaos: kill -9 a participant at a third of the run, the coordinator
    // at two thirds; each comes back after DOWN_MS from its data dir.
    let mut events = Vec::new();
    for (fraction, target) in [(3, Some(VICTIM)), (3, None)] {
        let at = if target.is_some() {
            options.transfers / fraction
        } else {
            options.transfers * 2 / fraction
        };
        while issued.load(Ordering::Relaxed) < at && !clients.iter().all(|c| c.is_finished()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let proc = match target {
            Some(i) => &mut participants[i],
            None => &mut coordinator,
        };
        let pid = proc.pid();
        let when = started.elapsed();
        proc.kill9().await?;
        tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
        proc.restart().await?;
        events.push(format!(
            "  [{:>5.2}s] kill -9 {} (pid {pid}) after {} transfers issued; restarted from its data dir {} ms later",
            when.as_secs_f64(),
            proc.name,
            issued.load(Ordering::Relaxed),
            DOWN_MS
        ));
        println!("{}", events.last().map(String::as_str).unwrap_or(""));
    }
    for client in clients {
        client.await.context("client task")??;
    }
    let workload_time = started.elapsed();

    // Let every in-doubt branch resolve (INQUIRE / COMMIT re-sends).
    let quiesced = quiesce(&participant_addrs, &coordinator_addr, bank.as_ref()).await;
    let live_totals: Vec<i64> = match &bank {
        // The databases' own totals, by SQL.
        Some(bank) => bank.totals().await?,
        None => {
            let mut totals = Vec::new();
            for addr in &participant_addrs {
                totals.push(match concord_client::accounts(addr).await {
                    Ok(report) => report.total(),
                    Err(_) => i64::MIN,
                });
            }
            totals
        }
    };
    let prepared_left = match &bank {
        Some(bank) => Some(bank.prepared().await?),
        None => None,
    };

    for p in participants.iter_mut() {
        p.stop().await;
    }
    coordinator.stop().await;

    let tally = std::mem::take(&mut *lock(&tally));
    let aborted: usize = tally.aborted.values().sum();
    println!();
    println!("results");
    println!(
        "  committed {}, aborted {}, outcome unknown to the client {}, not started (coordinator down) {}",
        tally.committed.len(),
        aborted,
        tally.unknown.len(),
        tally.not_started
    );
    for (class, n) in &tally.aborted {
        println!("    aborted because of {class}: {n}");
    }
    let secs = workload_time.as_secs_f64();
    println!(
        "  throughput: {:.0} transactions/s finished ({:.0} committed/s) over {:.2} s, including both outages",
        (tally.committed.len() + aborted) as f64 / secs,
        tally.committed.len() as f64 / secs,
        secs
    );
    println!();
    println!("recovery (from each restarted process's own log)");
    for proc in participants.iter().chain(std::iter::once(&coordinator)) {
        if proc.starts > 1 {
            let lines = proc.recovery_lines();
            match lines.last() {
                Some(line) => println!("  {}: {}", proc.name, after_marker(line)),
                None => println!(
                    "  {}: (no recovery line in {})",
                    proc.name,
                    proc.log.display()
                ),
            }
        }
    }

    println!();
    println!("checks (from the participants' durable logs, after the processes stopped)");
    let seeded_total = options.accounts as i64 * options.balance * PARTICIPANTS.len() as i64;
    let database = prepared_left.map(|prepared| Database {
        total: live_totals.iter().sum(),
        prepared,
    });
    if let Some(bank) = bank {
        bank.save_logs(&root);
        bank.stop().await;
    }
    let checks = check_durable_state(&root, &tally, seeded_total, quiesced, database)?;
    let mut passed = true;
    for (name, result) in &checks {
        match result {
            Ok(detail) => println!("  {name}: PASS ({detail})"),
            Err(detail) => {
                passed = false;
                println!("  {name}: FAIL ({detail})");
            }
        }
    }
    let live_sum: i64 = live_totals.iter().sum();
    if live_sum != seeded_total {
        passed = false;
        println!(
            "  live balances: FAIL (participants reported {live_totals:?}, seeded {seeded_total})"
        );
    }
    println!();
    if passed {
        println!("demo PASSED");
    } else {
        println!("demo FAILED; process logs are in {}", root.display());
        // Keep the evidence.
        if options.data_dir.is_none() {
            let kept =
                std::env::temp_dir().join(format!("concord-demo-failed-{}", std::process::id()));
            let _ = std::fs::rename(&root, &kept);
            println!("kept in {}", kept.display());
        }
    }
    Ok(passed)
}

fn after_marker(line: &str) -> &str {
    line.find("recovery:").map(|i| &line[i..]).unwrap_or(line)
}

async fn client_loop(
    addr: String,
    issued: Arc<AtomicUsize>,
    total: usize,
    accounts: usize,
    seed: u64,
    sql: bool,
    tally: Arc<Mutex<Tally>>,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut client: Option<Client> = None;
    loop {
        if issued.fetch_add(1, Ordering::Relaxed) >= total {
            return Ok(());
        }
        let from_p = rng.gen_range(0..PARTICIPANTS.len());
        let mut to_p = rng.gen_range(0..PARTICIPANTS.len());
        if to_p == from_p {
            to_p = (to_p + 1) % PARTICIPANTS.len();
        }
        let from_a = format!("acct-{}", rng.gen_range(0..accounts));
        let to_a = format!("acct-{}", rng.gen_range(0..accounts));
        let amount = rng.gen_range(1..=100);
        if client.is_none() {
            client = connect_with_retry(&addr).await;
        }
        let Some(c) = client.as_ref() else {
            lock(&tally).not_started += 1;
            continue;
        };
        let result = if sql {
            let branch = |p: usize, account: String, delta: i64| BranchRequest {
                participant: PARTICIPANTS[p].to_string(),
                work: shipped_work(&[KvOp { account, delta }]),
            };
            c.transact(vec![
                branch(from_p, from_a, -amount),
                branch(to_p, to_a, amount),
            ])
            .await
        } else {
            c.transfer(
                (PARTICIPANTS[from_p], &from_a),
                (PARTICIPANTS[to_p], &to_a),
                amount,
            )
            .await
        };
        let mut t = lock(&tally);
        match result {
            Ok(r) => match r.outcome {
                Outcome::Committed => t.committed.push(r.xid),
                Outcome::Aborted { reason } => {
                    *t.aborted.entry(reason_class(&reason)).or_insert(0) += 1
                }
            },
            Err(ClientError::OutcomeUnknown { xid, .. }) => {
                t.unknown.push(xid);
                client = None;
            }
            Err(ClientError::Rejected(message)) => {
                bail!("the coordinator rejected a well-formed transfer: {message}")
            }
            Err(_) => {
                t.not_started += 1;
                client = None;
            }
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connect, retrying while the coordinator is down (it is being restarted).
async fn connect_with_retry(addr: &str) -> Option<Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(addr).await {
            return Some(c);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until no participant has a branch in doubt or a lock held (with
/// PostgreSQL: no database has a prepared transaction) and the coordinator
/// has nothing in flight. Returns whether that happened.
async fn quiesce(participants: &[String], coordinator: &str, bank: Option<&PgBank>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(QUIESCE_TIMEOUT_S);
    loop {
        let mut quiet = true;
        match bank {
            Some(bank) => quiet &= matches!(bank.prepared().await, Ok(0)),
            None => {
                for addr in participants {
                    match concord_client::accounts(addr).await {
                        Ok(r) if r.in_doubt.is_empty() && r.locks.is_empty() => {}
                        _ => quiet = false,
                    }
                }
            }
        }
        match Client::connect(coordinator).await {
            Ok(c) => match c.in_flight().await {
                Ok(xids) if xids.is_empty() => {}
                _ => quiet = false,
            },
            Err(_) => quiet = false,
        }
        if quiet {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Check = (&'static str, Result<String, String>);

/// What the databases said at the end, by SQL (`--postgres`).
struct Database {
    total: i64,
    prepared: i64,
}

/// What one participant's durable log says about each xid.
#[derive(Default)]
struct Branches {
    ready: HashMap<Xid, Vec<String>>,
    outcome: HashMap<Xid, Decision>,
}

fn read_participant_log(dir: &Path) -> anyhow::Result<(Vec<ParticipantRecord>, Branches)> {
    let (_log, recovered) = FileLog::open(dir, FileLogOptions::default())
        .with_context(|| format!("open the log in {}", dir.display()))?;
    let mut records = Vec::with_capacity(recovered.records.len());
    let mut branches = Branches::default();
    for (i, bytes) in recovered.records.iter().enumerate() {
        let record: ParticipantRecord = decode("participant log record", bytes)
            .with_context(|| format!("record {i} in {}", dir.display()))?;
        match &record {
            ParticipantRecord::Ready {
                xid, participants, ..
            }
            | ParticipantRecord::SubtreeReady {
                xid, participants, ..
            } => {
                branches.ready.insert(*xid, participants.clone());
            }
            ParticipantRecord::Outcome { xid, decision } => {
                branches.outcome.insert(*xid, *decision);
            }
            ParticipantRecord::Finished { outcomes } => {
                branches.outcome.extend(outcomes.iter().copied());
            }
            // A one-phase commit record is the branch's commit point.
            ParticipantRecord::OnePhase { xid, .. } => {
                branches.outcome.insert(*xid, Decision::Commit);
            }
            // The demo has no operator; an outcome record follows anyway.
            ParticipantRecord::Heuristic { .. }
            | ParticipantRecord::Resource { .. }
            | ParticipantRecord::Peer { .. }
            | ParticipantRecord::Started { .. }
            | ParticipantRecord::PeerHint { .. } => {}
        }
        records.push(record);
    }
    Ok((records, branches))
}

fn check_durable_state(
    root: &Path,
    tally: &Tally,
    seeded_total: i64,
    quiesced: bool,
    database: Option<Database>,
) -> anyhow::Result<Vec<Check>> {
    let mut logs = Vec::new();
    let mut total = 0i64;
    for name in PARTICIPANTS {
        let (records, branches) = read_participant_log(&root.join(name))?;
        // The balances are in the participants' logs, or in the databases.
        if database.is_none() {
            let kv =
                KvStore::replay_decided(&records).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            total += kv.total();
        }
        logs.push((name, branches));
    }
    if let Some(db) = &database {
        total = db.total;
    }
    let mut all: HashSet<Xid> = HashSet::new();
    for (_, b) in &logs {
        all.extend(b.ready.keys());
        all.extend(b.outcome.keys());
    }

    // atomicity: no xid committed at one participant and aborted after
    // READY at another.
    let mut split = Vec::new();
    let mut committed_xids = 0;
    for xid in &all {
        let commits = logs
            .iter()
            .filter(|(_, b)| b.outcome.get(xid) == Some(&Decision::Commit))
            .count();
        let aborts = logs
            .iter()
            .filter(|(_, b)| b.outcome.get(xid) == Some(&Decision::Abort))
            .count();
        if commits > 0 {
            committed_xids += 1;
        }
        if commits > 0 && aborts > 0 {
            split.push(*xid);
        }
    }
    let atomicity = if split.is_empty() {
        Ok(format!(
            "{} transactions in the logs, {committed_xids} committed, none committed at one participant and aborted at another",
            all.len()
        ))
    } else {
        Err(format!("split outcome for {split:?}"))
    };

    // validity: a branch commits only if every participant in the xid's list
    // has a durable READY record.
    let mut invalid = Vec::new();
    for xid in &all {
        let committed = logs
            .iter()
            .any(|(_, b)| b.outcome.get(xid) == Some(&Decision::Commit));
        if !committed {
            continue;
        }
        let list_len = logs
            .iter()
            .find_map(|(_, b)| b.ready.get(xid).map(|l| l.len()))
            .unwrap_or(0);
        let readies = logs
            .iter()
            .filter(|(_, b)| b.ready.contains_key(xid))
            .count();
        if readies != list_len {
            invalid.push(*xid);
        }
    }
    let validity = if invalid.is_empty() {
        Ok("every committed transaction has a READY record at each of its participants".into())
    } else {
        Err(format!("committed without every READY: {invalid:?}"))
    };

    // durability: every commit reported to a client is committed at every
    // participant that took part.
    let mut lost = Vec::new();
    for xid in &tally.committed {
        let takers: Vec<_> = logs
            .iter()
            .filter(|(_, b)| b.ready.contains_key(xid))
            .collect();
        if takers.is_empty()
            || takers
                .iter()
                .any(|(_, b)| b.outcome.get(xid) != Some(&Decision::Commit))
        {
            lost.push(*xid);
        }
    }
    let durability = if lost.is_empty() {
        Ok(format!(
            "all {} commits reported to clients are committed at every participant",
            tally.committed.len()
        ))
    } else {
        Err(format!(
            "reported committed but not committed everywhere: {lost:?}"
        ))
    };

    // termination: nothing in doubt once everyone is up.
    let in_doubt: Vec<(&str, Xid)> = logs
        .iter()
        .flat_map(|(name, b)| {
            b.ready
                .keys()
                .filter(|x| !b.outcome.contains_key(x))
                .map(move |x| (*name, *x))
        })
        .collect();
    let termination = if in_doubt.is_empty() && quiesced {
        Ok("no branch in doubt and no lock held after recovery".into())
    } else if !quiesced {
        Err(format!(
            "still in doubt or locked {QUIESCE_TIMEOUT_S} s after the run: {in_doubt:?}"
        ))
    } else {
        Err(format!("READY without outcome in the logs: {in_doubt:?}"))
    };

    let source = match database {
        Some(_) => "in the databases, by SQL",
        None => "replayed from the participants' logs",
    };
    let conservation = if total == seeded_total {
        Ok(format!(
            "total balance {total} {source} = seeded {seeded_total}"
        ))
    } else {
        Err(format!(
            "total balance {total} {source} != seeded {seeded_total}"
        ))
    };

    let mut checks = vec![
        ("atomicity", atomicity),
        ("validity", validity),
        ("durability", durability),
        ("termination", termination),
        ("conservation", conservation),
    ];
    if let Some(db) = database {
        checks.push((
            "nothing left prepared",
            match db.prepared {
                0 => Ok("pg_prepared_xacts is empty in every database".into()),
                n => Err(format!("{n} rows left in pg_prepared_xacts")),
            },
        ));
    }
    Ok(checks)
}
