//! `FileLog`: the embedded default [`LogStore`], one append-only file per
//! log directory, with checksummed records and crash recovery.
//!
//! # Why our own file and not redb (or another embedded database)
//! A write-ahead log is a sequential append followed by one fdatasync, and
//! group commit puts many records behind that one fdatasync. redb's
//! copy-on-write b-tree commit rewrites pages and syncs more than once per
//! commit, and buys nothing we need: we never look records up by key, we
//! read the whole log once at recovery and compact it by rewriting it.
//!
//! # File format (little-endian)
//! ```text
//! header:  magic "CONCLOG\0" (8 bytes) | format version u32 (= 1)
//! record:  len u32 | crc32c(len bytes ++ payload) u32 | payload (len bytes)
//! ```
//! The checksum covers the length too, so a zeroed region (what a torn
//! write or a preallocated block often leaves) never parses as a record,
//! not even as an empty one.
//!
//! # Recovery rules
//! - A bad record (short header, short payload, length above
//!   `record_bytes_max`, checksum mismatch) with no valid record anywhere
//!   after it is a **torn tail**: the write that was in flight at a crash. It
//!   is dropped with a warning naming the byte offset, and the file is
//!   truncated there (and synced) so that appends continue cleanly.
//! - A bad record followed by a record that parses and checksums is **damage
//!   before the tail**: opening fails with [`StoreError::Corrupt`] naming the
//!   path and offset. It never drops records silently. The search for a valid
//!   record starts one byte after the bad record's start, because a damaged
//!   length field cannot be trusted to say where the next record begins.
//! - A short or wrong file header is `Corrupt` too: a new log file is
//!   created atomically (temp file, fsync, rename, fsync dir), so a log file
//!   without a complete header was never written by us.
//!
//! Known limit of being strict: if a crash persisted an unsynced write with
//! a hole (a page lost before a page that survived), recovery reports
//! `Corrupt` instead of guessing. The operator then decides: if the process
//! was known to crash with unsynced writes, truncating the file at the
//! reported offset is the same thing torn-tail recovery would have done.
//!
//! A `LOCK` file beside the log is held with `flock` while a `FileLog` is
//! open, so two processes can never append to one log (Unix only).
//!
//! Recovery reads the whole file into memory; logs stay small because the
//! owner compacts them with [`LogStore::rewrite`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::{LogStore, RecordsProducer, StoreError};

/// Name of the log file inside the log directory.
pub const FILE_NAME: &str = "concord.log";
/// Where a create or a rewrite (compaction) writes the new log before
/// renaming it over the old one.
pub const TMP_FILE_NAME: &str = "concord.log.tmp";
/// Lock file held (flock) while a `FileLog` is open.
const LOCK_FILE_NAME: &str = "concord.log.lock";

/// First 8 bytes of every log file.
pub const MAGIC: [u8; 8] = *b"CONCLOG\0";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the file header: magic + format version.
pub const FILE_HEADER_BYTES: usize = 12;
/// Size of a record header: len + crc.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Default for [`FileLogOptions::record_bytes_max`]: 16 MiB.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// How many payload bytes the torn-tail check may checksum while looking for
/// a valid record after a bad one. Garbage with plausible lengths could
/// otherwise make that search quadratic. When the budget runs out, recovery
/// reports `Corrupt` (it could not prove the damage is only a torn tail).
const TAIL_SEARCH_CRC_BYTES_MAX: usize = 256 << 20;

/// After a large batch, give the append buffer back down to this capacity.
const APPEND_BUFFER_BYTES_KEPT: usize = 4 << 20;

/// Options for [`FileLog::open`].
#[derive(Debug, Clone)]
pub struct FileLogOptions {
    /// Longest record accepted by `append` and by recovery. A length field
    /// above it is treated as damage (torn at the tail, corrupt before it).
    /// Values above `u32::MAX` are clamped to it.
    pub record_bytes_max: usize,
    /// **Durability off when false — for benchmark baselines only.** When
    /// false, `sync` is a no-op, so "forced" records are NOT durable and a
    /// machine crash can lose anything. It exists only to measure what the
    /// fsyncs cost; never use it for a coordinator or participant that
    /// anyone relies on. (`open` and `rewrite` still fsync.)
    pub fsync: bool,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            fsync: true,
        }
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Every record in the log, in append order.
    pub records: Vec<Vec<u8>>,
    /// Human-readable notes about what recovery repaired (torn tail dropped,
    /// leftover temp file removed), each naming the path and byte offset.
    pub warnings: Vec<String>,
}

