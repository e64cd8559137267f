//! What `concord bench` reports: one [`RunResult`] per measured run (from
//! the client's tally and the servers' counter deltas over the window),
//! the baselines, and the text and JSON forms of the whole report.
//!
//! How the per-transaction figures are derived (all over the measuring
//! window, divided by the transactions that finished in it):
//! - fsyncs: `log_syncs` of every server (coordinator and participants);
//! - messages: every frame some process received — the servers count
//!   theirs (client Begin requests and peer messages), and the client
//!   receives two per transaction (Begun and Outcome); heartbeats are not
//!   counted;
//! - CPU: user + system time of every server process, and of the load
//!   generator, from `/proc`.

use super::baseline::FsyncBaseline;
use super::workload::Tally;
use concord_api::ServerStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// One measured run at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Every server had fsync on (asked from the servers).
    pub durable: bool,
    pub concurrency: usize,
    pub connections: usize,
    /// Coordinator instances in the run (their counters are in). The
    /// client connections go round them, so with fewer connections than
    /// instances some take no load.
    pub coordinators: usize,
    pub window_s: f64,
    pub transactions_per_sec: f64,
    pub committed_per_sec: f64,
    pub committed: u64,
    pub aborted: u64,
    pub aborted_by_reason: BTreeMap<String, u64>,
    pub client_errors: BTreeMap<String, u64>,
    pub latency: Latency,
    pub fsyncs_per_txn: f64,
    pub coordinator_fsyncs_per_txn: f64,
    pub forced_records_per_txn: f64,
    pub log_bytes_per_txn: f64,
    /// Mean bytes of a participant log record (sizes the fsync baseline).
    pub participant_record_bytes: f64,
    pub messages_per_txn: f64,
    pub network_writes_per_txn: f64,
    pub server_cpu_us_per_txn: Option<f64>,
    pub client_cpu_us_per_txn: Option<f64>,
}

/// Counter deltas of one server over the window.
fn delta(a: &ServerStats, b: &ServerStats) -> ServerStats {
    ServerStats {
        role: b.role.clone(),
        fsync: a.fsync && b.fsync,
        log_records: b.log_records.saturating_sub(a.log_records),
        log_forced: b.log_forced.saturating_sub(a.log_forced),
        log_batches: b.log_batches.saturating_sub(a.log_batches),
        log_syncs: b.log_syncs.saturating_sub(a.log_syncs),
        log_bytes: b.log_bytes.saturating_sub(a.log_bytes),
        net_frames_sent: b.net_frames_sent.saturating_sub(a.net_frames_sent),
        net_frames_received: b.net_frames_received.saturating_sub(a.net_frames_received),
        net_writes: b.net_writes.saturating_sub(a.net_writes),
    }
}

/// Inputs of [`RunResult::new`].
pub struct RunInputs<'a> {
    pub concurrency: usize,
    pub connections: usize,
    pub tally: &'a Tally,
    pub window: Duration,
    pub before: &'a super::cluster::Snapshot,
    pub after: &'a super::cluster::Snapshot,
}

impl RunResult {
    pub fn new(input: RunInputs<'_>) -> RunResult {
        let RunInputs {
            concurrency,
            connections,
            tally,
            window,
            before,
            after,
        } = input;
        let deltas: Vec<ServerStats> = before
            .servers
            .iter()
            .zip(&after.servers)
            .map(|(a, b)| delta(a, b))
            .collect();
        let txns = tally.finished().max(1) as f64;
        let per_txn = |f: &dyn Fn(&ServerStats) -> u64| -> f64 {
            deltas.iter().map(f).sum::<u64>() as f64 / txns
        };
        let coordinator: Vec<&ServerStats> =
            deltas.iter().filter(|d| d.role == "coordinator").collect();
        let participant_records: u64 = deltas
            .iter()
            .filter(|d| d.role == "participant")
            .map(|d| d.log_records)
            .sum();
        let participant_bytes: u64 = deltas
            .iter()
            .filter(|d| d.role == "participant")
            .map(|d| d.log_bytes)
            .sum();
        let cpu = |a: Option<f64>, b: Option<f64>| -> Option<f64> {
            Some((b? - a?).max(0.0) * 1e6 / txns)
        };
        let h = &tally.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let secs = window.as_secs_f64().max(1e-9);
        RunResult {
            durable: !after.servers.is_empty() && deltas.iter().all(|d| d.fsync),
            coordinators: coordinator.len(),
            concurrency,
            connections,
            window_s: secs,
            transactions_per_sec: tally.finished() as f64 / secs,
            committed_per_sec: tally.committed as f64 / secs,
            committed: tally.committed,
            aborted: tally.aborted_total(),
            aborted_by_reason: tally.aborted.clone(),
            client_errors: tally.errors.clone(),
            latency: if h.is_empty() {
                Latency::default()
            } else {
                Latency {
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    p999_ms: ms(h.value_at_quantile(0.999)),
                    max_ms: ms(h.max()),
                    mean_ms: h.mean() / 1000.0,
                }
            },
            fsyncs_per_txn: per_txn(&|d| d.log_syncs),
            coordinator_fsyncs_per_txn: coordinator.iter().map(|d| d.log_syncs).sum::<u64>() as f64
                / txns,
            forced_records_per_txn: per_txn(&|d| d.log_forced),
            log_bytes_per_txn: per_txn(&|d| d.log_bytes),
            participant_record_bytes: participant_bytes as f64 / participant_records.max(1) as f64,
            // Servers' received frames + Begun and Outcome at the client.
            messages_per_txn: per_txn(&|d| d.net_frames_received) + 2.0,
            network_writes_per_txn: per_txn(&|d| d.net_writes),
            server_cpu_us_per_txn: cpu(before.server_cpu_s, after.server_cpu_s),
            client_cpu_us_per_txn: cpu(before.client_cpu_s, after.client_cpu_s),
        }
    }
}

