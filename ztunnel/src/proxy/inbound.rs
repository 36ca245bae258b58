//! Inbound HBONE (15008): mTLS termination, `CONNECT` admission, policy, delivery to the app.
//!
//! Admission order for each `CONNECT`: mesh ports refused (400), authority must be this pod
//! (400; see below for waypoints), waypoint binding (401), AuthorizationPolicy with the identity
//! from the client certificate (401), upstream connection to the application (503 when it
//! fails), then 200 and the byte relay.
//!
//! # Waypoint rule
//! A pod is *waypoint-bound* when it has its own waypoint (`use-waypoint` on the pod or its
//! namespace, waypoint-for `workload`/`all`) or it is an endpoint of a Service that uses a
//! waypoint ([`crate::state::Workload::bound_waypoints`]). Such a pod is reached only through
//! its waypoint(s): a `CONNECT` is admitted only when the peer identity taken from the client
//! certificate is one of those waypoints' identities; anything else (another workload's HBONE,
//! plaintext under PERMISSIVE, the same-node short path) is refused with 401, reason
//! `bypassed_waypoint` in `ztunnel_refused_connections_total` and a warning naming the
//! expected waypoint. This is stricter than Istio's ztunnel, which enforces it only for
//! workload-addressed waypoints and leaves service waypoints to AuthorizationPolicy: here a
//! Service's waypoint cannot be bypassed by dialing an endpoint's IP either (issue 6:
//! "nothing can bypass L7 policy").
//!
//! Traffic from the waypoint then goes through the usual L4 AuthorizationPolicy with the
//! waypoint's identity as principal, and the destination reporter labels the waypoint pod as
//! the source (not the original client named in `forwarded`).
//!
//! Authority: a waypoint forwards with the endpoint's `podIP:port` as authority, which passes
//! the usual check. As DESIGN.md allows, a waypoint peer may also use a Service VIP:port of a
//! service this pod backs; it is mapped to the pod's target port. Everyone else still gets 400
//! for an authority that is not this pod.

use super::{accept_loop, tcp_labels, PodCtx, ProxyInputs};
use crate::metrics::TcpLabels;
use crate::state::policy::{authorize, ConnInfo, Decision};
use crate::state::{target_port, ProxyState, Service, Workload};
use common::telemetry::{Reporter, SecurityPolicy};
use http::{HeaderMap, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use transport::hbone::{parse_forwarded_for, server, Admission, Baggage, ConnectRequest, Tunnel};
use transport::identity::Identity;

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("policy: {0}")]
    Policy(String),
    #[error("bypassed waypoint: {0}")]
    BypassedWaypoint(String),
    #[error("upstream unreachable: {0}")]
    Upstream(std::io::Error),
}

impl Refusal {
    /// Reason label for `ztunnel_refused_connections_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Policy(_) => "policy",
            Refusal::BypassedWaypoint(_) => "bypassed_waypoint",
            Refusal::Upstream(_) => "upstream",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Policy(_) | Refusal::BypassedWaypoint(_) => StatusCode::UNAUTHORIZED,
            Refusal::Upstream(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Accepts HBONE connections for one pod.
pub async fn run(
    inputs: ProxyInputs,
    ctx: Arc<PodCtx>,
    listener: Arc<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let drain = inputs.drain.clone();
    accept_loop(listener, drain, |tcp, peer| {
        let inputs2 = inputs.clone();
        let ctx = ctx.clone();
        let acceptor = acceptor.clone();
        inputs.tracker.spawn(async move {
            serve_conn(inputs2, ctx, acceptor, tcp, peer).await;
        });
    })
    .await;
}

async fn serve_conn(
    inputs: ProxyInputs,
    ctx: Arc<PodCtx>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    // Bounded handshake: half-open or silent peers cannot hold a task forever.
    let tcp = transport::hbone::io::ReadBuffered::new(tcp, transport::hbone::TLS_READ_BUFFER);
    let mut tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(%peer, pod = %ctx.workload.name, error = %e, "HBONE TLS handshake refused");
            inputs.metrics.refuse("hbone", "tls");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, pod = %ctx.workload.name, "HBONE TLS handshake timed out");
            inputs.metrics.refuse("hbone", "tls_timeout");
            return;
        }
    };
    transport::tls::tune(tls.get_mut().1);
    let src_identity = transport::tls::peer_identity(tls.get_ref().1);
    let drain = inputs.drain.clone();
    let handler = {
        let inputs = inputs.clone();
        let ctx = ctx.clone();
        move |req: ConnectRequest| {
            handle_connect(inputs.clone(), ctx.clone(), peer, src_identity.clone(), req)
        }
    };
    if let Err(e) = server::serve(tls, handler, drain.cancelled_owned()).await {
        tracing::debug!(%peer, error = %e, "HBONE connection ended with error");
        if e.is_parse() || e.to_string().contains("preface") {
            inputs.metrics.refuse("hbone", "not_h2");
        }
    }
}