/// The embedded append-only log. See the module docs for format and recovery.
pub struct FileLog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Held for the flock; released when the `FileLog` is dropped.
    _lock: File,
    record_bytes_max: usize,
    fsync: bool,
    /// Reused across `append` calls so a steady stream of batches allocates nothing.
    buffer: Vec<u8>,
    written_len: u64,
    synced_len: u64,
    /// Set on the first failed write or sync: the log is fail-stop from then on.
    failed: Option<StoreError>,
    /// A background rewrite: the thread writing and syncing the new log's
    /// temp file (see `LogStore::rewrite_begin`).
    background: Option<JoinHandle<Result<(File, u64), StoreError>>>,
}

impl FileLog {
    /// Open the log in `dir`, creating the directory and an empty log if
    /// missing, and recover its records. A torn tail is truncated away (see
    /// the module docs); every recovered record is durable when this returns.
    pub fn open(dir: &Path, options: FileLogOptions) -> Result<(FileLog, Recovered), StoreError> {
        let record_bytes_max = options.record_bytes_max.min(u32::MAX as usize);
        create_dir(dir)?;
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let mut warnings = Vec::new();

        let tmp = dir.join(TMP_FILE_NAME);
        if remove_if_exists(&tmp)? {
            warnings.push(format!(
                "{}: removed leftover temp file from an interrupted create or rewrite",
                tmp.display()
            ));
        }

        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_log_atomically(dir, &path, &encode_log(&[]))?
            }
            Err(e) => return Err(StoreError::io(&path, "open", e)),
        };
        // A just-created file is positioned at its end; read from the start.
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| StoreError::io(&path, "read", e))?;

        let scan = scan(&path, &bytes, record_bytes_max)?;
        drop(bytes);
        if let Some(torn) = &scan.torn {
            file.set_len(scan.valid_len)
                .map_err(|e| StoreError::io(&path, "truncate", e))?;
            warnings.push(format!(
                "{}: dropped torn record at byte offset {} ({}); truncated the log from {} to {} bytes",
                path.display(),
                torn.offset,
                torn.detail,
                scan.file_len,
                scan.valid_len
            ));
        }
        // Make what we recovered durable before anyone acts on it: after a
        // process crash it may still be only in the page cache. sync_all so
        // a truncation's new size is durable too.
        file.sync_all()
            .map_err(|e| StoreError::io(&path, "fsync", e))?;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }

        let log = FileLog {
            dir: dir.to_path_buf(),
            path,
            file,
            _lock: lock,
            record_bytes_max,
            fsync: options.fsync,
            buffer: Vec::new(),
            written_len: scan.valid_len,
            synced_len: scan.valid_len,
            failed: None,
            background: None,
        };
        Ok((
            log,
            Recovered {
                records: scan.records,
                warnings,
            },
        ))
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the log file written so far (header included).
    pub fn written_len(&self) -> u64 {
        self.written_len
    }

    /// Bytes of the log file known durable (header included): everything up
    /// to the last successful `sync`, `rewrite` or `open`. With `fsync: false`
    /// it does not advance on `sync`, because nothing was made durable.
    pub fn synced_len(&self) -> u64 {
        self.synced_len
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(first) => Err(first.poisoned(self.path.display())),
            None => Ok(()),
        }
    }

    fn check_sizes(&self, records: &[&[u8]]) -> Result<(), StoreError> {
        match records.iter().find(|r| r.len() > self.record_bytes_max) {
            Some(r) => Err(StoreError::RecordTooLarge {
                path: self.path.clone(),
                len: r.len(),
                max: self.record_bytes_max,
            }),
            None => Ok(()),
        }
    }

    /// A background rewrite owns the temp file until it is committed: a
    /// second one (or a plain rewrite) now is a caller bug, refused without
    /// touching anything.
    fn check_no_background(&self, what: &str) -> Result<(), StoreError> {
        match self.background {
            Some(_) => Err(StoreError::io(
                &self.dir,
                "rewrite",
                io::Error::other(format!(
                    "{what} while a background rewrite is in progress (commit it first)"
                )),
            )),
            None => Ok(()),
        }
    }

    /// Remember the first failure (fail-stop) and return it.
    fn fail(&mut self, error: StoreError) -> StoreError {
        tracing::error!("log store is now fail-stop: {error}");
        self.failed = Some(error.clone());
        error
    }
}

