//! The raw fsync ceiling of the data directory's disk: how many durable
//! writes per second the disk itself allows, measured with the same code the
//! coordinator and participants use to write their logs
//! ([`concord_store::FileLog`] and [`concord_store::GroupCommit`]), so the
//! benchmark can show how close concord gets to what the hardware permits.
//!
//! Two measurements, each in its own fresh subdirectory of the data
//! directory (removed afterwards), each for the same wall-clock duration:
//!
//! - **serial**: one record appended, then `sync` (fdatasync), then the next
//!   record: the rate and latency of one durable write at a time.
//! - **group commit**: `writers` threads each submit one forced record to a
//!   single `GroupCommit` and wait for its completion before submitting the
//!   next: the records/s and fsyncs/s a group-committed log reaches, and how
//!   many records share one fsync.
//!
//! **Every record is really fsynced**: the log is opened with
//! `FileLogOptions::default()` (`fsync: true`), every serial append is
//! followed by its own fdatasync, and every group-commit submission is forced,
//! so its completion runs only after an fdatasync covering it. (`FileLog`
//! skips a sync only when nothing was appended since the last one, which
//! never happens here.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use concord_store::{FileLog, FileLogOptions, GroupCommit, LogStore};

/// Result of [`measure_fsync`]. Rates are per second of wall-clock time of
/// the measurement; latencies are of one `append` + `sync` pair.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FsyncBaseline {
    pub record_bytes: usize,
    /// one record appended then fsynced, serially
    pub serial_fsyncs_per_sec: f64,
    pub serial_fsync_us_p50: f64,
    pub serial_fsync_us_p99: f64,
    /// `writers` threads each submitting one forced record to one GroupCommit and waiting for it
    pub group_writers: usize,
    pub group_records_per_sec: f64,
    pub group_fsyncs_per_sec: f64,
    pub group_records_per_fsync: f64,
}

