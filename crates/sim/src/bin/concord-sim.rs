//! `concord-sim`: run the deterministic 2PC simulation over many seeds, or
//! replay one seed with a full event trace.
//!
//! Seeds are independent, so several run at once on worker threads; each
//! run itself is single-threaded and deterministic (the threads only share
//! out seeds, they never touch a run).

use clap::Parser;
use concord_sim::{
    run_ha_seed, run_seed, HaFailure, HaOptions, HaReport, Mutant, ShapeMode, SimFailure,
    SimOptions, SimReport, MUTANTS_AVAILABLE,
};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Deterministic simulation of concord's two-phase commit (VOPR style).
///
/// Every seed builds a cluster (one coordinator, 2–7 participants), a bank
/// workload and a fault schedule (message loss, duplication, reordering,
/// partitions, crashes that lose unsynced log records, slow disks), runs a
/// safety phase with faults and a liveness phase with faults healed, and
/// checks atomicity, validity, durability, termination and conservation.
/// A failing seed is printed with the command that replays it.
#[derive(Parser, Debug)]
#[command(name = "concord-sim", version)]
struct Args {
    /// Run this many seeds: START, START+1, ...
    #[arg(long, default_value_t = 1000, conflicts_with = "seed")]
    seeds: u64,

    /// First seed of a `--seeds` run.
    #[arg(long, default_value_t = 0)]
    start: u64,

    /// Replay exactly one seed (prints its report; add --trace for events).
    #[arg(long)]
    seed: Option<u64>,

    /// With --seed: print every event of the run.
    #[arg(long, requires = "seed")]
    trace: bool,

    /// Most client transactions per seed (the seed picks how many).
    #[arg(long, default_value_t = SimOptions::default().transactions_max)]
    transactions_max: usize,

    /// The shape of the transactions: centralized, linear, or mixed (each
    /// transaction draws one).
    #[arg(long, default_value = "centralized", value_parser = parse_shape)]
    shape: ShapeMode,

    /// Worker threads for a --seeds run (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,

    /// Print one line per passing seed too.
    #[arg(long, short)]
    verbose: bool,

    /// Switch on one deliberately broken protocol rule (NAME, or `all` to
    /// try each in turn) and stop at the first seed that catches it. Needs
    /// a build with `--features mutants`; `--mutant list` names them.
    #[arg(long, value_name = "NAME")]
    mutant: Option<String>,

    /// Run the HA world instead: three coordinator instances over one
    /// shared store, with leases, takeovers, crashes, pauses longer than
    /// the lease, clock rates from 0.7 to 1.4, partitions from the store
    /// and store outages, and lookups at any instance; checks that no xid
    /// is decided two ways.
    #[arg(long)]
    ha: bool,
}

