//! eBPF traffic capture: loads the kernel programs of `ebpf/programs` and attaches them to each
//! enrolled pod, so the pod's TCP traffic reaches this ztunnel without iptables or a sidecar.
//!
//! # API
//! - [`Capture::load`] once per process: loads the object (path from [`object_path`]), fails
//!   with a [`RedirectError`] naming the missing capability or carrying the verifier's log.
//! - [`Capture::attach_pod`] per enrolled pod, with a [`PodCaptureSpec`]: the pod's cgroup v2
//!   directory, its network namespace file, its IP and ztunnel's two in-pod listening sockets.
//!   Returns a [`PodAttachment`]; dropping it detaches everything for that pod (links and map
//!   entries). [`PodAttachment::state`] is what `/config_dump` shows.
//! - [`Capture::original_dst`] with a socket accepted on the pod's outbound listener
//!   (127.0.0.1:15001 in the pod's namespace): where the application meant to connect.
//! - [`Capture::counters`]: captured/passed/errors per program, for metrics.
//! - Sockmap fast path (issue 8, off by default): [`Capture::load_with`] with
//!   [`CaptureOptions::fastpath`] (or [`FASTPATH_ENV`]`=on` for [`Capture::load`]);
//!   [`Capture::accelerate`] registers ztunnel's own in-pod sockets (the one accepted on 15001,
//!   the delivery socket) before ztunnel writes to them, or [`Capture::attach_proxy_cgroup`]
//!   registers them in the kernel; [`Capture::flow_meter`] gives the redirect window's meter
//!   for such a socket (reads reported, writes held while the application lags);
//!   [`Capture::decelerate`] takes a connection off it; [`Capture::fastpath_counters`] and
//!   [`Capture::fastpath_status`] for metrics and `/config_dump`. See ebpf/README.md
//!   ("Sockmap fast path").
//!
//! # What is captured
//! - Outbound: TCP connects from processes in the pod's cgroup to anything but loopback, and
//!   not to an excluded port, are rewritten to 127.0.0.1:15001 *in the pod's own network
//!   namespace*; the original destination is recorded for [`Capture::original_dst`]. ztunnel's
//!   own sockets are never in a pod's cgroup, so they are never rewritten.
//! - Inbound: new TCP connections that enter the pod's namespace through a real interface and
//!   are addressed to the pod IP go to the HBONE listener (port 15008) or the plaintext listener
//!   (any other port). The accepted socket keeps the original local address, so
//!   `getsockname()` gives the destination port the peer asked for.
//!
//! # How ztunnel delivers to the application without being captured again
//! ztunnel connects to the application from a socket it creates *inside the pod's network
//! namespace*, without binding it, to the pod IP (or 127.0.0.1) and the target port. The
//! kernel then uses the pod IP as the source, and `sk_lookup` never steers a connection whose
//! source is the pod IP itself or loopback: only a socket in the pod's own namespace can open
//! one. The socket is ztunnel's, outside the pod cgroup, so `connect4` does not see it either.
//! Consequences: ztunnel cannot spoof the client's source address on delivery (Istio's
//! IP_TRANSPARENT) without a further marker, and the application's connections to its own pod
//! IP are not captured inbound (they are captured outbound first).
//!
//! # Restart safety
//! Every attachment is a `bpf_link` owned by this process: if ztunnel dies, the kernel detaches
//! them all, and a restarted ztunnel attaches afresh; nothing is pinned. Within one process a
//! pod (cgroup or network namespace) can be attached only once at a time.
//!
//! Where the object comes from: `cargo xtask build-ebpf` writes it to [`DEFAULT_OBJECT`] under
//! the workspace; [`OBJECT_ENV`] overrides it. It is loaded at run time rather than embedded so
//! the workspace builds and lints without the eBPF toolchain.

mod attach;
mod counters;
mod diag;
mod error;
mod fastpath;
mod log;
mod sys;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::{CgroupSockAddr, ProgramError, SkLookup, SockOps},
    Ebpf, EbpfLoader,
};
use ebpf_common::{maps, programs, IpWords, ListenerKey, OrigDst, PeerKey, PodConfig, PortKey};
use parking_lot::Mutex;

pub use attach::{PodAttachment, PodCaptureSpec, PodCaptureState};
pub use counters::{CaptureCounters, ProgramCounters};
pub use error::RedirectError;
pub use fastpath::{
    enabled_from_env as fastpath_enabled_from_env, parse_switch, FastpathCounters, FastpathStatus,
    FlowMeter, FASTPATH_ENV,
};

