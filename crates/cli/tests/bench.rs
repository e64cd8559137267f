//! Smoke test of `concord bench` (a few seconds): it runs against real
//! processes, reports sane fields as JSON, labels the durable runs and the
//! durability-off baseline truthfully, and writes its SVG. Speed is never
//! asserted here (the machines are shared and noisy): only that the
//! numbers are consistent with each other and with the protocol.

use serde_json::Value;
use std::process::Command;

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// `concord bench --json` with short runs, its data under `dir`: the
/// report, or a failure that shows what the bench printed.
fn bench_json(args: &[&str], dir: &std::path::Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "bench",
            "--warmup-secs",
            "0.3",
            "--window-secs",
            "1",
            "--json",
        ])
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run concord bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    serde_json::from_str(&stdout).expect("bench --json prints JSON")
}

/// No contention: no lock conflict, no client error; only the timeouts a
/// stalled machine causes, and few of them. CI runs these tests side by
/// side with others on 2 cores, where a process can stall past the 100 ms
/// phase-1 floor: one run at concurrency 1 saw p99 117 ms, max 171 ms, and
/// 6 vote timeouts in 107 transactions. So up to 10 % (at least 2): a
/// timeout rule that misfires on every transaction, or on a fixed share
/// of them, still fails. A stall shows as a vote timeout (at the
/// coordinator or a sub-coordinator) or as a branch whose prepare ended
/// past its deadline.
fn assert_uncontended(run: &Value) {
    let reasons = run["aborted_by_reason"].as_object().expect("reasons");
    assert!(
        reasons
            .keys()
            .all(|r| r == "vote timeout" || r == "prepare past deadline"),
        "aborts without contention: {reasons:?}"
    );
    assert!(
        f(run, "aborted") <= (f(run, "committed") / 10.0).max(2.0),
        "{run}"
    );
    assert!(
        run["client_errors"]
            .as_object()
            .is_some_and(|e| e.is_empty()),
        "{run}"
    );
}

