//! Inbound capture: new TCP connections for the pod IP go to ztunnel's in-pod listeners.
//!
//! `sk_lookup` runs when the kernel looks for a listening socket for a new connection in the
//! pod's network namespace. Connections to the pod IP on 15008 are handed to the HBONE
//! listener, any other port to the plaintext listener (15006); the accepted socket keeps the
//! original local address, so ztunnel learns the destination port from `getsockname()`.
//!
//! ztunnel's own delivery to the application is never steered: ztunnel connects to the
//! application from inside the pod's network namespace, and every connection opened inside a
//! network namespace to one of its own addresses arrives on the loopback device (ifindex 1),
//! whatever addresses it uses. So connections whose lookup starts on loopback — ztunnel's
//! delivery, and the application talking to itself — are left to the normal lookup. Only
//! connections that entered the namespace through a real interface (veth) are captured.
//!
//! Also left alone: non-TCP, destinations other than the pod IP, excluded inbound ports and the
//! node's health-check source (kubelet probes must reach the application directly).

use aya_ebpf::{
    bindings::sk_action::SK_PASS, helpers::bpf_get_netns_cookie, macros::sk_lookup,
    programs::SkLookupContext, EbpfContext,
};
use aya_log_ebpf::debug;
use ebpf_common::{
    counter, direction, flags, listener, v4_mapped, IpWords, ListenerKey, PortKey, HBONE_PORT,
    LOOPBACK_IFINDEX,
};

use crate::{
    counters::{count, Outcome},
    maps::{EXCLUDED_PORTS, LISTENERS, POD_CONFIG},
};

const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

#[sk_lookup]
pub fn mesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    let result = try_sk_lookup(&ctx);
    count(counter::PROG_SK_LOOKUP, &result);
    // SK_PASS either way: with a socket assigned it is used, without one the normal lookup
    // runs (fail open).
    SK_PASS
}

fn try_sk_lookup(ctx: &SkLookupContext) -> Result<Outcome, i64> {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's lifetime.
    let lk = unsafe { &*ctx.lookup };
    if lk.protocol != IPPROTO_TCP || lk.ingress_ifindex == LOOPBACK_IFINDEX {
        return Ok(Outcome::Passed);
    }
    // SAFETY: helper allowed for sk_lookup programs, takes the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data value copied out at once.
    let Some(config) = (unsafe { POD_CONFIG.get(netns) }).copied() else {
        return Ok(Outcome::Passed);
    };
    if config.flags & flags::CAPTURE_INBOUND == 0 {
        return Ok(Outcome::Passed);
    }
    let (local, remote): (IpWords, IpWords) = if lk.family == AF_INET6 {
        (
            [lk.local_ip6[0], lk.local_ip6[1], lk.local_ip6[2], lk.local_ip6[3]],
            [lk.remote_ip6[0], lk.remote_ip6[1], lk.remote_ip6[2], lk.remote_ip6[3]],
        )
    } else {
        (v4_mapped(lk.local_ip4), v4_mapped(lk.remote_ip4))
    };
    if local != config.pod_ip {
        return Ok(Outcome::Passed);
    }
    if config.flags & flags::HAS_HEALTH_CHECK_SRC != 0 && remote == config.health_check_src {
        return Ok(Outcome::Passed);
    }
    // sk_lookup gives the local port in host order.
    let port = lk.local_port as u16;
    let excluded = PortKey {
        netns_cookie: netns,
        port,
        direction: direction::INBOUND,
        _pad: [0; 5],
    };
    // SAFETY: only tests presence.
    if unsafe { EXCLUDED_PORTS.get(excluded).is_some() } {
        return Ok(Outcome::Passed);
    }
    let kind = if port == HBONE_PORT {
        listener::HBONE
    } else {
        listener::PLAINTEXT
    };
    let key = ListenerKey {
        netns_cookie: netns,
        kind,
        _pad: 0,
    };
    LISTENERS
        .redirect_sk_lookup(ctx, key, 0)
        .map_err(|e| e as i64)?;
    debug!(ctx, "sk_lookup steered port={} to listener kind={}", port, kind);
    Ok(Outcome::Captured)
}
