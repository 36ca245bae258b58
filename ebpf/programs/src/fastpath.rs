//! Sockmap fast path (issue 8): bytes written on one end of an in-namespace loopback connection
//! (pod <-> ztunnel's in-pod sockets) are queued straight onto the other end's receive queue,
//! skipping the loopback TCP/IP path.
//!
//! - [`register`] runs from the pod cgroup's `sock_ops` at ACTIVE/PASSIVE_ESTABLISHED and puts
//!   the socket into `FLOWS` under its own 4-tuple + netns cookie. ztunnel's sockets are not in
//!   the pod cgroup: ztunnel inserts them from userspace (`Capture::accelerate`).
//! - [`mesh_sk_msg`] runs on every `sendmsg` of a socket in `FLOWS` and redirects the chunk to
//!   the ingress of the socket whose key is its own with local and remote swapped.
//!
//! Ordering rule, the reason for `FLOW_FALLBACK`: the receiver's `recvmsg` reads redirected
//! data before anything on its TCP receive queue. Switching a direction from redirect to TCP is
//! therefore safe (older redirected bytes are read first), but switching from TCP to redirect
//! is not (newer redirected bytes would overtake older TCP bytes still queued or in flight).
//! So a sending direction whose peer is not in `FLOWS` at a send passes that chunk to TCP and
//! is pinned there for the rest of the connection. ztunnel's "take this connection off the fast
//! path" pins both directions the same way instead of deleting sockets from the map, which
//! would discard bytes already queued for the reader.
//!
//! Backpressure, the reason for `FLOW_SENT`/`FLOW_READ`: redirected bytes queue on the reader
//! without flow control (see `ebpf_common::fastpath::REDIRECT_WINDOW`). A direction that runs
//! more than the window ahead of its reader is pinned to TCP, under the same ordering rule.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use ebpf_common::{fastpath, flags, v4_mapped, FlowKey, IpWords};

use crate::maps::{FASTPATH_COUNTERS, FLOWS, FLOW_FALLBACK, FLOW_READ, FLOW_SENT, POD_CONFIG};

const AF_INET6: u32 = 10;
/// `BPF_ANY`: insert or replace (a stale socket cannot hold a live 4-tuple's key).
const BPF_ANY: u64 = 0;

#[inline(always)]
fn add(index: u32, n: u64) {
    if let Some(slot) = FASTPATH_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on their CPU mid-update.
        unsafe { *slot += n };
    }
}

/// Ports as `bpf_sock_ops` / `sk_msg_md` give them: local in host order, remote as a network
/// order 16-bit value in the top half of the word.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    u32::from_be(raw) as u16
}

/// Called by the pod cgroup's `sock_ops` once a TCP socket is established (either side).
/// Registers it if its namespace has the fast path on and the connection stays inside the
/// namespace (same address both ends: 127.0.0.1 for the outbound capture, the pod IP for
/// ztunnel's delivery). Everything else is left alone: a socket in `FLOWS` pays for the
/// sockmap send path even when nothing is redirected.
#[inline(always)]
pub fn register(ctx: &SockOpsContext) {
    // SAFETY: helper allowed for sock_ops programs, takes the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data value copied out at once.
    let Some(config) = (unsafe { POD_CONFIG.get(netns) }).copied() else {
        return;
    };
    if config.flags & flags::FASTPATH == 0 {
        return;
    }
    let ops = ctx.ops;
    // Volatile loads of both forms, as in outbound.rs: the verifier rejects context loads at
    // computed offsets, which LLVM would otherwise produce by merging the branches.
    // SAFETY: the kernel passes a valid bpf_sock_ops; every field read is allowed for sock_ops.
    let (family, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_ip4),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            read_volatile(&raw const (*ops).local_port),
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    let (local, remote): (IpWords, IpWords) = if family == AF_INET6 {
        (l6, r6)
    } else {
        (v4_mapped(l4), v4_mapped(r4))
    };
    if local != remote {
        return;
    }
    let mut key = FlowKey {
        netns_cookie: netns,
        local_ip: local,
        remote_ip: remote,
        local_port: lport as u16,
        remote_port: remote_port(rport),
        _pad: 0,
    };
    // A previous connection on the same 4-tuple may have left its pin and its byte counts
    // behind (LRU).
    let _ = FLOW_FALLBACK.remove(key);
    let _ = FLOW_SENT.remove(key);
    let _ = FLOW_READ.remove(key);
    // SAFETY: the context is the kernel's valid bpf_sock_ops for this callback.
    match FLOWS.update(&mut key, unsafe { &mut *ops }, BPF_ANY) {
        Ok(()) => {
            add(fastpath::SOCKETS_ADDED, 1);
            debug!(
                ctx,
                "fastpath: registered local port {} remote port {}",
                key.local_port,
                key.remote_port
            );
        }
        Err(_) => add(fastpath::ADD_ERRORS, 1),
    }
}

