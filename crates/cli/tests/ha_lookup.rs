//! `GET /v1/transactions/{xid}` at any instance over a shared store (SPEC
//! §1.8), as real processes: two instances over one throwaway PostgreSQL
//! cluster, each with its HTTP API. A transaction c0 committed, whose
//! COMMIT cannot be delivered (its participant died), is answered by c1
//! too (c1 asks c0); an xid nobody began is 404 at either. Then c0 is
//! killed: until c1 has taken c0's log over, c1 cannot know, and says 503
//! (retry), never 404, which a READY HTTP participant would take for
//! ABORT; after the takeover c1 answers from the log itself.

mod common;

use common::http::{call, call_with};
use common::*;
use concord_pgcluster::{Cluster as PgCluster, ClusterOptions};
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 1000;

fn start_instance(cluster: &Cluster, name: &str, listen: &str, http: &str, dsn: &str) -> Proc {
    let lease = format!("{LEASE_MS}ms");
    let args = cluster.serve_args(&[
        "--name",
        name,
        "--listen",
        listen,
        "--http-listen",
        http,
        "--store",
        dsn,
        "--lease",
        &lease,
    ]);
    Proc::spawn(name, &args, &[], &cluster.log_path(name))
}

/// Ask `http` until it answers other than 503 (a fresh instance has not
/// scanned the owner table yet, the other has not taken its log yet).
async fn settled(http: &str, path: &str) -> common::http::HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = call(http, "GET", path, None, "").await;
        if response.status != 503 || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_answers_for_any_xid_and_never_a_false_no_record() {
    let db = PgCluster::start(&ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{e} (install the server: apt-get install -y postgresql)"));
    bounded(async {
        let mut cluster = Cluster::new(2, 4, 100);
        cluster.start_participant(0, &[]);
        // p1 votes READY, then dies when its COMMIT comes: c0 keeps the
        // transaction (committed, waiting for p1's ACK) in its log.
        cluster.start_participant(
            1,
            &[("CONCORD_FAILPOINT", "participant.before_commit_write")],
        );
        let ports = free_ports(4);
        let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let (c0, c0_http, c1_http) = (addr(0), addr(1), addr(3));
        let mut first = start_instance(&cluster, "c0", &c0, &c0_http, &db.dsn());
        let _second = start_instance(&cluster, "c1", &addr(2), &c1_http, &db.dsn());
        for i in 0..2 {
            wait_listening(&cluster.participant_listen_addr(i)).await;
        }
        wait_listening(&c0_http).await;
        wait_listening(&c1_http).await;
        let client = concord_client::Client::connect(&c0).await.expect("c0");
        let deadline = Instant::now() + Duration::from_secs(15);
        let result = loop {
            // c0 may still be taking its log ("store unavailable").
            match client.transfer(("p0", "acct-0"), ("p1", "acct-0"), 1).await {
                Ok(result) => break result,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("transfer at c0: {e}; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("transfer at c0: {e}"),
            }
        };
        assert_eq!(result.outcome, concord_api::Outcome::Committed);
        cluster
            .participant_proc(1)
            .wait_exit(Duration::from_secs(10));
        let xid = result.xid.to_string();
        let path = format!("/v1/transactions/{xid}");
        let waiting = "committed_waiting_for_acks";

        // c1 asks c0, with or without the log named.
        let at_c1 = settled(&c1_http, &path).await;
        assert_eq!(at_c1.status, 200, "{}", at_c1.body);
        assert_eq!(at_c1.json()["state"], waiting, "{}", at_c1.body);
        let named = call(&c1_http, "GET", &format!("{path}?log=c0"), None, "").await;
        assert_eq!(named.status, 200, "{}", named.body);
        assert_eq!(named.json()["xid"], xid);
        // The forwarding mark without a log is ignored: still every log.
        let marked = call_with(&c1_http, "GET", &path, "concord-forwarded: 1\r\n", "").await;
        assert_eq!(marked.status, 200, "{}", marked.body);
        // Nobody began this one: 404 at either, once every log was asked.
        let nobody = "/v1/transactions/0123456789abcdef0123456789abcdef";
        for http in [&c0_http, &c1_http] {
            settled(http, nobody)
                .await
                .assert_problem(404, "any of the store's 2 logs");
        }
        // A log the store does not have: it cannot tell, not 404.
        call(&c1_http, "GET", &format!("{nobody}?log=nope"), None, "")
            .await
            .assert_problem(503, "no log nope");
        call(&c1_http, "GET", &format!("{path}?log=c0&x=1"), None, "")
            .await
            .assert_problem(400, "unknown field");

        // c0 dies. Until c1 has taken its log over, c1 cannot ask anyone
        // for it: 503 every time, never 404; then 200 from the log.
        first.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut unsure = 0;
        let taken = loop {
            let response = call(&c1_http, "GET", &path, None, "").await;
            match response.status {
                200 => break response,
                503 => unsure += 1,
                other => panic!(
                    "c1 answered {other} for c0's transaction: {}",
                    response.body
                ),
            }
            assert!(Instant::now() < deadline, "c1 never took c0's log over");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(taken.json()["state"], waiting, "{}", taken.body);
        assert!(
            unsure > 0,
            "c1 answered at once: the lease gap was never seen"
        );
        call(&c1_http, "GET", nobody, None, "")
            .await
            .assert_problem(404, "any of the store's 2 logs");

        // p1 is back: the adopted log's COMMIT reaches it.
        cluster.start_participant(1, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = call(&c1_http, "GET", &path, None, "").await;
            if response.status == 200 && response.json()["state"] == "committed" {
                break;
            }
            // Ended and forgotten by the adopter is fine too: the
            // participants hold the outcome.
            if response.status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", response.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let states = states(&cluster, result.xid).await;
        assert_state_everywhere(&states, concord_proto::TxnState::Committed);
    })
    .await;
}
