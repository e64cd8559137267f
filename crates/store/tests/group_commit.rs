//! Group commit: batching, ordering of writes, syncs and completions, and
//! fail-stop after an error.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use concord_store::{FileLog, FileLogOptions, GroupCommit, LogStore, MemLog, StoreError, SyncMode};

type Outcome = Result<(), StoreError>;

/// A completion that sends its outcome to the returned receiver.
fn completion() -> (concord_store::Done, mpsc::Receiver<Outcome>) {
    let (tx, rx) = mpsc::channel();
    let done = Box::new(move |result: Outcome| {
        let _ = tx.send(result);
    });
    (done, rx)
}

fn wait(rx: &mpsc::Receiver<Outcome>) -> Outcome {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("completion must run")
}

#[test]
fn concurrent_forced_submissions_all_complete_share_fsyncs_and_survive_reopen() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 200;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("open");
    let group = GroupCommit::start(Box::new(log), "test");

    thread::scope(|s| {
        for t in 0..THREADS {
            let group = &group;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    // Like a transaction: force the record, wait until durable.
                    let (done, rx) = completion();
                    group.submit(vec![format!("t{t}-{i}").into_bytes()], true, done);
                    wait(&rx).expect("forced append");
                }
            });
        }
    });

    let stats = group.stats();
    eprintln!("group commit stats: {stats:?}");
    let submissions = (THREADS * PER_THREAD) as u64;
    assert_eq!(stats.submissions, submissions);
    assert_eq!(stats.forced, submissions);
    assert_eq!(stats.records, submissions);
    assert!(
        stats.syncs < submissions,
        "group commit must share fsyncs under concurrency: {stats:?}"
    );
    group.shutdown();

    let (_, recovered) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(recovered.records.len(), THREADS * PER_THREAD);
    for t in 0..THREADS {
        let mine: Vec<Vec<u8>> = recovered
            .records
            .iter()
            .filter(|r| r.starts_with(format!("t{t}-").as_bytes()))
            .cloned()
            .collect();
        let expected: Vec<Vec<u8>> = (0..PER_THREAD)
            .map(|i| format!("t{t}-{i}").into_bytes())
            .collect();
        assert_eq!(mine, expected, "thread {t}'s records in submission order");
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Append(Vec<Vec<u8>>),
    Sync,
    Rewrite(Vec<Vec<u8>>),
    Done(Vec<u8>),
}

/// A store that logs every call into a shared event list (completions log
/// into the same list), optionally failing syncs.
struct RecordingStore {
    inner: MemLog,
    events: Arc<Mutex<Vec<Event>>>,
    fail_syncs: usize,
}

impl LogStore for RecordingStore {
    fn append(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        let batch = records.iter().map(|r| r.to_vec()).collect();
        self.events.lock().expect("lock").push(Event::Append(batch));
        self.inner.append(records)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.events.lock().expect("lock").push(Event::Sync);
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(StoreError::Io {
                path: "recording-store".into(),
                op: "fdatasync",
                source: Arc::new(std::io::Error::other("injected EIO")),
            });
        }
        self.inner.sync()
    }

    fn rewrite(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        let content = records.iter().map(|r| r.to_vec()).collect();
        self.events
            .lock()
            .expect("lock")
            .push(Event::Rewrite(content));
        self.inner.rewrite(records)
    }
}

fn recording(fail_syncs: usize) -> (GroupCommit, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let store = RecordingStore {
        inner: MemLog::new(),
        events: Arc::clone(&events),
        fail_syncs,
    };
    (GroupCommit::start(Box::new(store), "recording"), events)
}

/// A completion that logs `Done(record)` and reports its outcome.
fn logged_completion(
    events: &Arc<Mutex<Vec<Event>>>,
    record: &[u8],
) -> (concord_store::Done, mpsc::Receiver<Outcome>) {
    let (tx, rx) = mpsc::channel();
    let events = Arc::clone(events);
    let record = record.to_vec();
    let done = Box::new(move |result: Outcome| {
        events.lock().expect("lock").push(Event::Done(record));
        let _ = tx.send(result);
    });
    (done, rx)
}

