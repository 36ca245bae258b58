//! Real-kernel tests of the sockmap fast path (issue 8) on the in-pod hop: an application in
//! the pod's cgroup connects to a destination in another namespace, the connection is captured
//! to 127.0.0.1:15001, and a userspace relay standing in for ztunnel's outbound listener
//! accepts it, registers the accepted socket with `Capture::accelerate`, and copies to the real
//! server (half-close and reset propagated the way ztunnel does). Every case runs with the fast
//! path on and off and compares checksums end to end; the counters prove which path carried
//! the bytes.
//!
//! Also: the destination side (ztunnel's delivery socket to the application's server socket),
//! and ztunnel's sockets registered by the kernel (`Capture::attach_proxy_cgroup`) rather than
//! by `accelerate`.
//!
//! Blocking reads of the application retry on EAGAIN with poll(): a socket in a sockmap can
//! return EAGAIN to a blocking reader (see `SPURIOUS_EAGAIN` and ebpf/README.md); the count
//! is printed, and must be 0 with the fast path off.
//!
//! The application is this test binary re-executed (test `app_process`, a no-op unless
//! `FASTPATH_APP` is set) inside the pod's cgroup and network namespace, so its sockets are
//! the pod's. Root and `cargo xtask build-ebpf` are required; nothing skips. Everything the
//! tests create is removed by Drop guards.
//!
//! Throughput of the in-pod hop alone (relay as the endpoint):
//! `cargo test -p ztunnel --test fastpath -- --ignored --nocapture bench`.

mod fastpath_env;

use std::{
    io::{ErrorKind, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use fastpath_env::{app, Mesh, Relay, Server, StreamHash};

const GIB: u64 = 1 << 30;

use ebpf_common::fastpath::REDIRECT_WINDOW;
/// Server ports (in the server namespace) and what the server does there; see `Server`.
use fastpath_env::ports::{CHARGEN, HASH_SINK, HASH_SINK_GREET, RESET, SEQUENCE};

/// Spurious EAGAINs (see [`SPURIOUS_EAGAIN`]) are reported; without the fast path there are
/// none, or the count would not mean anything.
fn eagain(out: &fastpath_env::AppOutput, on: bool) {
    let n = out.u64("spurious_eagain");
    if n > 0 {
        eprintln!("application saw {n} spurious EAGAIN on its blocking socket");
    }
    assert!(on || n == 0, "EAGAIN without the fast path: {}", out.raw);
}

/// The application uploads `total` bytes in `chunk`-byte writes to the server's `port`
/// through the relay; the server must have received exactly that (length and hash). Returns
/// the application's output and the server's (length, hash).
fn upload_checked(
    mesh: &Mesh,
    server: &Server,
    port: u16,
    total: u64,
    chunk: u32,
    on: bool,
) -> (fastpath_env::AppOutput, u64, u64) {
    let up = app(
        mesh,
        "up",
        &[&server.addr(port), &total.to_string(), &chunk.to_string()],
    );
    eagain(&up, on);
    let (n, hash) = server.next_hash();
    assert_eq!(
        (n, hash),
        (up.u64("sent"), up.u64("hash")),
        "upload differs"
    );
    (up, n, hash)
}

fn both(f: impl Fn(bool)) {
    for on in [true, false] {
        eprintln!("--- fast path {}", if on { "on" } else { "off" });
        f(on);
    }
}

/// Upload and download 1 GiB through the captured hop; checksums of both ends agree, and the
/// fast path (when on) carried both directions.
#[test]
fn gib_transfer_both_ways_keeps_every_byte() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let server = Server::start(&mesh);
        let (up, n, hash) = upload_checked(&mesh, &server, HASH_SINK_GREET, GIB, 262144, on);
        assert_eq!(
            up.str("reply"),
            format!("{n}:{hash:016x}"),
            "reply after half-close"
        );
        let down = app(
            &mesh,
            "down",
            &[&server.addr(CHARGEN), &GIB.to_string(), "0"],
        );
        eagain(&down, on);
        let (n, hash) = server.next_hash();
        assert_eq!(
            (n, hash),
            (down.u64("received"), down.u64("hash")),
            "download differs"
        );
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            // The upload is read by the relay, which reports its reads; the download is
            // written by the relay, which holds its writes while the application lags: both
            // stay on the fast path (unless the unoptimised test relay fell a window behind
            // the application's upload).
            assert!(c.bytes_redirected >= GIB, "{c:?}");
            assert!(c.bytes_redirected + c.bytes_passed >= 2 * GIB, "{c:?}");
            assert!(c.pod_sockets >= 2 && c.ztunnel_sockets >= 2, "{c:?}");
        } else {
            assert_eq!(c, Default::default());
        }
    });
}

