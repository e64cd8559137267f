//! Fault-injecting proxy tests: one per fault, plus the connection manager
//! running through the proxy. 127.0.0.1 only; every wait is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use concord_net::proxy::{self, Direction, Faults, ProxyHandle};
use concord_net::{listen, Frame, NetConfig, Network, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const TEST_LIMIT: Duration = Duration::from_secs(20);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// An echo server that also reports every chunk it received, and how each
/// connection ended ("<eof>", "<reset>", "<error>").
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind(local()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => {
                            let _ = tx.send(b"<eof>".to_vec());
                            return;
                        }
                        Err(e) => {
                            let tag = if e.kind() == std::io::ErrorKind::ConnectionReset {
                                "<reset>"
                            } else {
                                "<error>"
                            };
                            let _ = tx.send(tag.as_bytes().to_vec());
                            return;
                        }
                        Ok(n) => {
                            let _ = tx.send(buf[..n].to_vec());
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn proxied_echo(
    faults: Faults,
) -> (TcpStream, ProxyHandle, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (upstream, seen) = echo_server().await;
    let (addr, handle) = proxy::spawn(local(), upstream, faults)
        .await
        .expect("proxy");
    let s = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    (s, handle, seen)
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    s.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    within("echo", s.read_exact(&mut got)).await.expect("read");
    assert_eq!(got, msg);
    start.elapsed()
}

/// Expect no byte to arrive on `s` for `quiet`.
async fn assert_silent(s: &mut TcpStream, quiet: Duration) {
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(quiet, s.read(&mut buf)).await {
        panic!("expected silence, got {r:?}");
    }
}

#[tokio::test]
async fn forwards_faithfully_by_default() {
    let (mut s, h, _) = proxied_echo(Faults::default()).await;
    for i in 0..20 {
        let msg = format!("hello {i}");
        let rtt = round_trip(&mut s, msg.as_bytes()).await;
        assert!(rtt < Duration::from_millis(200));
    }
    assert_eq!(h.stats().open, 1);
}

#[tokio::test]
async fn added_latency() {
    let (mut s, h, _) = proxied_echo(Faults {
        latency: Duration::from_millis(50),
        ..Faults::default()
    })
    .await;
    let rtt = round_trip(&mut s, b"ping").await;
    assert!(rtt >= Duration::from_millis(100), "{rtt:?}");
    assert!(rtt < Duration::from_secs(2), "{rtt:?}");
    // Switched off at run time, on the same connection.
    h.clear();
    let rtt = round_trip(&mut s, b"ping").await;
    assert!(rtt < Duration::from_millis(50), "{rtt:?}");
}

#[tokio::test]
async fn jitter_varies_delay_but_keeps_order() {
    let (mut s, _h, _) = proxied_echo(Faults {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(30),
        ..Faults::default()
    })
    .await;
    let mut rtts = Vec::new();
    for _ in 0..15 {
        rtts.push(round_trip(&mut s, b"x").await);
    }
    let min = rtts.iter().min().copied().expect("some");
    let max = rtts.iter().max().copied().expect("some");
    assert!(min >= Duration::from_millis(10), "min {min:?}");
    assert!(max - min >= Duration::from_millis(5), "no jitter: {rtts:?}");
    // Many small writes in a row: the byte stream stays in order.
    let msg: Vec<u8> = (0..200u8).collect();
    for b in &msg {
        s.write_all(&[*b]).await.expect("write");
    }
    let mut got = vec![0u8; msg.len()];
    within("echo", s.read_exact(&mut got)).await.expect("read");
    assert_eq!(got, msg);
}

#[tokio::test]
async fn bandwidth_limit() {
    let (mut s, h, _) = proxied_echo(Faults::default()).await;
    let data = vec![7u8; 100 * 1024];
    let fast = round_trip(&mut s, &data).await;
    h.set_faults(Faults {
        bandwidth_bytes_per_sec: Some(400 * 1024),
        ..Faults::default()
    });
    let slow = round_trip(&mut s, &data).await;
    // 100 KiB at 400 KiB/s: at least 250 ms one way (the two directions
    // overlap, so the round trip is not much more).
    assert!(slow >= Duration::from_millis(240), "{slow:?}");
    assert!(slow > fast * 3, "fast {fast:?} slow {slow:?}");
}

#[tokio::test]
async fn black_hole_existing_and_new_connections() {
    let (mut s, h, mut seen) = proxied_echo(Faults::default()).await;
    round_trip(&mut s, b"before").await;
    within("seen", seen.recv()).await;
    h.update(|f| f.black_hole = true);
    s.write_all(b"into the void")
        .await
        .expect("write still succeeds");
    assert_silent(&mut s, Duration::from_millis(300)).await;
    assert!(seen.try_recv().is_err(), "upstream got nothing");
    // New connections are accepted but never connected upstream.
    let connects = h.stats().upstream_connects;
    let addr = s.peer_addr().expect("addr");
    let mut s2 = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    s2.write_all(b"hello?").await.expect("write");
    assert_silent(&mut s2, Duration::from_millis(200)).await;
    assert_eq!(h.stats().upstream_connects, connects);
    assert!(h.stats().bytes_dropped >= 19);
    // Cleared: the old connection forwards again.
    h.clear();
    round_trip(&mut s, b"after").await;
}

#[tokio::test]
async fn reset_sends_rst_to_both_sides() {
    let (mut s, h, mut seen) = proxied_echo(Faults::default()).await;
    round_trip(&mut s, b"hi").await;
    assert_eq!(within("seen", seen.recv()).await.expect("chunk"), b"hi");
    h.reset_all();
    let upstream_end = within("upstream end", seen.recv()).await.expect("end");
    assert_eq!(String::from_utf8_lossy(&upstream_end), "<reset>");
    let mut buf = [0u8; 8];
    let r = within("read", s.read(&mut buf)).await;
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    assert_eq!(h.stats().resets, 1);
}

#[tokio::test]
async fn half_open_stops_one_direction() {
    let (mut s, h, mut seen) = proxied_echo(Faults {
        half_open: Some(Direction::ServerToClient),
        ..Faults::default()
    })
    .await;
    s.write_all(b"ping").await.expect("write");
    // Upstream receives it, but its echo never comes back.
    let got = within("upstream sees", seen.recv()).await.expect("chunk");
    assert_eq!(got, b"ping");
    assert_silent(&mut s, Duration::from_millis(300)).await;

    h.set_faults(Faults {
        half_open: Some(Direction::ClientToServer),
        ..Faults::default()
    });
    s.write_all(b"lost").await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "client-to-server is cut");
    h.clear();
    round_trip(&mut s, b"whole again").await;
}

#[tokio::test]
async fn close_after_idle() {
    let (mut s, h, _) = proxied_echo(Faults {
        close_after_idle: Some(Duration::from_millis(200)),
        ..Faults::default()
    })
    .await;
    // Traffic every 50 ms keeps it open past the idle limit.
    for _ in 0..8 {
        round_trip(&mut s, b"keepalive").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let mut buf = [0u8; 8];
    let n = within("idle close", s.read(&mut buf)).await.expect("read");
    assert_eq!(n, 0, "FIN");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert_eq!(h.stats().idle_closes, 1);
}

fn frame(body: &str) -> Frame {
    Frame::new(1, Bytes::copy_from_slice(body.as_bytes()))
}

/// A middlebox with an idle timeout shorter than the client's quiet period,
/// no heartbeats: the next send still goes through.
#[tokio::test]
async fn network_survives_middlebox_idle_close() {
    let cfg = NetConfig {
        heartbeat_interval: None,
        server_idle_timeout: None,
        ..NetConfig::default()
    };
    let mut srv = listen(local(), 64, cfg.clone()).expect("listen");
    let (paddr, h) = proxy::spawn(
        local(),
        srv.local_addr,
        Faults {
            close_after_idle: Some(Duration::from_millis(150)),
            ..Faults::default()
        },
    )
    .await
    .expect("proxy");
    let (client, _rx) = Network::new(cfg);
    within("send", client.send(paddr, frame("one")))
        .await
        .expect("send");
    within("recv", srv.incoming.recv()).await.expect("frame");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.stats().idle_closes, 1);
    within("send", client.send(paddr, frame("two")))
        .await
        .expect("send after idle close");
    let (_, f) = within("recv", srv.incoming.recv()).await.expect("frame");
    assert_eq!(f.body, &b"two"[..]);
}

/// RST of the pooled connection by the path: repaired, not reported.
#[tokio::test]
async fn network_survives_reset_by_the_path() {
    let mut srv = listen(local(), 64, NetConfig::default()).expect("listen");
    let (paddr, h) = proxy::spawn(local(), srv.local_addr, Faults::default())
        .await
        .expect("proxy");
    let (client, _rx) = Network::new(NetConfig::default());
    for round in 0..5 {
        within("send", client.send(paddr, frame(&format!("r{round}"))))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let (_, f) = within("recv", srv.incoming.recv()).await.expect("frame");
        assert_eq!(f.body, format!("r{round}").as_bytes());
        h.reset_all();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.stats().connects >= 5);
}

/// Black-holed path: heartbeats stop, the client declares the peer dead and
/// redials once (the peer had been talking); when the path heals, sends work.
#[tokio::test]
async fn network_detects_black_hole_by_missed_heartbeats() {
    let cfg = NetConfig {
        heartbeat_interval: Some(Duration::from_millis(40)),
        dead_after_missed: 3,
        server_idle_timeout: Some(Duration::from_secs(5)),
        ..NetConfig::default()
    };
    let mut srv = listen(local(), 64, cfg.clone()).expect("listen");
    let (paddr, h) = proxy::spawn(local(), srv.local_addr, Faults::default())
        .await
        .expect("proxy");
    let (client, mut client_in) = Network::new(cfg);
    within("send", client.send(paddr, frame("hi")))
        .await
        .expect("send");
    let (p, _) = within("recv", srv.incoming.recv()).await.expect("frame");
    assert!(matches!(p, Peer::Accepted { .. }));
    h.update(|f| f.black_hole = true);
    within("dead", async {
        while client.stats().dead_peers == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The redial lands in the black hole too (accepted, never connected
    // upstream) and dies again; no more proactive redials after that.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let accepted = h.stats().accepted;
    assert!(accepted <= 3, "redial loop: {accepted} connections");
    h.clear();
    within("send", client.send(paddr, frame("healed")))
        .await
        .expect("send");
    let (p2, f) = within("recv", srv.incoming.recv()).await.expect("frame");
    assert_eq!(f.body, &b"healed"[..]);
    within("reply", srv.network.send_to(p2, frame("ok")))
        .await
        .expect("reply");
    let (_, r) = within("reply", client_in.recv()).await.expect("frame");
    assert_eq!(r.body, &b"ok"[..]);
}