/// The run of `runs` with the highest throughput.
pub fn best_run(runs: &[RunResult]) -> Option<&RunResult> {
    runs.iter()
        .max_by(|a, b| a.transactions_per_sec.total_cmp(&b.transactions_per_sec))
}

/// The settings a report was made with.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// What the participants run: `key-value` or `PostgreSQL`.
    pub resource: String,
    pub shape: String,
    /// The tree of a hierarchical run: the one given, or how it is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    pub participants: usize,
    pub branches: usize,
    pub payload_bytes: usize,
    pub hot_share: f64,
    pub hot_accounts: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    pub data_dir: String,
    pub started_servers: bool,
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            kernel,
        }
    }
}

/// Everything one `concord bench` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub settings: Settings,
    /// What "durable" means in these numbers.
    pub durability: String,
    pub runs: Vec<RunResult>,
    pub fsync_baseline: Option<FsyncBaseline>,
    /// The same workload with every server's fsync off: NOT durable.
    pub no_fsync_baseline: Option<RunResult>,
    /// The transport's ceiling for this message pattern: the same
    /// processes, connections and frames with no protocol and no log.
    pub relay_baseline: Option<RelayBaseline>,
    /// Each optimization measured off, then on (`--optimizations`).
    pub optimizations: Vec<Optimization>,
    /// The main levels again through the HTTP API (`--api http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_api: Option<Comparison>,
    /// The main levels again with the coordinator's log in PostgreSQL
    /// (`--store postgres`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_store: Option<Comparison>,
    /// The same with three coordinator instances sharing the database,
    /// the load going round them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_store_instances: Option<Comparison>,
    /// `--resource postgres`: the bare PostgreSQL 2PC baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgComparison>,
}

/// The same levels run another way after the main runs (through the
/// HTTP API, or with the coordinator's log in PostgreSQL), against them.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub runs: Vec<RunResult>,
    /// Per level: this throughput over the main runs', and the p50 it
    /// adds (ms).
    pub ratios: Vec<LevelRatio>,
}

/// One run against another at the same concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct LevelRatio {
    pub concurrency: usize,
    /// Throughput of the run over the base's.
    pub throughput_ratio: f64,
    /// The run's p50 minus the base's.
    pub extra_p50_ms: f64,
}

impl LevelRatio {
    /// Each run of `runs` over the run of `base` at its concurrency.
    pub fn per_level(runs: &[RunResult], base: &[RunResult]) -> Vec<LevelRatio> {
        runs.iter()
            .filter_map(|r| {
                let b = base.iter().find(|b| b.concurrency == r.concurrency)?;
                (b.transactions_per_sec > 0.0).then(|| LevelRatio {
                    concurrency: r.concurrency,
                    throughput_ratio: r.transactions_per_sec / b.transactions_per_sec,
                    extra_p50_ms: r.latency.p50_ms - b.latency.p50_ms,
                })
            })
            .collect()
    }
}

impl Comparison {
    pub fn new(runs: Vec<RunResult>, main: &[RunResult]) -> Comparison {
        let ratios = LevelRatio::per_level(&runs, main);
        Comparison { runs, ratios }
    }

