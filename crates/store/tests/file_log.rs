//! FileLog recovery rules, one test per rule (see the `file_log` module docs).

use std::fs;
use std::path::{Path, PathBuf};

use concord_store::file_log::{encode_log, FILE_HEADER_BYTES, FILE_NAME, RECORD_HEADER_BYTES};
use concord_store::{FileLog, FileLogOptions, LogStore, StoreError};

fn recs(items: &[&[u8]]) -> Vec<Vec<u8>> {
    items.iter().map(|r| r.to_vec()).collect()
}

/// Write `image` as the log file of `dir` (creating `dir`).
fn write_image(dir: &Path, image: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).expect("create dir");
    let path = dir.join(FILE_NAME);
    fs::write(&path, image).expect("write image");
    path
}

/// Byte offset of record `index` in a log of `records`.
fn offset_of(records: &[&[u8]], index: usize) -> usize {
    FILE_HEADER_BYTES
        + records[..index]
            .iter()
            .map(|r| RECORD_HEADER_BYTES + r.len())
            .sum::<usize>()
}

fn open(dir: &Path) -> Result<(FileLog, concord_store::Recovered), StoreError> {
    FileLog::open(dir, FileLogOptions::default())
}

fn open_ok(dir: &Path) -> (FileLog, concord_store::Recovered) {
    open(dir).unwrap_or_else(|e| panic!("open failed: {e}"))
}

fn expect_corrupt_at(
    result: Result<(FileLog, concord_store::Recovered), StoreError>,
    path: &Path,
    expected: usize,
) {
    match result {
        Err(e @ StoreError::Corrupt { .. }) => {
            let StoreError::Corrupt {
                path: p, offset, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*offset, expected as u64, "{e}");
            assert_eq!(p, path);
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("offset {expected}")), "{message}");
        }
        Err(e) => panic!("expected Corrupt at {expected}, got {e}"),
        Ok((_, recovered)) => panic!("expected Corrupt at {expected}, got {recovered:?}"),
    }
}

/// Checks that a torn tail at `torn_at` was dropped, the file truncated
/// there, and that appends continue cleanly after it.
fn expect_torn_tail_dropped(dir: &Path, good: &[&[u8]], torn_at: usize) {
    let (mut log, recovered) = open_ok(dir);
    assert_eq!(recovered.records, recs(good));
    assert_eq!(recovered.warnings.len(), 1, "{:?}", recovered.warnings);
    let warning = &recovered.warnings[0];
    assert!(
        warning.contains(&format!("byte offset {torn_at}")),
        "{warning}"
    );
    assert!(warning.contains("torn"), "{warning}");
    assert_eq!(log.written_len(), torn_at as u64);
    assert_eq!(
        fs::metadata(log.path()).expect("stat").len(),
        torn_at as u64
    );

    log.append(&[b"after"]).expect("append");
    log.sync().expect("sync");
    drop(log);
    let (_, recovered) = open_ok(dir);
    let mut expected = recs(good);
    expected.push(b"after".to_vec());
    assert_eq!(recovered.records, expected);
    assert!(recovered.warnings.is_empty(), "{:?}", recovered.warnings);
}

const GOOD: &[&[u8]] = &[b"one", b"", b"three", b"four four"];

#[test]
fn open_creates_the_directory_and_an_empty_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a/b/log");
    let (log, recovered) = open_ok(&dir);
    assert!(recovered.records.is_empty() && recovered.warnings.is_empty());
    assert_eq!(log.written_len(), FILE_HEADER_BYTES as u64);
    assert_eq!(log.synced_len(), FILE_HEADER_BYTES as u64);
    assert_eq!(
        fs::read(dir.join(FILE_NAME)).expect("read"),
        encode_log(&[])
    );
}

#[test]
fn torn_tail_short_record_header_is_dropped_with_warning_and_appends_continue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let torn_at = image.len();
    image.extend_from_slice(&[5, 0, 0]);
    write_image(tmp.path(), &image);
    expect_torn_tail_dropped(tmp.path(), GOOD, torn_at);
}

#[test]
fn torn_tail_short_payload_is_dropped_with_warning_and_appends_continue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let full = encode_log(&[GOOD[0], GOOD[1], GOOD[2], GOOD[3], b"a record cut short"]);
    let torn_at = offset_of(GOOD, GOOD.len());
    write_image(tmp.path(), &full[..full.len() - 5]);
    expect_torn_tail_dropped(tmp.path(), GOOD, torn_at);
}

