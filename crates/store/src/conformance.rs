//! The conformance suite every [`LogStore`] implementation must pass: one set
//! of checks of the durability contract, run against [`FileLog`] and
//! [`MemLog`] here and reusable by any other implementation's tests.
//!
//! An implementation plugs in through a [`Harness`], which can restart the
//! process (clean reopen) and simulate a machine crash that loses unsynced
//! writes in the ways that implementation can lose them. The checks keep a
//! model of what was appended and synced and compare every recovery with it.
//!
//! This is test code compiled into the library so other crates can use it:
//! it panics (with the check's name) on failure and must never be called
//! from production paths.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::file_log::FILE_NAME;
use crate::{FileLog, FileLogOptions, LogStore, MemLog};

/// How an implementation's test plugs into the suite.
pub trait Harness {
    /// The store under test (empty when the harness is new).
    fn store(&mut self) -> &mut dyn LogStore;
    /// Restart the process without a machine crash (no data loss allowed
    /// for appended records) and return what recovery found.
    fn reopen(&mut self) -> Vec<Vec<u8>>;
    /// Simulate a machine crash, in a way chosen by `seed`, then recover and
    /// return what recovery found. Anything not synced may be lost.
    fn crash(&mut self, seed: u64) -> Vec<Vec<u8>>;
}

/// A named check of the contract.
pub type Check = fn(&mut dyn Harness);

/// Every check, with the rule it checks as its name.
pub const CHECKS: &[(&str, Check)] = &[
    ("empty_log_recovers_empty", empty_log_recovers_empty),
    (
        "synced_records_reopen_in_append_order",
        synced_records_reopen_in_append_order,
    ),
    (
        "appended_records_survive_a_process_restart",
        appended_records_survive_a_process_restart,
    ),
    (
        "empty_appends_and_empty_records",
        empty_appends_and_empty_records,
    ),
    ("large_records_round_trip", large_records_round_trip),
    (
        "many_small_records_round_trip",
        many_small_records_round_trip,
    ),
    ("rewrite_replaces_the_content", rewrite_replaces_the_content),
    (
        "rewrite_is_durable_without_sync",
        rewrite_is_durable_without_sync,
    ),
    (
        "crash_keeps_synced_records_and_a_prefix_of_the_rest",
        crash_keeps_synced_records_and_a_prefix_of_the_rest,
    ),
    (
        "crash_with_nothing_unsynced_loses_nothing",
        crash_with_nothing_unsynced_loses_nothing,
    ),
];