/// Environment variable naming the eBPF object to load.
pub const OBJECT_ENV: &str = "MESH_EBPF_OBJECT";
/// Where `cargo xtask build-ebpf` puts the object, relative to the workspace root.
pub const DEFAULT_OBJECT: &str = "target/ebpf/mesh-capture.o";

/// The object to load: [`OBJECT_ENV`] if set, else [`DEFAULT_OBJECT`] relative to the current
/// directory, else relative to the workspace this crate was built in (for tests and `cargo run`).
pub fn object_path() -> PathBuf {
    if let Some(p) = std::env::var_os(OBJECT_ENV) {
        return PathBuf::from(p);
    }
    let relative = PathBuf::from(DEFAULT_OBJECT);
    if relative.exists() {
        return relative;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_OBJECT)
}

/// `sock_ops` attached to ztunnel's own cgroup by [`Capture::attach_proxy_cgroup`]; detached
/// when dropped.
pub struct ProxyCgroupLink {
    _link: aya::programs::sock_ops::SockOpsLink,
}

/// Load-time choices of [`Capture::load_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Put enrolled pods' in-namespace connections on the sockmap fast path. Off by default:
    /// see ebpf/README.md for what it keeps and what it cannot.
    pub fastpath: bool,
}

impl CaptureOptions {
    /// Options from the environment: [`FASTPATH_ENV`] (`on`/`off`, default off).
    pub fn from_env() -> Self {
        CaptureOptions {
            fastpath: fastpath::enabled_from_env(),
        }
    }
}

/// The loaded capture programs and their maps; one per ztunnel process.
pub struct Capture {
    shared: Arc<Shared>,
}

/// State shared by [`Capture`] and its [`PodAttachment`]s, so programs stay loaded until the
/// last attachment is gone.
struct Shared {
    /// Programs (attach needs `&mut`) and the maps written at enrolment.
    inner: Mutex<Inner>,
    /// Read and deleted on every accepted outbound connection: its own lock, so the accept path
    /// never waits for an enrolment.
    by_peer: Mutex<HashMap<MapData, PeerKey, OrigDst>>,
    counters: PerCpuArray<MapData, u64>,
    fastpath: fastpath::Fastpath,
    /// Declared last: dropped after the maps and programs it reads logs of.
    _log: Option<log::LogPump>,
}

struct Inner {
    ebpf: Ebpf,
    pod_config: HashMap<MapData, u64, PodConfig>,
    pod_by_ip: HashMap<MapData, IpWords, PodConfig>,
    excluded: HashMap<MapData, PortKey, u8>,
    listeners: SockHash<MapData, ListenerKey>,
    /// (dev, inode) of attached cgroups, and cookies of attached network namespaces.
    cgroups: HashSet<(u64, u64)>,
    netns: HashSet<u64>,
    /// Pod IPs attached: sk_lookup finds pods by IP, so two pods must not share one.
    pod_ips: HashSet<IpAddr>,
}

impl Capture {
    /// Load the object at `object` (see [`object_path`]) and its programs into the kernel,
    /// with [`CaptureOptions::from_env`]. Nothing is attached yet.
    pub fn load(object: &Path) -> Result<Capture, RedirectError> {
        Self::load_with(object, CaptureOptions::from_env())
    }