impl LogStore for FileLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.check_usable()?;
        self.check_sizes(records)?;
        if records.is_empty() {
            return Ok(());
        }
        self.buffer.clear();
        for record in records {
            encode_record(&mut self.buffer, record);
        }
        // One write(2) for the whole call: write_all only loops on a short
        // write, which regular files do not produce short of an error.
        if let Err(e) = self.file.write_all(&self.buffer) {
            // Part of the buffer may be in the file now; only recovery can
            // tell what, so stop here.
            return Err(self.fail(StoreError::io(&self.path, "write", e)));
        }
        self.written_len += self.buffer.len() as u64;
        if self.buffer.capacity() > APPEND_BUFFER_BYTES_KEPT {
            self.buffer.clear();
            self.buffer.shrink_to(APPEND_BUFFER_BYTES_KEPT);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        if !self.fsync || self.synced_len == self.written_len {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail(StoreError::io(&self.path, "fdatasync", e)));
        }
        self.synced_len = self.written_len;
        Ok(())
    }

    fn rewrite_begin(
        &mut self,
        records: RecordsProducer,
    ) -> Result<Option<RecordsProducer>, StoreError> {
        self.check_usable()?;
        self.check_no_background("rewrite_begin")?;
        let dir = self.dir.clone();
        let path = self.path.clone();
        let record_bytes_max = self.record_bytes_max;
        // Encoding a large snapshot is part of the background work too.
        let handle = std::thread::Builder::new()
            .name("concord-log-rewrite".into())
            .spawn(move || {
                let records = records();
                if let Some(r) = records.iter().find(|r| r.len() > record_bytes_max) {
                    return Err(StoreError::RecordTooLarge {
                        path,
                        len: r.len(),
                        max: record_bytes_max,
                    });
                }
                let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                let bytes = encode_log(&refs);
                let len = bytes.len() as u64;
                write_temp_in_chunks(&dir, &bytes).map(|file| (file, len))
            })
            .map_err(|e| self.fail(StoreError::io(&self.dir, "spawn rewrite thread", e)))?;
        self.background = Some(handle);
        Ok(None)
    }

    fn rewrite_ready(&mut self) -> bool {
        self.background.as_ref().map_or(true, |h| h.is_finished())
    }

    fn rewrite_commit(&mut self, tail: &[&[u8]]) -> Result<(), StoreError> {
        self.check_usable()?;
        let Some(handle) = self.background.take() else {
            return Ok(());
        };
        let joined = handle.join().unwrap_or_else(|_| {
            Err(StoreError::io(
                &self.dir,
                "rewrite thread",
                io::Error::other("the background rewrite thread panicked"),
            ))
        });
        let (mut file, mut len) = joined.map_err(|e| self.fail(e))?;

        let tmp = self.dir.join(TMP_FILE_NAME);
        if !tail.is_empty() {
            let mut buffer = Vec::new();
            for record in tail {
                encode_record(&mut buffer, record);
            }
            file.write_all(&buffer)
                .and_then(|()| file.sync_data())
                .map_err(|e| self.fail(StoreError::io(&tmp, "write rewrite tail", e)))?;
            len += buffer.len() as u64;
        }
        install_temp(&self.dir, &self.path).map_err(|e| self.fail(e))?;
        self.file = file;
        self.written_len = len;
        self.synced_len = len;
        Ok(())
    }

    fn rewrite(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.check_usable()?;
        self.check_no_background("rewrite")?;
        self.check_sizes(records)?;
        let bytes = encode_log(records);
        match write_log_atomically(&self.dir, &self.path, &bytes) {
            Ok(file) => {
                self.file = file;
                self.written_len = bytes.len() as u64;
                self.synced_len = self.written_len;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Result of [`scan`]: the records of a log image and where its valid part ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Vec<u8>>,
    /// Length of the valid prefix: where appends continue after truncation.
    pub valid_len: u64,
    /// Length of the image that was scanned.
    pub file_len: u64,
    /// The torn tail that was dropped, if any.
    pub torn: Option<TornTail>,
}

/// A bad record at the end of the log with nothing valid after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub detail: String,
}

/// Parse a whole log image (`bytes`, read from `path`) by the recovery rules
/// in the module docs. Pure: touches no file (`path` only names errors), so
/// it is what the property tests feed arbitrary bytes to. Never panics.
pub fn scan(path: &Path, bytes: &[u8], record_bytes_max: usize) -> Result<Scan, StoreError> {
    let corrupt = |offset: usize, detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        detail,
    };
    if bytes.len() < FILE_HEADER_BYTES {
        return Err(corrupt(
            0,
            format!(
                "file header truncated: {} of {FILE_HEADER_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != MAGIC {
        return Err(corrupt(0, "bad magic: not a concord log file".to_string()));
    }
    let version = read_u32(&bytes[8..12]);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            8,
            format!("unsupported format version {version} (this build reads {FORMAT_VERSION})"),
        ));
    }

    let mut records = Vec::new();
    let mut offset = FILE_HEADER_BYTES;
    while offset < bytes.len() {
        match parse_record(&bytes[offset..], record_bytes_max) {
            Ok(payload) => {
                records.push(payload.to_vec());
                offset += RECORD_HEADER_BYTES + payload.len();
            }
            Err(detail) => {
                return match search_valid_record(bytes, offset + 1, record_bytes_max) {
                    Search::NotFound => Ok(Scan {
                        records,
                        valid_len: offset as u64,
                        file_len: bytes.len() as u64,
                        torn: Some(TornTail {
                            offset: offset as u64,
                            detail,
                        }),
                    }),
                    Search::Found(at) => Err(corrupt(
                        offset,
                        format!(
                            "{detail}; a valid record follows at byte offset {at}, \
                             so this is damage before the tail, not a torn write"
                        ),
                    )),
                    Search::GaveUp(at) => Err(corrupt(
                        offset,
                        format!(
                            "{detail}; gave up looking for valid records after it at byte \
                             offset {at}, so it cannot be proven to be a torn tail"
                        ),
                    )),
                };
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: offset as u64,
        file_len: bytes.len() as u64,
        torn: None,
    })
}

/// Encode a complete log image (header and records), as `rewrite` writes it.
/// Records must not be longer than `u32::MAX` bytes.
pub fn encode_log(records: &[&[u8]]) -> Vec<u8> {
    let payload_bytes: usize = records.iter().map(|r| r.len()).sum();
    let mut bytes =
        Vec::with_capacity(FILE_HEADER_BYTES + records.len() * RECORD_HEADER_BYTES + payload_bytes);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for record in records {
        encode_record(&mut bytes, record);
    }
    bytes
}

/// Append one framed record to `buffer`. The caller has checked the length.
fn encode_record(buffer: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= u32::MAX as usize,
        "record length checked by caller"
    );
    let len = (payload.len() as u32).to_le_bytes();
    buffer.extend_from_slice(&len);
    buffer.extend_from_slice(&checksum(len, payload).to_le_bytes());
    buffer.extend_from_slice(payload);
}

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Parse the record at the start of `rest`; on damage, say what is wrong.
fn parse_record(rest: &[u8], record_bytes_max: usize) -> Result<&[u8], String> {
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!(
            "record header truncated: {} of {RECORD_HEADER_BYTES} bytes",
            rest.len()
        ));
    }
    let len = read_u32(&rest[0..4]) as usize;
    let stored = read_u32(&rest[4..8]);
    if len > record_bytes_max {
        return Err(format!(
            "record length {len} exceeds record_bytes_max {record_bytes_max}"
        ));
    }
    let available = rest.len() - RECORD_HEADER_BYTES;
    if available < len {
        return Err(format!(
            "record payload truncated: {available} of {len} bytes"
        ));
    }
    let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    let computed = checksum((len as u32).to_le_bytes(), payload);
    if computed != stored {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(payload)
}