async fn handle_connect(
    inputs: ProxyInputs,
    ctx: Arc<PodCtx>,
    peer: SocketAddr,
    src_identity: Option<Identity>,
    req: ConnectRequest,
) -> Admission {
    let mut dst = req.authority;
    if inputs.cfg.mesh_ports().contains(&dst.port()) {
        tracing::warn!(%peer, %dst, "CONNECT to a mesh port refused");
        inputs.metrics.refuse("hbone", "mesh_port");
        return Admission::Reject(StatusCode::BAD_REQUEST);
    }
    let st = inputs.state.load();
    let me: Arc<Workload> = st
        .workload(ctx.workload.ip)
        .cloned()
        .unwrap_or_else(|| ctx.workload.clone());
    let from_waypoint = ProxyState::waypoint_of(&me, src_identity.as_ref()).cloned();
    if dst.ip() != ctx.workload.ip && from_waypoint.is_some() {
        // A waypoint may address the service it fronts; map VIP:port to this endpoint.
        if let Some(port) = st
            .service(dst.ip())
            .filter(|s| s.endpoints.contains(&me.ip))
            .and_then(|s| target_port(s, dst.port(), &me))
        {
            dst = SocketAddr::new(me.ip, port);
        }
    }
    if dst.ip() != ctx.workload.ip {
        tracing::warn!(%peer, %dst, pod = %ctx.workload.ip, "CONNECT authority is not this pod");
        inputs.metrics.refuse("hbone", "unknown_destination");
        return Admission::Reject(StatusCode::BAD_REQUEST);
    }
    let remote = req
        .headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let conn = ConnInfo {
        src_ip: peer.ip(),
        remote_ip: remote.map(|r| r.ip()).unwrap_or(peer.ip()),
        src_identity: src_identity.clone(),
        dst,
    };
    // From a waypoint the peer is the waypoint pod (labelled as the source, as Istio does);
    // otherwise the original client named in `forwarded`, else the TCP peer.
    let src_wl = match &from_waypoint {
        Some(wp) => st
            .workload(peer.ip())
            .filter(|w| w.identity == wp.identity)
            .or_else(|| wp.addresses.iter().find_map(|ip| st.workload(*ip)))
            .cloned(),
        None => remote
            .and_then(|r| st.workload(r.ip()).cloned())
            .or_else(|| st.workload(peer.ip()).cloned()),
    };
    let svc = st
        .services
        .values()
        .find(|s| s.endpoints.contains(&ctx.workload.ip))
        .cloned();
    let labels = tcp_labels(
        &inputs.cfg,
        Reporter::Destination,
        src_wl.as_deref(),
        src_identity.map(|i| i.to_string()),
        Some(&ctx.workload),
        svc.as_deref(),
        SecurityPolicy::MutualTls,
    );
    match admit(&inputs, &ctx, &conn).await {
        Err(r) => {
            let status = r.status();
            tracing::warn!(%peer, %dst, src_identity = ?conn.src_identity, reason = %r, %status, "inbound CONNECT refused");
            inputs.metrics.refuse("hbone", r.reason());
            Admission::Reject(status)
        }
        Ok(upstream) => {
            let mut headers = HeaderMap::new();
            let bag = ctx.workload.baggage(&inputs.cfg.cluster).to_header();
            if let Some(v) = server::header_value(&bag) {
                headers.insert("baggage", v);
            }
            let inputs = inputs.clone();
            Admission::Accept {
                headers,
                task: Box::new(move |t: Tunnel| {
                    Box::pin(async move {
                        // A broken stream resets the tunnel when `t` is dropped.
                        relay(&inputs, t, upstream, labels, conn.src_ip, dst).await;
                    })
                }),
            }
        }
    }
}

