//! The coordinator's HTTP/JSON API with real processes: one-shot
//! transactions (commit, abort, a tree), the coordinator's view of one,
//! the token, and bad input of every kind (malformed JSON, an unknown
//! field, an oversized body, unknown routes and xids, a slow-headers
//! client, 2,000 connections at once): each gets its problem+json and the
//! server keeps serving the others.
//!
//! The client side is a few lines of raw HTTP/1.1 over TCP on purpose:
//! the tests must be able to send what no well-behaved client would.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A cluster of 3 participants whose coordinator serves the API on a port
/// of its own, with `flags` added.
async fn api_cluster(flags: &[&str]) -> (Cluster, String) {
    let mut cluster = Cluster::new(3, 4, 100);
    let http = format!("127.0.0.1:{}", free_ports(1)[0]);
    cluster.coordinator_flags = vec!["--http-listen".into(), http.clone()];
    cluster
        .coordinator_flags
        .extend(flags.iter().map(|f| f.to_string()));
    for i in 0..3 {
        cluster.start_participant(i, &[]);
    }
    cluster.start_coordinator(&[]);
    cluster.wait_all_listening().await;
    wait_listening(&http).await;
    (cluster, http)
}

const SETTLE: Duration = Duration::from_secs(10);

const TRANSFER: &str = r#"{"branches": [
    {"participant": "p0", "ops": [{"account": "acct-0", "delta": -10}]},
    {"participant": "p1", "ops": [{"account": "acct-1", "delta": 10}]}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_one_shot_transactions_commit_abort_and_show_their_state() {
    bounded(async {
        let (cluster, http) = api_cluster(&[]).await;
        assert_eq!(call(&http, "GET", "/healthz", None, "").await.status, 200);
        assert_eq!(call(&http, "GET", "/readyz", None, "").await.status, 200);

        // Commit: the outcome, the xid, and where to ask.
        let r = call(&http, "POST", "/v1/transactions", None, TRANSFER).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!(body["state"], "committed", "{body}");
        let xid = body["xid"].as_str().expect("xid").to_string();
        assert_eq!(xid.len(), 32, "{body}");
        let url = format!("/v1/transactions/{xid}");
        assert_eq!(body["status_url"], url.as_str());
        assert_eq!(r.header("location"), Some(url.as_str()));
        // The outcome comes once the decision is durable; phase 2 may
        // still be on its way.
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(90));
        assert_eq!(reports[1].balance("acct-1"), Some(110));

        // Its state at the coordinator, with stable names.
        let r = call(&http, "GET", &url, None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let view = r.json();
        assert_eq!(view["xid"], xid.as_str());
        assert!(
            ["committed", "committed_waiting_for_acks"]
                .contains(&view["state"].as_str().unwrap_or("")),
            "{view}"
        );
        assert_eq!(view["shape"], "centralized", "{view}");
        let names: Vec<&str> = view["branches"]
            .as_array()
            .expect("branches")
            .iter()
            .filter_map(|b| b["participant"].as_str())
            .collect();
        assert_eq!(names, vec!["p0", "p1"], "{view}");

        // The participants, with their estimates and timeouts per phase.
        let r = call(&http, "GET", "/v1/participants", None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let list = r.json();
        let names: Vec<&str> = list
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|p| p["participant"].as_str())
            .collect();
        assert_eq!(names, vec!["p0", "p1", "p2"], "{list}");
        let p0_prepare = &list[0]["phases"][0];
        assert_eq!(p0_prepare["phase"], "prepare", "{list}");
        assert!(
            p0_prepare["samples"].as_u64().is_some_and(|n| n >= 1),
            "{list}"
        );
        assert!(
            p0_prepare["timeout_ms"].as_u64().is_some_and(|t| t > 0),
            "{list}"
        );

        // A retry with the same Idempotency-Key joins the first: the same
        // xid, and the money moves once. The key with another body: 400.
        let key = "Idempotency-Key: order-77\r\n";
        let first = call_with(&http, "POST", "/v1/transactions", key, TRANSFER).await;
        let again = call_with(&http, "POST", "/v1/transactions", key, TRANSFER).await;
        assert_eq!(first.json()["state"], "committed", "{}", first.body);
        assert_eq!(again.json()["xid"], first.json()["xid"], "{}", again.body);
        assert_eq!(again.json()["state"], "committed", "{}", again.body);
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(
            reports[0].balance("acct-0"),
            Some(80),
            "moved once, not twice"
        );
        let other = TRANSFER.replace("-10", "-3").replace(": 10}", ": 3}");
        call_with(&http, "POST", "/v1/transactions", key, &other)
            .await
            .assert_problem(400, "different request");

        // wait_ms 0: no wait for the outcome, but the xid all the same.
        let quick = r#"{"wait_ms": 0, "branches": [
            {"participant": "p0", "ops": [{"account": "acct-3", "delta": -1}]},
            {"participant": "p1", "ops": [{"account": "acct-3", "delta": 1}]}
        ]}"#;
        let r = call(&http, "POST", "/v1/transactions", None, quick).await;
        assert!([200, 202].contains(&r.status), "{}", r.body);
        let url = r.json()["status_url"]
            .as_str()
            .expect("a status URL")
            .to_string();
        assert_eq!(call(&http, "GET", &url, None, "").await.status, 200);

        // Abort: more than the account holds. 200 with the reason: the
        // request was fine, the transaction aborted.
        let overdraw = TRANSFER.replace("-10", "-1000").replace(": 10}", ": 1000}");
        let r = call(&http, "POST", "/v1/transactions", None, &overdraw).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!(body["state"], "aborted", "{body}");
        assert!(
            body["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{body}"
        );
        assert_eq!(
            cluster.wait_settled(SETTLE).await[0].balance("acct-0"),
            Some(80)
        );

        // A tree: shown as one.
        let tree = r#"{"tree": "p2(p0,p1)", "branches": [
            {"participant": "p0", "ops": [{"account": "acct-2", "delta": -5}]},
            {"participant": "p1", "ops": [{"account": "acct-2", "delta": 5}]}
        ]}"#;
        let r = call(&http, "POST", "/v1/transactions", None, tree).await;
        assert_eq!(r.json()["state"], "committed", "{}", r.body);
        let url = r.json()["status_url"].as_str().expect("url").to_string();
        let view = call(&http, "GET", &url, None, "").await.json();
        assert_eq!(view["shape"], "hierarchical", "{view}");
        assert_eq!(view["layout"], "hierarchical: tree p2(p0,p1)", "{view}");
        let parents: Vec<Value> = view["branches"]
            .as_array()
            .expect("branches")
            .iter()
            .map(|b| b["parent"].clone())
            .collect();
        assert_eq!(
            parents,
            vec![Value::Null, "p2".into(), "p2".into()],
            "{view}"
        );
        assert_eq!(
            cluster.wait_settled(SETTLE).await[1].balance("acct-2"),
            Some(105)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_a_specific_problem_and_the_server_keeps_serving() {
    bounded(async {
        let (_cluster, http) = api_cluster(&["--http-body-bytes-max", "2000"]).await;
        let post = |body: String| {
            let http = http.clone();
            async move { call(&http, "POST", "/v1/transactions", None, &body).await }
        };
        post("{\"branches\": [".into())
            .await
            .assert_problem(400, "bad JSON body");
        post(TRANSFER.replace("\"ops\"", "\"opz\""))
            .await
            .assert_problem(400, "unknown field `opz`");
        // No branches is an open-ended transaction, which takes no tree.
        post(r#"{"branches": [], "tree": "p0"}"#.into())
            .await
            .assert_problem(400, "open-ended");
        post(r#"{"tree": "p0(p0)", "branches": [{"participant": "p0", "ops": []}]}"#.into())
            .await
            .assert_problem(400, "appears twice");
        post(TRANSFER.replace("p1", "nobody"))
            .await
            .assert_problem(400, "nobody");
        let huge = format!(
            r#"{{"branches": [{{"participant": "p0", "ops": [{{"account": "{}", "delta": 1}}]}}]}}"#,
            "x".repeat(5000)
        );
        post(huge).await.assert_problem(413, "--http-body-bytes-max");
        call(&http, "GET", "/v2/anything", None, "")
            .await
            .assert_problem(404, "no such route");
        call(&http, "DELETE", "/v1/transactions", None, "")
            .await
            .assert_problem(405, "method");
        call(&http, "GET", "/v1/transactions/not-hex", None, "")
            .await
            .assert_problem(400, "xid");
        let unknown = call(&http, "GET", "/v1/transactions/abc123", None, "").await;
        unknown.assert_problem(404, "presumed abort");
        assert_eq!(
            unknown.json()["xid"],
            "00000000000000000000000000abc123",
            "{}",
            unknown.body
        );
        // Still serving.
        assert_eq!(post(TRANSFER.into()).await.json()["state"], "committed");
    })
    .await;
}

/// The document the server serves is the committed one, and an
/// independent validator (openapi-spec-validator, from PyPI) accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_the_committed_openapi_document_and_it_validates() {
    bounded(async {
        let (_cluster, http) = api_cluster(&[]).await;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).expect("docs/openapi.json");
        let served = call(&http, "GET", "/openapi.json", None, "").await;
        assert_eq!(served.status, 200);
        assert!(
            served.body == committed,
            "the served document differs from {path}"
        );
        assert_eq!(served.json()["openapi"], "3.1.0");
        let output = std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator", path])
            .output()
            .expect("python3 (install: apt-get install python3)");
        let (stdout, stderr) = output_text(&output);
        assert!(
            !stderr.contains("No module named"),
            "openapi-spec-validator is missing: pip install openapi-spec-validator \
             (scripts/test installs it)\n{stderr}"
        );
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("OK"), "{stdout}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_guards_every_route_but_health() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "s3cret-token\n").expect("write token");
        let path = token_file.display().to_string();
        let (_cluster, http) = api_cluster(&["--api-token-file", &path]).await;
        assert_eq!(call(&http, "GET", "/healthz", None, "").await.status, 200);
        assert_eq!(call(&http, "GET", "/readyz", None, "").await.status, 200);
        let r = call(&http, "POST", "/v1/transactions", None, TRANSFER).await;
        r.assert_problem(401, "Authorization: Bearer");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        call(
            &http,
            "POST",
            "/v1/transactions",
            Some("s3cret-tokeX"),
            TRANSFER,
        )
        .await
        .assert_problem(401, "Bearer");
        call(&http, "GET", "/v1/transactions/abc", Some("s3cret"), "")
            .await
            .assert_problem(401, "Bearer");
        let r = call(
            &http,
            "POST",
            "/v1/transactions",
            Some("s3cret-token"),
            TRANSFER,
        )
        .await;
        assert_eq!(r.json()["state"], "committed", "{}", r.body);
    })
    .await;
}

/// A client that sends half its headers and stalls is cut off after the
/// header timeout; 2,000 idle connections at once do not stop a real
/// request from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_slow_headers_and_many_connections_do_not_stop_the_server() {
    bounded(async {
        let (_cluster, http) = api_cluster(&["--http-header-timeout-ms", "300"]).await;
        let mut slow = TcpStream::connect(&http).await.expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half the headers");
        let mut held = Vec::new();
        for _ in 0..2000 {
            held.push(TcpStream::connect(&http).await.expect("connect"));
        }
        let r = call(&http, "POST", "/v1/transactions", None, TRANSFER).await;
        assert_eq!(r.json()["state"], "committed", "{}", r.body);
        // The slow one is closed by the server (EOF, or a 408 then EOF).
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the slow-headers connection is still open after 5 s"
        );
        drop(held);
        assert_eq!(call(&http, "GET", "/healthz", None, "").await.status, 200);
    })
    .await;
}