    /// [`Capture::load`] with explicit options. A fast path that cannot be set up is not an
    /// error: [`Capture::fastpath_status`] says why and traffic takes the normal path.
    pub fn load_with(object: &Path, options: CaptureOptions) -> Result<Capture, RedirectError> {
        let bytes = std::fs::read(object).map_err(|source| RedirectError::ObjectMissing {
            path: object.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .load(&bytes)
            .map_err(|e| RedirectError::kernel("loading the eBPF object (creating maps)", e))?;

        for name in [programs::CONNECT4, programs::CONNECT6] {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            p.load().map_err(|e| load_error(name, e))?;
        }
        let p: &mut SockOps = program(&mut ebpf, programs::SOCK_OPS)?;
        p.load().map_err(|e| load_error(programs::SOCK_OPS, e))?;
        let p: &mut SkLookup = program(&mut ebpf, programs::SK_LOOKUP)?;
        p.load().map_err(|e| load_error(programs::SK_LOOKUP, e))?;

        let log = log::LogPump::start(&mut ebpf);
        let pod_config = take_map(&mut ebpf, maps::POD_CONFIG)?;
        let pod_by_ip = take_map(&mut ebpf, maps::POD_BY_IP)?;
        let excluded = take_map(&mut ebpf, maps::EXCLUDED_PORTS)?;
        let by_peer = take_map(&mut ebpf, maps::ORIG_DST_BY_PEER)?;
        let listeners = take_map(&mut ebpf, maps::LISTENERS)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let fastpath = fastpath::Fastpath::setup(&mut ebpf, options.fastpath);
        tracing::info!(object = %object.display(), "eBPF capture programs loaded");
        Ok(Capture {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    ebpf,
                    pod_config,
                    pod_by_ip,
                    excluded,
                    listeners,
                    cgroups: HashSet::new(),
                    netns: HashSet::new(),
                    pod_ips: HashSet::new(),
                }),
                by_peer: Mutex::new(by_peer),
                counters,
                fastpath,
                _log: log,
            }),
        })
    }

    /// Start capturing a pod's traffic. See [`PodCaptureSpec`] for what must be true of the
    /// inputs; the returned attachment undoes everything when dropped.
    pub fn attach_pod(&self, pod: &PodCaptureSpec<'_>) -> Result<PodAttachment, RedirectError> {
        attach::attach(&self.shared, pod)
    }

    /// The original destination of a connection accepted on a pod's outbound listener, or
    /// `None` if it was not captured (or was already asked for: the record is consumed).
    pub fn original_dst(&self, accepted: BorrowedFd<'_>) -> Option<SocketAddr> {
        let peer = sys::peer_addr(accepted).ok()?;
        let netns = sys::netns_cookie(accepted).ok()?;
        self.shared.original_dst(netns, peer)
    }

    /// Counters of all programs, summed over CPUs.
    pub fn counters(&self) -> CaptureCounters {
        self.shared.counters()
    }

    /// Put one of ztunnel's own in-pod sockets on the fast path: the socket accepted on a
    /// pod's outbound listener, or the socket ztunnel delivers to the application from. Call
    /// it before writing to the socket (a direction whose first byte finds no peer stays on
    /// TCP for good). `Ok(false)`: nothing to do (fast path off or unavailable, or the
    /// connection leaves the namespace). The socket leaves the map by itself when closed.
    pub fn accelerate(&self, sock: BorrowedFd<'_>) -> Result<bool, RedirectError> {
        self.shared.fastpath.accelerate(sock)
    }

    /// The redirect window's meter for `sock`, an accelerated socket of ztunnel's own: report
    /// what is read from it and written to it, and hold writes while it says so (see
    /// [`FlowMeter`]). `None` when the fast path is off or the connection leaves the namespace.
    pub fn flow_meter(&self, sock: BorrowedFd<'_>) -> Option<FlowMeter> {
        self.shared.fastpath.flow_meter(sock)
    }

    /// Take the connection of `sock` (either end) off the fast path in both directions; bytes
    /// already handed over stay readable and in order, later ones take TCP. The sockets stay
    /// in the map until closed: deleting one would discard bytes queued for its reader.
    pub fn decelerate(&self, sock: BorrowedFd<'_>) -> Result<(), RedirectError> {
        self.shared.fastpath.decelerate(sock)
    }

    /// Register ztunnel's own in-pod sockets in the kernel instead of (or as well as) with
    /// [`Capture::accelerate`]: attaches the `sock_ops` program to `cgroup`, the cgroup
    /// ztunnel's in-pod sockets are created in (its own; accepted sockets inherit the
    /// listener's). Its sockets in enrolled namespaces whose two ends share an address are
    /// then added at ESTABLISHED, which for the socket accepted on 15001 happens before the
    /// application's `connect()` returns in practice, so client-first protocols get the
    /// upload direction accelerated too. `None` when the fast path is not active. Dropping the
    /// link detaches the program; sockets already registered stay until they close.
    pub fn attach_proxy_cgroup(
        &self,
        cgroup: &Path,
    ) -> Result<Option<ProxyCgroupLink>, RedirectError> {
        if !self.shared.fastpath.active() {
            return Ok(None);
        }
        if !sys::is_cgroup2(cgroup) {
            return Err(RedirectError::NoCgroupV2 {
                path: cgroup.to_path_buf(),
            });
        }
        let file =
            std::fs::File::open(cgroup).map_err(|e| RedirectError::kernel("open cgroup", e))?;
        let attach_err = |e: ProgramError| {
            RedirectError::kernel(
                format!("attaching {} to {}", programs::SOCK_OPS, cgroup.display()),
                e,
            )
        };
        let mut inner = self.shared.inner.lock();
        let p: &mut SockOps = program(&mut inner.ebpf, programs::SOCK_OPS)?;
        let id = p
            .attach(
                std::os::fd::AsFd::as_fd(&file),
                aya::programs::CgroupAttachMode::Single,
            )
            .map_err(attach_err)?;
        let link = p.take_link(id).map_err(attach_err)?;
        Ok(Some(ProxyCgroupLink { _link: link }))
    }

    /// [`Capture::attach_proxy_cgroup`] on the cgroup this process runs in, when that is a
    /// cgroup of its own: never the root cgroup, where the program would see every socket of
    /// the machine. `Ok(None)`: the fast path is off, or ztunnel shares the root cgroup (then
    /// its sockets are registered from userspace only, see [`Capture::accelerate`]).
    pub fn attach_own_cgroup(&self) -> Result<Option<ProxyCgroupLink>, RedirectError> {
        if !self.shared.fastpath.active() {
            return Ok(None);
        }
        match sys::own_cgroup() {
            Some(cg) if sys::is_cgroup2(&cg) && !is_cgroup_root(&cg) => {
                self.attach_proxy_cgroup(&cg)
            }
            _ => Ok(None),
        }
    }

    /// Delete `sock` from the fast path's sockhash outright. Not for ztunnel: bytes queued for
    /// the socket's reader are discarded by the kernel (use [`Capture::decelerate`]); kept for
    /// the test that documents it.
    #[doc(hidden)]
    pub fn fastpath_forget(&self, sock: BorrowedFd<'_>) -> Result<(), RedirectError> {
        self.shared.fastpath.forget(sock)
    }

    /// Whether the fast path is off, active or could not be set up (and why).
    pub fn fastpath_status(&self) -> &FastpathStatus {
        self.shared.fastpath.status()
    }

    /// Fast path counters (accelerated sockets and bytes, fallbacks), summed over CPUs.
    pub fn fastpath_counters(&self) -> FastpathCounters {
        self.shared.fastpath.counters()
    }
}

