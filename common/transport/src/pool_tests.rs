//! Pool behaviour over in-memory HTTP/2 (no TLS): stream limits, one dial per key, idle close.

use super::*;
use crate::hbone::{server, Admission};
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Dials an in-memory HBONE echo server; counts dials.
async fn dial(dials: Arc<AtomicUsize>) -> Result<H2Client, HboneError> {
    dials.fetch_add(1, Ordering::SeqCst);
    let (c, s) = tokio::io::duplex(1 << 20);
    tokio::spawn(server::serve(
        s,
        |_req| async {
            Admission::Accept {
                headers: HeaderMap::new(),
                task: Box::new(|mut t: Tunnel| {
                    Box::pin(async move {
                        let mut buf = [0u8; 64];
                        while let Ok(n) = t.read(&mut buf).await {
                            if n == 0 || t.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = t.shutdown().await;
                    })
                }),
            }
        },
        std::future::pending(),
    ));
    // Simulate a slow TLS handshake so concurrent callers really overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    H2Client::handshake(c).await
}

fn key() -> PoolKey {
    PoolKey {
        src: Identity::new("td", "a", "a"),
        dst: Identity::new("td", "b", "b"),
        dst_addr: "10.0.0.1:15008".parse().unwrap(),
    }
}

#[tokio::test]
async fn burst_shares_dials_and_respects_stream_limit() {
    let pool = Pool::new(100, Duration::from_secs(60));
    let dials = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..150 {
        let pool = pool.clone();
        let dials = dials.clone();
        tasks.push(tokio::spawn(async move {
            pool.connect(
                key(),
                || dial(dials.clone()),
                "10.0.0.1:80".parse().unwrap(),
                HeaderMap::new(),
            )
            .await
            .unwrap()
        }));
    }
    let mut tunnels = vec![];
    for t in tasks {
        tunnels.push(t.await.unwrap());
    }
    assert_eq!(
        dials.load(Ordering::SeqCst),
        2,
        "150 streams need exactly 2 connections"
    );
    assert_eq!(pool.connections(), 2);
    // Tunnels work.
    let t = &mut tunnels[149];
    t.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    // A different key never shares.
    let mut k2 = key();
    k2.src = Identity::new("td", "c", "c");
    let d2 = Arc::new(AtomicUsize::new(0));
    let _x = pool
        .connect(
            k2,
            || dial(d2.clone()),
            "10.0.0.1:80".parse().unwrap(),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(d2.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_are_closed_and_reused_while_busy() {
    let pool = Pool::new(100, Duration::from_millis(100));
    let dials = Arc::new(AtomicUsize::new(0));
    let a = "10.0.0.1:80".parse().unwrap();
    let t1 = pool
        .connect(key(), || dial(dials.clone()), a, HeaderMap::new())
        .await
        .unwrap();
    drop(t1);
    let t2 = pool
        .connect(key(), || dial(dials.clone()), a, HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(dials.load(Ordering::SeqCst), 1, "idle connection reused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.connections(), 1, "busy connection kept");
    drop(t2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.connections(), 0, "idle connection closed");
}