    /// Its runs and each level's ratio, indented, `than` naming the main
    /// runs.
    fn text(&self, out: &mut String, than: &str) {
        for line in run_table(&self.runs).lines() {
            let _ = writeln!(out, "  {line}");
        }
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "  concurrency {}: {:.0}% of {than} throughput, p50 {:+.2} ms",
                r.concurrency,
                r.throughput_ratio * 100.0,
                r.extra_p50_ms
            );
        }
    }
}

/// `--resource postgres`: concord with PostgreSQL participants (the
/// report's `runs`) against bare PostgreSQL 2PC on the same databases.
#[derive(Clone, Debug, Serialize)]
pub struct PgComparison {
    pub server_version: String,
    /// The bare client's runs, one per level.
    pub bare: Vec<RunResult>,
    /// Per level: concord over bare.
    pub ratios: Vec<LevelRatio>,
    /// concord's best throughput over the bare client's best, each at its
    /// own best concurrency: the figure the target (≥ 0.9) is about.
    pub best_ratio: Option<f64>,
}

impl PgComparison {
    pub fn new(bare: Vec<RunResult>, concord: &[RunResult], server_version: String) -> Self {
        let ratios = LevelRatio::per_level(concord, &bare);
        let best_ratio = match (best_run(concord), best_run(&bare)) {
            (Some(c), Some(b)) if b.transactions_per_sec > 0.0 => {
                Some(c.transactions_per_sec / b.transactions_per_sec)
            }
            _ => None,
        };
        PgComparison {
            server_version,
            bare,
            ratios,
            best_ratio,
        }
    }

    fn text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "bare PostgreSQL 2PC (PostgreSQL {}): the same databases, work and concurrency, no coordinator, no log of its own, no recovery; a transaction counts once every COMMIT PREPARED returned:",
            self.server_version
        );
        let _ = writeln!(
            out,
            "  {:>5} {:>9} {:>8} {:>8} {:>7} {:>7}   concord: {:>9} {:>8} {:>7}",
            "conc", "txn/s", "p50 ms", "p99 ms", "aborts", "errors", "txn/s", "p50 ms", "ratio"
        );
        for b in &self.bare {
            let _ = write!(
                out,
                "  {:>5} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>7}",
                b.concurrency,
                b.transactions_per_sec,
                b.latency.p50_ms,
                b.latency.p99_ms,
                b.aborted,
                b.client_errors.values().sum::<u64>()
            );
            match self.ratios.iter().find(|r| r.concurrency == b.concurrency) {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "            {:>9.0} {:>8.2} {:>6.0}%",
                        b.transactions_per_sec * r.throughput_ratio,
                        b.latency.p50_ms + r.extra_p50_ms,
                        r.throughput_ratio * 100.0
                    );
                }
                None => {
                    let _ = writeln!(out);
                }
            }
        }
        if let Some(ratio) = self.best_ratio {
            let _ = writeln!(
                out,
                "  concord's best throughput = {:.0}% of the bare client's best (each at its own best concurrency; target 90%)",
                ratio * 100.0
            );
        }
        let _ = writeln!(
            out,
            "  (concord's outcome returns once the decision is durable, before phase 2 reaches the databases: its p50 has one COMMIT PREPARED less in it than the bare client's)"
        );
    }
}

/// One optimization off (`before`) and on (`after`), on the workload it
/// is for, at concurrency 1 and at the best level of the main runs.
#[derive(Clone, Debug, Serialize)]
pub struct Optimization {
    pub name: String,
    pub workload: String,
    pub before: Vec<RunResult>,
    pub after: Vec<RunResult>,
}

/// The bare-relay baseline and concord's ratio to it (`concord relay`
/// processes; see `concord_server::relay`).
#[derive(Clone, Debug, Serialize)]
pub struct RelayBaseline {
    /// One run per concurrency level, as for concord (NOT durable: there
    /// is no log).
    pub runs: Vec<RunResult>,
    /// Concord's best throughput over the relay's at that same
    /// concurrency (1.0 = as fast as the bare transport).
    pub throughput_ratio_at_best: Option<f64>,
    /// Concord's p50 at concurrency 1 minus the relay's: what the
    /// protocol and its forced writes add to one transaction.
    pub extra_p50_ms_at_concurrency_1: Option<f64>,
}

