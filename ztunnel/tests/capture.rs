//! Real-kernel tests of the eBPF capture (`ztunnel::redirect`): they load the programs, attach
//! them to a network namespace and cgroup v2 the test creates, and drive real sockets (curl for
//! the application side). They need root and the object built by `cargo xtask build-ebpf`;
//! they never skip — a missing prerequisite is a failure that says how to fix it.
//!
//! Topology per test: a "pod" namespace and a "peer" namespace joined by a veth pair
//! (10.<a>.<b>.2 pod, .1 peer), a cgroup holding only the client processes the test puts in
//! it. Everything is removed by Drop guards, also when an assertion fails.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use ztunnel::redirect::{Capture, PodAttachment, PodCaptureSpec, RedirectError};

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

static NEXT: AtomicU32 = AtomicU32::new(0);

// === prerequisites ===

fn object() -> PathBuf {
    let path = ztunnel::redirect::object_path();
    assert!(
        path.exists(),
        "eBPF object {} not found: run `cargo xtask build-ebpf` first (or set {}). \
         These tests never skip.",
        path.display(),
        ztunnel::redirect::OBJECT_ENV
    );
    path
}

fn load() -> Capture {
    // The programs' aya-log records arrive as `tracing` events under the `ebpf` target;
    // shown with `--nocapture` (RUST_LOG overrides the filter).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "ebpf=debug".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
    match Capture::load(&object()) {
        Ok(c) => c,
        Err(e) => panic!("loading the capture programs failed (tests must run as root): {e}"),
    }
}

fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// === topology guards ===

/// A named network namespace; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run `f` on a thread that has entered this namespace: sockets it creates live here.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(self.path()).expect("open netns");
        thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory; emptied and removed on drop.
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn new(name: &str) -> Self {
        let path = Path::new(CGROUP_ROOT).join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "creating cgroup {} (cgroup v2 at {CGROUP_ROOT}?): {e}",
                path.display()
            )
        });
        Cgroup { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Clients are waited for by the test, but a failed assertion may leave one behind.
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Pod and peer namespaces joined by a veth pair, and the pod's cgroup.
struct Topology {
    pod: Netns,
    peer: Netns,
    cgroup: Cgroup,
    pod_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

impl Topology {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("mcap{}x{n}", pid % 100_000);
        let pod = Netns::new(format!("{tag}-pod"));
        let peer = Netns::new(format!("{tag}-peer"));
        let cgroup = Cgroup::new(&format!("{tag}-cg"));
        let (a, b) = (100 + (pid % 100) as u8, (n % 250) as u8);
        let pod_ip = Ipv4Addr::new(10, a, b, 2);
        let peer_ip = Ipv4Addr::new(10, a, b, 1);
        // veth names are limited to 15 bytes.
        let (vp, vq) = (
            format!("vp{}x{n}", pid % 100_000),
            format!("vq{}x{n}", pid % 100_000),
        );
        sh(&format!(
            "ip link add {vp} netns {pn} type veth peer name {vq} netns {qn} && \
             ip -n {pn} addr add {pod_ip}/24 dev {vp} && ip -n {pn} link set {vp} up && \
             ip -n {qn} addr add {peer_ip}/24 dev {vq} && ip -n {qn} link set {vq} up && \
             ip -n {pn} route add default via {peer_ip}",
            pn = pod.name,
            qn = peer.name,
        ));
        Topology {
            pod,
            peer,
            cgroup,
            pod_ip,
            peer_ip,
        }
    }

    /// curl `http://addr/` from a process in the pod namespace, inside the pod cgroup or not.
    /// Returns curl's stdout (the body), or its error text.
    fn curl(&self, addr: SocketAddr, in_cgroup: bool) -> Result<String, String> {
        // Join the cgroup before entering the namespace: `ip netns exec` remounts /sys, which
        // hides the cgroup tree; membership is inherited across exec.
        let join = if in_cgroup {
            format!("echo $$ > {}/cgroup.procs && ", self.cgroup.path.display())
        } else {
            String::new()
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{join}exec nsenter --net={} curl -sS --max-time 5 http://{addr}/",
                self.pod.path().display()
            ))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// curl from the peer namespace (traffic entering the pod through the veth).
    fn curl_from_peer(&self, addr: SocketAddr) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.peer.name,
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

// === servers ===

/// Bind a listener in `ns`.
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
}

/// A whole HTTP response with body `name`, written at once so a client's single read sees it.
fn response(name: &str) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    )
}