#[test]
fn bench_reports_sane_fields_and_labels_durability() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plot = dir.path().join("bench.svg");
    let plot_arg = plot.display().to_string();
    let report = bench_json(
        &[
            "--concurrency",
            "1,8",
            "--payload-bytes",
            "100",
            "--plot",
            &plot_arg,
        ],
        dir.path(),
    );

    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "one run per concurrency level");
    for (run, concurrency) in runs.iter().zip([1.0, 8.0]) {
        assert_eq!(f(run, "concurrency"), concurrency);
        assert_eq!(run["durable"], Value::Bool(true), "{run}");
        assert!(f(run, "committed") > 0.0, "{run}");
        assert!(f(run, "transactions_per_sec") > 0.0, "{run}");
        let latency = &run["latency"];
        let (p50, p99, p999) = (
            f(latency, "p50_ms"),
            f(latency, "p99_ms"),
            f(latency, "p999_ms"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{latency}");
        assert_uncontended(run);
        // Durable 2PC with 3 participants forces 7 records per commit
        // (COMMIT at the coordinator, READY and COMMITTED at each
        // participant); group commit may share fsyncs, but not skip them.
        let forced = f(run, "forced_records_per_txn");
        assert!((6.5..=7.5).contains(&forced), "forced records/txn {forced}");
        let fsyncs = f(run, "fsyncs_per_txn");
        assert!(
            fsyncs > 0.0 && fsyncs <= forced + 0.5,
            "fsyncs/txn {fsyncs}"
        );
        // 15 messages: Begin, Begun, 3 PREPARE, 3 votes, 3 COMMIT, 3 ACK,
        // Outcome (edges of the window blur it a little).
        let messages = f(run, "messages_per_txn");
        assert!((14.0..=16.0).contains(&messages), "messages/txn {messages}");
        assert!(f(run, "server_cpu_us_per_txn") > 0.0, "{run}");
        // The 100-byte payload sits in every participant's READY record.
        assert!(f(run, "participant_record_bytes") > 50.0, "{run}");
    }
    // With one transaction at a time, nothing shares the urgent fsyncs
    // (the COMMIT record, each participant's READY): about 4 per
    // transaction; the COMMITTED records ride on the next READY's.
    let serial = f(&runs[0], "fsyncs_per_txn");
    assert!((3.5..=7.5).contains(&serial), "{}", runs[0]);

    let fsync = &report["fsync_baseline"];
    assert!(f(fsync, "serial_fsyncs_per_sec") > 0.0, "{fsync}");
    assert!(f(fsync, "group_records_per_fsync") >= 1.0, "{fsync}");
    let off = &report["no_fsync_baseline"];
    assert_eq!(off["durable"], Value::Bool(false), "{off}");
    assert_eq!(
        f(off, "fsyncs_per_txn"),
        0.0,
        "fsync off means no fsync: {off}"
    );
    assert!(f(off, "committed") > 0.0, "{off}");
    assert!(
        report["durability"]
            .as_str()
            .is_some_and(|d| d.contains("fsynced")),
        "{}",
        report["durability"]
    );

    // The bare relay: the same levels and the same frames per
    // transaction, no log at all, and concord's ratios to it.
    let relay = &report["relay_baseline"];
    let relay_runs = relay["runs"].as_array().expect("relay runs");
    assert_eq!(relay_runs.len(), 2, "{relay}");
    for (run, concord) in relay_runs.iter().zip(runs) {
        assert_eq!(f(run, "concurrency"), f(concord, "concurrency"));
        assert_eq!(run["durable"], Value::Bool(false), "{run}");
        assert_eq!(f(run, "fsyncs_per_txn"), 0.0, "{run}");
        assert_eq!(f(run, "forced_records_per_txn"), 0.0, "{run}");
        assert!(f(run, "committed") > 0.0, "{run}");
        let (relay_msgs, msgs) = (f(run, "messages_per_txn"), f(concord, "messages_per_txn"));
        assert!((relay_msgs - msgs).abs() <= 1.0, "{relay_msgs} vs {msgs}");
    }
    assert!(f(relay, "throughput_ratio_at_best") > 0.0, "{relay}");
    assert!(relay["extra_p50_ms_at_concurrency_1"].is_f64(), "{relay}");

    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg"), "{svg}");
}

/// `--optimizations`: each one off and on, with what it saves by
/// construction (messages and forced writes per transaction) visible in
/// the report. Counts only: speed is not asserted.
#[test]
fn bench_measures_each_optimization_off_and_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench_json(
        &["--concurrency", "1", "--no-baselines", "--optimizations"],
        dir.path(),
    );
    let list = report["optimizations"].as_array().expect("optimizations");
    let find = |name: &str| {
        let o = list
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {report}"));
        let run = |side: &str| o[side].as_array().and_then(|r| r.first()).cloned();
        (
            run("before").expect("before run"),
            run("after").expect("after run"),
        )
    };
    // One-phase commit: the coordinator forces nothing and two messages
    // (VOTE and COMMIT) are gone.
    let (before, after) = find("one-phase commit");
    assert!(f(&before, "coordinator_fsyncs_per_txn") > 0.9, "{before}");
    assert_eq!(f(&after, "coordinator_fsyncs_per_txn"), 0.0, "{after}");
    let saved = f(&before, "messages_per_txn") - f(&after, "messages_per_txn");
    assert!((saved - 2.0).abs() < 0.2, "messages saved: {saved}");
    // The READ-ONLY vote: the reading branch gets no phase 2 (COMMIT and
    // ACK) and forces no READY record.
    let (before, after) = find("read-only vote");
    let saved = f(&before, "messages_per_txn") - f(&after, "messages_per_txn");
    assert!((saved - 2.0).abs() < 0.2, "messages saved: {saved}");
    let (fb, fa) = (
        f(&before, "forced_records_per_txn"),
        f(&after, "forced_records_per_txn"),
    );
    assert!(fb - fa > 1.5, "forced records {fb} → {fa}");
    for (b, a) in [find("one-phase commit"), find("read-only vote")] {
        assert!(f(&b, "committed") > 0.0 && f(&a, "committed") > 0.0);
        assert_eq!(b["durable"], Value::Bool(true));
        assert_eq!(a["durable"], Value::Bool(true));
    }
}

/// `--tree`: every transaction runs through the given tree. p0 is a
/// sub-coordinator, so the coordinator talks to one participant, yet
/// each edge of the tree still carries PREPARE, vote, COMMIT and ACK and
/// each node forces READY and COMMITTED.
#[test]
fn bench_runs_hierarchical_transactions_over_the_given_tree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench_json(
        &[
            "--tree",
            "p0(p1,p2)",
            "--concurrency",
            "1,8",
            "--no-baselines",
        ],
        dir.path(),
    );
    assert_eq!(report["settings"]["shape"], "hierarchical", "{report}");
    assert_eq!(report["settings"]["tree"], "p0(p1,p2)", "{report}");
    assert_eq!(f(&report["settings"], "branches"), 3.0);
    for run in report["runs"].as_array().expect("runs") {
        assert_eq!(run["durable"], Value::Bool(true), "{run}");
        assert!(f(run, "committed") > 0.0, "{run}");
        assert_uncontended(run);
        let forced = f(run, "forced_records_per_txn");
        assert!((6.5..=7.5).contains(&forced), "forced records/txn {forced}");
        let messages = f(run, "messages_per_txn");
        assert!((14.0..=16.0).contains(&messages), "messages/txn {messages}");
    }
}

