//! Prometheus metrics of real processes, read with a real parser (Python
//! `prometheus_client`'s OpenMetrics parser, from PyPI): the coordinator's
//! and a participant's `/metrics` parse, and their values move with the
//! transactions run between two scrapes.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parse with the Python parser; every sample as "name{k=v,...}" → value.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let body = body.to_string();
    let parsed = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", PARSE])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (install: apt-get install python3)");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(body.as_bytes()).expect("feed the parser");
        }
        let output = child.wait_with_output().expect("parser");
        let (stdout, stderr) = output_text(&output);
        assert!(
            !stderr.contains("No module named"),
            "prometheus_client is missing: pip install prometheus-client (scripts/test \
             installs it)\n{stderr}"
        );
        assert!(
            output.status.success(),
            "the parser refused:\n{stderr}\n{body}"
        );
        stdout
    })
    .await
    .expect("parser task");
    serde_json::from_str(&parsed).expect("parser output")
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from {:?}", m.keys().collect::<Vec<_>>()))
}

fn moved_by(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    value(after, key) - value(before, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_transactions() {
    bounded(async {
        let mut cluster = Cluster::new(2, 2, 100);
        let ports = free_ports(2);
        let (coord_http, p0_http) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
        );
        cluster.coordinator_flags = vec!["--http-listen".into(), coord_http.clone()];
        cluster.participants[0].extra_flags = vec!["--http-listen".into(), p0_http.clone()];
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        wait_listening(&coord_http).await;
        wait_listening(&p0_http).await;

        let before = scrape(&coord_http).await;
        let p0_before = scrape(&p0_http).await;
        let client = cluster.client().await;
        for _ in 0..5 {
            let r = client
                .transfer(("p0", "acct-0"), ("p1", "acct-1"), 1)
                .await
                .expect("transfer");
            assert_eq!(r.outcome, concord_server::wire::Outcome::Committed);
        }
        cluster.wait_settled(Duration::from_secs(10)).await;
        // The last ACKs may still be on their way to the coordinator.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let after = scrape(&coord_http).await;
            let ended = "concord_transactions_ended_total{}";
            if moved_by(&before, &after, ended) == 5.0 || tokio::time::Instant::now() > deadline {
                break after;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let p0_after = scrape(&p0_http).await;

        let moved = moved_by;
        let committed = "concord_transactions_total{outcome=committed}";
        assert_eq!(moved(&before, &after, committed), 5.0);
        assert_eq!(
            moved(&before, &after, "concord_transactions_begun_total{}"),
            5.0
        );
        assert_eq!(value(&after, "concord_transactions_in_flight{}"), 0.0);
        assert!(moved(&before, &after, "concord_log_fsyncs_total{}") >= 5.0);
        // Histograms: a PREPARE → vote sample per branch, an fsync each.
        for p in ["p0", "p1"] {
            let prepares =
                format!("concord_phase_latency_seconds_count{{participant={p},phase=prepare}}");
            assert_eq!(value(&after, &prepares), 5.0, "{prepares}");
            let all = format!(
                "concord_phase_latency_seconds_bucket{{le=+Inf,participant={p},phase=prepare}}"
            );
            assert_eq!(value(&after, &all), 5.0, "{all}");
            let sum = format!("concord_phase_latency_seconds_sum{{participant={p},phase=prepare}}");
            assert!(value(&after, &sum) > 0.0, "{sum}");
        }
        assert!(value(&after, "concord_log_fsync_seconds_count{}") >= 5.0);
        assert!(value(&after, "concord_log_fsync_seconds_sum{}") > 0.0);
        assert!(value(&after, "concord_log_batch_records_count{}") >= 5.0);

        let branches = "concord_branches_total{outcome=committed}";
        assert_eq!(moved(&p0_before, &p0_after, branches), 5.0);
        assert_eq!(value(&p0_after, "concord_branches_in_doubt{}"), 0.0);
        assert_eq!(
            value(&p0_after, "concord_oldest_in_doubt_age_seconds{}"),
            0.0
        );
        assert!(moved(&p0_before, &p0_after, "concord_log_fsyncs_total{}") >= 5.0);
        // Each branch held its locks from its READY vote to its outcome.
        let held = "concord_lock_hold_seconds_count{participant=p0,phase=ready_to_outcome}";
        assert_eq!(moved(&p0_before, &p0_after, held), 5.0, "{held}");
        let held_sum = "concord_lock_hold_seconds_sum{participant=p0,phase=ready_to_outcome}";
        assert!(moved(&p0_before, &p0_after, held_sum) > 0.0, "{held_sum}");
        // COMMIT deliveries: one per branch, and nothing needs attention.
        let deliveries = "concord_decision_delivery_attempts_total{}";
        assert!(moved(&before, &after, deliveries) >= 10.0, "{deliveries}");
        assert_eq!(value(&after, "concord_branches_needing_attention{}"), 0.0);
    })
    .await;
}
