//! The world of the fast path tests: a pod namespace + cgroup and a server namespace joined
//! by a veth pair, the capture loaded with the fast path on or off, a relay standing in for
//! ztunnel's outbound listener, servers with fixed behaviours per port, and the application
//! process. All removed by Drop guards (namespaces, cgroup, links with the `Capture`).

use std::{
    collections::HashMap,
    ffi::CString,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream},
    os::{
        fd::{AsFd, AsRawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use ztunnel::redirect::{
    Capture, CaptureOptions, FastpathStatus, PodAttachment, PodCaptureSpec, ProxyCgroupLink,
};

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Server ports and behaviours.
pub mod ports {
    /// Greets with one byte, hashes everything to EOF, replies `bytes:hash` and closes.
    pub const HASH_SINK_GREET: u16 = 7001;
    /// The same without the greeting: the client writes first.
    pub const HASH_SINK: u16 = 7002;
    /// Reads a byte count line, sends that many bytes, closes.
    pub const CHARGEN: u16 = 7003;
    /// Reads a line, sends five bytes, then resets the connection.
    pub const RESET: u16 = 7004;
    /// Greets, checks decimal sequence lines to EOF, replies `ok <n>` or `bad at <i>`.
    pub const SEQUENCE: u16 = 7005;
    /// Destination ports the relay serves itself (in-pod hop alone): discard and chargen.
    /// The relay greets with one byte first, so the application writes after registration.
    pub const RELAY_SINK: u16 = 9;
    /// Echo at the relay (greets first too): request/response latency of the hop.
    pub const RELAY_ECHO: u16 = 7;
    pub const RELAY_SOURCE: u16 = 19;
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run `f` on a new thread inside this namespace (threads it spawns stay there).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).expect("open netns");
        thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory; its processes killed and the directory removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Drop for Cgroup {
    fn drop(&mut self) {
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

/// Removes what an earlier run of a test binary left behind when it was killed (a timeout,
/// SIGKILL: no Drop guard runs): namespaces and cgroups tagged with the pid of a process that
/// no longer exists. Once per process, before its first namespace.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stale = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix("mfp") else {
                return false;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
        };
        let names = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        for ns in names("/run/netns").into_iter().filter(|n| stale(n)) {
            eprintln!("removing network namespace {ns} left by a killed test run");
            drop(Netns { name: ns });
        }
        for cg in names(CGROUP_ROOT).into_iter().filter(|n| stale(n)) {
            eprintln!("removing cgroup {cg} left by a killed test run");
            drop(Cgroup {
                path: Path::new(CGROUP_ROOT).join(cg),
            });
        }
    });
}

/// What the relay does besides copying.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relay {
    /// Take the connection off the fast path after this many client bytes.
    pub decelerate_after: Option<u64>,
    /// Delete the accepted socket from the sockhash after this many client bytes.
    pub forget_after: Option<u64>,
    /// Register the accepted socket in the kernel (`Capture::attach_proxy_cgroup` on a
    /// cgroup the 15001 listener is created in) instead of with `Capture::accelerate`.
    pub kernel_registration: bool,
    /// Stop reading the client's upload this long after its first read: a relay slower than
    /// its writer, as ztunnel is when the tunnel drains slower than the application writes
    /// (a stall rather than a slow rate, so the writer's own speed does not matter).
    pub upload_stall: Option<Duration>,
}

/// Pod + server namespaces, the capture, the pod's attachment and the relay.
pub struct Mesh {
    // Field order is drop order: capture links before the namespaces and cgroups.
    _attachment: PodAttachment,
    _proxy_link: Option<ProxyCgroupLink>,
    _proxy_cgroup: Option<Cgroup>,
    pub cap: Arc<Capture>,
    outbound: TcpListener,
    _inbound: [TcpListener; 2],
    /// Monotonic ns at which the relay finished writing a download to the application.
    relay_done_ns: Arc<AtomicU64>,
    pub server_ip: Ipv4Addr,
    pub cgroup: Cgroup,
    pub pod: Netns,
    pub server_ns: Netns,
}

