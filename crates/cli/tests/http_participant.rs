//! HTTP participants with real processes: the example inventory service
//! (Python, SQLite, `examples/http-inventory`) next to a key-value
//! participant, with the coordinator calling the service's prepare /
//! commit / abort. Cases (SPEC §4 HTTP, §8 needs attention):
//! - mixed transactions commit and abort on both, the trace context goes
//!   along, and the shapes an HTTP service cannot take are refused;
//! - the service killed (-9) after READY: COMMIT is delivered after it
//!   restarts;
//! - the service down past `--attention-after`: the branch is flagged
//!   (API, metrics, log), then cleared once delivered;
//! - the service answering slowly: the measured phase-1 timeout adapts.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example service's script.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/http-inventory/inventory.py")
}

/// The inventory service as a child process; killed on drop.
struct Inventory {
    port: u16,
    db: PathBuf,
    log: PathBuf,
    api: String,
    child: Option<Child>,
}

impl Inventory {
    fn new(cluster: &Cluster, api: &str) -> Inventory {
        Inventory {
            port: free_ports(1)[0],
            db: cluster.dir.path().join("inventory.sqlite"),
            log: cluster.log_path("inventory"),
            api: format!("http://{api}"),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the service's log");
        let mut command = Command::new("python3");
        command
            .arg(script())
            .args(["--listen", &self.addr()])
            .arg("--db")
            .arg(&self.db)
            .args(["--coordinator-api", &self.api])
            .args(["--seed", "widget=10", "--inquire-ms", "500", "--verbose"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        self.child = Some(command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start python3 {}: {e} (install: apt-get install python3)",
                script().display()
            )
        }));
        wait_listening(&self.addr()).await;
    }

    /// kill -9, then start again with `extra`.
    async fn restart(&mut self, extra: &[&str]) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.start(extra).await;
    }

    /// Wait for it to exit by itself (it kills itself with --die-on-commit).
    async fn wait_dead(&mut self) {
        let started = Instant::now();
        while let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the service did not die"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn items(&self) -> Value {
        let r = call(&self.addr(), "GET", "/items", None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Inventory {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- inventory service log -----\n{}", self.log_text());
        }
    }
}

/// A key-value participant p0, the inventory service, and a coordinator
/// with its API, `flags` added.
async fn cluster(flags: &[&str]) -> (Cluster, String, Inventory) {
    let mut cluster = Cluster::new(1, 4, 100);
    let http = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut inventory = Inventory::new(&cluster, &http);
    cluster.coordinator_flags = vec![
        "--http-listen".into(),
        http.clone(),
        "--http-participant".into(),
        format!("inventory={}", inventory.url()),
    ];
    cluster
        .coordinator_flags
        .extend(flags.iter().map(|f| f.to_string()));
    cluster.start_participant(0, &[]);
    cluster.start_coordinator(&[]);
    cluster.wait_all_listening().await;
    wait_listening(&http).await;
    inventory.start(&[]).await;
    (cluster, http, inventory)
}

/// A transaction taking `take` widgets and `pay` from acct-0.
fn order(take: i64, pay: i64) -> String {
    format!(
        r#"{{"branches": [
            {{"participant": "p0", "ops": [{{"account": "acct-0", "delta": {}}}]}},
            {{"participant": "inventory", "work": {{"ops": [{{"item": "widget", "delta": {}}}]}}}}
        ]}}"#,
        -pay, -take
    )
}