/// The client shuts down its sending side first and still reads the whole reply; the server
/// sees EOF only after every byte. With a client that writes before ztunnel registered its
/// socket, the upload direction falls back to TCP (counted) and stays correct.
#[test]
fn half_close_and_client_first_fallback() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let server = Server::start(&mesh);
        let (up, n, hash) = upload_checked(&mesh, &server, HASH_SINK, 10_000_000, 65536, on);
        assert_eq!(up.str("reply"), format!("{n}:{hash:016x}"));
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            // The reply went relay -> app on the fast path whatever happened to the upload.
            assert!(c.bytes_redirected > 0, "{c:?}");
        } else {
            assert_eq!(c, Default::default());
        }
    });
}

/// The server resets the connection; the application sees an error, not a clean EOF.
#[test]
fn server_reset_reaches_the_client_as_an_error() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let server = Server::start(&mesh);
        let out = app(&mesh, "reset", &[&server.addr(RESET)]);
        eagain(&out, on);
        assert_eq!(out.str("outcome"), "reset", "{}", out.raw);
        assert!(
            out.u64("before") == 5,
            "the bytes before the reset arrive: {}",
            out.raw
        );
        if on {
            assert!(mesh.cap.fastpath_counters().bytes_redirected > 0);
        }
    });
}

/// A slow reader: the server writes as fast as it can, the application reads 64 KiB every
/// millisecond. Nothing is lost or reordered; the relay's lead over the reader is reported.
#[test]
fn slow_reader_loses_nothing() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let server = Server::start(&mesh);
        let total = 64u64 << 20;
        let down = app(
            &mesh,
            "down",
            &[&server.addr(CHARGEN), &total.to_string(), "1"],
        );
        eagain(&down, on);
        let (n, hash) = server.next_hash();
        assert_eq!((n, hash), (down.u64("received"), down.u64("hash")));
        // How far ahead the writer got: with TCP the socket buffers bound it; the relay's last
        // write returning long before the reader finishes would mean unbounded queueing.
        let lag_ns = down.u64("end_ns").saturating_sub(mesh.relay_done_ns());
        eprintln!(
            "slow reader: read took {:.2} s; the relay's last write returned {:.0} ms before \
             the reader finished",
            down.f64("secs"),
            lag_ns as f64 / 1e6
        );
        if on {
            // The relay's meter holds its writes while the reader lags by half a window
            // (sock_diag says how much it has not read), so the download stays on the fast
            // path from first byte to last and the relay's lead stays bounded.
            let c = mesh.cap.fastpath_counters();
            assert!(c.bytes_redirected >= total, "{c:?}");
            assert_eq!(c.directions_over_window, 0, "{c:?}");
            assert!(
                lag_ns < 2_000_000_000,
                "the relay ran {lag_ns} ns ahead of the slow reader"
            );
        }
    });
}

/// An upload faster than the relay drains it (iperf3 into ztunnel across nodes; here the
/// relay stalls for 3 s after its first read): the
/// redirect window pins the direction to TCP, whose flow control then holds the writer back,
/// instead of the queue growing until the kernel fails the writer with ENOMEM. While the relay
/// keeps up (its reads are reported) the direction stays on the fast path.
#[test]
fn upload_faster_than_the_relay_falls_back_to_tcp() {
    both(|on| {
        let relay = Relay {
            upload_stall: Some(Duration::from_secs(3)),
            ..Relay::default()
        };
        let mesh = Mesh::new(on, relay);
        let server = Server::start(&mesh);
        let total = 4 * REDIRECT_WINDOW;
        upload_checked(&mesh, &server, HASH_SINK_GREET, total, 262144, on);
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            assert!(c.directions_over_window >= 1, "{c:?}");
            assert!(c.bytes_redirected >= REDIRECT_WINDOW, "{c:?}");
            assert!(c.bytes_passed >= REDIRECT_WINDOW, "{c:?}");
        }
    });
}

/// 200,000 small numbered writes arrive complete and in order.
#[test]
fn many_small_writes_keep_their_order() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let server = Server::start(&mesh);
        let out = app(&mesh, "small", &[&server.addr(SEQUENCE), "200000"]);
        eagain(&out, on);
        assert_eq!(out.str("reply"), "ok_200000", "{}", out.raw);
        if on {
            assert!(mesh.cap.fastpath_counters().msgs_redirected >= 1000);
        }
    });
}