/// Answer one HTTP request on `l` with body `name`; the closure sees the accepted socket
/// first (to ask for the original destination). Returns what the closure returned.
fn serve_one<T: Send + 'static>(
    l: TcpListener,
    name: &'static str,
    inspect: impl FnOnce(&TcpStream) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let seen = inspect(&s);
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(response(name).as_bytes());
        seen
    })
}

/// Answer every HTTP request on `l` with body `name`, forever (for "must not land here").
fn serve_all(l: TcpListener, name: &'static str) {
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response(name).as_bytes());
        }
    });
}

/// The pod's ztunnel-side sockets: outbound 127.0.0.1:15001, and HBONE / plaintext bound to
/// loopback on purpose, so a peer can only reach them through sk_lookup steering.
struct ZtunnelSockets {
    outbound: TcpListener,
    hbone: TcpListener,
    plaintext: TcpListener,
}

fn ztunnel_sockets(t: &Topology) -> ZtunnelSockets {
    ZtunnelSockets {
        outbound: listen(&t.pod, "127.0.0.1:15001".parse().unwrap()),
        hbone: listen(&t.pod, "127.0.0.1:15008".parse().unwrap()),
        plaintext: listen(&t.pod, "127.0.0.1:15006".parse().unwrap()),
    }
}

fn attach(
    cap: &Capture,
    t: &Topology,
    z: &ZtunnelSockets,
    excluded: &[u16],
    excluded_inbound: &[u16],
) -> PodAttachment {
    let netns = t.pod.path();
    cap.attach_pod(&PodCaptureSpec {
        cgroup: &t.cgroup.path,
        netns: &netns,
        pod_ip: IpAddr::V4(t.pod_ip),
        hbone_listener: z.hbone.as_fd(),
        plaintext_listener: z.plaintext.as_fd(),
        excluded_ports: excluded,
        excluded_inbound_ports: excluded_inbound,
        health_check_src: None,
    })
    .unwrap_or_else(|e| panic!("attach_pod: {e}"))
}

// === kernel state ===

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

/// bpftool's links that point at this cgroup (by id) or netns (by inode).
fn links_for(t: &Topology) -> Vec<serde_json::Value> {
    let out = sh("bpftool -j link show");
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let cg = inode(&t.cgroup.path);
    let ns = inode(&t.pod.path());
    links
        .into_iter()
        .filter(|l| {
            l.get("cgroup_id").and_then(|v| v.as_u64()) == Some(cg)
                || l.get("netns_ino").and_then(|v| v.as_u64()) == Some(ns)
        })
        .collect()
}

/// Programs `bpftool cgroup show` lists for the cgroup.
fn cgroup_programs(t: &Topology) -> Vec<serde_json::Value> {
    let out = sh(&format!(
        "bpftool -j cgroup show {}",
        t.cgroup.path.display()
    ));
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

// === tests ===

#[test]
fn outbound_connect_is_captured_with_original_destination() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    // A real server at the original destination, which must NOT see the connection.
    serve_all(
        listen(&t.peer, SocketAddr::new(t.peer_ip.into(), 80)),
        "direct",
    );
    let _att = attach(&cap, &t, &z, &[], &[]);

    let cap = std::sync::Arc::new(cap);
    let c = cap.clone();
    let server = serve_one(z.outbound, "ztunnel", move |s| {
        (s.peer_addr().unwrap(), c.original_dst(s.as_fd()))
    });
    let dst = SocketAddr::new(t.peer_ip.into(), 80);
    let body = t.curl(dst, true).expect("curl through capture");
    assert_eq!(
        body, "ztunnel",
        "the pod's connect was not rewritten to 15001"
    );
    let (peer, orig) = server.join().unwrap();
    assert_eq!(orig, Some(dst), "original destination of {peer}");
    let counters = cap.counters();
    assert!(counters.connect4.captured >= 1, "{counters:?}");
    assert!(counters.sock_ops.captured >= 1, "{counters:?}");
}

#[test]
fn original_dst_is_single_use_and_per_attachment() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    let att = attach(&cap, &t, &z, &[], &[]);
    let server = serve_one(z.outbound, "ztunnel", |s| s.peer_addr().unwrap());
    let dst: SocketAddr = "10.254.0.9:8443".parse().unwrap();
    assert_eq!(t.curl(dst, true).as_deref(), Ok("ztunnel"));
    let peer = server.join().unwrap();
    assert_eq!(att.original_dst(peer), Some(dst));
    assert_eq!(att.original_dst(peer), None, "record must be consumed");
}