/// Run every check, each on a fresh harness from `new_harness`. Runs them
/// all, then panics listing the ones that failed.
pub fn run_all<H: Harness>(mut new_harness: impl FnMut() -> H) {
    let mut failed = Vec::new();
    for (name, check) in CHECKS {
        let mut harness = new_harness();
        if panic::catch_unwind(AssertUnwindSafe(|| check(&mut harness))).is_err() {
            eprintln!("conformance check failed: {name}");
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "conformance checks failed: {failed:?}");
}

// ---------------------------------------------------------------------------
// The checks

pub fn empty_log_recovers_empty(h: &mut dyn Harness) {
    let mut m = Model::default();
    m.expect_reopen(h);
    m.expect_crash(h, 0);
    m.expect_crash(h, 1);
}

pub fn synced_records_reopen_in_append_order(h: &mut dyn Harness) {
    let mut m = Model::default();
    for batch in 0..5 {
        m.append(h, records(batch, 1 + batch as usize));
        m.sync(h);
    }
    m.expect_reopen(h);
    m.append(h, records(9, 3));
    m.sync(h);
    m.expect_reopen(h);
    m.expect_reopen(h);
}

pub fn appended_records_survive_a_process_restart(h: &mut dyn Harness) {
    let mut m = Model::default();
    m.append(h, records(1, 4));
    m.sync(h);
    m.append(h, records(2, 4));
    m.expect_reopen(h);
}

pub fn empty_appends_and_empty_records(h: &mut dyn Harness) {
    let mut m = Model::default();
    m.append(h, vec![]);
    m.append(h, vec![vec![]]);
    m.append(h, vec![vec![], b"x".to_vec(), vec![]]);
    m.sync(h);
    m.expect_reopen(h);
}

pub fn large_records_round_trip(h: &mut dyn Harness) {
    let mut m = Model::default();
    let big = |n: usize, seed: u64| {
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>()
    };
    m.append(h, vec![big(1 << 20, 1), b"small".to_vec(), big(4 << 20, 2)]);
    m.sync(h);
    m.append(h, vec![big(3 << 20, 3)]);
    m.sync(h);
    m.expect_reopen(h);
}

pub fn many_small_records_round_trip(h: &mut dyn Harness) {
    let mut m = Model::default();
    for batch in 0..200 {
        m.append(h, records(batch, 50));
        if batch % 10 == 9 {
            m.sync(h);
        }
    }
    m.sync(h);
    m.expect_reopen(h);
}

pub fn rewrite_replaces_the_content(h: &mut dyn Harness) {
    let mut m = Model::default();
    m.append(h, records(1, 10));
    m.sync(h);
    m.rewrite(h, records(2, 3));
    m.expect_reopen(h);
    m.append(h, records(3, 2));
    m.sync(h);
    m.expect_reopen(h);
    m.rewrite(h, vec![]);
    m.expect_reopen(h);
    m.append(h, records(4, 2));
    m.sync(h);
    m.expect_reopen(h);
}

pub fn rewrite_is_durable_without_sync(h: &mut dyn Harness) {
    let mut m = Model::default();
    for seed in 0..12 {
        m.append(h, records(seed, 5));
        m.rewrite(h, records(100 + seed, 2));
        // Nothing appended after the rewrite: a crash must keep exactly it.
        let recovered = h.crash(seed);
        assert_eq!(recovered, m.records, "crash seed {seed} after rewrite");
    }
}

pub fn crash_keeps_synced_records_and_a_prefix_of_the_rest(h: &mut dyn Harness) {
    let mut m = Model::default();
    for seed in 0..36 {
        m.append(h, records(seed, 3));
        m.sync(h);
        m.append(h, records(1000 + seed, 1 + (seed % 4) as usize));
        m.append(h, records(2000 + seed, 2));
        m.expect_crash(h, seed);
        // Appends continue cleanly after whatever the crash left behind.
        m.append(h, records(3000 + seed, 1));
        m.sync(h);
        m.expect_reopen(h);
    }
}

pub fn crash_with_nothing_unsynced_loses_nothing(h: &mut dyn Harness) {
    let mut m = Model::default();
    for seed in 0..12 {
        m.append(h, records(seed, 4));
        m.sync(h);
        let recovered = h.crash(seed);
        assert_eq!(
            recovered, m.records,
            "crash seed {seed} with everything synced"
        );
    }
}

// ---------------------------------------------------------------------------
// The model the checks compare recoveries with

/// What the store must hold: all appended records, the first `synced` durable.
#[derive(Default)]
struct Model {
    records: Vec<Vec<u8>>,
    synced: usize,
}

impl Model {
    fn append(&mut self, h: &mut dyn Harness, batch: Vec<Vec<u8>>) {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        if let Err(e) = h.store().append(&refs) {
            panic!("append failed: {e}");
        }
        self.records.extend(batch);
    }

    fn sync(&mut self, h: &mut dyn Harness) {
        if let Err(e) = h.store().sync() {
            panic!("sync failed: {e}");
        }
        self.synced = self.records.len();
    }

    fn rewrite(&mut self, h: &mut dyn Harness, content: Vec<Vec<u8>>) {
        let refs: Vec<&[u8]> = content.iter().map(Vec::as_slice).collect();
        if let Err(e) = h.store().rewrite(&refs) {
            panic!("rewrite failed: {e}");
        }
        self.records = content;
        self.synced = self.records.len();
    }

    /// A clean restart returns every appended record, in order.
    fn expect_reopen(&mut self, h: &mut dyn Harness) {
        let recovered = h.reopen();
        assert_eq!(
            recovered.len(),
            self.records.len(),
            "reopen returned a different number of records"
        );
        assert!(
            recovered == self.records,
            "reopen returned different records"
        );
        self.synced = self.records.len();
    }

    /// A crash keeps every synced record, then some prefix of the unsynced
    /// ones: no gap, no reordering, nothing invented.
    fn expect_crash(&mut self, h: &mut dyn Harness, seed: u64) {
        let recovered = h.crash(seed);
        let n = recovered.len();
        assert!(
            n >= self.synced,
            "crash seed {seed}: lost synced records ({n} recovered, {} synced)",
            self.synced
        );
        assert!(
            n <= self.records.len(),
            "crash seed {seed}: recovered {n} records, only {} were appended",
            self.records.len()
        );
        assert!(
            recovered[..] == self.records[..n],
            "crash seed {seed}: recovered records are not a prefix of the appended ones"
        );
        self.records = recovered;
        self.synced = n;
    }
}

/// `count` distinct records of varying length (0..=200 bytes) for batch `batch`.
fn records(batch: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64(batch.wrapping_mul(0x9E37_79B9) ^ count as u64);
    (0..count)
        .map(|i| {
            let mut record = format!("b{batch}r{i}:").into_bytes();
            let extra = (rng.next() % 192) as usize;
            record.extend((0..extra).map(|_| rng.next() as u8));
            record
        })
        .collect()
}

/// A tiny deterministic PRNG so the suite needs no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

// ---------------------------------------------------------------------------
// Harnesses for the implementations in this crate

/// Runs the suite on [`FileLog`]. A crash is simulated by copying only the
/// first `synced_len()` bytes of the log to a fresh directory, followed,
/// depending on the seed, by nothing, all or part of the unsynced bytes,
/// random garbage, or zeros (torn writes), and opening that copy.
pub struct FileHarness {
    root: PathBuf,
    options: FileLogOptions,
    dir: PathBuf,
    generation: u32,
    log: Option<FileLog>,
    /// Warnings from every recovery so far.
    pub warnings: Vec<String>,
}

impl FileHarness {
    /// A harness keeping its logs in directories under `root` (which should
    /// be empty or missing).
    pub fn new(root: &Path) -> FileHarness {
        FileHarness::with_options(root, FileLogOptions::default())
    }

    pub fn with_options(root: &Path, options: FileLogOptions) -> FileHarness {
        let mut harness = FileHarness {
            root: root.to_path_buf(),
            options,
            dir: root.join("gen-0"),
            generation: 0,
            log: None,
            warnings: Vec::new(),
        };
        harness.open();
        harness
    }

    /// The log currently open.
    pub fn log(&mut self) -> &mut FileLog {
        self.log
            .as_mut()
            .expect("FileHarness always holds an open log")
    }

    fn open(&mut self) -> Vec<Vec<u8>> {
        self.log = None; // release the lock before reopening
        match FileLog::open(&self.dir, self.options.clone()) {
            Ok((log, recovered)) => {
                self.log = Some(log);
                self.warnings.extend(recovered.warnings);
                recovered.records
            }
            Err(e) => panic!("FileLog::open failed: {e}"),
        }
    }
}

impl Harness for FileHarness {
    fn store(&mut self) -> &mut dyn LogStore {
        self.log()
    }

    fn reopen(&mut self) -> Vec<Vec<u8>> {
        self.open()
    }

    fn crash(&mut self, seed: u64) -> Vec<Vec<u8>> {
        let log = self
            .log
            .take()
            .expect("FileHarness always holds an open log");
        let synced = log.synced_len() as usize;
        let path = log.path().to_path_buf();
        drop(log);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (durable, unsynced) = bytes.split_at(synced);
        let mut rng = SplitMix64(seed);
        let mut image = durable.to_vec();
        match seed % 6 {
            0 => {}                                 // no unsynced write reached the disk
            1 => image.extend_from_slice(unsynced), // all of them did
            2 => image.extend_from_slice(&unsynced[..rng.up_to(unsynced.len())]), // torn write
            3 => image.extend((0..1 + rng.up_to(63)).map(|_| rng.next() as u8)), // garbage
            4 => image.resize(image.len() + 1 + rng.up_to(4095), 0), // size grew, data did not land
            _ => {
                // torn write, then zeros where the rest of it should be
                image.extend_from_slice(&unsynced[..rng.up_to(unsynced.len())]);
                image.resize(image.len() + 1 + rng.up_to(511), 0);
            }
        }
        self.generation += 1;
        self.dir = self.root.join(format!("gen-{}", self.generation));
        fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.dir.display()));
        let copy = self.dir.join(FILE_NAME);
        fs::write(&copy, &image).unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
        self.open()
    }
}

/// Runs the suite on [`MemLog`], crashing it with [`MemLog::crash`].
#[derive(Default)]
pub struct MemHarness {
    pub log: MemLog,
}

impl Harness for MemHarness {
    fn store(&mut self) -> &mut dyn LogStore {
        &mut self.log
    }

    fn reopen(&mut self) -> Vec<Vec<u8>> {
        self.log = MemLog::from_records(self.log.records());
        self.log.records()
    }

    fn crash(&mut self, seed: u64) -> Vec<Vec<u8>> {
        let keep_unsynced = match seed % 3 {
            0 => 0,
            1 => usize::MAX,
            _ => SplitMix64(seed).up_to(self.log.unsynced_count()),
        };
        self.log.crash(keep_unsynced);
        self.log.records()
    }
}