/// Policy check and upstream connection for a connection to `ctx`'s pod.
pub(crate) async fn admit(
    inputs: &ProxyInputs,
    ctx: &PodCtx,
    conn: &ConnInfo,
) -> Result<TcpStream, Refusal> {
    let st = inputs.state.load();
    let wl: Arc<Workload> = st
        .workload(ctx.workload.ip)
        .cloned()
        .unwrap_or_else(|| ctx.workload.clone());
    if !wl.bound_waypoints.is_empty()
        && ProxyState::waypoint_of(&wl, conn.src_identity.as_ref()).is_none()
    {
        let expected: Vec<String> = wl
            .bound_waypoints
            .iter()
            .map(|w| format!("{}/{} ({})", w.namespace, w.name, w.identity))
            .collect();
        return Err(Refusal::BypassedWaypoint(format!(
            "{}/{} accepts traffic only from waypoint {}; peer is {}",
            wl.namespace,
            wl.name,
            expected.join(", "),
            conn.src_identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "plaintext (no identity)".into())
        )));
    }
    if let Decision::Deny(reason) = authorize(&st.authorizations, wl.target(), conn) {
        return Err(Refusal::Policy(reason));
    }
    let addr = ctx.delivery_addr(conn.dst.port());
    match tokio::time::timeout(inputs.cfg.connect_timeout, ctx.sockets.connect(addr)).await {
        Ok(Ok(s)) => {
            inputs.orig_dst.delivery(std::os::fd::AsFd::as_fd(&s));
            Ok(s)
        }
        Ok(Err(e)) => Err(Refusal::Upstream(e)),
        Err(_) => Err(Refusal::Upstream(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Relays bytes between the downstream side and the application, with metrics and an access
/// log line at the end. Returns false when the stream broke (a reset or an I/O error) rather
/// than ending cleanly; the application's side has then been armed to reset.
pub(crate) async fn relay<A>(
    inputs: &ProxyInputs,
    mut down: A,
    mut up: TcpStream,
    labels: TcpLabels,
    src: std::net::IpAddr,
    dst: SocketAddr,
) -> bool
where
    A: super::copy::Endpoint,
{
    let start = Instant::now();
    let reporter = labels.reporter;
    let security = labels.connection_security_policy;
    let src_principal = labels.source.principal.clone();
    let m = inputs.metrics.connection(labels);
    let meter = inputs.orig_dst.flow_meter(std::os::fd::AsFd::as_fd(&up));
    let mut metered = super::copy::Metered::new(&mut up, meter);
    let r =
        super::copy::copy_bidirectional(&mut down, &mut metered, Some(&m.received), Some(&m.sent))
            .await;
    if r.is_err() {
        // The stream broke (the peer reset it, or a write failed): the application sees a
        // reset, not a clean end it could mistake for a complete stream.
        super::abort(&up);
    }
    let (rx, tx) = r
        .as_ref()
        .map(|x| *x)
        .unwrap_or((m.received.get(), m.sent.get()));
    tracing::info!(
        target: "access",
        reporter = reporter.as_str(), %src, %dst, src_identity = %src_principal,
        security = security.as_str(),
        bytes_received = rx, bytes_sent = tx,
        duration_ms = start.elapsed().as_millis() as u64,
        error = r.as_ref().err().map(|e| e.to_string()),
        "connection complete"
    );
    r.is_ok()
}

/// Same-node short path: the source pod's outbound hands the connection straight to the
/// destination pod's inbound logic (policy and telemetry kept, no TLS over loopback). The
/// source identity is the source pod's own, which this ztunnel holds the certificate for.
pub(crate) async fn deliver_local(
    inputs: &ProxyInputs,
    src: &PodCtx,
    dst_ctx: &PodCtx,
    mut down: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    svc: Option<Arc<Service>>,
) {
    let conn = ConnInfo {
        src_ip: src.workload.ip,
        remote_ip: src.workload.ip,
        src_identity: Some(src.workload.identity.clone()),
        dst,
    };
    match admit(inputs, dst_ctx, &conn).await {
        Err(r) => {
            tracing::warn!(%peer, %dst, reason = %r, "same-node connection refused");
            inputs.metrics.refuse("outbound", "same_node_refused");
            if matches!(r, Refusal::BypassedWaypoint(_)) {
                inputs.metrics.refuse("outbound", r.reason());
            }
        }
        Ok(up) => {
            let labels = tcp_labels(
                &inputs.cfg,
                Reporter::Destination,
                Some(&src.workload),
                Some(src.workload.identity.to_string()),
                Some(&dst_ctx.workload),
                svc.as_deref(),
                SecurityPolicy::MutualTls,
            );
            // The client's socket is read here (not in an outbound relay): meter it too.
            let meter = inputs.orig_dst.flow_meter(std::os::fd::AsFd::as_fd(&down));
            let mut metered = super::copy::Metered::new(&mut down, meter);
            if !relay(inputs, &mut metered, up, labels, peer.ip(), dst).await {
                // Both ends are local applications: the client sees the reset too.
                super::abort(&down);
            }
        }
    }
}

/// Parses the `baggage` response header of a CONNECT (used by the client side for labels).
pub fn peer_baggage(h: &HeaderMap) -> Option<Baggage> {
    h.get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(Baggage::parse)
}
