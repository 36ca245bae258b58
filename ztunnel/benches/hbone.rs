//! HBONE data-path micro-benchmark (not a test): two in-process "ztunnels" on loopback.
//!
//! app ──TCP──▶ outbound side ──TLS+HTTP/2 CONNECT──▶ inbound side ──TCP──▶ sink
//!
//! Both proxy sides use ztunnel's own code (`hbone::{H2Client, server}`, `proxy::copy`,
//! `tls` configs). Prints single-stream Gbit/s through the tunnel and direct, and the round-trip
//! time of 1 KiB request/response exchanges.
//!
//! `cargo bench -p ztunnel --bench hbone` — env: `HBONE_BENCH_MIB` (default 2048),
//! `HBONE_BENCH_RUNS` (default 3), `HBONE_BENCH_RTTS` (default 5000), `HBONE_BENCH_THREADS`
//! (default 2).

use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transport::hbone::{server, Admission, ConnectRequest, H2Client, Tunnel};
use transport::identity::{CaDir, Identity, IdentityCert};
use transport::tls;
use ztunnel::proxy::copy::copy_bidirectional;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Reads everything, then answers with the byte count (8 bytes) and closes.
async fn sink(l: TcpListener) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = s.write_all(&n.to_be_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Echoes 1 KiB messages.
async fn echo(l: TcpListener) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The inbound ztunnel: TLS + HBONE server; each CONNECT is relayed to its authority.
async fn inbound(l: TcpListener, cfg: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    loop {
        let (tcp, _) = l.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let handler = |req: ConnectRequest| async move {
                let dst = req.authority;
                Admission::Accept {
                    headers: HeaderMap::new(),
                    task: Box::new(move |mut t: Tunnel| {
                        Box::pin(async move {
                            let mut up = TcpStream::connect(dst).await.unwrap();
                            up.set_nodelay(true).unwrap();
                            let _ = copy_bidirectional(&mut t, &mut up, None, None).await;
                        })
                    }),
                }
            };
            let _ = server::serve(tls, handler, std::future::pending()).await;
        });
    }
}

/// The outbound ztunnel: each accepted app connection becomes a CONNECT to `dst` on one shared
/// HTTP/2 connection to `hbone`.
async fn outbound(l: TcpListener, client: H2Client, dst: SocketAddr) {
    loop {
        let (mut tcp, _) = l.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let client = client.clone();
        tokio::spawn(async move {
            let (mut t, _) = client.connect(dst, HeaderMap::new()).await.unwrap();
            let _ = copy_bidirectional(&mut tcp, &mut t, None, None).await;
        });
    }
}

async fn throughput(addr: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_be_bytes(ack),
        bytes,
        "sink got a different byte count"
    );
    bytes as f64 * 8.0 / secs / 1e9
}

async fn rtts(addr: SocketAddr, n: u64) -> (Duration, Duration, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [7u8; 1024];
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n + 100 {
        let t = Instant::now();
        s.write_all(&buf).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        if i >= 100 {
            v.push(t.elapsed());
        }
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (p(0.5), p(0.9), p(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn run() {
    let mib = env("HBONE_BENCH_MIB", 2048);
    let runs = env("HBONE_BENCH_RUNS", 3);
    let n_rtt = env("HBONE_BENCH_RTTS", 5000);
    let bytes = mib * 1024 * 1024;

    let td = "cluster.local";
    let ca = CaDir::generate_in_memory(td).unwrap();
    let client_id = Identity::new(td, "bench", "client");
    let server_id = Identity::new(td, "bench", "server");
    let life = Duration::from_secs(3600);
    let ccert = IdentityCert::from_issued(&ca.issue(&client_id, life).unwrap()).unwrap();
    let scert = IdentityCert::from_issued(&ca.issue(&server_id, life).unwrap()).unwrap();
    let scfg = tls::server_config(scert, ca.roots(), td).unwrap();
    let ccfg = tls::client_config(ccert, ca.roots(), vec![server_id]).unwrap();

    let (sink_l, sink_a) = listen().await;
    let (echo_l, echo_a) = listen().await;
    let (in_l, in_a) = listen().await;
    let (out_l, out_a) = listen().await;
    let (out2_l, out2_a) = listen().await;
    tokio::spawn(sink(sink_l));
    tokio::spawn(echo(echo_l));
    tokio::spawn(inbound(in_l, scfg));

    let dial = || async {
        let tcp = TcpStream::connect(in_a).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(ccfg.clone())
            .connect(tls::dummy_server_name(), tcp)
            .await
            .unwrap();
        H2Client::handshake(tls).await.unwrap()
    };
    tokio::spawn(outbound(out_l, dial().await, sink_a));
    tokio::spawn(outbound(out2_l, dial().await, echo_a));

    // Warm up.
    throughput(out_a, 64 << 20).await;
    throughput(sink_a, 64 << 20).await;

    let mut direct = Vec::new();
    let mut mesh = Vec::new();
    for _ in 0..runs {
        direct.push(throughput(sink_a, bytes).await);
        mesh.push(throughput(out_a, bytes).await);
    }
    let (d, m) = (median(direct.clone()), median(mesh.clone()));
    println!("single stream, {mib} MiB x {runs} runs (median; all runs)");
    println!("  direct loopback   {d:7.2} Gbit/s  {direct:.2?}");
    println!(
        "  through HBONE     {m:7.2} Gbit/s  {mesh:.2?}  ({:.0}% of direct)",
        100.0 * m / d
    );

    let (d50, d90, d99) = rtts(echo_a, n_rtt).await;
    let (m50, m90, m99) = rtts(out2_a, n_rtt).await;
    println!("1 KiB request/response round trip, {n_rtt} sequential (p50 / p90 / p99)");
    println!("  direct            {d50:>9.1?} {d90:>9.1?} {d99:>9.1?}");
    println!("  through HBONE     {m50:>9.1?} {m90:>9.1?} {m99:>9.1?}");
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("HBONE_BENCH_THREADS", 2) as usize)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
