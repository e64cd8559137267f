//! Property tests of log recovery: arbitrary bytes as a log file never panic
//! the recovery code (it returns records or an error), truncation always
//! recovers a prefix, and a damaged record is dropped only at the tail.
//! This is the stable-Rust fuzz harness for the log record codec.

use std::path::Path;

use concord_store::file_log::{
    encode_log, scan, FILE_HEADER_BYTES, FORMAT_VERSION, MAGIC, RECORD_BYTES_MAX_DEFAULT,
    RECORD_HEADER_BYTES,
};
use concord_store::{FileLog, FileLogOptions, StoreError};
use proptest::prelude::*;

fn path() -> &'static Path {
    Path::new("proptest.log")
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

fn records_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)
}

fn refs(records: &[Vec<u8>]) -> Vec<&[u8]> {
    records.iter().map(Vec::as_slice).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..128) {
        let _ = scan(path(), &bytes, max);
    }

    #[test]
    fn valid_header_then_arbitrary_bytes_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..512),
        max in prop_oneof![Just(RECORD_BYTES_MAX_DEFAULT), 0usize..64],
    ) {
        let mut bytes = header();
        bytes.extend(tail);
        match scan(path(), &bytes, max) {
            Ok(s) => {
                prop_assert!(s.valid_len as usize <= bytes.len());
                prop_assert!(s.valid_len as usize >= FILE_HEADER_BYTES);
                prop_assert_eq!(s.torn.is_some(), (s.valid_len as usize) < bytes.len());
            }
            Err(StoreError::Corrupt { offset, .. }) => prop_assert!((offset as usize) < bytes.len()),
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }

    #[test]
    fn truncated_log_recovers_exactly_the_complete_records(records in records_strategy(), cut in any::<prop::sample::Index>()) {
        let full = encode_log(&refs(&records));
        let cut = cut.index(full.len() + 1);
        let result = scan(path(), &full[..cut], RECORD_BYTES_MAX_DEFAULT);
        if cut < FILE_HEADER_BYTES {
            let header_is_corrupt = matches!(result, Err(StoreError::Corrupt { offset: 0, .. }));
            prop_assert!(header_is_corrupt, "cut {}: {:?}", cut, result.map(|s| s.records));
            return Ok(());
        }
        let s = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut end = FILE_HEADER_BYTES;
        let mut complete = 0;
        for r in &records {
            if end + RECORD_HEADER_BYTES + r.len() > cut { break; }
            end += RECORD_HEADER_BYTES + r.len();
            complete += 1;
        }
        prop_assert_eq!(&s.records[..], &records[..complete]);
        prop_assert_eq!(s.valid_len as usize, end);
        prop_assert_eq!(s.torn.is_some(), end < cut);
    }

    #[test]
    fn damaged_record_is_corrupt_unless_it_is_the_last(
        records in records_strategy(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut image = encode_log(&refs(&records));
        let body = image.len() - FILE_HEADER_BYTES;
        let pos = FILE_HEADER_BYTES + at.index(body);
        image[pos] ^= flip;
        // Which record holds the damaged byte, and where does it start?
        let mut start = FILE_HEADER_BYTES;
        let mut index = 0;
        while start + RECORD_HEADER_BYTES + records[index].len() <= pos {
            start += RECORD_HEADER_BYTES + records[index].len();
            index += 1;
        }
        let result = scan(path(), &image, RECORD_BYTES_MAX_DEFAULT);
        if index + 1 == records.len() {
            let s = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&s.records[..], &records[..index]);
            prop_assert_eq!(s.torn.map(|t| t.offset), Some(start as u64));
        } else {
            match result {
                Err(StoreError::Corrupt { offset, .. }) => prop_assert_eq!(offset, start as u64),
                other => prop_assert!(false, "damage in record {} of {}: {:?}", index, records.len(), other),
            }
        }
    }
}

proptest! {
    // Through the real file path (open, truncate, fsync): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn open_on_an_arbitrary_file_never_panics(
        tail in prop::collection::vec(any::<u8>(), 0..256),
        with_header in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = if with_header { header() } else { Vec::new() };
        bytes.extend(tail);
        std::fs::write(tmp.path().join(concord_store::file_log::FILE_NAME), &bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match FileLog::open(tmp.path(), FileLogOptions::default()) {
            Ok((log, _)) => prop_assert!(log.written_len() as usize <= bytes.len()),
            Err(StoreError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }
}
