//! Inbound capture: new TCP connections for the pod IP go to ztunnel's in-pod listeners.
//!
//! `sk_lookup` runs when the kernel looks for a listening socket for a new connection in the
//! pod's network namespace. Connections to the pod IP on 15008 are handed to the HBONE
//! listener, any other port to the plaintext listener (15006); the accepted socket keeps the
//! original local address, so ztunnel learns the destination port from `getsockname()`.
//!
//! ztunnel's own delivery to the application is never steered. ztunnel connects to the
//! application from a socket it creates inside the pod's network namespace, without binding
//! it, so the kernel picks the pod IP as the source: a connection from the pod IP to the pod IP
//! (or from loopback) can only have been opened inside the pod's own namespace, and such
//! lookups are left to the normal listener lookup. (The lookup's `ingress_ifindex` does not
//! tell: for locally-originated traffic to a local address the kernel reports the device that
//! owns the address, not loopback.) Consequence: ztunnel cannot spoof the original client's
//! source address on delivery (Istio's IP_TRANSPARENT trick) without a further marker; and the
//! application's connections to its own pod IP are not captured inbound (they are captured
//! outbound first).
//!
//! Also left alone: non-TCP, destinations other than the pod IP, excluded inbound ports and the
//! node's health-check source (kubelet probes must reach the application directly).

use core::ptr::read_volatile;

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::debug;
use ebpf_common::{
    counter, direction, flags, listener, v4_mapped, IpWords, ListenerKey, PortKey, HBONE_PORT,
    V4_MAPPED_WORD,
};

use crate::{
    counters::{count, Outcome},
    maps::{EXCLUDED_PORTS, LISTENERS, POD_BY_IP},
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
    if lk.protocol != IPPROTO_TCP {
        return Ok(Outcome::Passed);
    }
    // Volatile loads of both forms: LLVM would otherwise merge the branches into context
    // loads at computed offsets, which the verifier rejects.
    let p = ctx.lookup;
    // SAFETY: valid context; all these fields are readable by sk_lookup programs.
    let (family, l4, r4, l6, r6) = unsafe {
        (
            read_volatile(&raw const (*p).family),
            read_volatile(&raw const (*p).local_ip4),
            read_volatile(&raw const (*p).remote_ip4),
            [
                read_volatile(&raw const (*p).local_ip6[0]),
                read_volatile(&raw const (*p).local_ip6[1]),
                read_volatile(&raw const (*p).local_ip6[2]),
                read_volatile(&raw const (*p).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*p).remote_ip6[0]),
                read_volatile(&raw const (*p).remote_ip6[1]),
                read_volatile(&raw const (*p).remote_ip6[2]),
                read_volatile(&raw const (*p).remote_ip6[3]),
            ],
        )
    };
    let (local, remote): (IpWords, IpWords) = if family == AF_INET6 {
        (l6, r6)
    } else {
        (v4_mapped(l4), v4_mapped(r4))
    };
    if remote == local || is_loopback(&remote) {
        // Opened inside the pod's namespace: ztunnel delivering, or the app calling itself.
        return Ok(Outcome::Passed);
    }
    // Keyed by the destination, which is the pod IP for everything we steer: sk_lookup
    // cannot ask for its netns cookie, and pod IPs are unique on a node.
    // SAFETY: plain-data value copied out at once.
    let Some(config) = (unsafe { POD_BY_IP.get(local) }).copied() else {
        return Ok(Outcome::Passed);
    };
    if config.flags & flags::CAPTURE_INBOUND == 0 {
        return Ok(Outcome::Passed);
    }
    let netns = config.netns_cookie;
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
    debug!(
        ctx,
        "sk_lookup steered port={} to listener kind={}", port, kind
    );
    Ok(Outcome::Captured)
}

/// 127.0.0.0/8 (IPv4-mapped) or ::1.
fn is_loopback(ip: &IpWords) -> bool {
    let head_zero = ip[0] == 0 && ip[1] == 0;
    let v4_loop = ip[2] == V4_MAPPED_WORD && ip[3].to_ne_bytes()[0] == 127;
    let v6_loop = ip[2] == 0 && ip[3] == u32::from_ne_bytes([0, 0, 0, 1]);
    head_zero && (v4_loop || v6_loop)
}