impl Mesh {
    pub fn new(fastpath: bool, relay: Relay) -> Mesh {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        sweep_stale();
        // The full pid in the tag lets a later run tell leftovers from live tests.
        let tag = format!("mfp{pid}x{n}");
        let pod = Netns::new(format!("{tag}-pod"));
        let server_ns = Netns::new(format!("{tag}-srv"));
        let path = Path::new(CGROUP_ROOT).join(format!("{tag}-cg"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("cgroup {}: {e}", path.display()));
        let cgroup = Cgroup { path };
        let (a, b) = (100 + (pid % 100) as u8, (n % 250) as u8);
        let pod_ip = Ipv4Addr::new(10, a, b, 2);
        let server_ip = Ipv4Addr::new(10, a, b, 1);
        let (vp, vq) = (
            format!("fp{}x{n}", pid % 100_000),
            format!("fq{}x{n}", pid % 100_000),
        );
        sh(&format!(
            "ip link add {vp} netns {pn} type veth peer name {vq} netns {qn} && \
             ip -n {pn} addr add {pod_ip}/24 dev {vp} && ip -n {pn} link set {vp} up && \
             ip -n {qn} addr add {server_ip}/24 dev {vq} && ip -n {qn} link set {vq} up",
            pn = pod.name,
            qn = server_ns.name,
        ));

        let object = ztunnel::redirect::object_path();
        assert!(
            object.exists(),
            "{} missing: run `cargo xtask build-ebpf` (these tests never skip)",
            object.display()
        );
        // eBPF debug logs through tracing, shown with --nocapture (RUST_LOG overrides).
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "ebpf=debug".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
        let cap = Capture::load_with(&object, CaptureOptions { fastpath })
            .unwrap_or_else(|e| panic!("loading the programs (tests must run as root): {e}"));
        let expected = if fastpath {
            FastpathStatus::Active
        } else {
            FastpathStatus::Off
        };
        assert_eq!(cap.fastpath_status(), &expected);
        let cap = Arc::new(cap);

        let listen = |addr: &'static str| {
            pod.spawn(move || TcpListener::bind(addr).expect("bind"))
                .join()
                .unwrap()
        };
        let (outbound, proxy_cgroup, proxy_link) = if relay.kernel_registration {
            // Stands in for ztunnel's own cgroup: the listener is created by a process in it,
            // so the sockets it accepts belong to it too.
            let path = Path::new(CGROUP_ROOT).join(format!("{tag}-zt"));
            std::fs::create_dir(&path).expect("proxy cgroup");
            let cg = Cgroup { path };
            let link = cap
                .attach_proxy_cgroup(&cg.path)
                .expect("attach_proxy_cgroup");
            assert_eq!(link.is_some(), fastpath);
            let l = listener_from_process(&cg.path, &pod.path(), "127.0.0.1:15001");
            (l, Some(cg), link)
        } else {
            (listen("127.0.0.1:15001"), None, None)
        };
        let inbound = [listen("127.0.0.1:15008"), listen("127.0.0.1:15006")];
        let netns = pod.path();
        let attachment = cap
            .attach_pod(&PodCaptureSpec {
                cgroup: &cgroup.path,
                netns: &netns,
                pod_ip: IpAddr::V4(pod_ip),
                hbone_listener: inbound[0].as_fd(),
                plaintext_listener: inbound[1].as_fd(),
                excluded_ports: &[],
                excluded_inbound_ports: &[],
                health_check_src: None,
            })
            .unwrap_or_else(|e| panic!("attach_pod: {e}"));

        let relay_done_ns = Arc::new(AtomicU64::new(0));
        let listener = outbound.try_clone().unwrap();
        let (cap2, done) = (cap.clone(), relay_done_ns.clone());
        // Detached: ends when Drop shuts the listener down.
        let _ = pod.spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (cap, done) = (cap2.clone(), done.clone());
                thread::spawn(move || relay_one(cap, relay, client, &done));
            }
        });
        Mesh {
            _attachment: attachment,
            _proxy_link: proxy_link,
            _proxy_cgroup: proxy_cgroup,
            cap,
            outbound,
            _inbound: inbound,
            relay_done_ns,
            server_ip,
            cgroup,
            pod,
            server_ns,
        }
    }

    /// Monotonic ns at which the relay last finished writing a download to the application.
    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.server_ip.octets()[0],
            self.server_ip.octets()[1],
            self.server_ip.octets()[2],
            2,
        )
    }

    /// Run `f` on a thread in the pod's namespace (as ztunnel's in-pod delivery does).
    pub fn in_pod<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.pod.spawn(f).join().expect("pod thread")
    }

    pub fn relay_done_ns(&self) -> u64 {
        self.relay_done_ns.load(Ordering::Relaxed)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Wakes the accept loop, which then ends.
        // SAFETY: shutdown on a listening socket we own.
        unsafe { libc::shutdown(self.outbound.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// One captured connection: what ztunnel's outbound path does, minus HBONE.
fn relay_one(cap: Arc<Capture>, cfg: Relay, client: TcpStream, done: &AtomicU64) {
    let orig = cap
        .original_dst(client.as_fd())
        .expect("accepted connection has an original destination");
    // Before the first write, so the download direction is redirected from its first byte.
    if !cfg.kernel_registration {
        cap.accelerate(client.as_fd()).expect("accelerate");
    }
    // What the relay reads is reported, as ztunnel does, so the redirect window measures the
    // application's real lead over the relay.
    // What it writes is held back while the application lags, as ztunnel does.
    let meter = Arc::new(std::sync::Mutex::new(cap.flow_meter(client.as_fd())));
    let m = meter.clone();
    let consumed = move |n: usize| {
        if let Some(m) = m.lock().unwrap().as_mut() {
            m.consumed(n);
        }
    };
    match orig.port() {
        ports::RELAY_ECHO => {
            let _ = (&client).write_all(b"G");
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match read_retry(&client, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        consumed(n);
                        if (&client).write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        ports::RELAY_SINK => {
            let _ = (&client).write_all(b"G");
            let mut buf = vec![0u8; 256 << 10];
            let mut n = 0u64;
            while let Ok(k @ 1..) = read_retry(&client, &mut buf) {
                consumed(k);
                n += k as u64;
            }
            let _ = (&client).write_all(format!("{n}").as_bytes());
            return;
        }
        ports::RELAY_SOURCE => {
            // Benchmark source: one buffer over and over (the test binary is unoptimised).
            let total: u64 = read_line(&client).parse().expect("count");
            let buf = vec![0u8; 256 << 10];
            let mut sent = 0;
            while sent < total {
                let n = buf.len().min((total - sent) as usize);
                hold(&meter);
                if (&client).write_all(&buf[..n]).is_err() {
                    return;
                }
                wrote(&meter, n);
                sent += n as u64;
            }
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(orig) else {
        abort(&client);
        return;
    };
    let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let fd = client.as_raw_fd();
    let upload = thread::spawn(move || {
        let mut acted = false;
        let mut stalled = false;
        let mut last = 0u64;
        pump(&c, &s, None, |total| {
            consumed((total - last) as usize);
            last = total;
            if let Some(stall) = cfg.upload_stall.filter(|_| !stalled) {
                thread::sleep(stall);
                stalled = true;
            }
            // SAFETY: `c` keeps the fd open for the duration of the pump.
            let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if !acted && cfg.decelerate_after.is_some_and(|n| total >= n) {
                cap.decelerate(sock).expect("decelerate");
                acted = true;
            }
            if !acted && cfg.forget_after.is_some_and(|n| total >= n) {
                // Stop reading for a moment first, so bytes are queued for this socket when
                // it leaves the map.
                thread::sleep(Duration::from_millis(200));
                cap.fastpath_forget(sock).expect("forget");
                acted = true;
            }
        });
    });
    pump(&server, &client, Some(&meter), |_| {});
    done.store(mono_ns(), Ordering::Relaxed);
    let _ = upload.join();
}

/// Copy to EOF, then half-close the other side; on an error reset the other side (linger 0,
/// and wake the opposite pump so the last descriptor closes), as ztunnel propagates resets.
/// `meter`: the fast path meter of `to`, whose writes it holds back and counts.
fn pump(from: &TcpStream, to: &TcpStream, meter: Option<&Meter>, mut progress: impl FnMut(u64)) {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        match read_retry(from, &mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if let Some(m) = meter {
                    hold(m);
                }
                if let Err(e) = (&*to).write_all(&buf[..n]) {
                    eprintln!("relay: write failed after {total} bytes: {e}");
                    abort(from);
                    return;
                }
                if let Some(m) = meter {
                    wrote(m, n);
                }
                total += n as u64;
                progress(total);
            }
            Err(_) => {
                abort(to);
                let _ = from.shutdown(Shutdown::Read);
                return;
            }
        }
    }
}

type Meter = std::sync::Mutex<Option<ztunnel::redirect::FlowMeter>>;

/// Wait while the meter says the application is too far behind (ztunnel's `Metered` does the
/// same on its timer).
fn hold(meter: &Meter) {
    hold_while(|| {
        meter
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|m| m.before_write())
    });
}

/// Sleep for each pause `before_write` asks for (a `FlowMeter::before_write`), until it lets
/// the write go ahead.
pub fn hold_while(mut before_write: impl FnMut() -> Option<std::time::Duration>) {
    while let Some(pause) = before_write() {
        thread::sleep(pause);
    }
}

fn wrote(meter: &Meter, n: usize) {
    if let Some(m) = meter.lock().unwrap().as_mut() {
        m.wrote(n);
    }
}

/// A blocking read that, like ztunnel's event loop, treats a spurious `EAGAIN` from a socket
/// on the fast path (kernel 6.18, see ebpf/README.md) as "wait for data again".
fn read_retry(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    read_counting_eagain(s, buf, || {})
}

/// [`read_retry`], calling `on_eagain` for each spurious `EAGAIN` (the application counts
/// them).
pub fn read_counting_eagain(
    s: &TcpStream,
    buf: &mut [u8],
    mut on_eagain: impl FnMut(),
) -> std::io::Result<usize> {
    loop {
        match (&*s).read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                on_eagain();
                let mut p = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            r => return r,
        }
    }
}

fn abort(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Read);
}

fn read_line(s: &TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while (&*s).read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Servers on every port of [`ports`] in the server namespace; (bytes, hash) results of the
/// hashing ones arrive in order on a channel.
pub struct Server {
    ip: Ipv4Addr,
    results: mpsc::Receiver<(u64, u64)>,
    listeners: Vec<TcpListener>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: wakes the accept loop of a listener we own; it then ends.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

impl Server {
    pub fn start(mesh: &Mesh) -> Server {
        let (tx, results) = mpsc::channel();
        let ip = mesh.server_ip;
        let mut listeners = Vec::new();
        for port in [
            ports::HASH_SINK_GREET,
            ports::HASH_SINK,
            ports::CHARGEN,
            ports::RESET,
            ports::SEQUENCE,
        ] {
            let l = mesh
                .server_ns
                .spawn(move || TcpListener::bind((ip, port)).expect("bind server"))
                .join()
                .unwrap();
            listeners.push(l.try_clone().unwrap());
            let tx = tx.clone();
            // Detached: ends when Drop shuts the listener down.
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let tx = tx.clone();
                    thread::spawn(move || serve(port, s, &tx));
                }
            });
        }
        Server {
            ip,
            results,
            listeners,
        }
    }

    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    pub fn next_hash(&self) -> (u64, u64) {
        self.results
            .recv_timeout(Duration::from_secs(300))
            .expect("server result")
    }
}

fn serve(port: u16, mut s: TcpStream, tx: &mpsc::Sender<(u64, u64)>) {
    let greet = matches!(port, ports::HASH_SINK_GREET | ports::SEQUENCE);
    if greet {
        s.write_all(b"G").unwrap();
    }
    match port {
        ports::HASH_SINK_GREET | ports::HASH_SINK => {
            let mut hash = StreamHash::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = s.read(&mut buf).expect("server read");
                if k == 0 {
                    break;
                }
                hash.update(&buf[..k]);
                n += k as u64;
            }
            let h = hash.finish();
            let _ = tx.send((n, h));
            let _ = s.write_all(format!("{n}:{h:016x}").as_bytes());
        }
        ports::CHARGEN => {
            let total = read_line(&s).parse().expect("count");
            let mut pattern = Pattern::new(total);
            let mut hash = StreamHash::default();
            let mut buf = vec![0u8; 256 << 10];
            while let Some(n) = pattern.fill(&mut buf) {
                hash.update(&buf[..n]);
                s.write_all(&buf[..n]).expect("server write");
            }
            let _ = tx.send((total, hash.finish()));
        }
        ports::RESET => {
            read_line(&s);
            s.write_all(b"world").unwrap();
            thread::sleep(Duration::from_millis(100));
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        ports::SEQUENCE => {
            let mut text = String::new();
            s.read_to_string(&mut text).expect("server read");
            let mut expected = 0u64;
            let mut reply = None;
            for line in text.lines() {
                if line.parse::<u64>().ok() != Some(expected) {
                    reply = Some(format!("bad at {expected}: {line:?}"));
                    break;
                }
                expected += 1;
            }
            let reply = reply.unwrap_or(format!("ok {expected}"));
            let _ = s.write_all(reply.as_bytes());
        }
        _ => unreachable!(),
    }
}

/// What the application process printed on its `RESULT` line.
pub struct AppOutput {
    pub raw: String,
    fields: HashMap<String, String>,
}

impl AppOutput {
    pub fn str(&self, key: &str) -> String {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {}", self.raw))
            .clone()
    }

    pub fn u64(&self, key: &str) -> u64 {
        let v = self.str(key);
        u64::from_str_radix(&v, if key == "hash" { 16 } else { 10 })
            .unwrap_or_else(|_| panic!("{key}={v}"))
    }

    pub fn f64(&self, key: &str) -> f64 {
        self.str(key).parse().unwrap()
    }
}

/// Run the application (`app_process` of this binary) in the pod's cgroup and namespace.
pub fn app(mesh: &Mesh, mode: &str, args: &[&str]) -> AppOutput {
    app_wait(app_spawn(mesh, mode, args))
}

/// Start the application without waiting for it (a server in the pod).
pub fn app_spawn(mesh: &Mesh, mode: &str, args: &[&str]) -> std::process::Child {
    spawn_in(&mesh.cgroup.path, &mesh.pod.path(), mode, args)
}

/// A listening socket created by a process in `cgroup` and `netns`, taken over with
/// `pidfd_getfd` (the process is then killed; the socket keeps its cgroup).
fn listener_from_process(cgroup: &Path, netns: &Path, addr: &str) -> TcpListener {
    use std::{io::BufRead, os::fd::FromRawFd};
    let mut child = spawn_in(cgroup, netns, "listen", &[addr]);
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("RESULT fd=")
                .map(|(_, fd)| fd.trim().to_string())
        })
        .expect("listener fd from the helper");
    let remote_fd: i32 = line.parse().unwrap();
    // SAFETY: plain syscalls; the returned descriptors are checked and owned below.
    let fd = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, remote_fd, 0) as i32;
        libc::close(pidfd);
        fd
    };
    assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
    let _ = child.kill();
    let _ = child.wait();
    // SAFETY: a fresh descriptor of a listening TCP socket that nothing else owns.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// Run this test binary's `app_process` in `cgroup` and `netns`.
