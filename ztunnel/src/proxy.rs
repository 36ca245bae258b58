//! The data path: per-pod listeners (outbound 15001, inbound HBONE 15008, inbound plaintext
//! 15006) and the byte copier; HBONE connections are pooled by `transport::pool`.
//!
//! Shared dependencies travel in one [`ProxyInputs`]. Each enrolled pod gets a [`PodProxy`]
//! whose listeners are created in the pod's network namespace; dropping it closes them.

pub mod copy;
pub mod inbound;
pub mod inbound_passthrough;
pub mod outbound;

use crate::config::{CaptureMode, Config};
use crate::inpod::SocketFactory;
use crate::metrics::{Metrics, PeerLabels, TcpLabels};
use crate::state::{Service, StateHandle, Workload};
use common::telemetry::{self, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transport::identity::{CertManager, IdentityCert};
use transport::pool::Pool;

/// Errors starting pod listeners or proxying.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("pod {pod}: binding {addr}: {source}")]
    Bind {
        pod: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: {source}")]
    Netns {
        pod: String,
        #[source]
        source: crate::inpod::InpodError,
    },
    #[error("identity: {0}")]
    Identity(#[from] transport::identity::IdentityError),
    #[error("TLS: {0}")]
    Tls(#[from] transport::tls::TlsError),
}

/// Source of original destinations: the eBPF map in production, a table in tests.
pub trait OrigDstSource: Send + Sync + std::fmt::Debug {
    /// Original destination of a connection accepted on `pod`'s outbound listener
    /// (`sock` is the accepted socket).
    fn outbound(
        &self,
        pod: IpAddr,
        sock: BorrowedFd<'_>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<SocketAddr>;
    /// Original destination of a connection accepted on `pod`'s plaintext inbound listener.
    /// With sk_lookup steering the socket keeps the original destination as its local address.
    fn inbound(&self, _pod: IpAddr, _peer: SocketAddr, local: SocketAddr) -> SocketAddr {
        local
    }
    /// Called with the socket ztunnel just connected to a pod's application (delivery), before
    /// anything is written to it: the eBPF source puts it on the sockmap fast path.
    fn delivery(&self, _sock: BorrowedFd<'_>) {}
    /// A meter for what ztunnel reads from `sock` (the socket accepted on the outbound
    /// listener, or the delivery socket), when the source wants to know (the fast path's
    /// redirect window); `None` otherwise.
    fn flow_meter(&self, _sock: BorrowedFd<'_>) -> Option<crate::redirect::FlowMeter> {
        None
    }
}

/// A table of original destinations filled by tests (or by a harness without eBPF); falls
/// back to [`so_original_dst`].
#[derive(Debug, Default)]
pub struct OrigDstTable {
    outbound: RwLock<HashMap<(IpAddr, Option<SocketAddr>), SocketAddr>>,
    inbound_port: RwLock<HashMap<IpAddr, u16>>,
}

impl OrigDstTable {
    /// Connections from `pod` (from `peer`, or any peer if `None`) go to `dst`.
    pub fn set_outbound(&self, pod: IpAddr, peer: Option<SocketAddr>, dst: SocketAddr) {
        self.outbound.write().insert((pod, peer), dst);
    }
    /// Plaintext connections to `pod` were meant for `port`.
    pub fn set_inbound_port(&self, pod: IpAddr, port: u16) {
        self.inbound_port.write().insert(pod, port);
    }
}

impl OrigDstSource for OrigDstTable {
    fn outbound(
        &self,
        pod: IpAddr,
        _sock: BorrowedFd<'_>,
        peer: SocketAddr,
        _local: SocketAddr,
    ) -> Option<SocketAddr> {
        let t = self.outbound.read();
        t.get(&(pod, Some(peer)))
            .or_else(|| t.get(&(pod, None)))
            .copied()
    }
    fn inbound(&self, pod: IpAddr, _peer: SocketAddr, local: SocketAddr) -> SocketAddr {
        match self.inbound_port.read().get(&pod) {
            Some(p) => SocketAddr::new(local.ip(), *p),
            None => local,
        }
    }
}

/// `SO_ORIGINAL_DST` of a socket redirected by iptables `REDIRECT` (a fallback that lets a
/// harness without eBPF capture with iptables in the pod namespace).
pub fn so_original_dst(sock: BorrowedFd<'_>) -> Option<SocketAddr> {
    let a = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
    Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
}

/// Everything a listener needs.
#[derive(Debug, Clone)]
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub state: StateHandle,
    pub certs: Arc<CertManager>,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    pub orig_dst: Arc<dyn OrigDstSource>,
    /// Cancelled on drain: listeners stop, HBONE servers send GOAWAY.
    pub drain: CancellationToken,
    /// Tracks connection tasks so drain can wait for them.
    pub tracker: TaskTracker,
    /// Pods of this node with running listeners (same-node short path).
    pub local_pods: Arc<RwLock<HashMap<IpAddr, Arc<PodCtx>>>>,
}

/// Per-pod context shared by its listeners.
#[derive(Debug)]
pub struct PodCtx {
    pub workload: Arc<Workload>,
    pub sockets: SocketFactory,
    pub cert: Arc<IdentityCert>,
}

impl PodCtx {
    /// Where the pod's application is reached for `port`: loopback inside its netns (never
    /// captured), or its IP when ztunnel shares the namespace (tests).
    pub fn delivery_addr(&self, port: u16) -> SocketAddr {
        match self.sockets {
            SocketFactory::Pod(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketFactory::Host => SocketAddr::new(self.workload.ip, port),
        }
    }
}

/// The running listeners of one enrolled pod. Dropping it stops them.
#[derive(Debug)]
pub struct PodProxy {
    pub ctx: Arc<PodCtx>,
    pub outbound: Arc<TcpListener>,
    pub hbone: Arc<TcpListener>,
    pub plaintext: Arc<TcpListener>,
    tasks: Vec<JoinHandle<()>>,
}

impl PodProxy {
    /// Creates the pod's three listeners (in its netns when known) and starts accepting.
    pub fn start(inputs: &ProxyInputs, workload: Arc<Workload>) -> Result<PodProxy, ProxyError> {
        let pod = format!("{}/{}", workload.namespace, workload.name);
        let sockets = match &workload.netns {
            Some(p) => SocketFactory::pod(p).map_err(|source| ProxyError::Netns {
                pod: pod.clone(),
                source,
            })?,
            None => SocketFactory::host(),
        };
        let cert = inputs.certs.fetch(&workload.identity)?;
        let cfg = &inputs.cfg;
        let ip = workload.ip;
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let (out_addr, hbone_addr, plain_addr) = match (&sockets, cfg.capture) {
            (SocketFactory::Host, _) => (
                SocketAddr::new(ip, cfg.outbound_port),
                SocketAddr::new(ip, cfg.hbone_port),
                SocketAddr::new(ip, cfg.inbound_plaintext_port),
            ),
            (SocketFactory::Pod(_), CaptureMode::None) => (
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), cfg.outbound_port),
                SocketAddr::new(ip, cfg.hbone_port),
                SocketAddr::new(any, cfg.inbound_plaintext_port),
            ),
            (SocketFactory::Pod(_), CaptureMode::Ebpf) => (
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), cfg.outbound_port),
                SocketAddr::new(any, cfg.hbone_port),
                SocketAddr::new(any, cfg.inbound_plaintext_port),
            ),
        };
        let bind = |addr| {
            sockets
                .listen(addr)
                .map(Arc::new)
                .map_err(|source| ProxyError::Bind {
                    pod: pod.clone(),
                    addr,
                    source,
                })
        };
        let outbound = bind(out_addr)?;
        let hbone = bind(hbone_addr)?;
        let plaintext = bind(plain_addr)?;
        let ctx = Arc::new(PodCtx {
            workload,
            sockets,
            cert,
        });
        let tls = transport::tls::server_config(
            ctx.cert.clone(),
            inputs.certs.roots(),
            inputs.certs.trust_domain(),
        )?;
        let tasks = vec![
            tokio::spawn(outbound::run(inputs.clone(), ctx.clone(), outbound.clone())),
            tokio::spawn(inbound::run(
                inputs.clone(),
                ctx.clone(),
                hbone.clone(),
                tls,
            )),
            tokio::spawn(inbound_passthrough::run(
                inputs.clone(),
                ctx.clone(),
                plaintext.clone(),
            )),
        ];
        inputs.local_pods.write().insert(ip, ctx.clone());
        tracing::info!(pod, ip = %ip, identity = %ctx.workload.identity,
            outbound = %out_addr, hbone = %hbone_addr, plaintext = %plain_addr, "pod enrolled: listeners up");
        Ok(PodProxy {
            ctx,
            outbound,
            hbone,
            plaintext,
            tasks,
        })
    }

    /// File descriptors for the eBPF loader (sk_lookup targets).
    pub fn hbone_fd(&self) -> BorrowedFd<'_> {
        self.hbone.as_fd()
    }

    /// Plaintext inbound listener fd (sk_lookup target).
    pub fn plaintext_fd(&self) -> BorrowedFd<'_> {
        self.plaintext.as_fd()
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accept loop shared by the listeners: stops on drain; transient accept errors back off.
pub(crate) async fn accept_loop<F>(
    listener: Arc<TcpListener>,
    drain: CancellationToken,
    mut on_conn: F,
) where
    F: FnMut(tokio::net::TcpStream, SocketAddr),
{
    loop {
        tokio::select! {
            _ = drain.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    on_conn(s, peer)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Builds Istio's TCP labels.
pub(crate) fn tcp_labels(
    cfg: &Config,
    reporter: Reporter,
    src: Option<&Workload>,
    src_principal: Option<String>,
    dst: Option<&Workload>,
    svc: Option<&Service>,
    security: SecurityPolicy,
) -> TcpLabels {
    let unknown = || telemetry::UNKNOWN.to_string();
    let peer = |w: Option<&Workload>, principal: Option<String>| {
        let or_unknown = |f: fn(&Workload) -> String| w.map(f).unwrap_or_else(unknown);
        PeerLabels {
            workload: or_unknown(|w| w.name.clone()),
            canonical_service: or_unknown(|w| w.canonical_name.clone()),
            canonical_revision: or_unknown(|w| w.canonical_revision.clone()),
            workload_namespace: or_unknown(|w| w.namespace.clone()),
            principal: principal.unwrap_or_else(unknown),
            app: or_unknown(|w| w.canonical_name.clone()),
            version: or_unknown(|w| w.canonical_revision.clone()),
            cluster: cfg.cluster.clone(),
        }
    };
    TcpLabels {
        reporter,
        source: peer(src, src_principal),
        destination_service: svc.map(|s| s.hostname.clone()).unwrap_or_else(unknown),
        destination_service_namespace: svc.map(|s| s.namespace.clone()).unwrap_or_else(unknown),
        destination_service_name: svc.map(|s| s.name.clone()).unwrap_or_else(unknown),
        destination: peer(dst, dst.map(|w| w.identity.to_string())),
        request_protocol: RequestProtocol::Tcp,
        response_flags: ResponseFlags::NONE,
        connection_security_policy: security,
    }
}

/// Make the coming close of `s` send RST instead of FIN (`SO_LINGER` 0): how a broken stream is
/// passed on to a peer that would otherwise read a clean, and wrong, end of stream.
pub(crate) fn abort(s: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!("could not arm a reset on close: {e}");
    }
}