#[test]
fn torn_tail_bad_checksum_on_the_last_record_is_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(&[GOOD[0], GOOD[1], GOOD[2], GOOD[3], b"last"]);
    let last = image.len() - 1;
    image[last] ^= 0xff;
    write_image(tmp.path(), &image);
    expect_torn_tail_dropped(tmp.path(), GOOD, offset_of(GOOD, GOOD.len()));
}

#[test]
fn torn_tail_followed_by_zeros_is_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let full = encode_log(&[GOOD[0], GOOD[1], GOOD[2], GOOD[3], b"half written"]);
    let mut image = full[..full.len() - 4].to_vec();
    image.resize(image.len() + 4096, 0);
    write_image(tmp.path(), &image);
    expect_torn_tail_dropped(tmp.path(), GOOD, offset_of(GOOD, GOOD.len()));
}

#[test]
fn zeros_after_the_last_good_record_are_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let torn_at = image.len();
    image.resize(image.len() + 100, 0);
    write_image(tmp.path(), &image);
    expect_torn_tail_dropped(tmp.path(), GOOD, torn_at);
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_path_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let bad = offset_of(GOOD, 2);
    image[bad + RECORD_HEADER_BYTES + 1] ^= 0x01; // one bit in "three"
    let path = write_image(tmp.path(), &image);
    expect_corrupt_at(open(tmp.path()), &path, bad);
    // Refusing must not repair anything: the file is untouched.
    assert_eq!(fs::read(&path).expect("read"), image);
}

#[test]
fn corrupted_length_in_the_middle_is_an_error_not_a_torn_tail() {
    // A length that runs past the end of the file looks like a short
    // payload, but valid records follow the damage.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let bad = offset_of(GOOD, 1);
    image[bad..bad + 4].copy_from_slice(&100_000u32.to_le_bytes());
    let path = write_image(tmp.path(), &image);
    expect_corrupt_at(open(tmp.path()), &path, bad);
}

#[test]
fn bad_magic_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    image[0] = b'X';
    let path = write_image(tmp.path(), &image);
    expect_corrupt_at(open(tmp.path()), &path, 0);
}

#[test]
fn unsupported_format_version_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    image[8..12].copy_from_slice(&2u32.to_le_bytes());
    let path = write_image(tmp.path(), &image);
    expect_corrupt_at(open(tmp.path()), &path, 8);
}

#[test]
fn truncated_file_header_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = encode_log(&[]);
    for len in [0, 5, FILE_HEADER_BYTES - 1] {
        let dir = tmp.path().join(format!("len-{len}"));
        let path = write_image(&dir, &image[..len]);
        expect_corrupt_at(open(&dir), &path, 0);
    }
}

/// A record header claiming `len` bytes with a checksum that cannot match.
fn bogus_header(len: u32) -> Vec<u8> {
    let mut header = len.to_le_bytes().to_vec();
    header.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    header
}

fn small_max() -> FileLogOptions {
    FileLogOptions {
        record_bytes_max: 64,
        ..FileLogOptions::default()
    }
}

#[test]
fn length_above_max_at_the_tail_is_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let torn_at = image.len();
    image.extend(bogus_header(65));
    image.extend_from_slice(&[1u8; 65]);
    write_image(tmp.path(), &image);
    let (log, recovered) = FileLog::open(tmp.path(), small_max()).expect("open");
    assert_eq!(recovered.records, recs(GOOD));
    assert!(recovered.warnings[0].contains(&format!("byte offset {torn_at}")));
    assert!(recovered.warnings[0].contains("exceeds record_bytes_max"));
    assert_eq!(log.written_len(), torn_at as u64);
}

#[test]
fn length_above_max_in_the_middle_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut image = encode_log(GOOD);
    let bad = image.len();
    image.extend(bogus_header(65));
    image.extend_from_slice(&encode_log(&[b"valid after the damage"])[FILE_HEADER_BYTES..]);
    let path = write_image(tmp.path(), &image);
    expect_corrupt_at(FileLog::open(tmp.path(), small_max()), &path, bad);
}

#[test]
fn append_rejects_a_record_above_the_max_and_stays_usable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = FileLog::open(tmp.path(), small_max()).expect("open");
    let big = [0u8; 65];
    let err = log.append(&[b"ok", &big]).expect_err("oversized");
    assert!(
        matches!(
            err,
            StoreError::RecordTooLarge {
                len: 65,
                max: 64,
                ..
            }
        ),
        "{err}"
    );
    let err = log.rewrite(&[&big]).expect_err("oversized");
    assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err}");
    log.append(&[b"ok", &[0u8; 64]]).expect("append at the max");
    log.sync().expect("sync");
    drop(log);
    let (_, recovered) = FileLog::open(tmp.path(), small_max()).expect("open");
    assert_eq!(recovered.records, vec![b"ok".to_vec(), vec![0u8; 64]]);
}

