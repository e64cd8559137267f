//! Small request/response latency on loopback (SPEC §2, latency):
//!
//! 1. raw TCP, request written in two pieces (header, then body), with
//!    TCP_NODELAY on vs off: off shows the Nagle / delayed-ACK stall (~40 ms)
//!    that NODELAY exists to avoid;
//! 2. concord's `Network` reusing one pooled connection vs a new TCP
//!    connection per message (connect, request, reply, close).
//!
//! Run: `cargo bench -p concord-net --bench loopback` (add `-- --quick` for
//! fewer iterations). Prints p50/p99/p999/max per case. Not a timed test:
//! nothing asserts on the numbers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_net::frame::HEADER_LEN;
use concord_net::{encode_frame, listen, Frame, FrameCodec, NetConfig, Network};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

const BODY: &[u8] = &[0x5a; 64];

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

fn report(name: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64;
    println!(
        "{name:<44} n={:<6} p50={:>9.1}us p99={:>9.1}us p999={:>9.1}us max={:>9.1}us",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64
    );
}

/// Echo server on raw sockets: one reply frame per request frame.
async fn raw_echo_server(nodelay: bool) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(nodelay);
            tokio::spawn(async move {
                let mut framed = Framed::new(s, FrameCodec::default());
                while let Some(Ok(f)) = framed.next().await {
                    if framed.send(f).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Client writes header and body separately (two small segments), then
/// waits for the reply.
async fn split_write_ping_pong(nodelay: bool, iters: usize) -> std::io::Result<Histogram<u64>> {
    let addr = raw_echo_server(nodelay).await?;
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(nodelay)?;
    let mut wire = bytes::BytesMut::new();
    encode_frame(1, BODY, &mut wire);
    let (header, body) = wire.split_at(HEADER_LEN);
    let mut reply = vec![0u8; wire.len()];
    let mut h = hist();
    for i in 0..iters + 20 {
        let start = Instant::now();
        s.write_all(header).await?;
        s.write_all(body).await?;
        s.read_exact(&mut reply).await?;
        if i >= 20 {
            h.saturating_record(start.elapsed().as_micros() as u64);
        }
    }
    Ok(h)
}

async fn network_pooled(iters: usize) -> Result<Histogram<u64>, Box<dyn std::error::Error>> {
    let mut srv = listen("127.0.0.1:0".parse()?, 128, NetConfig::default())?;
    let server_net = srv.network.clone();
    tokio::spawn(async move {
        while let Some((peer, f)) = srv.incoming.recv().await {
            if server_net.send_to(peer, f).await.is_err() {
                return;
            }
        }
    });
    let (client, mut replies) = Network::new(NetConfig::default());
    let frame = Frame::new(1, Bytes::from_static(BODY));
    let mut h = hist();
    for i in 0..iters + 20 {
        let start = Instant::now();
        client.send(srv.local_addr, frame.clone()).await?;
        replies.recv().await.ok_or("reply channel closed")?;
        if i >= 20 {
            h.saturating_record(start.elapsed().as_micros() as u64);
        }
    }
    client.shutdown(Duration::from_secs(1)).await;
    Ok(h)
}

async fn new_connection_per_message(iters: usize) -> std::io::Result<Histogram<u64>> {
    let addr = raw_echo_server(true).await?;
    let mut wire = bytes::BytesMut::new();
    encode_frame(1, BODY, &mut wire);
    let mut reply = vec![0u8; wire.len()];
    let mut h = hist();
    for i in 0..iters + 20 {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(&wire).await?;
        s.read_exact(&mut reply).await?;
        drop(s);
        if i >= 20 {
            h.saturating_record(start.elapsed().as_micros() as u64);
        }
    }
    Ok(h)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n_small, n_large) = if quick { (50, 500) } else { (200, 5000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!("loopback request/response, {}-byte body", BODY.len());
        report(
            "raw, 2 writes/request, NODELAY on",
            &split_write_ping_pong(true, n_large).await?,
        );
        report(
            "raw, 2 writes/request, NODELAY off (Nagle)",
            &split_write_ping_pong(false, n_small).await?,
        );
        report(
            "Network, pooled connection (reused)",
            &network_pooled(n_large).await?,
        );
        report(
            "new TCP connection per message",
            &new_connection_per_message(n_large).await?,
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
