//! `concord bench`: throughput and latency of real processes over
//! loopback TCP with real fsyncs, with baselines measured in the same run.
//!
//! One invocation starts a coordinator and N participants as separate
//! processes of this binary (or uses running ones), and for each
//! concurrency level runs a closed-loop workload ([`workload`]): a warm-up,
//! then a fixed measuring window whose edges are marked by reading every
//! server's own counters ([`cluster`]). Then, unless told not to, the
//! baselines: the bare relay at every level (`concord relay` processes:
//! the same processes, connections and frames per transaction over the
//! same transport, with no protocol and no log: this machine's ceiling
//! for the message pattern, see `concord_server::relay`), the raw fsync
//! ceiling of the data directory's disk ([`baseline`]) and the same
//! workload against servers with fsync off, labelled NOT durable. [`report`] turns it all into text, JSON and an SVG
//! ([`plot`]).
//!
//! A benchmark must never claim durability it did not have: whether the
//! numbers are durable is asked from the servers (`ServerStats::fsync`),
//! not assumed.

pub mod baseline;
pub mod cluster;
pub mod http;
pub mod plot;
pub mod postgres;
pub mod report;
pub mod workload;

use anyhow::{bail, Context};
use cluster::{Cluster, ClusterSpec};
use report::{BenchReport, Machine, RunInputs, RunResult, Settings};
use std::path::PathBuf;
use std::time::Duration;
use workload::{WorkResource, Workload};

/// Most branches (participants) one benchmark transaction may have.
pub const BRANCHES_MAX: usize = 16;
/// Most concurrent transactions one run may keep in flight.
pub const CONCURRENCY_MAX: usize = 4096;
/// Starting balance of every benchmark account: far more than any run can
/// move, so no transaction aborts for insufficient funds.
const BALANCE: i64 = 1_000_000_000_000;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The concord binary to start servers from.
    pub exe: PathBuf,
    /// Participant processes to start.
    pub participants: usize,
    /// Branches per transaction, each on a distinct participant (`None`:
    /// one on every participant).
    pub branches: Option<usize>,
    /// Concurrency levels, one run each.
    pub concurrency: Vec<usize>,
    /// Client connections per run (`None`: one per 8 tasks, 1 to 16).
    pub connections: Option<usize>,
    pub warmup: Duration,
    pub window: Duration,
    /// Opaque bytes carried by every branch's work (and so in every READY
    /// record).
    pub payload_bytes: usize,
    pub hot_share: f64,
    pub hot_accounts: usize,
    /// Where the servers' logs go (a temporary directory if `None`).
    pub data_dir: Option<PathBuf>,
    /// Use a running cluster instead of starting one: the coordinator's
    /// address and every participant's `(name, address)`.
    pub existing: Option<(String, Vec<(String, String)>)>,
    /// Measure the fsync ceiling and the durability-off run.
    pub baselines: bool,
    /// The shape of every transaction of the main runs.
    pub shape: concord_proto::Shape,
    /// The tree of every hierarchical transaction, over the cluster's
    /// participant names (`None`: a balanced binary tree over each
    /// transaction's branches, in their rotated order).
    pub tree: Option<concord_api::tree::Tree>,
    /// Measure each optimization off and on (one-phase commit on a
    /// single-branch workload, the READ-ONLY vote on one with a branch
    /// that only reads).
    pub optimizations: bool,
    /// Also run the main levels through the coordinator's HTTP API, on the
    /// same servers, after the binary protocol's runs (`--api http`).
    pub http_api: bool,
    /// After the main runs, the same levels with the coordinator's log in
    /// a throwaway PostgreSQL cluster (`--store postgres`).
    pub pg_store: bool,
    /// What the participants run. PostgreSQL starts throwaway clusters and
    /// measures bare PostgreSQL 2PC against concord instead of the other
    /// baselines.
    pub resource: WorkResource,
    pub seed: u64,
}

impl BenchOptions {
    /// Participants in the cluster: started, or named with `existing`.
    fn cluster_size(&self) -> usize {
        match &self.existing {
            Some((_, list)) => list.len(),
            None => self.participants,
        }
    }