#[sk_msg]
pub fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    // SAFETY: the kernel passes a valid sk_msg_md; all these fields are readable by sk_msg.
    let (family, l4, r4, l6, r6, lport, rport, size) = unsafe {
        (
            read_volatile(&raw const (*md).family),
            read_volatile(&raw const (*md).local_ip4),
            read_volatile(&raw const (*md).remote_ip4),
            [
                read_volatile(&raw const (*md).local_ip6[0]),
                read_volatile(&raw const (*md).local_ip6[1]),
                read_volatile(&raw const (*md).local_ip6[2]),
                read_volatile(&raw const (*md).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*md).remote_ip6[0]),
                read_volatile(&raw const (*md).remote_ip6[1]),
                read_volatile(&raw const (*md).remote_ip6[2]),
                read_volatile(&raw const (*md).remote_ip6[3]),
            ],
            read_volatile(&raw const (*md).local_port),
            read_volatile(&raw const (*md).remote_port),
            read_volatile(&raw const (*md).size),
        )
    };
    let (local, remote): (IpWords, IpWords) = if family == AF_INET6 {
        (l6, r6)
    } else {
        (v4_mapped(l4), v4_mapped(r4))
    };
    // SAFETY: helper allowed for sk_msg programs (Linux 5.15+), takes the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let own = FlowKey {
        netns_cookie: netns,
        local_ip: local,
        remote_ip: remote,
        local_port: lport as u16,
        remote_port: remote_port(rport),
        _pad: 0,
    };
    // SAFETY: only tests presence.
    if unsafe { FLOW_FALLBACK.get(own).is_some() } {
        add(fastpath::BYTES_PASSED, u64::from(size));
        return SK_PASS;
    }
    // The redirect window: sk_msg runs under the sending socket's lock, so this
    // read-modify-write of the direction's own `FLOW_SENT` entry does not race; `FLOW_READ`
    // is ztunnel's (possibly stale, hence conservative) report of what it has read.
    // SAFETY: plain-data values copied out at once.
    let sent = unsafe { FLOW_SENT.get(own) }.copied().unwrap_or(0) + u64::from(size);
    let read = unsafe { FLOW_READ.get(own) }.copied().unwrap_or(0);
    if sent.saturating_sub(read) > fastpath::REDIRECT_WINDOW {
        // Pinning is always safe for ordering: the bytes already redirected are read first.
        let _ = FLOW_FALLBACK.insert(own, 1, 0);
        add(fastpath::DIRECTIONS_OVER_WINDOW, 1);
        add(fastpath::BYTES_PASSED, u64::from(size));
        return SK_PASS;
    }
    let mut peer = own.peer();
    if FLOWS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        let _ = FLOW_SENT.insert(own, sent, 0);
        add(fastpath::MSGS_REDIRECTED, 1);
        add(fastpath::BYTES_REDIRECTED, u64::from(size));
    } else {
        // Peer not (or no longer) in FLOWS: this chunk takes TCP, and so must every later one
        // of this direction (see the module docs). The insert into an LRU map cannot fail
        // for lack of room; should it fail anyway there is nothing safer to do than pass.
        let _ = FLOW_FALLBACK.insert(own, 1, 0);
        debug!(
            &ctx,
            "sk_msg: no peer for local port {} remote port {}, direction pinned to TCP",
            own.local_port,
            own.remote_port
        );
        add(fastpath::DIRECTIONS_FELL_BACK, 1);
        add(fastpath::BYTES_PASSED, u64::from(size));
    }
    // SK_PASS either way: with a redirect target set the kernel redirects, without one the
    // bytes take the normal path (fail open).
    SK_PASS
}