fn parse_shape(s: &str) -> Result<ShapeMode, String> {
    ShapeMode::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = ShapeMode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown shape {s:?}: one of {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = SimOptions {
        trace: args.trace,
        transactions_max: args.transactions_max,
        shape: args.shape,
        ..SimOptions::default()
    };
    let mutants = match args.mutant.as_deref() {
        None => vec![None],
        Some("list") => {
            for m in Mutant::ALL {
                println!("{}", m.name());
            }
            for m in Mutant::HA {
                println!("{} (with --ha)", m.name());
            }
            return ExitCode::SUCCESS;
        }
        Some(_) if !MUTANTS_AVAILABLE => {
            eprintln!(
                "concord-sim: this build has no mutants; rebuild with \
                 `cargo run --release -p concord-sim --features mutants -- --mutant NAME`"
            );
            return ExitCode::from(2);
        }
        Some("all") if args.ha => Mutant::HA.into_iter().map(Some).collect(),
        Some("all") => Mutant::ALL.into_iter().map(Some).collect(),
        Some(name) => match Mutant::from_name(name) {
            Some(m) => vec![Some(m)],
            None => {
                eprintln!("concord-sim: unknown mutant {name:?}; `--mutant list` names them");
                return ExitCode::from(2);
            }
        },
    };
    let mut code = ExitCode::SUCCESS;
    for mutant in mutants {
        code = match (args.ha, args.seed) {
            (true, Some(seed)) => replay_ha(seed, args.trace, mutant),
            (true, None) => sweep_ha(&args, mutant),
            (false, Some(seed)) => replay(seed, &options, mutant),
            (false, None) => sweep(&args, &options, mutant),
        };
    }
    code
}

fn replay_ha(seed: u64, trace: bool, mutant: Option<Mutant>) -> ExitCode {
    arm(mutant);
    let result = run_ha_seed(seed, &HaOptions::default(), trace);
    let (lines, last, code) = match &result {
        Ok(report) => (Vec::new(), report.to_string(), ExitCode::SUCCESS),
        Err(failure) => (
            failure.trace.clone(),
            format!("FAILED: {failure}"),
            ExitCode::FAILURE,
        ),
    };
    print_lines(&lines, &last);
    code
}

#[derive(Default)]
struct HaTotals {
    seeds: u64,
    report: HaReport,
    failures: Vec<HaFailure>,
}

fn sweep_ha(args: &Args, mutant: Option<Mutant>) -> ExitCode {
    let started = Instant::now();
    let options = HaOptions::default();
    let totals = Mutex::new(HaTotals::default());
    let jobs = each_seed(
        args,
        mutant,
        |seed| run_ha_seed(seed, &options, false),
        |result| {
            let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
            totals.seeds += 1;
            match result {
                Ok(r) => {
                    if args.verbose {
                        println!("{r}");
                    }
                    let t = &mut totals.report;
                    t.xids += r.xids;
                    t.committed += r.committed;
                    t.aborted += r.aborted;
                    t.takeovers += r.takeovers;
                    t.fenced_writes += r.fenced_writes;
                    t.lookups += r.lookups;
                    t.lookups_decided += r.lookups_decided;
                    t.crashes += r.crashes;
                    t.pauses += r.pauses;
                    t.events += r.events;
                }
                Err(failure) => {
                    println!("FAILED: {failure}");
                    totals.failures.push(failure);
                }
            }
        },
    );
    let mut totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    totals.failures.sort_by_key(|f| f.seed);
    let wall = started.elapsed().as_secs_f64();
    if let Some(mutant) = mutant {
        return match totals.failures.first() {
            Some(f) => {
                println!(
                    "mutant {} (HA): caught at seed {}: {}\n    replay: cargo run --release -p \
                     concord-sim --features mutants -- --ha --mutant {} --seed {} --trace",
                    mutant.name(),
                    f.seed,
                    f.what,
                    mutant.name(),
                    f.seed
                );
                ExitCode::SUCCESS
            }
            None => {
                println!(
                    "mutant {} (HA): NOT caught in {} seeds ({wall:.1} s)",
                    mutant.name(),
                    totals.seeds
                );
                ExitCode::FAILURE
            }
        };
    }
    let t = &totals.report;
    println!(
        "HA seeds {}..{}: {} run, {} failed, in {wall:.1} s wall ({jobs} jobs)",
        args.start,
        args.start.saturating_add(args.seeds),
        totals.seeds,
        totals.failures.len()
    );
    println!(
        "totals: {} xids ({} committed, {} aborted), {} takeovers, {} writes fenced off, \
         {} crashes, {} pauses, {} events, {} lookups at any instance ({} decided their xid)",
        t.xids,
        t.committed,
        t.aborted,
        t.takeovers,
        t.fenced_writes,
        t.crashes,
        t.pauses,
        t.events,
        t.lookups,
        t.lookups_decided
    );
    if totals.failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("failing seeds:");
    for f in &totals.failures {
        println!("  {f}");
    }
    ExitCode::FAILURE
}

/// Switch `mutant` on for the current thread (no-op without the feature,
/// where `main` never lets one through).
fn arm(mutant: Option<Mutant>) {
    #[cfg(feature = "mutants")]
    concord_sim::set_mutant(mutant);
    #[cfg(not(feature = "mutants"))]
    let _ = mutant;
}

fn replay(seed: u64, options: &SimOptions, mutant: Option<Mutant>) -> ExitCode {
    arm(mutant);
    let started = Instant::now();
    let result = run_seed(seed, options);
    let wall = started.elapsed().as_secs_f64();
    let (trace, last, code) = match &result {
        Ok(report) => (
            &report.trace[..],
            format!("{report}\nok in {wall:.3} s wall"),
            ExitCode::SUCCESS,
        ),
        Err(failure) => (
            &failure.trace[..],
            format!("FAILED: {failure}"),
            ExitCode::FAILURE,
        ),
    };
    print_lines(trace, &last);
    code
}

/// A replay's trace, then its last line. A closed pipe (`| head`) just
/// ends the output.
fn print_lines(trace: &[String], last: &str) {
    let mut out = std::io::stdout().lock();
    for line in trace
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(last))
    {
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    transactions: u64,
    committed: u64,
    aborted: u64,
    unknown: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    compactions: u64,
    crashes_in_compaction: u64,
    fsync_errors: u64,
    events: u64,
    virtual_us: u64,
    failures: Vec<SimFailure>,
}

impl Totals {
    fn add(&mut self, report: &SimReport) {
        self.seeds += 1;
        self.transactions += report.transactions;
        self.committed += report.committed;
        self.aborted += report.aborted;
        self.unknown += report.unknown;
        self.messages += report.messages_sent;
        self.dropped += report.messages_dropped;
        self.duplicated += report.messages_duplicated;
        self.crashes += report.crashes;
        self.compactions += report.compactions;
        self.crashes_in_compaction += report.crashes_in_compaction;
        self.fsync_errors += report.fsync_errors;
        self.events += report.events;
        self.virtual_us += report.virtual_time.0;
    }
}

/// Run seeds `args.start..` on `args.jobs` threads, handing each result
/// to `on`; with a mutant, stop at the first (lowest) seed that fails.
/// Returns the number of jobs.
fn each_seed<R, F>(
    args: &Args,
    mutant: Option<Mutant>,
    run: impl Fn(u64) -> Result<R, F> + Sync,
    on: impl Fn(Result<R, F>) + Sync,
) -> usize {
    let end = args.start.saturating_add(args.seeds);
    let next = AtomicU64::new(args.start);
    // Seeds below a failing one still finish, so the lowest is exact.
    let stop_at = AtomicU64::new(u64::MAX);
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                arm(mutant);
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end.min(stop_at.load(Ordering::Relaxed)) {
                    return;
                }
                let result = run(seed);
                if result.is_err() && mutant.is_some() {
                    stop_at.fetch_min(seed, Ordering::Relaxed);
                }
                on(result);
            });
        }
    });
    jobs
}