    fn branches(&self) -> usize {
        match &self.tree {
            Some(tree) => tree.names().len(),
            None => self.branches.unwrap_or_else(|| self.cluster_size()),
        }
    }

    /// Participant names in the cluster, as the coordinator knows them.
    fn cluster_names(&self) -> Vec<String> {
        match &self.existing {
            Some((_, list)) => list.iter().map(|(n, _)| n.clone()).collect(),
            None => (0..self.participants).map(|i| format!("p{i}")).collect(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let participants = self.cluster_size();
        if participants == 0 || participants > BRANCHES_MAX {
            bail!("--participants must be 1..={BRANCHES_MAX}, got {participants}");
        }
        if let Some(tree) = &self.tree {
            if self.shape != concord_proto::Shape::Hierarchical {
                bail!(
                    "--tree is for --shape hierarchical, not {}",
                    self.shape.name()
                );
            }
            tree.check_known(&self.cluster_names())
                .map_err(|e| anyhow::anyhow!("--tree: {e}"))?;
            let nodes = tree.names().len();
            if let Some(b) = self.branches.filter(|b| *b != nodes) {
                bail!("--branches {b} does not match the {nodes} participants of --tree");
            }
        }
        let branches = self.branches();
        if branches == 0 || branches > participants {
            bail!(
                "--branches must be 1..={participants} (each branch on a distinct participant), got {branches}"
            );
        }
        if self.concurrency.is_empty() {
            bail!("--concurrency needs at least one level");
        }
        if let Some(c) = self
            .concurrency
            .iter()
            .find(|c| **c == 0 || **c > CONCURRENCY_MAX)
        {
            bail!("concurrency {c} is outside 1..={CONCURRENCY_MAX}");
        }
        if !(0.0..=1.0).contains(&self.hot_share) {
            bail!("--hot-share must be within 0..=1, got {}", self.hot_share);
        }
        if self.hot_share > 0.0 && self.hot_accounts == 0 {
            bail!("--hot-share above 0 needs --hot-accounts of at least 1");
        }
        if self.window.is_zero() {
            bail!("--window-secs must be above 0");
        }
        if self.existing.is_some() && self.optimizations {
            bail!(
                "--optimizations restarts the servers with the optimizations off and on, which \
                 it cannot do with --coordinator/--participant"
            );
        }
        if self.optimizations && self.cluster_size() < 2 {
            bail!("--optimizations needs at least 2 participants (a writer and a reader)");
        }
        if self.pg_store && (self.existing.is_some() || self.resource == WorkResource::Postgres) {
            bail!(
                "--store postgres starts its own servers and database, with key-value \
                 participants: drop --coordinator and --resource postgres"
            );
        }
        if self.existing.is_some() && self.http_api {
            bail!("--api http starts its own servers (with --http-listen); drop --coordinator");
        }
        if self.resource == WorkResource::Postgres {
            let refused = [
                (self.existing.is_some(), "--coordinator/--participant (it starts its own databases)"),
                (self.optimizations, "--optimizations"),
                (self.http_api, "--api http"),
                (
                    self.hot_share > 0.0,
                    "--hot-share (the bare client has no lock timeout across databases: contention could deadlock it)",
                ),
                (self.payload_bytes > 0, "--payload-bytes (shipped SQL carries no memo)"),
            ];
            if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
                bail!("--resource postgres does not take {what}");
            }
            return Ok(());
        }
        if self.existing.is_some() && self.baselines {
            bail!(
                "the durability-off baseline restarts the servers, which it cannot do with \
                 --coordinator/--participant: add --no-baselines"
            );
        }
        Ok(())
    }

    /// Accounts each participant needs: the hot ones first, then
    /// `OWN_ACCOUNTS` per task of the largest run.
    fn accounts(&self) -> usize {
        self.hot_accounts
            + workload::OWN_ACCOUNTS * self.concurrency.iter().copied().max().unwrap_or(1)
    }

    /// Servers to start under `root`, durable or not.
    fn cluster_spec(&self, fsync: bool, root: PathBuf) -> ClusterSpec {
        ClusterSpec {
            exe: self.exe.clone(),
            participants: self.participants,
            accounts: self.accounts(),
            balance: BALANCE,
            fsync,
            one_phase: true,
            read_only_votes: true,
            http: self.http_api,
            root,
            postgres: None,
            coordinator_store: None,
            coordinator_instances: 1,
        }
    }

    /// The report's record of these options.
    fn settings(&self, root: &std::path::Path) -> Settings {
        Settings {
            resource: match self.resource {
                WorkResource::Kv => "key-value",
                WorkResource::Postgres => "PostgreSQL",
            }
            .into(),
            shape: self.shape.name().into(),
            tree: match (&self.tree, self.shape) {
                (Some(tree), _) => Some(tree.to_string()),
                (None, concord_proto::Shape::Hierarchical) => Some(
                    "balanced binary over each transaction's branches (node k's children: 2k+1, 2k+2)"
                        .into(),
                ),
                _ => None,
            },
            participants: self.cluster_size(),
            branches: self.branches(),
            payload_bytes: self.payload_bytes,
            hot_share: self.hot_share,
            hot_accounts: self.hot_accounts,
            warmup_s: self.warmup.as_secs_f64(),
            window_s: self.window.as_secs_f64(),
            data_dir: root.display().to_string(),
            started_servers: self.existing.is_none(),
        }
    }

    fn connections_for(&self, concurrency: usize) -> usize {
        self.connections
            .unwrap_or_else(|| concurrency.div_ceil(8).clamp(1, 16))
            .clamp(1, concurrency)
    }
}

/// Run the benchmark and return its report. Progress goes to stderr. On
/// failure the data directory, with every server's log file, is kept and
/// named in the error.
pub async fn run_bench(options: BenchOptions) -> anyhow::Result<BenchReport> {
    options.validate()?;
    let (root, temp) = match &options.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("concord-bench-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let result = measure(&options, &root).await;
    if result.is_err() {
        // Keep the evidence (a temporary directory would be removed).
        if let Some(temp) = temp {
            let _ = temp.keep();
        }
    }
    result.with_context(|| {
        format!(
            "benchmark failed; data and server logs (*.log) in {}",
            root.display()
        )
    })
}

/// Coordinator instances of `--store postgres`'s second run (the first
/// has one).
const PG_STORE_INSTANCES: usize = 3;

/// The main levels with the coordinator's log in a throwaway PostgreSQL
/// cluster (fsync on), on servers of their own, with `instances`
/// coordinator instances sharing it and the load going round them.
async fn pg_store_runs(
    options: &BenchOptions,
    root: &std::path::Path,
    everything: Branches,
    instances: usize,
) -> anyhow::Result<Vec<RunResult>> {
    eprintln!(
        "starting a throwaway PostgreSQL cluster for the coordinator's log ({instances} \
         instance(s))"
    );
    let db = tokio::task::spawn_blocking(|| {
        concord_pgcluster::Cluster::start(&concord_pgcluster::ClusterOptions::default())
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{e} (install the server: apt-get install -y postgresql)"))?;
    let mut spec = options.cluster_spec(true, root.join(format!("pg-store-{instances}")));
    spec.coordinator_store = Some(db.dsn());
    spec.coordinator_instances = instances;
    let cluster = Cluster::start(&spec).await?;
    let label = if instances == 1 {
        "durable, coordinator log in PostgreSQL".to_string()
    } else {
        format!("durable, coordinator logs in PostgreSQL, {instances} instances")
    };
    let label = label.as_str();
    let result = sweep(
        options,
        &cluster,
        &options.concurrency,
        everything,
        label,
        Via::Binary,
    )
    .await;
    cluster.stop().await;
    drop(db);
    result
}

async fn measure(options: &BenchOptions, root: &std::path::Path) -> anyhow::Result<BenchReport> {
    if options.resource == WorkResource::Postgres {
        return postgres::measure(options, root).await;
    }
    let cluster = match &options.existing {
        Some((coordinator, participants)) => {
            Cluster::existing(coordinator.clone(), participants.clone()).await?
        }
        None => Cluster::start(&options.cluster_spec(true, root.join("durable"))).await?,
    };
    let everything = Branches {
        total: options.branches(),
        read_only: 0,
        shape: options.shape,
    };
    let runs = sweep(
        options,
        &cluster,
        &options.concurrency,
        everything,
        "durable",
        Via::Binary,
    )
    .await;
    // The same levels through the HTTP API, on the same servers.
    let http_runs = match (&runs, options.http_api) {
        (Ok(_), true) => Some(
            sweep(
                options,
                &cluster,
                &options.concurrency,
                everything,
                "durable, through the HTTP API",
                Via::Http,
            )
            .await,
        ),
        _ => None,
    };
    cluster.stop().await;
    let runs = runs?;
    let http_api = match http_runs {
        Some(result) => Some(report::Comparison::new(result?, &runs)),
        None => None,
    };
    let (pg_store, pg_store_instances) = if options.pg_store {
        let one = pg_store_runs(options, root, everything, 1).await?;
        let three = pg_store_runs(options, root, everything, PG_STORE_INSTANCES).await?;
        (
            Some(report::Comparison::new(one, &runs)),
            Some(report::Comparison::new(three, &runs)),
        )
    } else {
        (None, None)
    };

    let mut fsync_baseline = None;
    let mut no_fsync_baseline = None;
    let mut relay_baseline = None;
    if options.baselines {
        // The transport's ceiling at every level concord ran.
        let relay = Cluster::start_relay(&options.cluster_spec(false, root.join("relay"))).await?;
        let result = sweep(
            options,
            &relay,
            &options.concurrency,
            everything,
            "bare relay (no protocol, no log)",
            Via::Binary,
        )
        .await;
        relay.stop().await;
        relay_baseline = Some(report::RelayBaseline::new(result?, &runs));
        let record_bytes = runs
            .iter()
            .map(|r| r.participant_record_bytes)
            .fold(0.0, f64::max)
            .round()
            .max(1.0) as usize;
        let writers = options.concurrency.iter().copied().max().unwrap_or(1);
        eprintln!("baseline: raw fsync ceiling ({record_bytes} B records, {writers} writers)");
        let dir = root.join("fsync-baseline");
        std::fs::create_dir_all(&dir)?;
        fsync_baseline = Some(baseline::measure_fsync(
            &dir,
            record_bytes,
            writers,
            options.window.min(Duration::from_secs(2)),
        )?);
        // The durability-off run at the concurrency that did best durably.
        let best = report::best_run(&runs).map(|r| r.concurrency).unwrap_or(1);
        let off = Cluster::start(&options.cluster_spec(false, root.join("no-fsync"))).await?;
        let result = sweep(
            options,
            &off,
            &[best],
            everything,
            "durability OFF (not durable)",
            Via::Binary,
        )
        .await;
        off.stop().await;
        no_fsync_baseline = result?.pop();
    }
    let mut optimizations = Vec::new();
    if options.optimizations {
        let best = report::best_run(&runs).map(|r| r.concurrency).unwrap_or(1);
        let mut levels = vec![1, best];
        levels.dedup();
        // One-phase commit: single-branch transactions.
        let single = Branches {
            total: 1,
            read_only: 0,
            shape: concord_proto::Shape::Centralized,
        };
        // The READ-ONLY vote: one more branch that only reads.
        let reading = Branches {
            total: options.branches().max(2),
            read_only: 1,
            shape: concord_proto::Shape::Centralized,
        };
        for (name, branches, switch) in [
            ("one-phase commit", single, Switch::OnePhase),
            ("read-only vote", reading, Switch::ReadOnly),
        ] {
            let mut both = Vec::new();
            for on in [false, true] {
                let mut spec = options.cluster_spec(true, root.join(format!("{switch:?}-{on}")));
                match switch {
                    Switch::OnePhase => spec.one_phase = on,
                    Switch::ReadOnly => spec.read_only_votes = on,
                }
                let cluster = Cluster::start(&spec).await?;
                let label = format!("{name} {}", if on { "ON" } else { "OFF" });
                let result = sweep(options, &cluster, &levels, branches, &label, Via::Binary).await;
                cluster.stop().await;
                both.push(result?);
            }
            let after = both.pop().unwrap_or_default();
            let before = both.pop().unwrap_or_default();
            optimizations.push(report::Optimization {
                name: name.into(),
                workload: branches.describe(),
                before,
                after,
            });
        }
    }

    // Asked from the servers (their `Stats`), never assumed.
    let durable = runs.iter().all(|r| r.durable);
    Ok(BenchReport {
        machine: Machine::probe(),
        settings: options.settings(root),
        durability: if durable {
            "every forced write (coordinator COMMIT records, participant READY and outcome records) \
             was fsynced before the message that depends on it left, with group commit; \
             reported by the servers themselves"
                .into()
        } else {
            "NOT durable: at least one server runs with --unsafe-no-fsync".into()
        },
        runs,
        fsync_baseline,
        no_fsync_baseline,
        relay_baseline,
        optimizations,
        http_api,
        pg_store,
        pg_store_instances,
        postgres: None,
    })
}

/// The branches of every benchmark transaction.
#[derive(Clone, Copy, Debug)]
struct Branches {
    total: usize,
    /// How many of them (the last) only read.
    read_only: usize,
    shape: concord_proto::Shape,
}

impl Branches {
    fn describe(self) -> String {
        match (self.total, self.read_only) {
            (1, _) => "1 branch".into(),
            (n, 0) => format!("{n} branches"),
            (n, r) => format!("{n} branches, {r} of them only reading"),
        }
    }
}

/// Which optimization a before-and-after pair switches.
#[derive(Clone, Copy, Debug)]
enum Switch {
    OnePhase,
    ReadOnly,
}

/// How the load generator talks to the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Binary,
    Http,
    /// No coordinator: the bare client of `--resource postgres`, on the
    /// cluster's databases.
    BarePostgres,
}

/// One run per concurrency level against `cluster`.
async fn sweep(
    options: &BenchOptions,
    cluster: &Cluster,
    levels: &[usize],
    branches: Branches,
    label: &str,
    via: Via,
) -> anyhow::Result<Vec<RunResult>> {
    let names: Vec<String> = cluster
        .participants
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let mut runs = Vec::new();
    for &concurrency in levels {
        let workload = Workload {
            concurrency,
            connections: match via {
                // Over HTTP/1.1 without pipelining, and on the bare side's
                // databases: one connection per task.
                Via::Http | Via::BarePostgres => concurrency,
                Via::Binary => options.connections_for(concurrency),
            },
            branches: branches.total,
            read_only_branches: branches.read_only,
            shape: branches.shape,
            tree: match branches.shape {
                concord_proto::Shape::Hierarchical => options.tree.clone(),
                _ => None,
            },
            participants: names.clone(),
            hot_accounts: options.hot_accounts,
            hot_share: options.hot_share,
            payload_bytes: options.payload_bytes,
            seed: options.seed,
            http: match via {
                Via::Http => cluster.http.clone(),
                Via::Binary | Via::BarePostgres => None,
            },
            resource: options.resource,
            bare_pg: match via {
                Via::BarePostgres => cluster.pg_dsns.clone(),
                Via::Binary | Via::Http => None,
            },
        };
        eprintln!(
            "{label}: concurrency {concurrency} over {} connections: {:.1} s warm-up, {:.1} s window",
            workload.connections,
            options.warmup.as_secs_f64(),
            options.window.as_secs_f64()
        );
        let (tally, window, before, after) = workload
            .run(
                &cluster.coordinators,
                options.warmup,
                options.window,
                cluster.snapshot_unless(via == Via::BarePostgres),
                cluster.snapshot_unless(via == Via::BarePostgres),
            )
            .await?;
        let run = RunResult::new(RunInputs {
            concurrency,
            connections: workload.connections,
            tally: &tally,
            window,
            before: &before,
            after: &after,
        });
        eprintln!(
            "  {:.0} transactions/s, p50 {:.2} ms, p99 {:.2} ms, {} aborted",
            run.transactions_per_sec, run.latency.p50_ms, run.latency.p99_ms, run.aborted
        );
        runs.push(run);
    }
    Ok(runs)
}

/// Parse "1,8,64" into concurrency levels.
pub fn parse_levels(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|e| format!("concurrency level {p:?}: {e}"))
        })
        .collect()
}
