//! Inbound plaintext (15006): traffic to a pod that did not come through HBONE.
//!
//! PeerAuthentication decides first (STRICT refuses plaintext; PERMISSIVE and DISABLE accept),
//! then AuthorizationPolicy runs without a peer identity; telemetry labels the connection
//! `connection_security_policy="none"`.
//!
//! Waypoint-bound pods (see `proxy::inbound`, "Waypoint rule") refuse plaintext even under
//! PERMISSIVE/DISABLE: plaintext carries no identity, so it cannot come from the waypoint, and
//! accepting it would let any client skip the waypoint's L7 policy. The refusal is counted as
//! `reason="bypassed_waypoint"` on the `inbound_plaintext` listener.

use super::inbound::{admit, relay, Refusal};
use super::{accept_loop, tcp_labels, PodCtx, ProxyInputs};
use crate::state::policy::{mtls_mode, ConnInfo};
use common::istio::security::MtlsMode;
use common::telemetry::{Reporter, SecurityPolicy};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Accepts plaintext connections for one pod.
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

async fn handle(inputs: ProxyInputs, ctx: Arc<PodCtx>, tcp: TcpStream, peer: SocketAddr) {
    let Ok(local) = tcp.local_addr() else { return };
    let dst = inputs.orig_dst.inbound(ctx.workload.ip, peer, local);
    let dst = SocketAddr::new(ctx.workload.ip, dst.port());
    if inputs.cfg.mesh_ports().contains(&dst.port()) {
        inputs.metrics.refuse("inbound_plaintext", "mesh_port");
        return;
    }
    let st = inputs.state.load();
    let wl = st
        .workload(ctx.workload.ip)
        .cloned()
        .unwrap_or_else(|| ctx.workload.clone());
    let mode = mtls_mode(&st.peer_auths, wl.target(), dst.port());
    if mode == MtlsMode::Strict {
        tracing::warn!(%peer, %dst, pod = %wl.name, "plaintext connection refused: PeerAuthentication STRICT");
        inputs.metrics.refuse("inbound_plaintext", "strict_mtls");
        return;
    }
    let conn = ConnInfo {
        src_ip: peer.ip(),
        remote_ip: peer.ip(),
        src_identity: None,
        dst,
    };
    match admit(&inputs, &ctx, &conn).await {
        Err(r) => {
            tracing::warn!(%peer, %dst, reason = %r, "plaintext connection refused");
            inputs.metrics.refuse(
                "inbound_plaintext",
                match r {
                    Refusal::BypassedWaypoint(_) => r.reason(),
                    _ => "refused",
                },
            );
        }
        Ok(up) => {
            let src_wl = st.workload(peer.ip()).cloned();
            let svc = st
                .services
                .values()
                .find(|s| s.endpoints.contains(&wl.ip))
                .cloned();
            let labels = tcp_labels(
                &inputs.cfg,
                Reporter::Destination,
                src_wl.as_deref(),
                None,
                Some(&wl),
                svc.as_deref(),
                SecurityPolicy::None,
            );
            let mut tcp = tcp;
            if !relay(&inputs, &mut tcp, up, labels, peer.ip(), dst).await {
                super::abort(&tcp);
            }
        }
    }
}