fn spawn_in(cgroup: &Path, netns: &Path, mode: &str, args: &[&str]) -> std::process::Child {
    let procs = CString::new(cgroup.join("cgroup.procs").to_str().unwrap()).unwrap();
    let netns = std::fs::File::open(netns).expect("netns");
    let ns_fd = netns.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "app_process", "--nocapture", "--test-threads=1"])
        .env("FASTPATH_APP", mode)
        .env("FASTPATH_ARGS", args.join(" "));
    // SAFETY: only async-signal-safe calls (open, write, close, setns, getpid) after fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut digits = [0u8; 20];
            let mut pid = libc::getpid() as u32;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (pid % 10) as u8;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let ok = libc::write(fd, digits[i..].as_ptr().cast(), digits.len() - i) > 0;
            libc::close(fd);
            if !ok || libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the application process");
    drop(netns);
    child
}

/// Wait for the application and parse its `RESULT` line.
pub fn app_wait(child: std::process::Child) -> AppOutput {
    let out = child.wait_with_output().expect("application output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "application failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"))
        .to_string();
    let fields = raw
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AppOutput { raw, fields }
}

/// An order-sensitive 64-bit hash of a byte stream, independent of how it is split into
/// chunks (fast enough for GiBs; catches loss, duplication and reordering).
#[derive(Default)]
pub struct StreamHash {
    h: u64,
    carry: [u8; 8],
    carry_len: usize,
    len: u64,
}

impl StreamHash {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.carry_len > 0 {
            let take = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.carry));
            self.carry_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        let rest = words.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    pub fn finish(mut self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
        self.word(u64::from_le_bytes(last));
        self.word(self.len);
        self.h
    }
}

/// `total` pseudo-random bytes, produced in caller-sized chunks.
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    pub fn new(total: u64) -> Self {
        Pattern {
            state: 0x2545_F491_4F6C_DD1D,
            left: total,
        }
    }

    /// Fill up to `buf.len()` bytes; `None` once `total` bytes were produced.
    pub fn fill(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        for w in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            w.copy_from_slice(&self.state.to_le_bytes()[..w.len()]);
        }
        self.left -= n as u64;
        Some(n)
    }
}