enum Search {
    Found(usize),
    NotFound,
    GaveUp(usize),
}

/// Look for any offset at or after `start` where a valid record begins.
fn search_valid_record(bytes: &[u8], start: usize, record_bytes_max: usize) -> Search {
    let mut crc_bytes = 0usize;
    for at in start..bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEADER_BYTES {
            break;
        }
        let len = read_u32(&rest[0..4]) as usize;
        if len > record_bytes_max || rest.len() - RECORD_HEADER_BYTES < len {
            continue; // cheap rejects: no checksum work
        }
        crc_bytes += len + 4;
        if crc_bytes > TAIL_SEARCH_CRC_BYTES_MAX {
            return Search::GaveUp(at);
        }
        if parse_record(rest, record_bytes_max).is_ok() {
            return Search::Found(at);
        }
    }
    Search::NotFound
}

/// Create `dir` if missing, and fsync its parent so the new entry is durable.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "create directory", e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "fsync directory", e))
}

fn remove_if_exists(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(path, "remove", e)),
    }
}

/// Replace (or create) the log at `path` with `bytes` so that a crash at any
/// point leaves either the old file or the complete new one: write a temp
/// file, fsync it, rename it over the log, fsync the directory. Returns the
/// new file, open for appending.
fn write_log_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let file = write_temp(dir, bytes)?;
    install_temp(dir, path)?;
    Ok(file)
}