#[test]
fn opening_a_log_that_is_already_open_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = open_ok(tmp.path());
    let err = open(tmp.path()).err().expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(log);
    open_ok(tmp.path());
}

#[test]
fn leftover_temp_file_from_an_interrupted_rewrite_is_removed_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_image(tmp.path(), &encode_log(GOOD));
    fs::write(tmp.path().join("concord.log.tmp"), b"half a rewrite").expect("write tmp");
    let (_, recovered) = open_ok(tmp.path());
    assert_eq!(recovered.records, recs(GOOD));
    assert_eq!(recovered.warnings.len(), 1);
    assert!(recovered.warnings[0].contains("temp file"));
    assert!(!tmp.path().join("concord.log.tmp").exists());
}

#[test]
fn sync_advances_synced_len_and_rewrite_makes_everything_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open_ok(tmp.path());
    log.append(&[b"a", b"bb"]).expect("append");
    assert_eq!(log.synced_len(), FILE_HEADER_BYTES as u64);
    assert_eq!(
        log.written_len(),
        (FILE_HEADER_BYTES + 2 * RECORD_HEADER_BYTES + 3) as u64
    );
    log.sync().expect("sync");
    assert_eq!(log.synced_len(), log.written_len());
    log.append(&[b"c"]).expect("append");
    log.rewrite(&[b"x"]).expect("rewrite");
    assert_eq!(log.synced_len(), log.written_len());
    assert_eq!(fs::read(log.path()).expect("read"), encode_log(&[b"x"]));
}

/// `fsync: false` is the benchmark-only "durability off" baseline: `sync`
/// returns Ok without making anything durable, and says so in `synced_len`.
#[test]
fn fsync_off_sync_makes_nothing_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        fsync: false,
        ..FileLogOptions::default()
    };
    let (mut log, _) = FileLog::open(tmp.path(), options).expect("open");
    log.append(&[b"a"]).expect("append");
    log.sync().expect("sync is a no-op");
    assert_eq!(log.synced_len(), FILE_HEADER_BYTES as u64);
    drop(log);
    // A process restart still finds the record (the kernel has it).
    assert_eq!(open_ok(tmp.path()).1.records, vec![b"a".to_vec()]);
}

/// Compaction is `rewrite`: write the new log to a temp file, fsync it,
/// rename it over the old one, fsync the directory. A crash at each point
/// leaves either the old log or exactly the new one, never a mix, and never
/// a lost record.
#[test]
fn compaction_crash_points_leave_the_old_log_or_exactly_the_new_one() {
    use concord_store::file_log::TMP_FILE_NAME;
    let old: &[&[u8]] = &[b"begin 1", b"ready 1", b"commit 1", b"begin 2"];
    let new: &[&[u8]] = &[b"snapshot", b"begin 2"];
    let new_image = encode_log(new);
    // (crash point, what the crash left in the temp file, expected recovery)
    type CrashPoint<'a> = (&'a str, Option<Vec<u8>>, Vec<Vec<u8>>);
    let cases: Vec<CrashPoint> = vec![
        ("before the temp file was created", None, recs(old)),
        (
            "while the temp file was written (torn)",
            Some(new_image[..new_image.len() / 2].to_vec()),
            recs(old),
        ),
        (
            "after the temp file was synced, before the rename",
            Some(new_image.clone()),
            recs(old),
        ),
    ];
    for (point, tmp_content, expected) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = open_ok(tmp.path());
            log.append(old).expect("append");
            log.sync().expect("sync");
        }
        if let Some(content) = tmp_content {
            fs::write(tmp.path().join(TMP_FILE_NAME), content).expect("temp file");
        }
        let (mut log, recovered) = open_ok(tmp.path());
        assert_eq!(recovered.records, expected, "crash {point}");
        assert!(
            !tmp.path().join(TMP_FILE_NAME).exists(),
            "crash {point}: the leftover temp file is removed"
        );
        // Appends go on after the recovered content.
        log.append(&[b"after"]).expect("append");
        log.sync().expect("sync");
        drop(log);
        let (_, again) = open_ok(tmp.path());
        let mut want = expected.clone();
        want.push(b"after".to_vec());
        assert_eq!(again.records, want, "crash {point}, then an append");
    }
    // After the rename (with or without the directory fsync, the rename is
    // the commit point): exactly the new log.
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = open_ok(tmp.path());
        log.append(old).expect("append");
        log.sync().expect("sync");
        log.rewrite(new).expect("rewrite");
    }
    let (_, recovered) = open_ok(tmp.path());
    assert_eq!(recovered.records, recs(new), "crash after the rename");
}