#[test]
fn done_for_a_forced_record_is_never_called_before_its_sync() {
    let (group, events) = recording(0);
    thread::scope(|s| {
        for t in 0..4 {
            let (group, events) = (&group, &events);
            s.spawn(move || {
                let mut pending = Vec::new();
                for i in 0..100 {
                    let forced = (i + t) % 3 != 0;
                    let record =
                        format!("{}-t{t}-{i}", if forced { "F" } else { "U" }).into_bytes();
                    let (done, rx) = logged_completion(events, &record);
                    group.submit(vec![record], forced, done);
                    pending.push(rx);
                    if i % 7 == 0 {
                        for rx in pending.drain(..) {
                            wait(&rx).expect("append");
                        }
                    }
                }
                for rx in pending {
                    wait(&rx).expect("append");
                }
            });
        }
    });
    group.shutdown();

    let events = events.lock().expect("lock").clone();
    let mut forced_checked = 0;
    for (done_at, event) in events.iter().enumerate() {
        let Event::Done(record) = event else { continue };
        let appended_at = events
            .iter()
            .position(|e| matches!(e, Event::Append(batch) if batch.contains(record)))
            .expect("every completed record was appended");
        assert!(appended_at < done_at, "done before append for {record:?}");
        if record.starts_with(b"F") {
            let synced = events[appended_at..done_at].contains(&Event::Sync);
            assert!(
                synced,
                "forced record {:?} completed before a sync",
                String::from_utf8_lossy(record)
            );
            forced_checked += 1;
        }
    }
    assert!(forced_checked > 200);
}

#[test]
fn completions_run_in_submission_order() {
    let (group, events) = recording(0);
    let mut receivers = Vec::new();
    for i in 0..500u32 {
        let record = i.to_le_bytes();
        let (done, rx) = logged_completion(&events, &record);
        group.submit(vec![record.to_vec()], i % 2 == 0, done);
        receivers.push(rx);
    }
    for rx in &receivers {
        wait(rx).expect("append");
    }
    let dones: Vec<Vec<u8>> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|e| match e {
            Event::Done(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(dones, expected);
}

#[test]
fn unforced_submissions_are_not_synced_until_shutdown() {
    let (group, events) = recording(0);
    for i in 0..10u8 {
        let (done, rx) = logged_completion(&events, &[i]);
        group.submit(vec![vec![i]], false, done);
        wait(&rx).expect("append");
    }
    assert_eq!(group.stats().syncs, 0);
    assert!(!events.lock().expect("lock").contains(&Event::Sync));
    group.shutdown();
    assert_eq!(events.lock().expect("lock").last(), Some(&Event::Sync));
}

#[test]
fn failed_sync_fails_every_affected_done_and_every_later_submit() {
    let (group, events) = recording(1);
    // Hold the writer in a completion so the next three submissions queue
    // up and form one batch with a forced record in it.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (first_done_tx, first_done_rx) = mpsc::channel();
    group.submit(
        vec![b"first".to_vec()],
        false,
        Box::new(move |result| {
            let _ = first_done_tx.send(result);
            let _ = gate_rx.recv_timeout(Duration::from_secs(30));
        }),
    );
    wait(&first_done_rx).expect("unforced append");
    let batch: Vec<_> = [(b"a", false), (b"b", true), (b"c", false)]
        .into_iter()
        .map(|(record, forced)| {
            let (done, rx) = completion();
            group.submit(vec![record.to_vec()], forced, done);
            rx
        })
        .collect();
    gate_tx.send(()).expect("release the writer");
    for rx in &batch {
        let err = wait(rx).expect_err("the batch's sync failed");
        assert!(
            matches!(
                err,
                StoreError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{err}"
        );
    }

    // The store would succeed now, but group commit is fail-stop.
    let calls_before = events.lock().expect("lock").len();
    for forced in [true, false] {
        let (done, rx) = completion();
        group.submit(vec![b"later".to_vec()], forced, done);
        let err = wait(&rx).expect_err("fail-stop");
        assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("injected EIO"), "{err}");
    }
    let (done, rx) = completion();
    group.submit_rewrite(vec![], done);
    assert!(matches!(wait(&rx), Err(StoreError::Poisoned { .. })));
    assert_eq!(
        events.lock().expect("lock").len(),
        calls_before,
        "store untouched"
    );
    group.shutdown();
}

#[test]
fn rewrite_is_ordered_with_appends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("open");
    let group = GroupCommit::start(Box::new(log), "rewrite");
    let mut receivers = Vec::new();
    for (records, forced) in [(vec![b"a".to_vec()], true), (vec![b"b".to_vec()], false)] {
        let (done, rx) = completion();
        group.submit(records, forced, done);
        receivers.push(rx);
    }
    let (done, rx) = completion();
    group.submit_rewrite(vec![b"x".to_vec()], done);
    receivers.push(rx);
    let (done, rx) = completion();
    group.submit(vec![b"c".to_vec()], true, done);
    receivers.push(rx);
    for rx in &receivers {
        wait(rx).expect("ok");
    }
    assert_eq!(group.stats().rewrites, 1);
    group.shutdown();
    let (_, recovered) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(recovered.records, vec![b"x".to_vec(), b"c".to_vec()]);
}

#[test]
fn oversized_record_fails_only_its_own_submission() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        record_bytes_max: 8,
        ..FileLogOptions::default()
    };
    let (log, _) = FileLog::open(tmp.path(), options.clone()).expect("open");
    let group = GroupCommit::start(Box::new(log), "oversized");
    // Hold the writer so the three submissions land in one batch.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    group.submit(
        vec![],
        false,
        Box::new(move |_| {
            let _ = gate_rx.recv_timeout(Duration::from_secs(30));
        }),
    );
    let outcomes: Vec<_> = [b"ok-1".to_vec(), vec![0u8; 9], b"ok-2".to_vec()]
        .into_iter()
        .map(|record| {
            let (done, rx) = completion();
            group.submit(vec![record], true, done);
            rx
        })
        .collect();
    gate_tx.send(()).expect("release the writer");
    wait(&outcomes[0]).expect("innocent neighbour");
    let err = wait(&outcomes[1]).expect_err("oversized");
    assert!(
        matches!(err, StoreError::RecordTooLarge { len: 9, .. }),
        "{err}"
    );
    wait(&outcomes[2]).expect("innocent neighbour");
    // Not fail-stop: the store wrote nothing for it.
    let (done, rx) = completion();
    group.submit(vec![b"ok-3".to_vec()], true, done);
    wait(&rx).expect("still usable");
    group.shutdown();
    let (_, recovered) = FileLog::open(tmp.path(), options).expect("reopen");
    assert_eq!(
        recovered.records,
        vec![b"ok-1".to_vec(), b"ok-2".to_vec(), b"ok-3".to_vec()]
    );
}