impl RelayBaseline {
    pub fn new(runs: Vec<RunResult>, concord: &[RunResult]) -> RelayBaseline {
        let at = |list: &[RunResult], c: usize| list.iter().find(|r| r.concurrency == c).cloned();
        let throughput_ratio_at_best = best_run(concord).and_then(|best| {
            let relay = at(&runs, best.concurrency)?;
            (relay.transactions_per_sec > 0.0)
                .then(|| best.transactions_per_sec / relay.transactions_per_sec)
        });
        let extra_p50_ms_at_concurrency_1 = match (at(concord, 1), at(&runs, 1)) {
            (Some(c), Some(r)) => Some(c.latency.p50_ms - r.latency.p50_ms),
            _ => None,
        };
        RelayBaseline {
            runs,
            throughput_ratio_at_best,
            extra_p50_ms_at_concurrency_1,
        }
    }
}

impl BenchReport {
    /// The run with the highest throughput.
    pub fn best(&self) -> Option<&RunResult> {
        best_run(&self.runs)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let m = &self.machine;
        let _ = writeln!(
            out,
            "concord bench: {} 2PC{}, coordinator + {} {} participants {} on 127.0.0.1, {} branches per transaction, payload {} B, {:.0}% of transactions on {} hot accounts",
            s.shape,
            s.tree.as_ref().map(|t| format!(" (tree {t})")).unwrap_or_default(),
            s.participants,
            s.resource,
            if s.started_servers { "as separate processes" } else { "(existing servers)" },
            s.branches,
            s.payload_bytes,
            s.hot_share * 100.0,
            s.hot_accounts
        );
        let _ = writeln!(
            out,
            "machine: {} cores, {}, Linux {}; warm-up {:.1} s, window {:.1} s per run; data in {}",
            m.cores, m.cpu, m.kernel, s.warmup_s, s.window_s, s.data_dir
        );
        let _ = writeln!(out, "durability: {}", self.durability);
        let _ = writeln!(out);
        out.push_str(&run_table(&self.runs));
        let _ = writeln!(out);
        if let Some(pg) = &self.postgres {
            pg.text(&mut out);
        } else {
            let _ = writeln!(out, "baselines (same machine, same run)");
            match &self.fsync_baseline {
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "  raw fsync ceiling of the data directory's disk, {} B records through the servers' log code:",
                        f.record_bytes
                    );
                    let _ = writeln!(
                        out,
                        "    one record + fsync at a time: {:.0} fsyncs/s (p50 {:.0} µs, p99 {:.0} µs)",
                        f.serial_fsyncs_per_sec, f.serial_fsync_us_p50, f.serial_fsync_us_p99
                    );
                    let _ = writeln!(
                        out,
                        "    group commit, {} writers: {:.0} durable records/s, {:.0} fsyncs/s, {:.1} records per fsync",
                        f.group_writers,
                        f.group_records_per_sec,
                        f.group_fsyncs_per_sec,
                        f.group_records_per_fsync
                    );
                }
                None => {
                    let _ = writeln!(out, "  raw fsync ceiling: not measured");
                }
            }
            match (&self.no_fsync_baseline, self.best()) {
                (Some(off), Some(best)) => {
                    let same = self
                        .runs
                        .iter()
                        .find(|r| r.concurrency == off.concurrency)
                        .unwrap_or(best);
                    let _ = writeln!(
                        out,
                        "  durability OFF (--unsafe-no-fsync: NOT durable, for comparison only) at concurrency {}: {:.0} transactions/s, p50 {:.2} ms, p99 {:.2} ms",
                        off.concurrency,
                        off.transactions_per_sec,
                        off.latency.p50_ms,
                        off.latency.p99_ms
                    );
                    if off.transactions_per_sec > 0.0 {
                        let _ = writeln!(
                            out,
                            "    durable at the same concurrency: {:.0} transactions/s = {:.0}% of it",
                            same.transactions_per_sec,
                            100.0 * same.transactions_per_sec / off.transactions_per_sec
                        );
                    }
                }
                _ => {
                    let _ = writeln!(out, "  durability off: not measured");
                }
            }
            match &self.relay_baseline {
                Some(relay) => {
                    let _ = writeln!(
                        out,
                        "  bare relay (the transport's ceiling for this pattern: same processes, connections and frames, no protocol, no log, NOT durable):"
                    );
                    for line in run_table(&relay.runs).lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                    if let Some(ratio) = relay.throughput_ratio_at_best {
                        let _ = writeln!(
                            out,
                            "    concord's best throughput = {:.0}% of the relay's at the same concurrency (a ratio: it carries across machines, the absolute figures do not)",
                            ratio * 100.0
                        );
                    }
                    if let Some(extra) = relay.extra_p50_ms_at_concurrency_1 {
                        let _ = writeln!(
                            out,
                            "    concord adds {extra:.2} ms to the p50 at concurrency 1 (protocol, forced writes, the participants' work)"
                        );
                    }
                }
                None => {
                    let _ = writeln!(out, "  bare relay: not measured");
                }
            }
        }
        if !self.optimizations.is_empty() {
            let _ = writeln!(out);
            out.push_str(&optimization_table(&self.optimizations));
        }
        if let Some(http) = &self.http_api {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "through the HTTP API (POST /v1/transactions, one keep-alive connection per task, same servers, durable; no memo payload; msg counts the HTTP request and response as 2):"
            );
            http.text(&mut out, "the binary protocol's");
        }
        if let Some(store) = &self.pg_store {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "with the coordinator's log in PostgreSQL (--store postgres://…: a throwaway cluster on this machine, fsync on, synchronous_commit on; every append durable when it returns; new servers):"
            );
            store.text(&mut out, "the file store's");
        }
        if let Some(store) = &self.pg_store_instances {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "with three coordinator instances sharing that PostgreSQL store (each its own log under a lease; the client connections go round them; same durability):"
            );
            store.text(&mut out, "the file store's");
        }
        if let Some(best) = self.best() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "best: {:.0} global transactions/s ({}) at concurrency {}, p50 {:.2} ms, p99 {:.2} ms",
                best.transactions_per_sec,
                if best.durable { "durable" } else { "NOT durable" },
                best.concurrency,
                best.latency.p50_ms,
                best.latency.p99_ms
            );
        }
        out
    }
}