fn sweep(args: &Args, options: &SimOptions, mutant: Option<Mutant>) -> ExitCode {
    let started = Instant::now();
    let end = args.start.saturating_add(args.seeds);
    let totals = Mutex::new(Totals::default());
    let jobs = each_seed(
        args,
        mutant,
        |seed| run_seed(seed, options),
        |result| {
            let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(report) => {
                    if args.verbose {
                        println!("{report}");
                    }
                    totals.add(&report);
                }
                Err(failure) => {
                    println!("FAILED: {failure}");
                    totals.seeds += 1;
                    totals.failures.push(failure);
                }
            }
        },
    );
    let mut totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    totals.failures.sort_by_key(|f| f.seed);
    let wall = started.elapsed().as_secs_f64();
    if let Some(mutant) = mutant {
        return report_mutant(args, mutant, &totals, wall);
    }
    println!(
        "seeds {}..{}: {} run, {} failed, in {wall:.1} s wall ({jobs} jobs)",
        args.start,
        end,
        totals.seeds,
        totals.failures.len()
    );
    println!(
        "totals: {} txns ({} committed, {} aborted, {} unknown to the client), {} messages \
         ({} dropped, {} duplicated), {} crashes ({} during a compaction, {} fsync errors), \
         {} compactions, {} events, {:.1} s virtual",
        totals.transactions,
        totals.committed,
        totals.aborted,
        totals.unknown,
        totals.messages,
        totals.dropped,
        totals.duplicated,
        totals.crashes,
        totals.crashes_in_compaction,
        totals.fsync_errors,
        totals.compactions,
        totals.events,
        totals.virtual_us as f64 / 1e6
    );
    if totals.failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("failing seeds:");
    for f in &totals.failures {
        println!(
            "  seed {}: {} ({:?})\n    {}",
            f.seed,
            f.invariant,
            f.xid,
            f.replay_command()
        );
    }
    ExitCode::FAILURE
}

/// One line per mutant: caught (by which invariant, at which seed) or not.
/// Caught is success: the broken rule was noticed.
fn report_mutant(args: &Args, mutant: Mutant, totals: &Totals, wall: f64) -> ExitCode {
    match totals.failures.first() {
        Some(f) => {
            println!(
                "mutant {}: caught by {} at seed {} ({} seeds from {}) in {wall:.1} s\n    \
                 replay: cargo run --release -p concord-sim --features mutants -- --mutant {} --seed {} --trace",
                mutant.name(),
                f.invariant,
                f.seed,
                f.seed - args.start + 1,
                args.start,
                mutant.name(),
                f.seed
            );
            ExitCode::SUCCESS
        }
        None => {
            println!(
                "mutant {}: NOT caught in {} seeds from {} ({wall:.1} s)",
                mutant.name(),
                totals.seeds,
                args.start
            );
            ExitCode::FAILURE
        }
    }
}