/// ztunnel takes a connection off the fast path in the middle of a transfer (both
/// directions pinned to TCP): the stream stays complete and ordered, later bytes are counted
/// as passed.
#[test]
fn leaving_the_fast_path_mid_stream_keeps_the_stream() {
    both(|on| {
        let relay = Relay {
            decelerate_after: Some(32 << 20),
            ..Relay::default()
        };
        let mesh = Mesh::new(on, relay);
        let server = Server::start(&mesh);
        let total = 128u64 << 20;
        upload_checked(&mesh, &server, HASH_SINK_GREET, total, 65536, on);
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            // The relay reports its reads, so the upload stays on the fast path until ztunnel
            // takes it off (unless the relay fell a whole window behind first).
            assert!(c.bytes_redirected >= REDIRECT_WINDOW, "{c:?}");
            assert!(c.bytes_passed >= 64 << 20, "{c:?}");
        }
    });
}

/// ztunnel's accepted socket registered by the kernel (`attach_proxy_cgroup`) instead of by
/// `accelerate`: a client-first upload is redirected from its first byte.
#[test]
fn kernel_registration_accelerates_client_first_uploads() {
    both(|on| {
        let relay = Relay {
            kernel_registration: true,
            ..Relay::default()
        };
        let mesh = Mesh::new(on, relay);
        let server = Server::start(&mesh);
        let (up, n, hash) = upload_checked(&mesh, &server, HASH_SINK, 10_000_000, 65536, on);
        assert_eq!(up.str("reply"), format!("{n}:{hash:016x}"));
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            assert_eq!((c.ztunnel_sockets, c.directions_fell_back), (0, 0), "{c:?}");
            assert!(
                c.pod_sockets >= 2 && c.bytes_redirected >= 10_000_000,
                "{c:?}"
            );
        } else {
            assert_eq!(c, Default::default());
        }
    });
}

/// The destination side: ztunnel's delivery socket (created in the pod's namespace, source =
/// pod IP) to the application's server socket. The delivery socket is registered with
/// `accelerate` before its first write, the application's accepted socket by the kernel.
#[test]
fn delivery_to_the_application_keeps_every_byte() {
    both(|on| {
        let mesh = Mesh::new(on, Relay::default());
        let addr = SocketAddr::from((mesh.pod_ip(), 8080));
        let server = fastpath_env::app_spawn(&mesh, "serve", &[&addr.to_string()]);
        let cap = mesh.cap.clone();
        let total = 64u64 << 20;
        let (sent, hash, reply) = mesh.in_pod(move || {
            let mut s = (0..500)
                .find_map(|_| {
                    TcpStream::connect(addr)
                        .map_err(|_| std::thread::sleep(Duration::from_millis(10)))
                        .ok()
                })
                .expect("connect to the application");
            assert_eq!(cap.accelerate(s.as_fd()).expect("accelerate"), on);
            // As ztunnel's delivery does: writes held while the application lags.
            let mut meter = cap.flow_meter(s.as_fd());
            let mut data = fastpath_env::Pattern::new(total);
            let mut hash = StreamHash::default();
            let mut buf = vec![0u8; 256 << 10];
            while let Some(n) = data.fill(&mut buf) {
                hash.update(&buf[..n]);
                fastpath_env::hold_while(|| meter.as_mut().and_then(|m| m.before_write()));
                s.write_all(&buf[..n]).unwrap();
                if let Some(m) = meter.as_mut() {
                    m.wrote(n);
                }
            }
            s.shutdown(Shutdown::Write).unwrap();
            let reply = read_to_string(&mut s).expect("reply");
            (total, hash.finish(), reply)
        });
        let out = fastpath_env::app_wait(server);
        eagain(&out, on);
        assert_eq!((out.u64("received"), out.u64("hash")), (sent, hash));
        assert_eq!(reply, format!("{sent}:{hash:016x}"));
        let c = mesh.cap.fastpath_counters();
        eprintln!("counters: {c:?}");
        if on {
            // ztunnel -> application, held by the meter: on the fast path throughout.
            assert!(c.bytes_redirected >= total && c.pod_sockets >= 1, "{c:?}");
            assert_eq!(c.directions_over_window, 0, "{c:?}");
        } else {
            assert_eq!(c, Default::default());
        }
    });
}

