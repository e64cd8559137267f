//! Connection manager tests over real loopback sockets (127.0.0.1 only).
//! Every test is bounded by `tokio::time::timeout`.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use concord_net::{
    bind_listener, listen, ConnectErrorKind, Frame, FrameCodec, NetConfig, Network, Peer,
    SendError, Server,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

const LOCAL: &str = "127.0.0.1:0";
const TEST_LIMIT: Duration = Duration::from_secs(20);

fn local() -> SocketAddr {
    LOCAL.parse().expect("addr")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

async fn recv(rx: &mut mpsc::Receiver<(Peer, Frame)>) -> (Peer, Frame) {
    within("receive", rx.recv()).await.expect("channel open")
}

fn frame(kind: u8, body: &str) -> Frame {
    Frame::new(kind, Bytes::copy_from_slice(body.as_bytes()))
}

fn no_heartbeats() -> NetConfig {
    NetConfig {
        heartbeat_interval: None,
        server_idle_timeout: None,
        ..NetConfig::default()
    }
}

fn server(config: NetConfig) -> Server {
    listen(local(), 128, config).expect("listen")
}

#[tokio::test]
async fn request_reply_over_pooled_connection() {
    let mut srv = server(NetConfig::default());
    let (client, mut client_in) = Network::new(NetConfig::default());
    for i in 0..50u8 {
        within(
            "send",
            client.send(srv.local_addr, frame(1, &format!("req{i}"))),
        )
        .await
        .expect("send");
        let (from, req) = recv(&mut srv.incoming).await;
        assert!(matches!(from, Peer::Accepted { .. }));
        assert_eq!(req.body, format!("req{i}").as_bytes());
        within(
            "reply",
            srv.network.send_to(from, frame(2, &format!("resp{i}"))),
        )
        .await
        .expect("reply");
        let (from, resp) = recv(&mut client_in).await;
        assert_eq!(from, Peer::Dialed(srv.local_addr));
        assert_eq!(resp.kind, 2);
        assert_eq!(resp.body, format!("resp{i}").as_bytes());
    }
    // One connection, reused for all 50 round trips.
    assert_eq!(client.stats().connects, 1);
    assert_eq!(srv.network.stats().accepted, 1);
}

#[tokio::test]
async fn concurrent_sends_are_coalesced_into_few_writes() {
    let mut srv = server(NetConfig::default());
    let (client, _rx) = Network::new(NetConfig::default());
    let n = 500usize;
    let sends = (0..n).map(|i| {
        let c = client.clone();
        let addr = srv.local_addr;
        async move { c.send(addr, frame(3, &i.to_string())).await }
    });
    let results = within("sends", futures::future::join_all(sends)).await;
    assert!(results.iter().all(|r| r.is_ok()));
    // Concurrent sends have no defined order; every frame arrives once.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (_, f) = recv(&mut srv.incoming).await;
        assert!(seen.insert(f.body.clone()), "duplicate");
    }
    let s = client.stats();
    assert_eq!(s.frames_sent, n as u64);
    assert!(
        s.writes < 20,
        "{} writes for {n} frames: not coalesced",
        s.writes
    );
}

/// The motivating failure (SPEC §2, idle connections): the server's idle
/// timeout is shorter than the time the client leaves its pooled connection
/// unused, and the client does not heartbeat. The server closes the
/// connection; the client's next send must go through with no error.
#[tokio::test]
async fn server_idle_close_is_invisible_to_the_sender() {
    let mut srv = server(NetConfig {
        heartbeat_interval: None,
        server_idle_timeout: Some(Duration::from_millis(150)),
        ..NetConfig::default()
    });
    let (client, _rx) = Network::new(no_heartbeats());
    within("send 1", client.send(srv.local_addr, frame(1, "one")))
        .await
        .expect("first send");
    let (first_conn, _) = recv(&mut srv.incoming).await;
    // Leave the pooled connection unused well past the server's timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(srv.network.connection_counts().1, 0, "server closed it");
    for i in 0..3 {
        within(
            "send after idle",
            client.send(srv.local_addr, frame(1, "again")),
        )
        .await
        .unwrap_or_else(|e| panic!("send {i} after idle close surfaced {e}"));
    }
    let (second_conn, f) = recv(&mut srv.incoming).await;
    assert_eq!(f.body, &b"again"[..]);
    assert_ne!(first_conn, second_conn, "went over a new connection");
    assert_eq!(client.stats().connects, 2);
}