/// A branch of the transfer, as `POST /v1/transactions/{xid}/branches`
/// takes it.
fn one_branch(participant: &str, account: &str, delta: i64) -> String {
    format!(
        r#"{{"branches": [{{"participant": "{participant}",
            "ops": [{{"account": "{account}", "delta": {delta}}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_ended_transactions_register_commit_abort_and_expire() {
    bounded(async {
        let (cluster, http) = api_cluster(&[]).await;

        // Open, register two branches one by one, commit.
        let r = call(&http, "POST", "/v1/transactions", None, "{}").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let opened = r.json();
        assert_eq!(opened["state"], "open", "{opened}");
        let xid = opened["xid"].as_str().expect("xid").to_string();
        let url = format!("/v1/transactions/{xid}");
        assert_eq!(
            call(&http, "GET", &url, None, "").await.json()["state"],
            "open"
        );
        for (p, a, d, n) in [("p0", "acct-0", -7, 1), ("p1", "acct-1", 7, 2)] {
            let r = call(
                &http,
                "POST",
                &format!("{url}/branches"),
                None,
                &one_branch(p, a, d),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["branches"], n, "{}", r.body);
        }
        call(
            &http,
            "POST",
            &format!("{url}/branches"),
            None,
            &one_branch("nobody", "a", 1),
        )
        .await
        .assert_problem(400, "nobody");
        let r = call(&http, "POST", &format!("{url}/commit"), None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["state"], "committed", "{}", r.body);
        assert_eq!(r.json()["xid"], xid.as_str());
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(93));
        assert_eq!(reports[1].balance("acct-1"), Some(107));
        // A retried commit joins the first: same outcome, nothing runs twice.
        let again = call(
            &http,
            "POST",
            &format!("{url}/commit"),
            None,
            r#"{"timeout_ms": 1000}"#,
        )
        .await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.json()["state"], "committed");
        let reports = cluster.wait_settled(SETTLE).await;
        assert_eq!(reports[0].balance("acct-0"), Some(93), "committed twice");
        // Too late to register or abort.
        call(
            &http,
            "POST",
            &format!("{url}/branches"),
            None,
            &one_branch("p2", "acct-2", 1),
        )
        .await
        .assert_problem(409, "not open");
        call(&http, "POST", &format!("{url}/abort"), None, "")
            .await
            .assert_problem(409, "not open");

        // Abort: nothing changes, a repeat answers the same, a commit after
        // it gets the outcome.
        let opened = call(&http, "POST", "/v1/transactions", None, "{}")
            .await
            .json();
        let url2 = format!("/v1/transactions/{}", opened["xid"].as_str().expect("xid"));
        let r = call(
            &http,
            "POST",
            &format!("{url2}/branches"),
            None,
            &one_branch("p0", "acct-0", -1),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for _ in 0..2 {
            let r = call(&http, "POST", &format!("{url2}/abort"), None, "").await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["state"], "aborted", "{}", r.body);
        }
        let r = call(&http, "POST", &format!("{url2}/commit"), None, "").await;
        assert_eq!(r.json()["state"], "aborted", "{}", r.body);

        // Its lifetime runs out: aborted, with the reason.
        let body = r#"{"lifetime_ms": 300}"#;
        let opened = call(&http, "POST", "/v1/transactions", None, body)
            .await
            .json();
        assert_eq!(opened["lifetime_ms"], 300, "{opened}");
        let url3 = format!("/v1/transactions/{}", opened["xid"].as_str().expect("xid"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let view = call(&http, "GET", &url3, None, "").await.json();
        assert_eq!(view["state"], "aborted", "{view}");
        assert!(
            view["detail"]
                .as_str()
                .unwrap_or("")
                .contains("lifetime of 300 ms"),
            "{view}"
        );
        call(
            &http,
            "POST",
            &format!("{url3}/branches"),
            None,
            &one_branch("p0", "acct-0", -1),
        )
        .await
        .assert_problem(409, "not open");

        // The same Idempotency-Key opens one transaction, not two.
        let keyed = "Idempotency-Key: open-1\r\n";
        let a = call_with(&http, "POST", "/v1/transactions", keyed, "{}")
            .await
            .json();
        let b = call_with(&http, "POST", "/v1/transactions", keyed, "{}")
            .await
            .json();
        assert_eq!(a["xid"], b["xid"], "{a} {b}");

        // Bad input.
        let unknown = "/v1/transactions/0123456789abcdef0123456789abcdef/commit";
        call(&http, "POST", unknown, None, "")
            .await
            .assert_problem(404, "no record");
        call(
            &http,
            "POST",
            "/v1/transactions",
            None,
            r#"{"shape": "linear"}"#,
        )
        .await
        .assert_problem(400, "open-ended");
        call(
            &http,
            "POST",
            "/v1/transactions",
            None,
            &format!(r#"{{"lifetime_ms": 5, {}"#, &TRANSFER[1..]),
        )
        .await
        .assert_problem(400, "lifetime_ms");
        call(
            &http,
            "POST",
            &format!("{url}/commit"),
            None,
            r#"{"wait": 1}"#,
        )
        .await
        .assert_problem(400, "wait");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_has_a_timeline_in_the_api_and_the_cli() {
    bounded(async {
        let (cluster, http) = api_cluster(&[]).await;
        let r = call(&http, "POST", "/v1/transactions", None, TRANSFER).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let xid = r.json()["xid"].as_str().expect("xid").to_string();
        cluster.wait_settled(SETTLE).await;
        wait_coordinator_state(
            &cluster,
            xid.parse().expect("xid"),
            &[concord_server::wire::CoordinatorState::Committed],
        )
        .await;

        let r = call(
            &http,
            "GET",
            &format!("/v1/transactions/{xid}/timeline"),
            None,
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let timeline = r.json();
        assert_eq!(timeline["finished"], true, "{timeline}");
        let entries = timeline["entries"].as_array().expect("entries");
        let has = |event: &str, message: &str, peer: Option<&str>| {
            entries.iter().any(|e| {
                let peer_matches = match peer {
                    None => true,
                    Some(p) => e["peer"] == p,
                };
                e["event"] == event && e["message"] == message && peer_matches
            })
        };
        for p in ["p0", "p1"] {
            assert!(
                has("sent", "PREPARE", Some(p)),
                "no PREPARE to {p}: {timeline}"
            );
            assert!(
                has("received", "VOTE READY", Some(p)),
                "no vote of {p}: {timeline}"
            );
            assert!(has("sent", "COMMIT", Some(p)), "{timeline}");
            assert!(has("received", "ACK", Some(p)), "{timeline}");
        }
        assert!(has("logged", "COMMIT record", None), "{timeline}");
        assert!(has("durable", "COMMIT record", None), "{timeline}");
        assert_eq!(entries[0]["event"], "begun", "{timeline}");
        assert!(
            entries[0]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("phase-1 timeout"),
            "the estimate behind the timeout: {timeline}"
        );
        assert_eq!(
            entries.last().map(|e| e["event"].clone()),
            Some("ended".into())
        );
        // In order, with RFC 3339 times.
        let offsets: Vec<f64> = entries
            .iter()
            .filter_map(|e| e["offset_ms"].as_f64())
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{timeline}");
        let at = entries[0]["at"].as_str().unwrap_or("");
        assert!(
            at.len() == 24 && at.ends_with('Z') && &at[10..11] == "T",
            "{at}"
        );

        let unknown = "/v1/transactions/0123456789abcdef0123456789abcdef/timeline";
        call(&http, "GET", unknown, None, "")
            .await
            .assert_problem(404, "no timeline");

        // The CLI shows the same.
        let out = run_cli(&["timeline", "--coordinator", &cluster.coordinator.addr, &xid]);
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("sent PREPARE to p0"), "{stdout}");
        assert!(stdout.contains("received VOTE READY from p1"), "{stdout}");
        assert!(stdout.contains("durable COMMIT record"), "{stdout}");
        let out = run_cli(&[
            "timeline",
            "--coordinator",
            &cluster.coordinator.addr,
            "0123456789abcdef0123456789abcdef",
        ]);
        assert_eq!(out.status.code(), Some(1), "{:?}", output_text(&out));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_listed_newest_first_filtered_and_paged() {
    bounded(async {
        let (_cluster, http) = api_cluster(&[]).await;
        let overdraft = r#"{"branches": [
            {"participant": "p2", "ops": [{"account": "acct-2", "delta": -100000}]},
            {"participant": "p1", "ops": [{"account": "acct-1", "delta": 1}]}]}"#;
        let mut begun = Vec::new();
        for body in [TRANSFER, overdraft, TRANSFER, overdraft, TRANSFER] {
            let r = call(&http, "POST", "/v1/transactions", None, body).await;
            assert_eq!(r.status, 200, "{}", r.body);
            begun.push(r.json()["xid"].as_str().expect("xid").to_string());
        }
        let open = call(&http, "POST", "/v1/transactions", None, "{}")
            .await
            .json();
        begun.push(open["xid"].as_str().expect("xid").to_string());

        // Every page in turn, newest first, nothing twice, nothing missed.
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let path = match &cursor {
                None => "/v1/transactions?limit=4".to_string(),
                Some(c) => format!("/v1/transactions?limit=4&cursor={c}"),
            };
            let r = call(&http, "GET", &path, None, "").await;
            assert_eq!(r.status, 200, "{}", r.body);
            let page = r.json();
            let items = page["transactions"]
                .as_array()
                .expect("transactions")
                .clone();
            assert!(items.len() <= 4, "{page}");
            listed.extend(
                items
                    .iter()
                    .filter_map(|t| t["xid"].as_str().map(str::to_string)),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut newest_first = begun.clone();
        newest_first.reverse();
        assert_eq!(listed, newest_first);

        let xids = |path: &str| {
            let path = path.to_string();
            let http = http.clone();
            async move {
                let r = call(&http, "GET", &path, None, "").await;
                assert_eq!(r.status, 200, "{}", r.body);
                let page = r.json();
                page["transactions"]
                    .as_array()
                    .expect("transactions")
                    .iter()
                    .filter_map(|t| t["xid"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            }
        };
        let aborted = xids("/v1/transactions?state=aborted").await;
        assert_eq!(aborted, vec![begun[3].clone(), begun[1].clone()]);
        assert_eq!(
            xids("/v1/transactions?state=open").await,
            vec![begun[5].clone()]
        );
        assert_eq!(xids("/v1/transactions?participant=p2").await, aborted);
        // In doubt until the last ACKs arrive, then never again.
        let started = std::time::Instant::now();
        while !xids("/v1/transactions?state=in_doubt").await.is_empty() {
            assert!(
                started.elapsed() < SETTLE,
                "still in doubt after {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(xids("/v1/transactions?min_age_ms=600000").await.len(), 0);
        assert_eq!(xids("/v1/transactions?max_age_ms=600000").await.len(), 6);
        // By xid prefix, on the server: every transaction, not a page.
        let one = &begun[2];
        assert_eq!(
            xids(&format!("/v1/transactions?xid_prefix={}", &one[..10])).await,
            vec![one.clone()]
        );
        let upper = one[..10].to_uppercase();
        assert_eq!(
            xids(&format!("/v1/transactions?xid_prefix={upper}")).await,
            vec![one.clone()]
        );
        // Conditional polling: the same page again is a 304 until
        // something changes; an age bound has no ETag.
        let first = call(&http, "GET", "/v1/transactions", None, "").await;
        let etag = first.header("etag").expect("an ETag").to_string();
        let if_none_match = format!("If-None-Match: {etag}\r\n");
        let again = call_with(&http, "GET", "/v1/transactions", &if_none_match, "").await;
        assert_eq!(again.status, 304, "{}", again.body);
        assert!(again.body.is_empty());
        let aged = call(&http, "GET", "/v1/transactions?min_age_ms=1", None, "").await;
        assert!(aged.header("etag").is_none());
        let r = call(&http, "POST", "/v1/transactions", None, TRANSFER).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let changed = call_with(&http, "GET", "/v1/transactions", &if_none_match, "").await;
        assert_eq!(changed.status, 200);
        assert_ne!(changed.header("etag"), Some(etag.as_str()));
        call(&http, "GET", "/v1/transactions?xid_prefix=xyz", None, "")
            .await
            .assert_problem(400, "xid_prefix");

        call(&http, "GET", "/v1/transactions?state=bogus", None, "")
            .await
            .assert_problem(400, "unknown state");
        call(&http, "GET", "/v1/transactions?colour=red", None, "")
            .await
            .assert_problem(400, "colour");
        call(&http, "GET", "/v1/transactions?cursor=zzz", None, "")
            .await
            .assert_problem(400, "cursor");
    })
    .await;
}
