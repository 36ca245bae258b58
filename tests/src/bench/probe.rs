//! Small clients the bench runs *inside* a pod (by re-executing itself there, so the pod's
//! eBPF capture applies to their sockets): one that opens and holds many idle tunnelled
//! connections, one that times `connect()` and a first request, and a plain TCP relay (the
//! floor of what any proxy on the path adds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Opens `n` connections to `addr`, sends one keep-alive HTTP request on each (so the tunnel
/// is proven end to end, not just the local hop to ztunnel), prints `ready <open> <failed>`,
/// then holds them idle for `secs`.
pub fn hold(addr: SocketAddr, n: usize, secs: u64) -> Result<()> {
    super::tools::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = sem.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let mut s = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .ok()?
                .ok()?;
                let req = format!("GET /bytes?n=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                match read {
                    Ok(Ok(k)) if buf[..k].starts_with(b"HTTP/1.1 200") => Some(s),
                    _ => None,
                }
            }));
        }
        let mut open = Vec::with_capacity(n);
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                open.push(s);
            }
        }
        println!("ready {} {}", open.len(), n - open.len());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        drop(open);
        anyhow::Ok(())
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Times `n` sequential connections: the `connect()` call alone, and connect + one
/// `Connection: close` request until the response ends. Prints JSON in microseconds.
pub fn connect_probe(addr: SocketAddr, n: usize) -> Result<()> {
    let mut connect_us = Vec::with_capacity(n);
    let mut request_us = Vec::with_capacity(n);
    let req = format!("GET /bytes?n=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut failures = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let t1 = Instant::now();
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut resp = Vec::new();
        let ok = s.read_to_end(&mut resp).is_ok() && resp.starts_with(b"HTTP/1.1 200");
        let t2 = Instant::now();
        if !ok {
            failures += 1;
            continue;
        }
        connect_us.push((t1 - t0).as_secs_f64() * 1e6);
        request_us.push((t2 - t0).as_secs_f64() * 1e6);
    }
    if connect_us.is_empty() {
        bail!("no connection to {addr} succeeded ({failures} failures)");
    }
    let out = serde_json::json!({
        "ok": connect_us.len(),
        "failures": failures,
        "connect_us": { "p50": pct(&mut connect_us, 0.5), "p99": pct(&mut connect_us, 0.99) },
        "request_us": { "p50": pct(&mut request_us, 0.5), "p99": pct(&mut request_us, 0.99) },
    });
    println!("{out}");
    Ok(())
}

/// A plain TCP relay from `listen` to `to`: no TLS, no HTTP/2, no policy, a blocking thread per
/// direction (each byte costs one wake of this process and nothing else). Two of them, one in
/// the client's pod and one in the server's, have the same hops and process wakes as a request
/// through two ztunnels: what they add is the floor of what two proxies can add here.
pub fn relay(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    let l = std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("relaying {listen} to {to}");
    for c in l.incoming() {
        let Ok(down) = c else { continue };
        std::thread::spawn(move || {
            let Ok(up) = TcpStream::connect(to) else {
                return;
            };
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                return;
            };
            for s in [&down, &up] {
                let _ = s.set_nodelay(true);
            }
            let pipe = |mut from: TcpStream, mut into: TcpStream| {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = into.shutdown(std::net::Shutdown::Write);
            };
            let t = std::thread::spawn(move || pipe(up2, down2));
            pipe(down, up);
            let _ = t.join();
        });
    }
    Ok(())
}

/// The path of this very binary, to re-run it inside a pod.
pub fn self_exe() -> Result<String> {
    let exe = std::env::current_exe()
        .context("locating mesh-bench")?
        .display()
        .to_string();
    // A rebuild during a run replaces the file; the new binary speaks the same subcommands.
    Ok(exe.trim_end_matches(" (deleted)").to_string())
}