/// Write `bytes` as the temp file of `dir` and fsync it; returns it open
/// for appending. Until [`install_temp`], the log is untouched (and `open`
/// removes the temp file: a crash before the rename keeps the old log).
fn write_temp(dir: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let (mut file, tmp) = create_temp(dir)?;
    file.write_all(bytes)
        .map_err(|e| StoreError::io(&tmp, "write", e))?;
    file.sync_all()
        .map_err(|e| StoreError::io(&tmp, "fsync", e))?;
    Ok(file)
}

/// A fresh, empty temp file in `dir` (any leftover one removed), open for
/// appending, and its path.
fn create_temp(dir: &Path) -> Result<(File, PathBuf), StoreError> {
    let tmp = dir.join(TMP_FILE_NAME);
    remove_if_exists(&tmp)?;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, "create", e))?;
    Ok((file, tmp))
}

/// Bytes a background rewrite writes (and starts writing back) at a time,
/// and the pause after each: at most 256 KiB per 2 ms (128 MiB/s), so a
/// compaction never floods the disk that the live log fsyncs on.
const REWRITE_CHUNK_BYTES: usize = 256 << 10;
const REWRITE_CHUNK_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// [`write_temp`] for a background rewrite: the same file, written and
/// fdatasynced in chunks, so that the small forced writes of the live log
/// (votes, decisions) never queue behind one fsync of megabytes on the
/// same disk.
fn write_temp_in_chunks(dir: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let (mut file, tmp) = create_temp(dir)?;
    let mut offset: i64 = 0;
    for chunk in bytes.chunks(REWRITE_CHUNK_BYTES) {
        file.write_all(chunk)
            .map_err(|e| StoreError::io(&tmp, "write", e))?;
        // Start writing this chunk back now (no barrier, no wait), so the
        // final fsync has little left to do and the disk never gets the
        // whole snapshot at once; then give the live log's fsyncs room.
        // SAFETY: sync_file_range only reads the descriptor `file` owns.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset,
                chunk.len() as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        offset += chunk.len() as i64;
        std::thread::sleep(REWRITE_CHUNK_PAUSE);
    }
    file.sync_all()
        .map_err(|e| StoreError::io(&tmp, "fsync", e))?;
    Ok(file)
}

/// Rename the (synced) temp file over the log and fsync the directory: the
/// rename is the commit point of a rewrite.
fn install_temp(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(TMP_FILE_NAME);
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, "rename", e))?;
    sync_dir(dir)
}

/// Take an exclusive, non-blocking flock on the directory's lock file.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(&path, "open lock file", e))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(StoreError::Locked { path });
        }
        return Err(StoreError::io(&path, "flock", e));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_never_parse_as_a_record() {
        assert!(parse_record(&[0u8; 64], RECORD_BYTES_MAX_DEFAULT).is_err());
    }

    #[test]
    fn encode_then_scan_round_trips() {
        let records: Vec<&[u8]> = vec![b"", b"a", &[7u8; 300]];
        let bytes = encode_log(&records);
        let scan = scan(Path::new("x"), &bytes, RECORD_BYTES_MAX_DEFAULT).expect("valid log");
        assert_eq!(
            scan.records,
            records.iter().map(|r| r.to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert!(scan.torn.is_none());
    }
}