#[test]
fn loopback_excluded_port_and_foreign_process_are_untouched() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    serve_all(z.outbound.try_clone().unwrap(), "ztunnel");
    serve_all(listen(&t.pod, "127.0.0.1:9090".parse().unwrap()), "local");
    serve_all(
        listen(&t.peer, SocketAddr::new(t.peer_ip.into(), 80)),
        "direct80",
    );
    serve_all(
        listen(&t.peer, SocketAddr::new(t.peer_ip.into(), 5432)),
        "direct5432",
    );
    let _att = attach(&cap, &t, &z, &[5432], &[]);

    assert_eq!(
        t.curl("127.0.0.1:9090".parse().unwrap(), true).as_deref(),
        Ok("local"),
        "loopback destination must not be captured"
    );
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 5432), true)
            .as_deref(),
        Ok("direct5432"),
        "excluded port must not be captured"
    );
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 80), false)
            .as_deref(),
        Ok("direct80"),
        "a process outside the pod cgroup must not be captured"
    );
    // And the same destination from inside the cgroup is captured (the control).
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 80), true)
            .as_deref(),
        Ok("ztunnel")
    );
    assert!(cap.counters().connect4.passed >= 2, "{:?}", cap.counters());
}

#[test]
fn inbound_is_steered_to_plaintext_and_hbone_listeners() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    // The application listens on every address; without capture it would answer.
    serve_all(listen(&t.pod, "0.0.0.0:8080".parse().unwrap()), "app");
    serve_all(
        listen(&t.pod, "0.0.0.0:9000".parse().unwrap()),
        "app-excluded",
    );
    let _att = attach(&cap, &t, &z, &[], &[9000]);
    let plain = serve_one(z.plaintext, "plaintext", |s| s.local_addr().unwrap());
    let hbone = serve_one(z.hbone, "hbone", |s| s.local_addr().unwrap());

    let pod = |port| SocketAddr::new(t.pod_ip.into(), port);
    assert_eq!(t.curl_from_peer(pod(8080)).as_deref(), Ok("plaintext"));
    assert_eq!(
        plain.join().unwrap(),
        pod(8080),
        "accepted socket keeps the original destination"
    );
    assert_eq!(t.curl_from_peer(pod(15008)).as_deref(), Ok("hbone"));
    assert_eq!(hbone.join().unwrap(), pod(15008));
    assert_eq!(
        t.curl_from_peer(pod(9000)).as_deref(),
        Ok("app-excluded"),
        "excluded inbound port must reach the application"
    );
    assert!(
        cap.counters().sk_lookup.captured >= 2,
        "{:?}",
        cap.counters()
    );
}

#[test]
fn ztunnel_delivery_inside_the_pod_is_not_steered() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    serve_all(z.plaintext.try_clone().unwrap(), "plaintext");
    serve_all(listen(&t.pod, "0.0.0.0:8080".parse().unwrap()), "app");
    let _att = attach(&cap, &t, &z, &[], &[]);
    // ztunnel delivers from a socket it creates in the pod namespace (not in the pod cgroup),
    // to the pod IP: it arrives on loopback and must reach the application.
    let addr = SocketAddr::new(t.pod_ip.into(), 8080);
    let body = t.pod.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(body.ends_with("app"), "delivery was steered: {body}");
    // Through the veth the same address is steered (the control).
    assert_eq!(t.curl_from_peer(addr).as_deref(), Ok("plaintext"));
}