/// `--api http`: the same levels again through the HTTP API on the same
/// servers, durable, with the ratio to the binary protocol.
#[test]
fn bench_measures_the_http_api_beside_the_binary_protocol() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench_json(
        &["--api", "http", "--concurrency", "1,4", "--no-baselines"],
        dir.path(),
    );
    let http = &report["http_api"];
    let runs = http["runs"].as_array().expect("http runs");
    assert_eq!(runs.len(), 2, "{http}");
    for run in runs {
        assert_eq!(run["durable"], Value::Bool(true), "{run}");
        assert!(f(run, "committed") > 0.0, "{run}");
        assert_uncontended(run);
        // Same protocol behind the API: 7 forced records per commit.
        let forced = f(run, "forced_records_per_txn");
        assert!((6.5..=7.5).contains(&forced), "forced records/txn {forced}");
    }
    assert_eq!(f(&runs[1], "connections"), 4.0, "one connection per task");
    let ratios = http["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2, "{http}");
    assert!(
        ratios.iter().all(|r| f(r, "throughput_ratio") > 0.0),
        "{http}"
    );
}

/// `--store postgres`: the same levels again with the coordinator's log in
/// a throwaway PostgreSQL cluster, durable, with their ratio.
#[test]
fn bench_measures_the_postgresql_store_beside_the_file_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench_json(
        &[
            "--store",
            "postgres",
            "--concurrency",
            "1,4",
            "--no-baselines",
        ],
        dir.path(),
    );
    // One instance, then three sharing the database.
    for (key, coordinators) in [("pg_store", 1), ("pg_store_instances", 3)] {
        let store = &report[key];
        let runs = store["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: runs with the PostgreSQL store"));
        assert_eq!(runs.len(), 2, "{store}");
        for run in runs {
            assert_eq!(run["durable"], Value::Bool(true), "{run}");
            assert!(f(run, "committed") > 0.0, "{run}");
            assert_uncontended(run);
            // Every instance's counters are in: the load went round them.
            assert_eq!(f(run, "coordinators"), coordinators as f64, "{key}: {run}");
        }
        let ratios = store["ratios"].as_array().expect("ratios");
        assert_eq!(ratios.len(), 2, "{store}");
        assert!(
            ratios.iter().all(|r| f(r, "throughput_ratio") > 0.0),
            "{store}"
        );
    }
}

/// `--resource postgres`: throwaway clusters, the bare PostgreSQL 2PC
/// client and concord on the same databases, both durable by the
/// databases' own settings, with the ratio; the bench itself checks by
/// SQL that money is conserved and nothing is left prepared (it fails
/// otherwise).
#[test]
fn bench_measures_concord_against_bare_postgres_two_phase_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench_json(
        &["--resource", "postgres", "--concurrency", "1,4"],
        dir.path(),
    );
    assert_eq!(report["settings"]["resource"], "PostgreSQL", "{report}");
    let pg = &report["postgres"];
    let bare = pg["bare"].as_array().expect("bare runs");
    let concord = report["runs"].as_array().expect("concord runs");
    assert_eq!((bare.len(), concord.len()), (2, 2), "{pg}");
    for run in bare.iter().chain(concord) {
        assert_eq!(run["durable"], Value::Bool(true), "{run}");
        assert!(f(run, "committed") > 0.0, "{run}");
    }
    // The bare client has no timeouts: nothing aborts.
    for run in bare {
        assert_uncontended(run);
        assert_eq!(f(run, "aborted"), 0.0, "{run}");
    }
    // concord's phase-1 timeout is learned from latency: a PostgreSQL
    // fsync stalled past it on a loaded CI machine (seen: 7 of 155 at
    // concurrency 4) aborts with "vote timeout". Those may be there; lock
    // conflicts and client errors may not.
    for run in concord {
        let reasons = run["aborted_by_reason"].as_object().expect("reasons");
        assert!(reasons.keys().all(|r| r == "vote timeout"), "{run}");
        assert!(f(run, "aborted") < f(run, "committed"), "{run}");
        assert!(
            run["client_errors"]
                .as_object()
                .is_some_and(|e| e.is_empty()),
            "{run}"
        );
    }
    // concord's side went through the servers: READY and COMMIT records.
    for run in concord {
        assert!(f(run, "forced_records_per_txn") >= 4.0, "{run}");
    }
    assert!(f(pg, "best_ratio") > 0.0, "{pg}");
    assert_eq!(pg["ratios"].as_array().map(Vec::len), Some(2), "{pg}");
    for i in 0..3 {
        let log = dir.path().join("data").join(format!("postgres-{i}.log"));
        assert!(log.exists(), "{} kept", log.display());
    }
}

#[test]
fn bench_rejects_bad_settings_with_a_clear_message() {
    for (args, needle) in [
        (vec!["--tree", "p0(p9)"], "unknown participant p9"),
        (
            vec!["--tree", "p0(p1)", "--branches", "3"],
            "does not match the 2 participants of --tree",
        ),
        (vec!["--branches", "4"], "--branches"),
        (vec!["--concurrency", "0"], "concurrency 0"),
        (vec!["--hot-share", "1.5"], "--hot-share"),
        (
            vec!["--resource", "postgres", "--hot-share", "0.5"],
            "--resource postgres does not take --hot-share",
        ),
        (
            vec!["--resource", "postgres", "--api", "http"],
            "--resource postgres does not take --api http",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("bench")
            .args(&args)
            .output()
            .expect("run concord bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