async fn begin(http: &str, body: &str) -> Value {
    let r = call(http, "POST", "/v1/transactions", None, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn view(http: &str, xid: &str) -> Value {
    let r = call(http, "GET", &format!("/v1/transactions/{xid}"), None, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn branch<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["branches"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["participant"] == name))
        .unwrap_or_else(|| panic!("no branch {name} in {view}"))
}

/// Poll the coordinator's view of `xid` until `done` holds.
async fn wait_view(http: &str, xid: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = view(http, xid).await;
        if done(&v) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &str, name: &str) -> f64 {
    let r = call(http, "GET", "/metrics", None, "").await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transactions_commit_and_abort_on_a_kv_participant_and_an_http_service() {
    bounded(async {
        let (cluster, http, inventory) = cluster(&[]).await;

        let committed = begin(&http, &order(2, 5)).await;
        assert_eq!(committed["state"], "committed", "{committed}");
        let xid = committed["xid"].as_str().expect("xid").to_string();
        let settled = wait_view(&http, &xid, "every branch acknowledged", |v| {
            v["state"] == "committed"
        })
        .await;
        assert_eq!(
            branch(&settled, "inventory")["state"],
            "committed",
            "{settled}"
        );
        assert_eq!(inventory.items().await["items"]["widget"], 8);
        let reports = cluster.wait_settled(Duration::from_secs(10)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(95));

        // The service votes ABORT (not enough widgets): nothing changes
        // anywhere, and the reason is the service's.
        let aborted = begin(&http, &order(100, 1)).await;
        assert_eq!(aborted["state"], "aborted", "{aborted}");
        let reason = aborted["reason"].as_str().unwrap_or("");
        assert!(reason.contains("only 8 of widget left"), "{aborted}");
        assert_eq!(inventory.items().await["items"]["widget"], 8);
        let reports = cluster.wait_settled(Duration::from_secs(10)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(95));

        // A single HTTP branch goes through both phases (the contract has
        // no one-phase commit).
        let single = r#"{"branches": [{"participant": "inventory",
            "work": {"ops": [{"item": "widget", "delta": -1}]}}]}"#;
        let one = begin(&http, single).await;
        assert_eq!(one["state"], "committed", "{one}");
        let one_xid = one["xid"].as_str().expect("xid").to_string();
        wait_view(&http, &one_xid, "acknowledged", |v| {
            v["state"] == "committed"
        })
        .await;
        assert_eq!(inventory.items().await["items"]["widget"], 7);

        // Shapes an HTTP service cannot take part in are refused up front.
        let linear = r#"{"shape": "linear", "branches": [
            {"participant": "p0", "ops": [{"account": "acct-0", "delta": -1}]},
            {"participant": "inventory", "work": {"ops": []}}]}"#;
        call(&http, "POST", "/v1/transactions", None, linear)
            .await
            .assert_problem(
                400,
                "is an HTTP participant: it takes part only in centralized",
            );
        let both = r#"{"branches": [{"participant": "inventory",
            "ops": [{"account": "a", "delta": 1}], "work": {}}]}"#;
        call(&http, "POST", "/v1/transactions", None, both)
            .await
            .assert_problem(400, "both ops");

        // Every call carried the xid as its W3C trace id.
        let log = inventory.log_text();
        assert!(
            log.contains(&format!("/prepare {xid} traceparent=00-{xid}-")),
            "no traceparent with the xid in the service's log:\n{log}"
        );
        assert!(
            log.contains(&format!("/commit {xid} traceparent=00-{xid}-")),
            "{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failure_http_service_killed_after_ready_gets_commit_after_restart() {
    bounded(async {
        let (_cluster, http, mut inventory) = cluster(&[]).await;
        inventory.restart(&["--die-on-commit"]).await;

        // The decision is durable before the service hears it; the service
        // dies on the COMMIT, before applying it.
        let txn = begin(&http, &order(3, 1)).await;
        assert_eq!(txn["state"], "committed", "{txn}");
        let xid = txn["xid"].as_str().expect("xid").to_string();
        inventory.wait_dead().await;
        let waiting = wait_view(&http, &xid, "a failed delivery on record", |v| {
            branch(v, "inventory")["delivery"]["last_error"].is_string()
        })
        .await;
        assert_eq!(waiting["state"], "committed_waiting_for_acks", "{waiting}");
        let inv = branch(&waiting, "inventory");
        assert_eq!(inv["state"], "ready", "{waiting}");
        assert_eq!(inv["delivery"]["needs_attention"], false, "{waiting}");

        // Restarted from its SQLite file, it still holds its READY branch
        // and applies the re-sent COMMIT.
        inventory.start(&[]).await;
        let done = wait_view(&http, &xid, "COMMIT delivered after the restart", |v| {
            v["state"] == "committed"
        })
        .await;
        assert_eq!(branch(&done, "inventory")["state"], "committed", "{done}");
        let items = inventory.items().await;
        assert_eq!(items["items"]["widget"], 7, "{items}");
        assert_eq!(items["branches"]["committed"], 1, "{items}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_down_past_the_threshold_needs_attention_until_delivered() {
    bounded(async {
        let (cluster, http, mut inventory) = cluster(&["--attention-after", "1500ms"]).await;
        inventory.restart(&["--die-on-commit"]).await;
        let txn = begin(&http, &order(1, 1)).await;
        assert_eq!(txn["state"], "committed", "{txn}");
        let xid = txn["xid"].as_str().expect("xid").to_string();
        inventory.wait_dead().await;

        let flagged = wait_view(&http, &xid, "flagged needs attention", |v| {
            branch(v, "inventory")["state"] == "needs_attention"
        })
        .await;
        let delivery = &branch(&flagged, "inventory")["delivery"];
        assert_eq!(delivery["needs_attention"], true, "{flagged}");
        assert!(delivery["attempts"].as_u64().unwrap_or(0) >= 2, "{flagged}");
        assert!(
            delivery["pending_ms"].as_u64().unwrap_or(0) >= 1500,
            "{flagged}"
        );
        let error = delivery["last_error"].as_str().unwrap_or("");
        assert!(error.contains(&inventory.url()), "{flagged}");
        assert_eq!(
            metric(&http, "concord_branches_needing_attention").await,
            1.0
        );
        assert!(metric(&http, "concord_decision_delivery_attempts_total").await >= 2.0);
        let log = std::fs::read_to_string(cluster.log_path("coordinator")).unwrap_or_default();
        assert!(
            log.contains("needs attention: inventory (http://127.0.0.1"),
            "{log}"
        );

        inventory.start(&[]).await;
        let done = wait_view(&http, &xid, "cleared once delivered", |v| {
            v["state"] == "committed"
        })
        .await;
        assert_eq!(branch(&done, "inventory")["state"], "committed", "{done}");
        assert_eq!(
            metric(&http, "concord_branches_needing_attention").await,
            0.0
        );
        let log = std::fs::read_to_string(cluster.log_path("coordinator")).unwrap_or_default();
        assert!(
            log.contains("attention cleared: inventory (http://127.0.0.1"),
            "{log}"
        );
        assert_eq!(inventory.items().await["items"]["widget"], 9);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_service_gets_a_measured_timeout_that_covers_it() {
    bounded(async {
        let (_cluster, http, mut inventory) = cluster(&[]).await;
        inventory.restart(&["--delay-prepare-ms", "250"]).await;
        let before = inventory_prepare(&http).await;
        assert_eq!(
            before["timeout_ms"], 3000,
            "the configured default first: {before}"
        );
        let single = r#"{"branches": [{"participant": "inventory",
            "work": {"ops": [{"item": "widget", "delta": -1}]}}]}"#;
        for _ in 0..9 {
            let txn = begin(&http, single).await;
            assert_eq!(txn["state"], "committed", "{txn}");
        }
        // Measured now: above the service's 250 ms, and no longer the
        // configured 3000 ms.
        let after = inventory_prepare(&http).await;
        assert!(after["samples"].as_u64().unwrap_or(0) >= 8, "{after}");
        let srtt = after["srtt_us"].as_u64().unwrap_or(0);
        assert!(
            srtt >= 250_000,
            "srtt {srtt} µs below the service's delay: {after}"
        );
        let timeout = after["timeout_ms"].as_u64().unwrap_or(0);
        assert!(timeout > 250 && timeout < 3000, "{after}");
    })
    .await;
}

/// The coordinator's prepare estimate of the inventory service.
async fn inventory_prepare(http: &str) -> Value {
    let r = call(http, "GET", "/v1/participants", None, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["participant"] == "inventory"))
        .and_then(|p| p["phases"].as_array())
        .and_then(|phases| phases.iter().find(|ph| ph["phase"] == "prepare"))
        .cloned()
        .unwrap_or_else(|| panic!("no prepare estimate of inventory in {list}"))
}