#[test]
fn detach_leaves_nothing_and_reattach_does_not_duplicate() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    serve_all(
        listen(&t.peer, SocketAddr::new(t.peer_ip.into(), 80)),
        "direct",
    );
    serve_all(listen(&t.pod, "0.0.0.0:8080".parse().unwrap()), "app");

    let att = attach(&cap, &t, &z, &[], &[]);
    assert_eq!(
        links_for(&t).len(),
        4,
        "connect4, connect6, sock_ops, sk_lookup"
    );
    assert_eq!(cgroup_programs(&t).len(), 3, "{:?}", cgroup_programs(&t));
    let state = serde_json::to_value(att.state()).unwrap();
    assert_eq!(state["attached"].as_array().unwrap().len(), 4, "{state}");

    // A second attachment of the same pod in the same process is refused.
    match cap.attach_pod(&PodCaptureSpec {
        cgroup: &t.cgroup.path,
        netns: &t.pod.path(),
        pod_ip: IpAddr::V4(t.pod_ip),
        hbone_listener: z.hbone.as_fd(),
        plaintext_listener: z.plaintext.as_fd(),
        excluded_ports: &[],
        excluded_inbound_ports: &[],
        health_check_src: None,
    }) {
        Err(RedirectError::AlreadyAttached { .. }) => {}
        Err(e) => panic!("expected AlreadyAttached, got {e}"),
        Ok(_) => panic!("expected AlreadyAttached, got a second attachment"),
    }
    drop(att);
    assert!(links_for(&t).is_empty(), "{:?}", links_for(&t));
    assert!(cgroup_programs(&t).is_empty(), "{:?}", cgroup_programs(&t));
    // Traffic flows directly again, both ways.
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 80), true)
            .as_deref(),
        Ok("direct")
    );
    assert_eq!(
        t.curl_from_peer(SocketAddr::new(t.pod_ip.into(), 8080))
            .as_deref(),
        Ok("app")
    );

    // Re-attach (what a restarted ztunnel does): exactly one set again.
    let att = attach(&cap, &t, &z, &[], &[]);
    assert_eq!(links_for(&t).len(), 4);
    drop(att);
    drop(cap);
    assert!(links_for(&t).is_empty());
}

#[test]
fn errors_name_what_is_wrong() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    let not_cgroup = std::env::temp_dir();
    let netns = t.pod.path();
    let err = cap
        .attach_pod(&PodCaptureSpec {
            cgroup: &not_cgroup,
            netns: &netns,
            pod_ip: IpAddr::V4(t.pod_ip),
            hbone_listener: z.hbone.as_fd(),
            plaintext_listener: z.plaintext.as_fd(),
            excluded_ports: &[],
            excluded_inbound_ports: &[],
            health_check_src: None,
        })
        .err()
        .expect("a temp dir is not a cgroup");
    assert!(matches!(err, RedirectError::NoCgroupV2 { .. }), "{err}");

    // A listener from the wrong namespace (the test's own) is refused before anything attaches.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = cap
        .attach_pod(&PodCaptureSpec {
            cgroup: &t.cgroup.path,
            netns: &netns,
            pod_ip: IpAddr::V4(t.pod_ip),
            hbone_listener: host.as_fd(),
            plaintext_listener: z.plaintext.as_fd(),
            excluded_ports: &[],
            excluded_inbound_ports: &[],
            health_check_src: None,
        })
        .err()
        .expect("wrong-namespace listener");
    assert!(matches!(err, RedirectError::BadListener { .. }), "{err}");
    assert!(links_for(&t).is_empty());

    let missing = Capture::load(Path::new("/nonexistent/mesh-capture.o"))
        .err()
        .unwrap();
    assert!(
        missing.to_string().contains("cargo xtask build-ebpf"),
        "{missing}"
    );
    let _ = z.outbound.as_raw_fd();
}

#[test]
fn dual_stack_socket_to_ipv4_is_captured_by_connect6() {
    let t = Topology::new();
    let cap = std::sync::Arc::new(load());
    let z = ztunnel_sockets(&t);
    let _att = attach(&cap, &t, &z, &[], &[]);
    let c = cap.clone();
    let server = serve_one(z.outbound, "ztunnel", move |s| c.original_dst(s.as_fd()));
    // An AF_INET6 socket dialling an IPv4-mapped address goes through connect6.
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET6); s.settimeout(5); \
         s.connect(('::ffff:{}', 80)); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); \
         data = b''.join(iter(lambda: s.recv(1024), b'')); \
         print(data.decode().split('\\r\\n\\r\\n')[-1], end='')",
        t.peer_ip
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c \"{script}\"",
            t.cgroup.path.display(),
            t.pod.path().display()
        ))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ztunnel");
    assert_eq!(
        server.join().unwrap(),
        Some(SocketAddr::new(t.peer_ip.into(), 80)),
        "original destination is reported as IPv4"
    );
    assert!(
        cap.counters().connect6.captured >= 1,
        "{:?}",
        cap.counters()
    );
}