#[test]
fn a_panicking_completion_does_not_stop_the_writer() {
    let group = GroupCommit::start(Box::new(MemLog::new()), "panics");
    group.submit(
        vec![b"a".to_vec()],
        true,
        Box::new(|_| panic!("completion bug")),
    );
    let (done, rx) = completion();
    group.submit(vec![b"b".to_vec()], true, done);
    wait(&rx).expect("writer still running");
    group.shutdown();
}

/// A store whose append panics: the writer thread dies with it.
struct PanickingStore;

impl LogStore for PanickingStore {
    fn append(&mut self, _: &[&[u8]]) -> Result<(), StoreError> {
        panic!("store bug");
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn rewrite(&mut self, _: &[&[u8]]) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn submit_after_the_writer_died_gets_writer_stopped() {
    let group = GroupCommit::start(Box::new(PanickingStore), "dies");
    let (done, rx) = completion();
    group.submit(vec![b"a".to_vec()], true, done);
    // The writer died holding that completion: it is dropped, never called.
    assert!(rx.recv_timeout(Duration::from_secs(30)).is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (done, rx) = completion();
        group.submit(vec![b"b".to_vec()], true, done);
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Err(StoreError::WriterStopped { name })) => {
                assert_eq!(name, "dies");
                break;
            }
            // Raced the dying writer's receiver: try again.
            Err(_) if std::time::Instant::now() < deadline => continue,
            other => panic!("expected WriterStopped, got {other:?}"),
        }
    }
    group.shutdown();
}

#[test]
fn deferred_forced_record_is_synced_by_its_deadline_without_other_traffic() {
    let (group, events) = recording(0);
    let (done, rx) = logged_completion(&events, b"D");
    let submitted = std::time::Instant::now();
    group.submit_with(
        vec![b"D".to_vec()],
        SyncMode::Within(Duration::from_millis(20)),
        done,
    );
    // Not completed before the sync it waits for...
    assert!(rx.recv_timeout(Duration::from_millis(5)).is_err());
    wait(&rx).expect("deferred append");
    let waited = submitted.elapsed();
    // ...which came from the deadline, well before the 30 s test bound.
    assert!(
        waited >= Duration::from_millis(15),
        "completed after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "completed after {waited:?}"
    );
    let events = events.lock().expect("lock").clone();
    assert_eq!(
        events,
        vec![
            Event::Append(vec![b"D".to_vec()]),
            Event::Sync,
            Event::Done(b"D".to_vec())
        ]
    );
    assert_eq!(group.stats().syncs, 1);
}

#[test]
fn deferred_forced_record_rides_on_the_next_urgent_sync_in_order() {
    let (group, events) = recording(0);
    let (deferred_done, deferred_rx) = logged_completion(&events, b"D");
    group.submit_with(
        vec![b"D".to_vec()],
        SyncMode::Within(Duration::from_secs(20)),
        deferred_done,
    );
    let (lazy_done, lazy_rx) = logged_completion(&events, b"L");
    group.submit(vec![b"L".to_vec()], false, lazy_done);
    // Behind a deferred submission, even a lazy one waits (order).
    assert!(lazy_rx.recv_timeout(Duration::from_millis(50)).is_err());
    let (urgent_done, urgent_rx) = logged_completion(&events, b"U");
    group.submit(vec![b"U".to_vec()], true, urgent_done);
    // All three complete long before the 20 s deadline, with one sync.
    for rx in [&deferred_rx, &lazy_rx, &urgent_rx] {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("completed by the urgent sync")
            .expect("append");
    }
    let events = events.lock().expect("lock").clone();
    let syncs = events.iter().filter(|e| **e == Event::Sync).count();
    assert_eq!(syncs, 1, "{events:?}");
    let sync_at = events.iter().position(|e| *e == Event::Sync);
    let dones: Vec<(usize, Vec<u8>)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Done(r) => Some((i, r.clone())),
            _ => None,
        })
        .collect();
    let order: Vec<&[u8]> = dones.iter().map(|(_, r)| r.as_slice()).collect();
    assert_eq!(order, vec![b"D" as &[u8], b"L", b"U"]);
    assert!(dones.iter().all(|(i, _)| Some(*i) > sync_at), "{events:?}");
}