/// Same timeouts, but with heartbeats on both ends: the connection is kept
/// alive and never re-established.
#[tokio::test]
async fn heartbeats_keep_an_idle_connection_open() {
    let cfg = NetConfig {
        heartbeat_interval: Some(Duration::from_millis(40)),
        dead_after_missed: 5,
        server_idle_timeout: Some(Duration::from_millis(150)),
        ..NetConfig::default()
    };
    cfg.validate().expect("valid");
    let mut srv = server(cfg.clone());
    let (client, _rx) = Network::new(cfg);
    within("send", client.send(srv.local_addr, frame(1, "one")))
        .await
        .expect("send");
    recv(&mut srv.incoming).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    within("send", client.send(srv.local_addr, frame(1, "two")))
        .await
        .expect("send");
    recv(&mut srv.incoming).await;
    assert_eq!(srv.network.stats().accepted, 1, "same connection all along");
    assert!(client.stats().heartbeats_sent >= 5);
    assert!(srv.network.stats().heartbeats_received >= 5);
    assert!(
        client.stats().heartbeats_received >= 5,
        "server heartbeats too"
    );
}

/// A raw server that RSTs the first connection after reading one frame, then
/// serves normally: the client's next send is re-sent on a new connection.
#[tokio::test]
async fn reset_of_pooled_connection_is_repaired() {
    let listener = TcpListener::bind(local()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(usize, Frame)>();
    let (reset_tx, mut reset_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        for conn_no in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (rd, _wr) = stream.into_split();
            let mut frames = FramedRead::new(rd, FrameCodec::default());
            if conn_no == 0 {
                if let Some(Ok(f)) = frames.next().await {
                    let _ = got_tx.send((conn_no, f));
                }
                let stream = frames.into_inner().reunite(_wr).expect("same stream");
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
                drop(stream); // RST
                let _ = reset_tx.send(());
                continue;
            }
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(f)) = frames.next().await {
                    if got_tx.send((conn_no, f)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (client, _rx) = Network::new(no_heartbeats());
    within("send", client.send(addr, frame(1, "before")))
        .await
        .expect("send");
    within("reset", reset_rx.recv()).await.expect("reset done");
    // Immediately after the RST: this must not fail.
    within("send after reset", client.send(addr, frame(1, "after")))
        .await
        .expect("send after reset");
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(within("frames", got_rx.recv()).await.expect("frame"));
    }
    assert_eq!(got[0].0, 0);
    assert_eq!(got[0].1.body, &b"before"[..]);
    assert_eq!(got[1].0, 1, "second frame on the new connection");
    assert_eq!(got[1].1.body, &b"after"[..]);
}

#[tokio::test]
async fn connection_refused_is_reported_then_backs_off() {
    let addr = {
        let l = std::net::TcpListener::bind(local()).expect("bind");
        l.local_addr().expect("addr")
    }; // closed: nothing listens there now
    let (client, _rx) = Network::new(NetConfig {
        reconnect_backoff_min: Duration::from_millis(300),
        ..no_heartbeats()
    });
    let err = within("send", client.send(addr, frame(1, "x")))
        .await
        .expect_err("refused");
    assert_eq!(err.connect_kind(), Some(ConnectErrorKind::Refused), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    // During backoff: fails fast, without a connect attempt.
    let err = within("send", client.send(addr, frame(1, "x")))
        .await
        .expect_err("backoff");
    assert!(matches!(err, SendError::PeerDown { .. }), "{err}");
    assert_eq!(client.stats().connect_failures, 1);
    // Once something listens and the backoff expires, sends work again.
    let l = bind_listener(addr, 16).expect("rebind");
    tokio::time::sleep(Duration::from_millis(400)).await;
    within("send", client.send(addr, frame(1, "x")))
        .await
        .expect("reconnected");
    drop(l);
}

#[tokio::test]
async fn connect_timeout_is_reported() {
    // Backlog 0, never accepting: the first connection fills the accept
    // queue, later SYNs are dropped, so connects time out.
    let listener = bind_listener(local(), 0).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let (client, _rx) = Network::new(NetConfig {
        connect_timeout: Duration::from_millis(200),
        ..no_heartbeats()
    });
    let err = within("send", client.send(addr, frame(1, "x")))
        .await
        .expect_err("timeout");
    assert_eq!(err.connect_kind(), Some(ConnectErrorKind::Timeout), "{err}");
    assert!(err.to_string().contains("connect timeout"), "{err}");
}

/// A `MakeWriter` collecting log output for assertions.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// SPEC §2 framing: a protocol error closes that connection only, is logged
/// with the peer's address, and the server keeps serving everyone else.
#[tokio::test]
async fn protocol_error_closes_only_that_connection() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut srv = server(NetConfig::default());
    let (client, mut client_in) = Network::new(NetConfig::default());
    within("send", client.send(srv.local_addr, frame(1, "hello")))
        .await
        .expect("send");
    let (good_peer, _) = recv(&mut srv.incoming).await;

    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &b"CD\x09\x01\x00\x00\x00\x00"[..],
        &b"CD\x01\x01\xff\xff\xff\x7f"[..],
    ] {
        let mut bad = within("connect", tokio::net::TcpStream::connect(srv.local_addr))
            .await
            .expect("connect");
        let bad_addr = bad.local_addr().expect("addr");
        bad.write_all(garbage).await.expect("write");
        // The server closes this connection: we read EOF (or a reset).
        let mut buf = [0u8; 64];
        loop {
            match within("close", tokio::io::AsyncReadExt::read(&mut bad, &mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // a heartbeat may arrive first
            }
        }
        let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).to_string();
        assert!(
            text.contains(&format!("peer={bad_addr}")) && text.contains("error=protocol error"),
            "log lacks peer= and error=: {text}"
        );
    }
    // The good connection still works both ways.
    within("send", client.send(srv.local_addr, frame(1, "still here")))
        .await
        .expect("send");
    let (p, f) = recv(&mut srv.incoming).await;
    assert_eq!(p, good_peer);
    assert_eq!(f.body, &b"still here"[..]);
    within("reply", srv.network.send_to(p, frame(2, "yes")))
        .await
        .expect("reply");
    assert_eq!(recv(&mut client_in).await.1.body, &b"yes"[..]);
    assert_eq!(srv.network.stats().protocol_errors, 3);
}

/// A peer that accepts but never sends anything (no heartbeats) is declared
/// dead after `dead_after_missed` intervals; the next send reconnects. (It
/// is not redialled proactively: it never showed it was alive.)
#[tokio::test]
async fn silent_peer_is_declared_dead_and_redialled() {
    let listener = TcpListener::bind(local()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            keep.push(s); // accept and hold, never read or write
            let _ = conn_tx.send(keep.len());
        }
    });
    let (client, _rx) = Network::new(NetConfig {
        heartbeat_interval: Some(Duration::from_millis(40)),
        dead_after_missed: 3,
        ..NetConfig::default()
    });
    within("send", client.send(addr, frame(1, "x")))
        .await
        .expect("send");
    assert_eq!(within("conn 1", conn_rx.recv()).await, Some(1));
    within("declared dead", async {
        while client.stats().dead_peers == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within("send", client.send(addr, frame(1, "y")))
        .await
        .expect("send after dead");
    assert_eq!(within("conn 2", conn_rx.recv()).await, Some(2));
}

#[tokio::test]
async fn client_idle_timeout_closes_and_next_send_reconnects() {
    let mut srv = server(NetConfig {
        heartbeat_interval: Some(Duration::from_millis(40)),
        ..NetConfig::default()
    });
    let (client, _rx) = Network::new(NetConfig {
        heartbeat_interval: Some(Duration::from_millis(40)),
        client_idle_timeout: Some(Duration::from_millis(200)),
        ..NetConfig::default()
    });
    within("send", client.send(srv.local_addr, frame(1, "x")))
        .await
        .expect("send");
    recv(&mut srv.incoming).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(srv.network.connection_counts().1, 0, "client closed it");
    assert_eq!(client.connection_counts().0, 0, "peer task released");
    within("send", client.send(srv.local_addr, frame(1, "y")))
        .await
        .expect("send");
    assert_eq!(recv(&mut srv.incoming).await.1.body, &b"y"[..]);
    assert_eq!(client.stats().connects, 2);
}

#[tokio::test]
async fn graceful_shutdown_flushes_queued_frames() {
    let mut srv = server(NetConfig::default());
    let (client, mut client_in) = Network::new(NetConfig::default());
    let n = 2000;
    for i in 0..n {
        loop {
            match client.try_send(srv.local_addr, frame(1, &i.to_string())) {
                Ok(()) => break,
                Err(SendError::QueueFull { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("try_send: {e}"),
            }
        }
    }
    let handed_back = within("shutdown", client.shutdown(Duration::from_secs(5))).await;
    assert!(
        handed_back.is_empty(),
        "{} frames handed back",
        handed_back.len()
    );
    for i in 0..n {
        let (_, f) = recv(&mut srv.incoming).await;
        assert_eq!(f.body, i.to_string().as_bytes());
    }
    assert!(matches!(
        client.send(srv.local_addr, frame(1, "late")).await,
        Err(SendError::Shutdown)
    ));
    assert!(within("incoming closes", client_in.recv()).await.is_none());

    // Server shutdown: stops accepting, incoming channel ends.
    let addr = srv.local_addr;
    within(
        "server shutdown",
        srv.network.shutdown(Duration::from_secs(2)),
    )
    .await;
    assert!(within("incoming closes", srv.incoming.recv())
        .await
        .is_none());
    let again = tokio::net::TcpStream::connect(addr).await;
    assert!(again.is_err(), "no longer accepting");
}

#[tokio::test]
async fn shutdown_hands_back_frames_it_could_not_send() {
    // A peer whose connect hangs (full accept queue).
    let listener = bind_listener(local(), 0).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let (client, _rx) = Network::new(NetConfig {
        connect_timeout: Duration::from_secs(10),
        ..no_heartbeats()
    });
    for i in 0..3 {
        client
            .try_send(addr, frame(7, &i.to_string()))
            .expect("queued");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let back = within("shutdown", client.shutdown(Duration::from_millis(200))).await;
    let bodies: Vec<_> = back.iter().map(|(_, f)| f.body.clone()).collect();
    assert_eq!(bodies, vec!["0", "1", "2"]);
    assert!(back.iter().all(|(p, _)| *p == Peer::Dialed(addr)));
}

#[tokio::test]
async fn reply_to_closed_accepted_connection_fails_clearly() {
    let mut srv = server(NetConfig::default());
    let (client, _rx) = Network::new(NetConfig::default());
    within("send", client.send(srv.local_addr, frame(1, "x")))
        .await
        .expect("send");
    let (peer, _) = recv(&mut srv.incoming).await;
    within("client shutdown", client.shutdown(Duration::from_secs(1))).await;
    // Wait until the server noticed the close.
    within("server notices", async {
        while srv.network.connection_counts().1 > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let err = srv
        .network
        .send_to(peer, frame(2, "late"))
        .await
        .expect_err("closed");
    assert!(matches!(err, SendError::ConnectionClosed { .. }), "{err}");
}

#[tokio::test]
async fn too_long_frame_is_rejected_before_sending() {
    let (client, _rx) = Network::new(NetConfig {
        frame_bytes_max: 16,
        ..no_heartbeats()
    });
    let err = client
        .send(local(), Frame::new(1, vec![0u8; 17]))
        .await
        .expect_err("too long");
    assert!(matches!(err, SendError::TooLong { len: 17, max: 16 }));
    assert_eq!(client.connection_counts().0, 0, "no connection made");
}

#[tokio::test]
async fn connections_max_is_enforced() {
    let srv = server(NetConfig {
        connections_max: 2,
        ..NetConfig::default()
    });
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            within("connect", tokio::net::TcpStream::connect(srv.local_addr))
                .await
                .expect("connect"),
        );
    }
    within("accepted", async {
        while srv.network.connection_counts().1 < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut third = within("connect", tokio::net::TcpStream::connect(srv.local_addr))
        .await
        .expect("connect");
    let mut buf = [0u8; 8];
    let n = within(
        "closed",
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "third connection closed");
    assert_eq!(srv.network.stats().rejected_over_limit, 1);
}

/// SPEC §2 scale: well over 1024 descriptors. 1200 raw clients (2400 fds in
/// this process) each send one frame and get a reply over their own
/// accepted connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_more_than_1024_connections() {
    let limit = concord_net::raise_fd_limit().expect("fd limit");
    let clients = 1200usize;
    if limit.soft < (clients as u64) * 2 + 100 {
        eprintln!("skipping: fd soft limit {} too low", limit.soft);
        return;
    }
    let mut srv = listen(local(), 4096, NetConfig::default()).expect("listen");
    let server_net = srv.network.clone();
    let stats_net = srv.network.clone();
    tokio::spawn(async move {
        while let Some((peer, f)) = srv.incoming.recv().await {
            let net = server_net.clone();
            tokio::spawn(async move {
                let _ = net.send_to(peer, f).await;
            });
        }
    });
    let addr = srv.local_addr;
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        streams.push(
            within("connect", tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect"),
        );
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(s, FrameCodec::default());
                let body = i.to_string();
                futures::SinkExt::send(&mut framed, frame(9, &body)).await?;
                loop {
                    match framed.next().await {
                        Some(Ok(f)) if f.kind == 9 => {
                            assert_eq!(f.body, body.as_bytes());
                            return Ok::<_, concord_net::FrameError>(framed);
                        }
                        Some(Ok(_)) => continue, // heartbeat
                        Some(Err(e)) => return Err(e),
                        None => panic!("closed before reply"),
                    }
                }
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(within("reply", t).await.expect("join").expect("reply"));
    }
    assert_eq!(open.len(), clients);
    assert_eq!(stats_net.stats().accepted, clients as u64);
    assert_eq!(stats_net.connection_counts().1, clients);
}