#[test]
fn health_check_source_reaches_the_application() {
    let t = Topology::new();
    let cap = load();
    let z = ztunnel_sockets(&t);
    serve_all(z.plaintext.try_clone().unwrap(), "plaintext");
    serve_all(listen(&t.pod, "0.0.0.0:8080".parse().unwrap()), "app");
    let netns = t.pod.path();
    let _att = cap
        .attach_pod(&PodCaptureSpec {
            cgroup: &t.cgroup.path,
            netns: &netns,
            pod_ip: IpAddr::V4(t.pod_ip),
            hbone_listener: z.hbone.as_fd(),
            plaintext_listener: z.plaintext.as_fd(),
            excluded_ports: &[],
            excluded_inbound_ports: &[],
            // The peer namespace plays the node: its probes must not go through ztunnel.
            health_check_src: Some(IpAddr::V4(t.peer_ip)),
        })
        .unwrap();
    assert_eq!(
        t.curl_from_peer(SocketAddr::new(t.pod_ip.into(), 8080))
            .as_deref(),
        Ok("app")
    );
}

#[test]
fn killed_owner_leaves_nothing_attached_and_restart_attaches_once() {
    let t = Topology::new();
    let z = ztunnel_sockets(&t);
    serve_all(
        listen(&t.peer, SocketAddr::new(t.peer_ip.into(), 80)),
        "direct",
    );
    serve_all(z.outbound.try_clone().unwrap(), "ztunnel");
    let object = object();
    let (mut rx, tx) = std::io::pipe().expect("pipe");

    // The "old ztunnel": a forked child that loads, attaches and then hangs until SIGKILL.
    // Forking a threaded test process is fine here: glibc makes malloc fork-safe and the
    // child only loads, attaches and sleeps.
    // SAFETY: see above; the child never returns into the test harness.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                let cap = Capture::load(&object).ok()?;
                let netns = t.pod.path();
                let att = cap
                    .attach_pod(&PodCaptureSpec {
                        cgroup: &t.cgroup.path,
                        netns: &netns,
                        pod_ip: IpAddr::V4(t.pod_ip),
                        hbone_listener: z.hbone.as_fd(),
                        plaintext_listener: z.plaintext.as_fd(),
                        excluded_ports: &[],
                        excluded_inbound_ports: &[],
                        health_check_src: None,
                    })
                    .ok()?;
                let mut tx = tx;
                tx.write_all(b"1").ok()?;
                loop {
                    thread::sleep(Duration::from_secs(60));
                    let _ = &att;
                }
            })();
            let _: Option<()> = code;
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(tx);
            let mut ready = [0u8; 1];
            let got = rx.read(&mut ready).unwrap_or(0);
            let kill_child = || {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
            };
            if got != 1 {
                kill_child();
                panic!("child failed to load/attach");
            }
            assert_eq!(links_for(&t).len(), 4);
            let captured = t.curl(SocketAddr::new(t.peer_ip.into(), 80), true);
            if captured.as_deref() != Ok("ztunnel") {
                kill_child();
                panic!("the child's attachment did not capture: {captured:?}");
            }
            kill_child();
        }
    }
    // The kernel releases links when the last fd goes; give deferred release a moment.
    let mut left = links_for(&t);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        left = links_for(&t);
    }
    assert!(left.is_empty(), "links survived SIGKILL: {left:?}");
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 80), true)
            .as_deref(),
        Ok("direct"),
        "capture must stop with its owner"
    );

    // The "restarted ztunnel".
    let cap = load();
    let _att = attach(&cap, &t, &z, &[], &[]);
    assert_eq!(links_for(&t).len(), 4, "exactly one set after restart");
    assert_eq!(
        t.curl(SocketAddr::new(t.peer_ip.into(), 80), true)
            .as_deref(),
        Ok("ztunnel"),
        "traffic is captured again after the restart"
    );
}

/// Set in the re-executed copy of [`missing_capability_is_named`].
const UNPRIVILEGED_CHILD: &str = "MESH_CAPTURE_TEST_UNPRIVILEGED_CHILD";

#[test]
fn missing_capability_is_named() {
    if std::env::var_os(UNPRIVILEGED_CHILD).is_some() {
        // The child: every capability dropped. Report the error on stdout for the parent.
        match Capture::load(&object()) {
            Ok(_) => println!("RESULT loaded"),
            Err(e) => println!("RESULT capability={} {e}", e.is_missing_capability()),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(exe)
        .args(["--exact", "missing_capability_is_named", "--nocapture"])
        .env(UNPRIVILEGED_CHILD, "1")
        .env(ztunnel::redirect::OBJECT_ENV, object())
        .output()
        .expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("child printed no result: {stdout}"));
    eprintln!("unprivileged load: {line}");
    assert!(line.contains("capability=true"), "{line}");
    assert!(line.contains("CAP_BPF"), "{line}");
}
