//! Outbound capture: the pod's TCP connects go to ztunnel's in-pod outbound listener.
//!
//! Why connect hooks plus `sock_ops` rather than a `getsockopt(SO_ORIGINAL_DST)` hook: cgroup
//! sockopt hooks run for the *calling* process's socket, and the socket that needs the answer
//! is ztunnel's accepted one, which is not in the pod's cgroup. So the connect hook records the
//! original destination under the application socket's cookie, and `sock_ops` — which sees the
//! same socket once it is established and its local port is known — re-keys the record by
//! (netns cookie, local address, local port). That triple is exactly what ztunnel sees as the
//! accepted socket's peer (plus `SO_NETNS_COOKIE`), so ztunnel needs no kernel-side help at
//! accept time. The client's ESTABLISHED callback runs before it sends the final ACK, hence
//! before ztunnel's accept() can return: the entry is always there first.
//!
//! Left alone: non-TCP sockets, loopback and unspecified destinations, excluded destination
//! ports, sockets in network namespaces that are not enrolled (ztunnel's own sockets are not
//! in the pod cgroup at all), and native IPv6 unless the pod enables it.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use ebpf_common::{
    counter, direction, flags, v4_mapped, IpWords, OrigDst, PeerKey, PodConfig, PortKey,
    OUTBOUND_PORT, V4_MAPPED_WORD,
};

use crate::{
    counters::{count, Outcome},
    maps::{EXCLUDED_PORTS, ORIG_DST_BY_COOKIE, ORIG_DST_BY_PEER, POD_CONFIG},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// cgroup/connect return value that lets connect() proceed (with our rewrite, if any).
const ALLOW: i32 = 1;

/// 127.0.0.1 as a network-order word.
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1 as network-order words.
const LOOPBACK6: IpWords = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    let result = try_connect4(&ctx);
    count(counter::PROG_CONNECT4, &result);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    let result = try_connect6(&ctx);
    count(counter::PROG_CONNECT6, &result);
    ALLOW
}

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let result = try_sock_ops(&ctx);
        count(counter::PROG_SOCK_OPS, &result);
    }
    // Both sides of an in-pod connection may go on the fast path: the application's client
    // socket (active) and its accepted socket for ztunnel's delivery (passive).
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        crate::fastpath::register(&ctx);
    }
    // Other callbacks are not ours; counting them would drown the interesting numbers.
    1
}

/// The enrolment of the socket's network namespace, if it is captured outbound.
fn outbound_config(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<(u64, PodConfig)> {
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return None;
    }
    // SAFETY: helper allowed for cgroup_sock_addr programs, takes the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data value copied out at once.
    let config = unsafe { *POD_CONFIG.get(netns)? };
    if config.flags & flags::CAPTURE_OUTBOUND == 0 {
        return None;
    }
    Some((netns, config))
}

fn port_excluded(netns: u64, port: u16) -> bool {
    let key = PortKey {
        netns_cookie: netns,
        port,
        direction: direction::OUTBOUND,
        _pad: [0; 5],
    };
    // SAFETY: only tests presence.
    unsafe { EXCLUDED_PORTS.get(key).is_some() }
}

/// Record `orig` under the socket's cookie; must succeed before the address is rewritten, or
/// ztunnel would accept a connection it cannot route.
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> Result<u64, i64> {
    // SAFETY: helper allowed for cgroup_sock_addr programs, takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_DST_BY_COOKIE
        .insert(cookie, orig, 0)
        .map_err(|e| e as i64)?;
    Ok(cookie)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<Outcome, i64> {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((netns, _)) = outbound_config(ctx, sa) else {
        return Ok(Outcome::Passed);
    };
    let ip = sa.user_ip4;
    let port = u16::from_be(sa.user_port as u16);
    if ip.to_ne_bytes()[0] == 127 || ip == 0 || port_excluded(netns, port) {
        return Ok(Outcome::Passed);
    }
    let orig = OrigDst {
        ip: v4_mapped(ip),
        port,
        family: AF_INET,
        _pad: 0,
    };
    let cookie = remember(ctx, &orig)?;
    sa.user_ip4 = LOOPBACK4;
    sa.user_port = u32::from(OUTBOUND_PORT.to_be());
    debug!(ctx, "connect4 captured cookie={} port={}", cookie, port);
    Ok(Outcome::Captured)
}

fn try_connect6(ctx: &SockAddrContext) -> Result<Outcome, i64> {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((netns, config)) = outbound_config(ctx, sa) else {
        return Ok(Outcome::Passed);
    };
    // Word-by-word reads: the verifier only allows 4-byte access to user_ip6.
    let ip: IpWords = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let port = u16::from_be(sa.user_port as u16);
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD;
    let target: IpWords = if mapped {
        // A dual-stack socket dialling IPv4: same rules as connect4, stays IPv4-mapped.
        if ip[3].to_ne_bytes()[0] == 127 || ip[3] == 0 {
            return Ok(Outcome::Passed);
        }
        v4_mapped(LOOPBACK4)
    } else {
        let unspecified = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0;
        if unspecified || ip == LOOPBACK6 || config.flags & flags::CAPTURE_IPV6 == 0 {
            return Ok(Outcome::Passed);
        }
        LOOPBACK6
    };
    if port_excluded(netns, port) {
        return Ok(Outcome::Passed);
    }
    let orig = OrigDst {
        ip,
        port,
        family: if mapped { AF_INET } else { AF_INET6 },
        _pad: 0,
    };
    let cookie = remember(ctx, &orig)?;
    sa.user_ip6[0] = target[0];
    sa.user_ip6[1] = target[1];
    sa.user_ip6[2] = target[2];
    sa.user_ip6[3] = target[3];
    sa.user_port = u32::from(OUTBOUND_PORT.to_be());
    debug!(ctx, "connect6 captured cookie={} port={}", cookie, port);
    Ok(Outcome::Captured)
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<Outcome, i64> {
    // SAFETY: helpers allowed for sock_ops programs, take the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data value copied out at once.
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(cookie) }).copied() else {
        return Ok(Outcome::Passed);
    };
    // SAFETY: as above.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // Both forms are read unconditionally and with volatile loads: otherwise LLVM merges the
    // two branches into one context load at a computed offset, which the verifier rejects.
    let ops = ctx.ops;
    // SAFETY: the kernel passes a valid bpf_sock_ops; every field read is allowed for sock_ops.
    let (family, ip4, ip6) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
        )
    };
    let ip = if family == u32::from(AF_INET6) {
        ip6
    } else {
        v4_mapped(ip4)
    };
    let key = PeerKey {
        netns_cookie: netns,
        ip,
        // sock_ops gives the local port in host order.
        port: ctx.local_port() as u16,
        _pad: [0; 6],
    };
    ORIG_DST_BY_PEER
        .insert(key, orig, 0)
        .map_err(|e| e as i64)?;
    // Best effort: LRU evicts it anyway.
    let _ = ORIG_DST_BY_COOKIE.remove(cookie);
    debug!(
        ctx,
        "sock_ops recorded peer port={} dst port={}", key.port, orig.port
    );
    Ok(Outcome::Captured)
}