/// Each optimization off → on: per-transaction messages and fsyncs (what
/// it saves by construction) and latency and throughput (what that buys
/// on this machine).
fn optimization_table(list: &[Optimization]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "optimizations, off → on (durable; same machine, same run):"
    );
    let _ = writeln!(
        out,
        "  {:<17} {:<34} {:>5} {:>14} {:>14} {:>14} {:>14} {:>16} {:>16}",
        "optimization",
        "workload",
        "conc",
        "msg/tx",
        "forced/tx",
        "fsync/tx",
        "coord fsync/tx",
        "p50 ms",
        "txn/s"
    );
    for o in list {
        for after in &o.after {
            let Some(before) = o.before.iter().find(|b| b.concurrency == after.concurrency) else {
                continue;
            };
            let pair = |b: f64, a: f64, digits: usize| format!("{b:.digits$} → {a:.digits$}");
            let _ = writeln!(
                out,
                "  {:<17} {:<34} {:>5} {:>14} {:>14} {:>14} {:>14} {:>16} {:>16}",
                o.name,
                o.workload,
                after.concurrency,
                pair(before.messages_per_txn, after.messages_per_txn, 1),
                pair(
                    before.forced_records_per_txn,
                    after.forced_records_per_txn,
                    2
                ),
                pair(before.fsyncs_per_txn, after.fsyncs_per_txn, 2),
                pair(
                    before.coordinator_fsyncs_per_txn,
                    after.coordinator_fsyncs_per_txn,
                    2
                ),
                pair(before.latency.p50_ms, after.latency.p50_ms, 2),
                pair(before.transactions_per_sec, after.transactions_per_sec, 0),
            );
        }
    }
    let _ = writeln!(
        out,
        "  (forced = records that must be durable before a message leaves; fsyncs count group commit as it happened: under load one fsync serves many forced records)"
    );
    out
}

fn run_table(runs: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>7} {:>10}",
        "conc",
        "conns",
        "txn/s",
        "commit/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "aborts",
        "errors",
        "fsync/tx",
        "msg/tx",
        "wr/tx",
        "cpu µs/tx"
    );
    for r in runs {
        let cpu = match (r.server_cpu_us_per_txn, r.client_cpu_us_per_txn) {
            (Some(s), Some(c)) => format!("{s:.0}+{c:.0}"),
            (None, Some(c)) => format!("?+{c:.0}"),
            _ => "?".into(),
        };
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>9.0} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>8.3} {:>7.1} {:>7.2} {:>10}",
            r.concurrency,
            r.connections,
            r.transactions_per_sec,
            r.committed_per_sec,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.aborted,
            r.client_errors.values().sum::<u64>(),
            r.fsyncs_per_txn,
            r.messages_per_txn,
            r.network_writes_per_txn,
            cpu
        );
    }
    let reasons: BTreeMap<&str, u64> = runs
        .iter()
        .flat_map(|r| r.aborted_by_reason.iter().chain(&r.client_errors))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k.as_str()).or_insert(0) += v;
            m
        });
    if !reasons.is_empty() {
        let list: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "aborts and errors by reason: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "(cpu = servers + load generator; msg = frames received by anyone, client ones included; wr = socket writes by the servers)"
    );
    out
}