/// Measure the fsync ceiling of the disk holding `dir` with records of
/// `record_bytes` bytes: first serially, then with `writers` threads sharing
/// one group commit, each half for `duration` (at least one record each).
/// `dir` is created if missing; the subdirectories used are removed
/// afterwards, also on error.
pub fn measure_fsync(
    dir: &Path,
    record_bytes: usize,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<FsyncBaseline> {
    ensure!(
        writers >= 1,
        "fsync baseline: need at least one group-commit writer"
    );
    std::fs::create_dir_all(dir)
        .with_context(|| format!("fsync baseline: cannot create {}", dir.display()))?;
    let record = record_payload(record_bytes);

    let serial = in_fresh_dir(dir, "fsync-serial", |sub| {
        measure_serial(sub, &record, duration)
    })?;
    let group = in_fresh_dir(dir, "fsync-group", |sub| {
        measure_group(sub, &record, writers, duration)
    })?;

    Ok(FsyncBaseline {
        record_bytes,
        serial_fsyncs_per_sec: serial.fsyncs_per_sec,
        serial_fsync_us_p50: serial.us_p50,
        serial_fsync_us_p99: serial.us_p99,
        group_writers: writers,
        group_records_per_sec: group.records_per_sec,
        group_fsyncs_per_sec: group.fsyncs_per_sec,
        group_records_per_fsync: group.records_per_fsync,
    })
}

/// A record of `len` bytes that is not all zeros (some file systems treat
/// zero blocks specially).
fn record_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

/// Run `f` in a new, empty directory under `parent` named after `prefix`,
/// then remove the directory (and report if that fails). On error from `f`
/// the directory is still removed, on a best-effort basis.
fn in_fresh_dir<T>(
    parent: &Path,
    prefix: &str,
    f: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let sub = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(parent)
        .with_context(|| {
            format!(
                "fsync baseline: cannot create a {prefix} directory in {}",
                parent.display()
            )
        })?;
    let path = sub.path().to_path_buf();
    let result = f(&path).with_context(|| format!("fsync baseline in {}", path.display()))?;
    sub.close()
        .with_context(|| format!("fsync baseline: cannot remove {}", path.display()))?;
    Ok(result)
}

struct Serial {
    fsyncs_per_sec: f64,
    us_p50: f64,
    us_p99: f64,
}

fn measure_serial(dir: &Path, record: &[u8], duration: Duration) -> anyhow::Result<Serial> {
    let (mut log, _) = FileLog::open(dir, FileLogOptions::default())
        .with_context(|| format!("cannot open a log in {}", dir.display()))?;
    // Nanoseconds, so that sub-microsecond syncs (tmpfs) do not round to 0.
    let mut latencies_ns: Vec<u64> = Vec::new();
    let start = Instant::now();
    loop {
        let t0 = Instant::now();
        log.append(&[record]).context("append failed")?;
        log.sync().context("fdatasync failed")?;
        latencies_ns.push(duration_ns(t0.elapsed()));
        if start.elapsed() >= duration {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(log);
    latencies_ns.sort_unstable();
    Ok(Serial {
        fsyncs_per_sec: latencies_ns.len() as f64 / elapsed,
        us_p50: percentile(&latencies_ns, 0.50) as f64 / 1000.0,
        us_p99: percentile(&latencies_ns, 0.99) as f64 / 1000.0,
    })
}

struct Group {
    records_per_sec: f64,
    fsyncs_per_sec: f64,
    records_per_fsync: f64,
}

fn measure_group(
    dir: &Path,
    record: &[u8],
    writers: usize,
    duration: Duration,
) -> anyhow::Result<Group> {
    let (log, _) = FileLog::open(dir, FileLogOptions::default())
        .with_context(|| format!("cannot open a log in {}", dir.display()))?;
    let commit = GroupCommit::start(Box::new(log), "bench-fsync");
    let failed = AtomicBool::new(false);

    let start = Instant::now();
    let outcome = thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::with_capacity(writers);
        for i in 0..writers {
            let (commit, failed) = (&commit, &failed);
            let handle = thread::Builder::new()
                .name(format!("fsync-bench-{i}"))
                .spawn_scoped(scope, move || {
                    let result = group_writer(commit, record, start, duration, failed);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    result
                });
            match handle {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Let the threads already started stop; the scope joins them.
                    failed.store(true, Ordering::Relaxed);
                    return Err(anyhow!(e).context("cannot spawn a group-commit writer thread"));
                }
            }
        }
        let mut first_error = None;
        for handle in handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a group-commit writer thread panicked")));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    let elapsed = start.elapsed().as_secs_f64();
    // Every submission was waited for, so the counters are final.
    let stats = commit.stats();
    commit.shutdown();
    outcome?;

    ensure!(
        stats.syncs > 0 && stats.records > 0,
        "group commit wrote {} records with {} fsyncs; expected at least one of each",
        stats.records,
        stats.syncs
    );
    Ok(Group {
        records_per_sec: stats.records as f64 / elapsed,
        fsyncs_per_sec: stats.syncs as f64 / elapsed,
        records_per_fsync: stats.records as f64 / stats.syncs as f64,
    })
}

/// One closed-loop writer: submit one forced record, wait until it is
/// durable, repeat until `duration` has passed since `start` (at least once)
/// or another writer failed.
fn group_writer(
    commit: &GroupCommit,
    record: &[u8],
    start: Instant,
    duration: Duration,
    failed: &AtomicBool,
) -> anyhow::Result<()> {
    let (sender, receiver) = mpsc::channel();
    loop {
        let sender = sender.clone();
        commit.submit(
            vec![record.to_vec()],
            true,
            Box::new(move |result| {
                // The receiver outlives every submission: it waits for each.
                let _ = sender.send(result);
            }),
        );
        receiver
            .recv()
            .context("group commit dropped a completion")?
            .context("forced append failed")?;
        if start.elapsed() >= duration || failed.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of a sorted, non-empty slice (`q` in 0..=1).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_positive_rates_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let b = measure_fsync(dir.path(), 128, 4, Duration::from_millis(100)).unwrap();
        eprintln!("{b:?}");
        assert_eq!(b.record_bytes, 128);
        assert_eq!(b.group_writers, 4);
        for (name, value) in [
            ("serial_fsyncs_per_sec", b.serial_fsyncs_per_sec),
            ("serial_fsync_us_p50", b.serial_fsync_us_p50),
            ("serial_fsync_us_p99", b.serial_fsync_us_p99),
            ("group_records_per_sec", b.group_records_per_sec),
            ("group_fsyncs_per_sec", b.group_fsyncs_per_sec),
            ("group_records_per_fsync", b.group_records_per_fsync),
        ] {
            assert!(value.is_finite() && value > 0.0, "{name} = {value}");
        }
        assert!(b.serial_fsync_us_p99 >= b.serial_fsync_us_p50);
        assert!(b.group_records_per_fsync >= 1.0, "{b:?}");
        // Both subdirectories were removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn zero_writers_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(measure_fsync(dir.path(), 16, 0, Duration::from_millis(1)).is_err());
    }

    #[test]
    fn uncreatable_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = measure_fsync(&file.join("sub"), 16, 1, Duration::from_millis(1)).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