#[test]
fn failed_sync_fails_deferred_submissions_too() {
    let (group, events) = recording(1);
    let (done, rx) = logged_completion(&events, b"D");
    group.submit_with(
        vec![b"D".to_vec()],
        SyncMode::Within(Duration::from_millis(10)),
        done,
    );
    assert!(
        wait(&rx).is_err(),
        "a deferred record whose sync failed must not succeed"
    );
}

#[test]
fn sync_modes_combine_to_the_stricter() {
    let ms = Duration::from_millis;
    assert_eq!(SyncMode::Lazy.stricter(SyncMode::Lazy), SyncMode::Lazy);
    assert_eq!(
        SyncMode::Lazy.stricter(SyncMode::Within(ms(2))),
        SyncMode::Within(ms(2))
    );
    assert_eq!(
        SyncMode::Within(ms(5)).stricter(SyncMode::Within(ms(2))),
        SyncMode::Within(ms(2))
    );
    assert_eq!(
        SyncMode::Within(ms(2)).stricter(SyncMode::Now),
        SyncMode::Now
    );
    assert_eq!(SyncMode::Now.stricter(SyncMode::Lazy), SyncMode::Now);
}

/// Compaction does not stall the log: while a large snapshot is written in
/// the background, forced appends keep completing (durable in the current
/// log), and after the rewrite the log is the snapshot followed by exactly
/// those appends, in order.
#[test]
fn background_rewrite_keeps_appending_and_carries_the_appends_over() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("open");
    let group = GroupCommit::start(Box::new(log), "background");
    let (done, rx) = completion();
    group.submit(vec![b"old".to_vec()], true, done);
    wait(&rx).expect("ok");
    // A snapshot big enough that writing it takes a while.
    let snapshot: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| format!("snapshot record {i:08}").into_bytes())
        .collect();
    let (done, rewritten) = completion();
    group.submit_rewrite(snapshot.clone(), done);
    let mut appended = Vec::new();
    for i in 0..50u32 {
        let record = format!("during {i}").into_bytes();
        let (done, rx) = completion();
        group.submit(vec![record.clone()], true, done);
        wait(&rx).expect("a forced append completes during the rewrite");
        appended.push(record);
    }
    wait(&rewritten).expect("rewrite ok");
    let (done, rx) = completion();
    group.submit(vec![b"after".to_vec()], true, done);
    wait(&rx).expect("ok");
    assert_eq!(group.stats().rewrites, 1);
    group.shutdown();
    let (_, recovered) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("reopen");
    let mut want = snapshot;
    want.extend(appended);
    want.push(b"after".to_vec());
    assert_eq!(recovered.records.len(), want.len());
    assert_eq!(recovered.records, want);
}

/// A crash before a background rewrite commits keeps the old log with
/// every append made meanwhile.
#[test]
fn a_background_rewrite_never_committed_leaves_the_old_log_and_its_appends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("open");
    log.append(&[b"a"]).expect("append");
    log.sync().expect("sync");
    assert!(log
        .rewrite_begin(Box::new(|| vec![b"snap".to_vec()]))
        .expect("begin")
        .is_none());
    log.append(&[b"b"]).expect("append");
    log.sync().expect("sync");
    while !log.rewrite_ready() {
        thread::sleep(Duration::from_millis(1));
    }
    // The process dies here: no commit.
    drop(log);
    let (mut log, recovered) =
        FileLog::open(tmp.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(recovered.records, vec![b"a".to_vec(), b"b".to_vec()]);
    // And a committed one holds the snapshot and the tail.
    assert!(log
        .rewrite_begin(Box::new(|| vec![b"snap".to_vec()]))
        .expect("begin")
        .is_none());
    log.append(&[b"c"]).expect("append");
    log.rewrite_commit(&[b"c"]).expect("commit");
    drop(log);
    let (_, recovered) = FileLog::open(tmp.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(recovered.records, vec![b"snap".to_vec(), b"c".to_vec()]);
}