impl Shared {
    fn original_dst(&self, netns_cookie: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let key = PeerKey {
            netns_cookie,
            ip: sys::ip_words(peer.ip()),
            port: peer.port(),
            _pad: [0; 6],
        };
        let mut map = self.by_peer.lock();
        let orig = map.get(&key, 0).ok()?;
        // The entry is single-use; leaving it would let a later connection from a reused
        // ephemeral port inherit it (the LRU would evict it eventually, too late).
        let _ = map.remove(&key);
        Some(to_socket_addr(&orig))
    }

    fn counters(&self) -> CaptureCounters {
        CaptureCounters::read(|index| {
            self.counters
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        })
    }
}

fn to_socket_addr(orig: &OrigDst) -> SocketAddr {
    match sys::ip_from_words(orig.ip) {
        IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, orig.port)),
        IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, orig.port, 0, 0)),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(RedirectError::ObjectMismatch {
            kind: "program",
            name,
        })?;
    p.try_into().map_err(|_| RedirectError::ObjectMismatch {
        kind: "program of the expected type",
        name,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, RedirectError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(RedirectError::ObjectMismatch { kind: "map", name })?;
    T::try_from(map).map_err(|e| RedirectError::kernel(format!("map {name}"), e))
}

/// Verifier rejections carry the log; privilege refusals name the capability. The verifier
/// reports most rejections as EACCES, so only EPERM means a missing capability.
fn load_error(program: &'static str, e: ProgramError) -> RedirectError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if io_error.raw_os_error() != Some(libc::EPERM) => RedirectError::Verifier {
            program,
            source: io_error,
            log: verifier_log.to_string(),
        },
        other => RedirectError::kernel(format!("loading program {program}"), other),
    }
}

/// Whether `cg` is the root of its cgroup v2 hierarchy (its parent is not cgroup v2).
fn is_cgroup_root(cg: &Path) -> bool {
    cg.parent().is_none_or(|p| !sys::is_cgroup2(p))
}