/// A socket really deleted from the sockhash mid-stream (not what ztunnel does; what an
/// operator's `bpftool map delete` or a bug would do): reported, see ebpf/README.md.
#[test]
#[ignore = "documents kernel behaviour; run with --ignored"]
fn deleting_from_the_map_mid_stream() {
    let relay = Relay {
        forget_after: Some(32 << 20),
        ..Relay::default()
    };
    let mesh = Mesh::new(true, relay);
    let server = Server::start(&mesh);
    let total = 128u64 << 20;
    let up = app(
        &mesh,
        "up",
        &[&server.addr(HASH_SINK_GREET), &total.to_string(), "65536"],
    );
    let (n, hash) = server.next_hash();
    eprintln!(
        "deleted mid-stream: server got {n} bytes (hash {hash:x}), app sent {} (hash {:x}), \
         equal: {}",
        up.u64("sent"),
        up.u64("hash"),
        (n, hash) == (up.u64("sent"), up.u64("hash"))
    );
}

/// Single-stream throughput of the in-pod hop alone (the relay is the endpoint), fast path on
/// vs off, upload and download. A number to report, not an assertion.
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_in_pod_hop_throughput() {
    let total = (4 * GIB).to_string();
    for on in [false, true] {
        let mesh = Mesh::new(on, Relay::default());
        let sink = "10.255.255.1:9";
        let source = "10.255.255.1:19";
        let up = app(&mesh, "up", &[sink, &total, "262144", "raw"]);
        eagain(&up, on);
        let down = app(&mesh, "down", &[source, &total, "raw"]);
        eagain(&down, on);
        let gbit =
            |o: &fastpath_env::AppOutput, key: &str| o.u64(key) as f64 * 8.0 / o.f64("secs") / 1e9;
        let echo = "10.255.255.1:7";
        let rr = app(&mesh, "pingpong", &[echo, "20000", "1024"]);
        eagain(&rr, on);
        eprintln!(
            "BENCH fastpath={} 1 KiB round trip p50 {} us p99 {} us",
            if on { "on" } else { "off" },
            rr.u64("p50_us"),
            rr.u64("p99_us")
        );
        eprintln!(
            "BENCH fastpath={} upload {:.1} Gbit/s download {:.1} Gbit/s counters {:?}",
            if on { "on" } else { "off" },
            gbit(&up, "sent"),
            gbit(&down, "received"),
            mesh.cap.fastpath_counters()
        );
    }
}

