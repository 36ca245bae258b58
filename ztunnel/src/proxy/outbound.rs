//! Outbound (15001): a pod's captured connection → original destination → workload or service
//! endpoint → HBONE to the endpoint's node (pooled), the same-node short path, or plain TCP
//! when the destination is outside the mesh.
//!
//! Waypoint handoff (Istio ambient): when the original destination is a service VIP whose
//! service has a waypoint, or a pod IP whose workload has one, the connection goes over HBONE
//! to one of the waypoint's addresses (port 15008), verifying the waypoint's identity, with
//! `:authority` = the *original* destination (VIP:port or podIP:port), so the waypoint applies
//! L7 routing and picks the endpoint itself. The source ztunnel never picks an endpoint for
//! such traffic, and never takes the same-node short path (that would skip the waypoint).
//! A source whose identity is the waypoint's own is not handed off (no loop).

use super::inbound::deliver_local;
use super::{accept_loop, tcp_labels, PodCtx, ProxyInputs};
use crate::state::{Service, Upstream, Waypoint, Workload};
use common::telemetry::{Reporter, SecurityPolicy};
use http::{HeaderMap, HeaderValue};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use transport::hbone::{forwarded_header, new_traceparent, H2Client, HboneError};
use transport::identity::Identity;
use transport::pool::PoolKey;

/// Accepts a pod's outbound connections.
pub async fn run(inputs: ProxyInputs, ctx: Arc<PodCtx>, listener: Arc<TcpListener>) {
    let drain = inputs.drain.clone();
    accept_loop(listener, drain, |tcp, peer| {
        let inputs2 = inputs.clone();
        let ctx = ctx.clone();
        inputs
            .tracker
            .spawn(async move { handle(inputs2, ctx, tcp, peer).await });
    })
    .await;
}

async fn handle(inputs: ProxyInputs, ctx: Arc<PodCtx>, tcp: TcpStream, raw_peer: SocketAddr) {
    let peer = raw_peer;
    let Ok(local) = tcp.local_addr() else { return };
    // Captured connections reach 127.0.0.1:15001, so the kernel gave them a loopback source;
    // the client is the pod itself.
    let peer = if peer.ip().is_loopback() {
        SocketAddr::new(ctx.workload.ip, peer.port())
    } else {
        peer
    };
    let Some(orig) = inputs
        .orig_dst
        .outbound(ctx.workload.ip, tcp.as_fd(), peer, local)
    else {
        tracing::warn!(%peer, pod = %ctx.workload.name, "outbound connection without original destination");
        inputs.metrics.refuse("outbound", "no_original_destination");
        return;
    };
    let st = inputs.state.load();
    if let Some(wp) = st.waypoint_for(orig, &ctx.workload.identity) {
        // Service for labels and `forwarded;host=`: the VIP's, or the pod's service.
        let svc = st
            .service(orig.ip())
            .cloned()
            .or_else(|| st.resolve(orig, |_| 0).and_then(|u| u.service));
        // Label the destination as the waypoint pod we reach (source reporter's view).
        let Some(addr) = pick_waypoint_addr(&wp) else {
            tracing::warn!(%peer, dst = %orig, waypoint = %wp.name, "waypoint has no address");
            inputs.metrics.refuse("outbound", "waypoint_unavailable");
            return;
        };
        let wp_wl = st.workload(addr).cloned();
        drop(st);
        tracing::debug!(%peer, dst = %orig, waypoint = %wp.name, via = %addr, "handing off to waypoint");
        let target = HboneTarget {
            addr: SocketAddr::new(addr, inputs.cfg.hbone_port),
            identity: wp.identity.clone(),
            authority: orig,
            workload: wp_wl,
            service: svc,
            waypoint: Some(wp),
        };
        return hbone(&inputs, &ctx, tcp, peer, target).await;
    }
    let Some(up) = st.resolve(orig, |n| rand::random::<usize>() % n) else {
        tracing::warn!(%peer, dst = %orig, "service has no usable endpoint");
        inputs.metrics.refuse("outbound", "no_healthy_upstream");
        return;
    };
    drop(st);
    match &up.workload {
        Some(w) if w.enrolled => {
            let local_dst = inputs.local_pods.read().get(&w.ip).cloned();
            match local_dst {
                Some(dst_ctx) if w.node == inputs.cfg.node => {
                    deliver_local(
                        &inputs,
                        &ctx,
                        &dst_ctx,
                        tcp,
                        peer,
                        up.addr,
                        up.service.clone(),
                    )
                    .await
                }
                _ => {
                    let target = HboneTarget {
                        addr: SocketAddr::new(w.ip, inputs.cfg.hbone_port),
                        identity: w.identity.clone(),
                        authority: up.addr,
                        workload: Some(w.clone()),
                        service: up.service.clone(),
                        waypoint: None,
                    };
                    hbone(&inputs, &ctx, tcp, peer, target).await
                }
            }
        }
        _ => passthrough(&inputs, &ctx, tcp, peer, up).await,
    }
}

/// One of the waypoint's pods, at random (spreads load across waypoint replicas).
fn pick_waypoint_addr(wp: &Waypoint) -> Option<std::net::IpAddr> {
    match wp.addresses.len() {
        0 => None,
        n => Some(wp.addresses[rand::random::<usize>() % n]),
    }
}

