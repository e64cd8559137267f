//! End-to-end tests over real processes: a coordinator and participants
//! started from the `concord` binary on 127.0.0.1, driven by the CLI and
//! the client library. Covers the happy path and the "Bad input" rules of
//! issue 2.

mod common;

use common::*;
use concord_client::ClientError;
use concord_proto::{Body, Message, TxnState, Xid};
use concord_server::wire::{self, CoordinatorState, Outcome};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_commits_and_balances_move() {
    bounded(async {
        let cluster = Cluster::start(2, 3, 100).await;
        let coordinator = cluster.coordinator.addr.clone();
        let output = tokio::task::spawn_blocking(move || {
            transfer_cli(&coordinator, "p0:acct-0", "p1:acct-2", 40, &[])
        })
        .await
        .expect("cli task");
        let (stdout, stderr) = output_text(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "stdout {stdout} stderr {stderr}"
        );
        assert!(stdout.starts_with("xid "), "{stdout}");
        assert!(stdout.contains("committed"), "{stdout}");

        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(60));
        assert_eq!(reports[1].balance("acct-2"), Some(140));
        assert_eq!(
            reports.iter().map(|r| r.total()).sum::<i64>(),
            cluster.total_seeded()
        );

        // `accounts` prints one "account balance" line each, then in-doubt.
        let p0 = cluster.participants[0].addr.clone();
        let output =
            tokio::task::spawn_blocking(move || run_cli(&["accounts", "--participant", &p0]))
                .await
                .expect("cli task");
        let (stdout, _) = output_text(&output);
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            vec!["acct-0 60", "acct-1 100", "acct-2 100", "in doubt: none"]
        );

        // `status` shows the coordinator's view and each participant's.
        let xid =
            stdout_xid(&output_text(&run_transfer(&cluster, "p1:acct-0", "p0:acct-1", 5).await).0);
        // Once the participants have recorded it and ACKed: the client
        // hears COMMIT as soon as the decision is durable, and a
        // participant's locks are released before its COMMITTED record is
        // durable (that fsync may wait to be shared), so poll.
        cluster.wait_settled(Duration::from_secs(5)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let stdout = loop {
            let stdout = status_text(&cluster, &xid).await;
            if stdout.matches(": COMMITTED").count() == 3 || std::time::Instant::now() > deadline {
                break stdout;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert!(stdout.contains("coordinator: COMMITTED"), "{stdout}");
        assert_eq!(stdout.matches(": COMMITTED").count(), 3, "{stdout}");

        // The same two views as JSON.
        let coordinator = cluster.coordinator.addr.clone();
        let xid_arg = xid.clone();
        let output = tokio::task::spawn_blocking(move || {
            run_cli(&["status", "--coordinator", &coordinator, &xid_arg, "--json"])
        })
        .await
        .expect("cli task");
        let (stdout, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let status: serde_json::Value = serde_json::from_str(&stdout).expect("status --json");
        assert_eq!(status["xid"].as_str(), Some(xid.as_str()), "{status}");
        let branches = status["branches"].as_array().expect("branches");
        assert_eq!(branches.len(), 2, "{status}");
        assert!(
            branches
                .iter()
                .all(|b| b["participant_state"].as_str() == Some("COMMITTED")),
            "{status}"
        );
        let p0 = cluster.participants[0].addr.clone();
        let output = tokio::task::spawn_blocking(move || {
            run_cli(&["accounts", "--participant", &p0, "--json"])
        })
        .await
        .expect("cli task");
        let (stdout, stderr) = output_text(&output);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let accounts: serde_json::Value = serde_json::from_str(&stdout).expect("accounts --json");
        assert!(accounts.to_string().contains("acct-1"), "{accounts}");
        assert!(
            accounts.to_string().contains("105"),
            "acct-1 got 5: {accounts}"
        );
    })
    .await;
}

async fn run_transfer(
    cluster: &Cluster,
    from: &str,
    to: &str,
    amount: i64,
) -> std::process::Output {
    let coordinator = cluster.coordinator.addr.clone();
    let (from, to) = (from.to_string(), to.to_string());
    tokio::task::spawn_blocking(move || transfer_cli(&coordinator, &from, &to, amount, &[]))
        .await
        .expect("cli task")
}

fn stdout_xid(stdout: &str) -> String {
    stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("xid "))
        .expect("first line is the xid")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_account_aborts_with_the_reason() {
    bounded(async {
        let cluster = Cluster::start(2, 2, 100).await;
        let output = run_transfer(&cluster, "p0:acct-0", "p1:no-such-account", 1).await;
        let (stdout, stderr) = output_text(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "stdout {stdout} stderr {stderr}"
        );
        assert!(stdout.contains("aborted:"), "{stdout}");
        assert!(
            stdout.contains("unknown account no-such-account"),
            "{stdout}"
        );
        assert!(
            stdout.contains("p1"),
            "the reason names the participant: {stdout}"
        );
        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(100));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_participant_fails_at_once() {
    bounded(async {
        let cluster = Cluster::start(2, 2, 100).await;
        let started = Instant::now();
        let output = run_transfer(&cluster, "p0:acct-0", "nowhere:acct-1", 1).await;
        let (stdout, stderr) = output_text(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "stdout {stdout} stderr {stderr}"
        );
        assert!(
            stderr.contains("unknown participant nowhere (known: p0, p1)"),
            "{stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );

        // The same through the library.
        let client = cluster.client().await;
        match client.transfer(("ghost", "a"), ("p0", "acct-0"), 1).await {
            Err(ClientError::Rejected(message)) => {
                assert!(message.contains("unknown participant ghost"), "{message}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_funds_aborts() {
    bounded(async {
        let cluster = Cluster::start(2, 2, 100).await;
        let client = cluster.client().await;
        let result = client
            .transfer(("p0", "acct-1"), ("p1", "acct-1"), 101)
            .await
            .expect("transaction runs");
        match &result.outcome {
            Outcome::Aborted { reason } => {
                assert!(reason.contains("insufficient funds in acct-1"), "{reason}")
            }
            other => panic!("expected an abort, got {other:?}"),
        }
        // A transfer within the balance, on the same client, still commits;
        // two branches on one participant are merged into one.
        let ok = client
            .transfer(("p0", "acct-1"), ("p0", "acct-0"), 100)
            .await
            .expect("transaction runs");
        assert!(ok.committed(), "{ok:?}");
        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(200));
        assert_eq!(reports[0].balance("acct-1"), Some(0));
        assert_eq!(reports[1].balance("acct-1"), Some(100));
    })
    .await;
}

/// Read until EOF or error; true if the server closed the connection
/// within `timeout`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    bounded(async {
        let cluster = Cluster::start(2, 2, 100).await;
        let addr = cluster.coordinator.addr.clone();
        // A client connected before the garbage keeps working afterwards.
        let client = cluster.client().await;

        let mut bad_frames: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("bad version", vec![b'C', b'D', 99, 1, 0, 0, 0, 0]),
        ];
        // Oversized: a header announcing 512 MiB.
        let mut oversized = vec![b'C', b'D', 1, wire::KIND_REQUEST];
        oversized.extend_from_slice(&(512u32 << 20).to_le_bytes());
        bad_frames.push(("oversized", oversized));
        // A valid header with a body that is not a request.
        let mut undecodable = bytes::BytesMut::new();
        concord_net::encode_frame(
            wire::KIND_REQUEST,
            &[0xff, 0xff, 0xff, 0xff],
            &mut undecodable,
        );
        bad_frames.push(("undecodable body", undecodable.to_vec()));
        // An unknown frame kind.
        let mut unknown_kind = bytes::BytesMut::new();
        concord_net::encode_frame(77, b"hello", &mut unknown_kind);
        bad_frames.push(("unknown kind", unknown_kind.to_vec()));

        let mut local_addrs = Vec::new();
        for (what, bytes) in &bad_frames {
            let mut stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            local_addrs.push(stream.local_addr().expect("local addr").to_string());
            stream.write_all(bytes).await.expect("write");
            assert!(
                closed_by_server(&mut stream, Duration::from_secs(3)).await,
                "{what}: the coordinator did not close the connection"
            );
        }
        // Bytes trickling in one at a time still form a valid frame.
        let mut slow = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let frame = wire::request_frame(&wire::Request::Status {
            request_id: 1,
            xid: Xid(5),
        });
        let mut bytes = bytes::BytesMut::new();
        concord_net::encode_frame(frame.kind, &frame.body, &mut bytes);
        for b in bytes.iter() {
            slow.write_all(&[*b]).await.expect("write a byte");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut header = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(3), slow.read_exact(&mut header))
            .await
            .expect("reply in time")
            .expect("reply header");
        assert_eq!(&header[..2], b"CD");
        assert_eq!(header[3], wire::KIND_REPLY);

        // The server goes on serving: old and new clients.
        let result = client
            .transfer(("p0", "acct-0"), ("p1", "acct-0"), 1)
            .await
            .expect("old client still served");
        assert!(result.committed(), "{result:?}");
        let result = cluster
            .client()
            .await
            .transfer(("p1", "acct-1"), ("p0", "acct-1"), 1)
            .await
            .expect("new client served");
        assert!(result.committed(), "{result:?}");

        // Each closed connection was logged with the peer's address.
        let log = cluster
            .coordinator
            .proc
            .as_ref()
            .expect("running")
            .log_text();
        for peer in &local_addrs {
            assert!(
                log.lines()
                    .any(|l| l.contains("closing connection") && l.contains(peer.as_str())),
                "no log line naming {peer}:\n{log}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inquire_for_unknown_xid_answers_aborted() {
    bounded(async {
        let cluster = Cluster::start(1, 1, 100).await;
        // Pose as a participant: listen where the answer must go.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let me = listener.local_addr().expect("addr").to_string();
        let xid = Xid(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let inquire = Message {
            xid,
            epoch: 1,
            from: "poser".into(),
            body: Body::Inquire {
                prepared_ms_ago: None,
            },
        };
        let mut stream = tokio::net::TcpStream::connect(&cluster.coordinator.addr)
            .await
            .expect("connect");
        let frame = wire::peer_frame("poser", &me, 1, &[], wire::PeerBodyRef::Message(&inquire));
        let mut bytes = bytes::BytesMut::new();
        concord_net::encode_frame(frame.kind, &frame.body, &mut bytes);
        stream.write_all(&bytes).await.expect("send INQUIRE");

        // The answer comes on the coordinator's own connection to where
        // "poser" said it is.
        let (mut incoming, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("coordinator connects back in time")
            .expect("accept");
        let mut header = [0u8; 8];
        incoming.read_exact(&mut header).await.expect("header");
        assert_eq!(header[3], wire::KIND_PEER);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut body = vec![0u8; len];
        incoming.read_exact(&mut body).await.expect("body");
        let answer = wire::decode_peer(&body).expect("a peer message");
        assert_eq!(answer.from, "coordinator");
        assert_eq!(answer.reply_to, cluster.coordinator.addr);
        match answer.body {
            wire::PeerBody::Message(m) => {
                assert_eq!(m.xid, xid);
                assert_eq!(m.from, "coordinator");
                assert_eq!(m.body, Body::State(TxnState::Aborted));
            }
            other => panic!("expected the STATE answer, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_balances_and_ignores_the_seed() {
    bounded(async {
        let mut cluster = Cluster::start(2, 2, 100).await;
        let client = cluster.client().await;
        for _ in 0..5 {
            let r = client
                .transfer(("p0", "acct-0"), ("p1", "acct-1"), 3)
                .await
                .expect("runs");
            assert!(r.committed(), "{r:?}");
        }
        drop(client);
        cluster.wait_settled(Duration::from_secs(5)).await;
        // kill -9 everything, start again from the data dirs.
        cluster.coordinator_proc().kill();
        cluster.participant_proc(0).kill();
        cluster.participant_proc(1).kill();
        cluster.start_participant(0, &[]);
        cluster.start_participant(1, &[]);
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(85));
        assert_eq!(reports[1].balance("acct-1"), Some(115));
        let status = cluster
            .client()
            .await
            .status(Xid(42))
            .await
            .expect("status");
        assert_eq!(status.state, CoordinatorState::NoRecord);
    })
    .await;
}

/// The SDK's open-ended transactions: open, register from two "services"
/// (two connections), commit; a second commit joins the first; abort of a
/// committed one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_open_ended_transaction_registered_from_two_connections_commits_once() {
    bounded(async {
        let cluster = Cluster::start(2, 3, 100).await;
        let app = cluster.client().await;
        let xid = app.open(None, Some("order-7".into())).await.expect("open");
        assert_eq!(
            app.open(None, Some("order-7".into()))
                .await
                .expect("reopen"),
            xid,
            "the same key opens the same transaction"
        );
        let work = |account: &str, delta| {
            concord_participant::kv::encode_work(&[concord_participant::kv::KvOp {
                account: account.into(),
                delta,
            }])
        };
        let service_a = cluster.client().await;
        let n = service_a
            .register(
                xid,
                vec![concord_client::BranchRequest {
                    participant: "p0".into(),
                    work: work("acct-0", -30),
                }],
            )
            .await
            .expect("register p0");
        assert_eq!(n, 1);
        let service_b = cluster.client().await;
        let n = service_b
            .register(
                xid,
                vec![concord_client::BranchRequest {
                    participant: "p1".into(),
                    work: work("acct-1", 30),
                }],
            )
            .await
            .expect("register p1");
        assert_eq!(n, 2);
        let result = app.commit(xid).await.expect("commit");
        assert_eq!(result.xid, xid);
        assert_eq!(result.outcome, Outcome::Committed);
        let again = app.commit(xid).await.expect("commit again");
        assert_eq!(again.outcome, Outcome::Committed);
        let reports = cluster.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(reports[0].balance("acct-0"), Some(70));
        assert_eq!(reports[1].balance("acct-1"), Some(130), "committed once");
        match app.abort(xid).await {
            Err(ClientError::Rejected(why)) => assert!(why.contains("not open"), "{why}"),
            other => panic!("abort after commit must be refused: {other:?}"),
        }
    })
    .await;
}