/// The application side, run in the pod by [`app`]; a no-op in a normal test run.
#[test]
fn app_process() {
    let Ok(mode) = std::env::var("FASTPATH_APP") else {
        return;
    };
    let args: Vec<String> = std::env::var("FASTPATH_ARGS")
        .unwrap_or_default()
        .split(' ')
        .map(String::from)
        .collect();
    let dst: SocketAddr = args[0].parse().expect("destination");
    if mode == "listen" {
        // Helper for the kernel-registration test: the parent takes the socket over.
        let l = std::net::TcpListener::bind(dst).expect("bind");
        println!("RESULT fd={}", l.as_raw_fd());
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    if mode == "serve" {
        println!("RESULT {}", serve_once(dst));
        return;
    }
    let mut s = TcpStream::connect(dst).expect("connect");
    let result = match mode.as_str() {
        "up" => upload(&mut s, &args),
        "down" => download(&mut s, &args),
        "reset" => reset(&mut s),
        "small" => small(&mut s, &args),
        "pingpong" => pingpong(&mut s, &args),
        other => panic!("unknown mode {other}"),
    };
    let spurious = SPURIOUS_EAGAIN.load(Ordering::Relaxed);
    println!("RESULT {result} spurious_eagain={spurious}");
}

/// `EAGAIN`s returned by reads on this blocking socket. A blocking TCP socket never returns
/// one; a socket in a sockmap does on any wakeup that brings no data (its own FIN being
/// acknowledged, send-buffer space freed): the kernel's `tcp_bpf_recvmsg` does not loop.
/// Event-loop applications (and ztunnel) treat EAGAIN as "poll again" anyway, which is what
/// [`read`] does; the count is reported so the difference stays visible.
static SPURIOUS_EAGAIN: AtomicU64 = AtomicU64::new(0);

fn read(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    fastpath_env::read_counting_eagain(s, buf, || {
        SPURIOUS_EAGAIN.fetch_add(1, Ordering::Relaxed);
    })
}

fn read_exact(s: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match read(s, buf)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

fn read_to_string(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read(s, &mut buf)? {
            0 => return Ok(String::from_utf8_lossy(&out).into_owned()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The application as a server: accept one connection on `addr`, hash it to EOF, reply
/// `bytes:hash`, close.
fn serve_once(addr: SocketAddr) -> String {
    let l = std::net::TcpListener::bind(addr).expect("bind in the pod");
    let (mut s, peer) = l.accept().expect("accept");
    let mut hash = StreamHash::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = read(&mut s, &mut buf).expect("read");
        if k == 0 {
            break;
        }
        hash.update(&buf[..k]);
        n += k as u64;
    }
    let h = hash.finish();
    s.write_all(format!("{n}:{h:016x}").as_bytes()).unwrap();
    let spurious = SPURIOUS_EAGAIN.load(Ordering::Relaxed);
    format!("received={n} hash={h:016x} peer={peer} spurious_eagain={spurious}")
}

/// Send `args[1]` bytes in writes of `args[2]`, half-close, read the reply to EOF.
fn upload(s: &mut TcpStream, args: &[String]) -> String {
    let total: u64 = args[1].parse().unwrap();
    let chunk: usize = args[2].parse().unwrap();
    // The peer address is the capture's 127.0.0.1:15001; the destination asked for tells.
    let greet = [HASH_SINK_GREET, fastpath_env::ports::RELAY_SINK]
        .iter()
        .any(|p| args[0].ends_with(&format!(":{p}")));
    if greet {
        let mut b = [0u8; 1];
        read_exact(s, &mut b).expect("greeting");
    }
    // "raw" (benchmark): the same buffer over and over, no hashing, so the number is the
    // kernel's and not this (unoptimised) test binary's.
    let raw = args.get(3).is_some_and(|a| a == "raw");
    let mut data = fastpath_env::Pattern::new(total);
    let mut hash = StreamHash::default();
    let mut buf = vec![0u8; chunk];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = if raw {
            buf.len().min((total - sent) as usize)
        } else {
            let n = data.fill(&mut buf).expect("pattern");
            hash.update(&buf[..n]);
            n
        };
        s.write_all(&buf[..n]).expect("write");
        sent += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    s.shutdown(Shutdown::Write).expect("shutdown");
    let reply = read_to_string(s).expect("read reply");
    format!(
        "sent={sent} hash={:016x} secs={secs} reply={}",
        hash.finish(),
        reply.trim()
    )
}

/// Ask for `args[1]` bytes, read to EOF (slowly if `args[2]` is 1).
fn download(s: &mut TcpStream, args: &[String]) -> String {
    let slow = args[2] == "1";
    let raw = args[2] == "raw";
    s.write_all(format!("{}\n", args[1]).as_bytes()).unwrap();
    let mut hash = StreamHash::default();
    let mut buf = vec![0u8; if slow { 64 << 10 } else { 1 << 20 }];
    let start = Instant::now();
    let mut received = 0u64;
    loop {
        let n = read(s, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        if !raw {
            hash.update(&buf[..n]);
        }
        received += n as u64;
        if slow {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let end_ns = fastpath_env::mono_ns();
    format!(
        "received={received} hash={:016x} secs={secs} end_ns={end_ns}",
        hash.finish()
    )
}

/// Send a line, then read: five bytes, then the error the reset must produce.
fn reset(s: &mut TcpStream) -> String {
    s.write_all(b"hello\n").unwrap();
    let mut before = 0;
    let mut buf = [0u8; 64];
    let outcome = loop {
        match read(s, &mut buf) {
            Ok(0) => break "eof",
            Ok(n) => before += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    format!("outcome={outcome} before={before}")
}

/// `args[1]` round trips of `args[2]` bytes through the relay's echo; latency percentiles.
fn pingpong(s: &mut TcpStream, args: &[String]) -> String {
    let rounds: usize = args[1].parse().unwrap();
    let size: usize = args[2].parse().unwrap();
    let mut b = [0u8; 1];
    read_exact(s, &mut b).expect("greeting");
    s.set_nodelay(true).unwrap();
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        read_exact(s, &mut back).expect("echo");
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize] / 1000;
    format!("p50_us={} p99_us={}", pct(0.5), pct(0.99))
}

/// `args[1]` writes of a decimal sequence number and a newline each, then half-close.
fn small(s: &mut TcpStream, args: &[String]) -> String {
    let count: u64 = args[1].parse().unwrap();
    let mut b = [0u8; 1];
    read_exact(s, &mut b).expect("greeting");
    s.set_nodelay(true).unwrap();
    for i in 0..count {
        s.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let reply = read_to_string(s).expect("read reply");
    format!("reply={}", reply.trim().replace(' ', "_"))
}