/// Where an HBONE tunnel goes: the endpoint's node, or a waypoint.
struct HboneTarget {
    /// HBONE address dialed (`ip:15008`).
    addr: SocketAddr,
    /// Identity the server must prove.
    identity: Identity,
    /// `:authority` of the `CONNECT`: endpoint `podIP:port`, or the original destination when
    /// a waypoint is in the path.
    authority: SocketAddr,
    /// Workload at `addr` (metrics' destination labels).
    workload: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    waypoint: Option<Arc<Waypoint>>,
}

async fn hbone(
    inputs: &ProxyInputs,
    ctx: &Arc<PodCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    t: HboneTarget,
) {
    let hbone_addr = t.addr;
    let key = PoolKey {
        src: ctx.workload.identity.clone(),
        dst: t.identity.clone(),
        dst_addr: hbone_addr,
    };
    let mut headers = HeaderMap::new();
    let fwd = forwarded_header(peer, t.service.as_ref().map(|s| s.hostname.as_str()));
    for (k, v) in [
        ("forwarded", fwd),
        (
            "baggage",
            ctx.workload.baggage(&inputs.cfg.cluster).to_header(),
        ),
        ("traceparent", new_traceparent()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
    let dial = || dial(inputs, ctx, hbone_addr, t.identity.clone());
    let dst = t.authority;
    let waypoint = t.waypoint.as_ref().map(|w| w.name.as_str());
    let start = Instant::now();
    let tunnel = match tokio::time::timeout(
        inputs.cfg.connect_timeout,
        inputs.pool.connect(key, dial, dst, headers),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(%peer, %dst, via = %hbone_addr, ?waypoint, error = %e, "HBONE connect failed");
            inputs.metrics.refuse("outbound", "hbone_connect");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, %dst, via = %hbone_addr, ?waypoint, "HBONE connect timed out");
            inputs.metrics.refuse("outbound", "hbone_timeout");
            return;
        }
    };
    tracing::debug!(%peer, %dst, ?waypoint, elapsed_us = start.elapsed().as_micros() as u64, "HBONE tunnel open");
    let labels = tcp_labels(
        &inputs.cfg,
        Reporter::Source,
        Some(&ctx.workload),
        Some(ctx.workload.identity.to_string()),
        t.workload.as_deref(),
        t.service.as_deref(),
        SecurityPolicy::MutualTls,
    );
    relay_client(inputs, tcp, tunnel, labels, peer, dst).await;
}

async fn dial(
    inputs: &ProxyInputs,
    ctx: &PodCtx,
    addr: SocketAddr,
    expected: transport::identity::Identity,
) -> Result<H2Client, HboneError> {
    let tcp = ctx.sockets.connect(addr).await?;
    let tcp = transport::hbone::io::ReadBuffered::new(tcp, transport::hbone::TLS_READ_BUFFER);
    let cfg = transport::tls::client_config(ctx.cert.clone(), inputs.certs.roots(), vec![expected])
        .map_err(|e| HboneError::Io(std::io::Error::other(e)))?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(transport::tls::dummy_server_name(), tcp)
        .await?;
    transport::tls::tune(tls.get_mut().1);
    H2Client::handshake(tls).await
}

async fn passthrough(
    inputs: &ProxyInputs,
    ctx: &PodCtx,
    tcp: TcpStream,
    peer: SocketAddr,
    up: Upstream,
) {
    let upstream = match tokio::time::timeout(
        inputs.cfg.connect_timeout,
        ctx.sockets.connect(up.addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, dst = %up.addr, error = %e, "passthrough connect failed");
            inputs.metrics.refuse("outbound", "passthrough_connect");
            return;
        }
        Err(_) => {
            inputs.metrics.refuse("outbound", "passthrough_timeout");
            return;
        }
    };
    let labels = tcp_labels(
        &inputs.cfg,
        Reporter::Source,
        Some(&ctx.workload),
        Some(ctx.workload.identity.to_string()),
        up.workload.as_deref(),
        up.service.as_deref(),
        SecurityPolicy::Unknown,
    );
    relay_client(inputs, tcp, upstream, labels, peer, up.addr).await;
}

async fn relay_client<U>(
    inputs: &ProxyInputs,
    mut down: TcpStream,
    mut up: U,
    labels: crate::metrics::TcpLabels,
    peer: SocketAddr,
    dst: SocketAddr,
) where
    U: super::copy::Endpoint,
{
    let start = Instant::now();
    let security = labels.connection_security_policy;
    let m = inputs.metrics.connection(labels);
    let meter = inputs.orig_dst.flow_meter(std::os::fd::AsFd::as_fd(&down));
    let mut metered = super::copy::Metered::new(&mut down, meter);
    let r =
        super::copy::copy_bidirectional(&mut metered, &mut up, Some(&m.sent), Some(&m.received))
            .await;
    if r.is_err() {
        // A reset on the far side (RST_STREAM, or the upstream's RST) reaches the application
        // as a reset, never as a clean end of stream.
        super::abort(&down);
    }
    tracing::info!(
        target: "access",
        reporter = Reporter::Source.as_str(), src = %peer, %dst, security = security.as_str(),
        bytes_sent = m.sent.get(), bytes_received = m.received.get(),
        duration_ms = start.elapsed().as_millis() as u64,
        error = r.err().map(|e| e.to_string()),
        "connection complete"
    );
}
