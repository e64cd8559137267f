//! Operator actions (SPEC §8) against real processes, over the HTTP API
//! and the CLI: each refused cleanly without the operator token or with a
//! wrong confirmation (nothing done, nothing recorded); "retry now" for a
//! COMMIT that cannot be delivered; a heuristic abort of the in-doubt
//! branches of a coordinator that is gone, through another one; and the
//! audit trail, durable across a restart.

mod common;

use common::http::{call_with, HttpResponse};
use common::*;
use concord_proto::TxnState;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "op-secret-7";

fn token_file(dir: &Path) -> String {
    let path = dir.join("operator.token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write the token file");
    path.display().to_string()
}

async fn post(
    http: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> HttpResponse {
    let header = token
        .map(|t| format!("X-Concord-Operator-Token: {t}\r\n"))
        .unwrap_or_default();
    call_with(http, "POST", path, &header, &body.to_string()).await
}

async fn get(http: &str, path: &str) -> serde_json::Value {
    let response = call_with(http, "GET", path, "", "").await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_is_refused_without_token_or_confirmation_then_done_and_audited() {
    bounded(async {
        let mut cluster = Cluster::new(2, 4, 100);
        let http = format!("127.0.0.1:{}", free_ports(1)[0]);
        let token = token_file(cluster.dir.path());
        cluster.coordinator_flags = vec![
            "--http-listen".into(),
            http.clone(),
            "--operator-token-file".into(),
            token.clone(),
        ];
        // p1 votes READY, then dies when its COMMIT comes.
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[("CONCORD_FAILPOINT", "participant.before_commit_write")]);
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        wait_listening(&http).await;
        let client = cluster.client().await;
        let result = client
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 1)
            .await
            .expect("transfer");
        let xid = result.xid.to_string();
        cluster.participant_proc(1).wait_exit(Duration::from_secs(10));
        let path = format!("/v1/transactions/{xid}/retry");
        let body = |confirm: &str| json!({"confirm": confirm, "operator": "alice", "reason": "p1 is back"});

        // Refused: no token, a wrong token, a wrong confirmation, no reason.
        post(&http, &path, None, body(&xid)).await.assert_problem(403, "operator token");
        post(&http, &path, Some("guess"), body(&xid)).await.assert_problem(403, "operator token");
        post(&http, &path, Some(TOKEN), body(&xid[..8])).await.assert_problem(400, "typed out");
        let no_reason = json!({"confirm": xid, "operator": "alice", "reason": " "});
        post(&http, &path, Some(TOKEN), no_reason).await.assert_problem(400, "reason");
        let audit = get(&http, "/v1/audit").await;
        assert_eq!(audit["writable"], true);
        assert_eq!(audit["entries"], json!([]), "a refused action is not recorded");
        // A transaction that is not in flight here: nothing to retry.
        let other = "0123456789abcdef0123456789abcdef";
        post(&http, &format!("/v1/transactions/{other}/retry"), Some(TOKEN), body(other))
            .await
            .assert_problem(404, "not in flight");

        // Retry now: the COMMIT goes out again at once (to p1, still
        // down: the coordinator keeps re-sending it by itself too).
        let done = post(&http, &path, Some(TOKEN), body(&xid.to_uppercase())).await;
        assert_eq!(done.status, 200, "{}", done.body);
        let entry = done.json();
        assert_eq!(entry["ok"], true, "{entry}");
        assert_eq!(entry["action"], "retry_now");
        // p1 is among those asked again; p0 may be too, when its ACK
        // had not come back yet (a slow fsync on a busy machine).
        let sent = entry["result"].as_str().unwrap_or_default();
        assert!(
            sent.starts_with("sent again now to ") && sent.contains("p1 ("),
            "{entry}"
        );
        cluster.start_participant(1, &[]);
        wait_coordinator_state(&cluster, result.xid, &[concord_api::CoordinatorState::Committed])
            .await;

        // The trail, over HTTP and the CLI, and across a restart.
        cluster.start_coordinator(&[]);
        wait_listening(&http).await;
        let audit = get(&http, "/v1/audit").await;
        let entries = audit["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 1, "{audit}");
        assert_eq!(entries[0]["operator"], "alice");
        assert_eq!(entries[0]["reason"], "p1 is back");
        assert_eq!(entries[0]["xid"], xid);
        assert_eq!(entries[0]["ok"], true);
        let coordinator = cluster.coordinator.addr.clone();
        let output = tokio::task::spawn_blocking(move || {
            run_cli(&["operator", "--coordinator", &coordinator, "audit"])
        })
        .await
        .unwrap();
        let (stdout, stderr) = output_text(&output);
        assert!(output.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("#1") && stdout.contains("alice"), "{stdout}");
        assert!(stdout.contains("retry_now") && stdout.contains(&xid), "{stdout}");
        // Finished now: the CLI says so, exit 2, nothing recorded.
        let (coordinator, x) = (cluster.coordinator.addr.clone(), xid.clone());
        let output = tokio::task::spawn_blocking(move || {
            run_cli(&[
                "operator", "--coordinator", &coordinator, "retry", &x, "--confirm", &x,
                "--operator", "bob", "--reason", "again", "--operator-token-file", &token,
            ])
        })
        .await
        .unwrap();
        let (stdout, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
        assert!(stderr.contains("not in flight"), "{stderr}");
        assert_eq!(get(&http, "/v1/audit").await["entries"].as_array().unwrap().len(), 1);
    })
    .await;
}

/// The coordinator dies before deciding; both branches are in doubt, and
/// every peer is READY, so cooperative termination cannot help either. A
/// second coordinator (another name, its own log) sees them at the
/// participants and aborts them by hand, one over HTTP and one with the
/// CLI. When the first comes back it aborts too (presumed abort): no
/// conflict, and no money moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_abort_of_branches_whose_coordinator_is_gone() {
    bounded(async {
        let mut cluster = Cluster::new(2, 4, 100);
        // A long phase-1 deadline: the branches are not overdue for 8 s.
        let xid = in_doubt_with_coordinator_dead(&mut cluster, 10, 8000).await;
        let (first_addr, first_dir) = (
            cluster.coordinator.addr.clone(),
            cluster.coordinator.data_dir.clone(),
        );

        // The second coordinator, on its own port and log.
        let http = format!("127.0.0.1:{}", free_ports(1)[0]);
        cluster.coordinator.addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        cluster.coordinator.data_dir = cluster.dir.path().join("coordinator-2");
        let token = token_file(cluster.dir.path());
        cluster.coordinator_flags = vec![
            "--name".into(),
            "coordinator-2".into(),
            "--http-listen".into(),
            http.clone(),
            "--operator-token-file".into(),
            token.clone(),
        ];
        cluster.start_coordinator(&[]);
        wait_listening(&cluster.coordinator.addr).await;
        wait_listening(&http).await;
        let x = xid.to_string();
        let in_doubt = get(&http, "/v1/participants/p0/in-doubt").await;
        assert_eq!(in_doubt["branches"][0]["xid"], x, "{in_doubt}");
        assert_eq!(in_doubt["branches"][0]["coordinator"], "coordinator");
        let path = format!("/v1/transactions/{x}/branches/p0/heuristic");
        let abort = json!({"decision": "abort", "confirm": x, "operator": "carol",
            "reason": "coordinator host lost"});
        // Not overdue yet: the participant refuses; the attempt is audited.
        if in_doubt["branches"][0]["overdue"] == false {
            post(&http, &path, Some(TOKEN), abort.clone())
                .await
                .assert_problem(409, "not overdue");
        }
        // Unknown participant, and no token: refused before anything.
        post(
            &http,
            &format!("/v1/transactions/{x}/branches/p9/heuristic"),
            Some(TOKEN),
            abort.clone(),
        )
        .await
        .assert_problem(404, "p9");
        post(&http, &path, None, abort.clone())
            .await
            .assert_problem(403, "operator token");

        // Overdue: p0 has asked its (dead) coordinator.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let b = get(&http, "/v1/participants/p0/in-doubt").await;
            if b["branches"][0]["overdue"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "never overdue: {b}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let done = post(&http, &path, Some(TOKEN), abort).await;
        assert_eq!(done.status, 200, "{}", done.body);
        assert_eq!(done.json()["action"], "heuristic_abort");
        assert_eq!(
            states(&cluster, xid).await,
            vec![TxnState::Aborted, TxnState::Ready]
        );

        // p1 with the CLI.
        let coordinator = cluster.coordinator.addr.clone();
        let output = tokio::task::spawn_blocking(move || {
            run_cli(&[
                "operator",
                "--coordinator",
                &coordinator,
                "heuristic",
                &x,
                "--participant",
                "p1",
                "--decision",
                "abort",
                "--confirm",
                &x,
                "--operator",
                "carol",
                "--reason",
                "coordinator host lost",
                "--operator-token-file",
                &token,
            ])
        })
        .await
        .unwrap();
        let (stdout, stderr) = output_text(&output);
        assert!(output.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("carried out ABORT"), "{stdout}");
        assert_eq!(
            states(&cluster, xid).await,
            vec![TxnState::Aborted, TxnState::Aborted]
        );
        let audit = get(&http, "/v1/audit").await;
        let done: Vec<_> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ok"] == true)
            .map(|e| e["participant"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(done, vec!["p0", "p1"], "{audit}");
        assert!(get(&http, "/v1/participants/p1/in-doubt").await["branches"]
            .as_array()
            .unwrap()
            .is_empty());

        // The first coordinator comes back: presumed abort agrees.
        cluster.coordinator_flags.clear();
        cluster.coordinator.addr = first_addr;
        cluster.coordinator.data_dir = first_dir;
        cluster.start_coordinator(&[]);
        wait_listening(&cluster.coordinator.addr).await;
        let reports = cluster.wait_settled(Duration::from_secs(10)).await;
        assert_conserved(&cluster, &reports);
        let balance = reports[0].balances.iter().find(|(a, _)| a == "acct-0");
        assert_eq!(balance.map(|(_, b)| *b), Some(100), "nothing moved");
        for i in 0..2 {
            let log = cluster.participant_proc_log(i);
            assert!(!log.contains("heuristic conflict"), "p{i}: {log}");
            assert!(log.contains("heuristic decision accepted"), "p{i}");
        }
    })
    .await;
}
