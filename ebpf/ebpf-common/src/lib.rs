//! Types shared by the kernel programs (`ebpf/programs`) and ztunnel's loader
//! (`ztunnel/src/redirect`).
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the same bytes are
//! written by one side and read by the other through BPF maps: a field added on one side only
//! would silently shift every later field. The `user` feature adds `aya::Pod` impls so the
//! loader can use these types as map keys and values.
//!
//! Addresses are always 16 bytes ([`IpWords`]): IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`),
//! so one key type serves `AF_INET` and `AF_INET6` sockets — a dual-stack application socket
//! connecting to an IPv4 address looks the same as an `AF_INET` one. The words hold the address
//! bytes in network order exactly as the kernel hands them to BPF programs; ports in keys are
//! host order.
#![no_std]

/// ztunnel's outbound listener inside each pod's network namespace (Istio's port).
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's in-pod plaintext inbound listener.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's in-pod HBONE (mTLS HTTP/2 CONNECT) listener, and the port peers dial.
pub const HBONE_PORT: u16 = 15008;

/// Names of the programs in the object (the Rust function names in `ebpf/programs`).
pub mod programs {
    pub const CONNECT4: &str = "mesh_connect4";
    pub const CONNECT6: &str = "mesh_connect6";
    pub const SOCK_OPS: &str = "mesh_sock_ops";
    pub const SK_LOOKUP: &str = "mesh_sk_lookup";
    /// The fast path's `sk_msg` verdict program, attached to the `FLOWS` sockhash.
    pub const SK_MSG: &str = "mesh_sk_msg";
}

/// Names of the maps in the object (the Rust static names in `ebpf/programs`).
pub mod maps {
    /// `HASH<u64 netns cookie, PodConfig>`: which network namespaces are enrolled, and how.
    /// Used by the cgroup programs, which can ask for their socket's netns cookie.
    pub const POD_CONFIG: &str = "POD_CONFIG";
    /// `HASH<IpWords pod IP, PodConfig>`: the same records by pod IP, for sk_lookup, which
    /// cannot call `bpf_get_netns_cookie` (kernel 6.18) but knows the destination address.
    pub const POD_BY_IP: &str = "POD_BY_IP";
    /// `HASH<PortKey, u8>`: per-pod excluded ports, outbound (destination) and inbound.
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    /// `LRU_HASH<u64 socket cookie, OrigDst>`: written by connect4/6, moved by sock_ops.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// `LRU_HASH<PeerKey, OrigDst>`: read (and deleted) by ztunnel after accept on 15001.
    pub const ORIG_DST_BY_PEER: &str = "ORIG_DST_BY_PEER";
    /// `SOCKHASH<ListenerKey, socket>`: ztunnel's in-pod listeners, targets of sk_lookup.
    pub const LISTENERS: &str = "LISTENERS";
    /// `PERCPU_ARRAY<u64>` indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `SOCKHASH<FlowKey, socket>`: both ends of in-namespace connections (pod <-> ztunnel,
    /// pod <-> pod) for the sockmap fast path. Pod sockets are added by sock_ops at
    /// ACTIVE/PASSIVE_ESTABLISHED, ztunnel's by ztunnel (`Capture::accelerate`).
    pub const FLOWS: &str = "FLOWS";
    /// `LRU_HASH<FlowKey, u8>`: sending directions that must stay on the normal TCP path
    /// (a byte already went that way, or ztunnel took the connection off the fast path).
    pub const FLOW_FALLBACK: &str = "FLOW_FALLBACK";
    /// `LRU_HASH<FlowKey, u64>`: bytes each sending direction has redirected so far (written
    /// by `sk_msg` only), for the redirect window ([`crate::fastpath::REDIRECT_WINDOW`]).
    pub const FLOW_SENT: &str = "FLOW_SENT";
    /// `LRU_HASH<FlowKey, u64>`: bytes the reader of a sending direction has consumed, keyed
    /// like the sender's entry; written by ztunnel for the directions it reads (its in-pod
    /// sockets), at most every [`crate::fastpath::READ_REPORT_EVERY`] bytes.
    pub const FLOW_READ: &str = "FLOW_READ";
    /// `PERCPU_ARRAY<u64>` indexed by [`crate::fastpath`].
    pub const FASTPATH_COUNTERS: &str = "FASTPATH_COUNTERS";
}

/// Map capacities. LRU maps bound memory when ztunnel never reads an entry (client gave up).
pub mod capacity {
    pub const PODS: u32 = 1024;
    pub const EXCLUDED_PORTS: u32 = 16384;
    pub const ORIG_DST: u32 = 65536;
    pub const LISTENERS: u32 = 2 * PODS;
    /// Sockets on the fast path (two per connection).
    pub const FLOWS: u32 = 65536;
    pub const FLOW_FALLBACK: u32 = 65536;
}

/// Indexes into the `FASTPATH_COUNTERS` per-CPU array.
pub mod fastpath {
    /// Sockets sock_ops put into `FLOWS` (pod side).
    pub const SOCKETS_ADDED: u32 = 0;
    /// Sockets sock_ops could not add (map full, unsupported socket state).
    pub const ADD_ERRORS: u32 = 1;
    /// sendmsg chunks and bytes handed straight to the peer socket.
    pub const MSGS_REDIRECTED: u32 = 2;
    pub const BYTES_REDIRECTED: u32 = 3;
    /// Bytes of sockets in `FLOWS` that took the normal TCP path.
    pub const BYTES_PASSED: u32 = 4;
    /// Sending directions that fell back for good (peer not in `FLOWS` at their first byte).
    pub const DIRECTIONS_FELL_BACK: u32 = 5;
    /// Sending directions pinned to TCP because they ran more than
    /// [`REDIRECT_WINDOW`] ahead of their reader.
    pub const DIRECTIONS_OVER_WINDOW: u32 = 6;
    /// Number of slots in the array.
    pub const LEN: u32 = 7;

    /// How far a sending direction may run ahead of its reader on the fast path, in bytes.
    /// Redirected bytes queue on the reader without backpressure: the kernel charges them to
    /// the machine's TCP memory, not to the reader's receive buffer, and releases the writer's
    /// send buffer at once, so a writer faster than its reader (an upload into ztunnel faster
    /// than the tunnel drains it; ztunnel delivering to a slow application) would grow the
    /// queue until the kernel fails the writer's `write()` with ENOMEM. Past the window the
    /// direction is pinned to TCP, whose flow control then holds the writer back (the ordering
    /// rule allows redirect -> TCP, never back). Directions ztunnel reads are measured against
    /// what it has read (`FLOW_READ`), so a connection whose reader keeps up stays on the fast
    /// path for good; directions an application reads have no such report, and the window
    /// bounds the bytes they redirect in total. Sized like a large socket buffer pair.
    pub const REDIRECT_WINDOW: u64 = 16 << 20;
    /// ztunnel reports its reads to `FLOW_READ` once per this many bytes (a syscall per report):
    /// the window then over-counts the reader's lag by less than this.
    pub const READ_REPORT_EVERY: u64 = 1 << 20;
}

/// Indexes into the `COUNTERS` per-CPU array: `program * 3 + outcome`.
pub mod counter {
    pub const CAPTURED: u32 = 0;
    pub const PASSED: u32 = 1;
    pub const ERRORS: u32 = 2;
    pub const OUTCOMES: u32 = 3;

    pub const PROG_CONNECT4: u32 = 0;
    pub const PROG_CONNECT6: u32 = 1;
    pub const PROG_SOCK_OPS: u32 = 2;
    pub const PROG_SK_LOOKUP: u32 = 3;
    pub const PROGRAMS: u32 = 4;

    /// Number of slots in the array.
    pub const LEN: u32 = PROGRAMS * OUTCOMES;

    /// Slot of `outcome` for `program`.
    pub const fn index(program: u32, outcome: u32) -> u32 {
        program * OUTCOMES + outcome
    }
}

/// `PodConfig::flags` bits.
pub mod flags {
    /// Rewrite the pod's outbound TCP connects to [`crate::OUTBOUND_PORT`].
    pub const CAPTURE_OUTBOUND: u32 = 1 << 0;
    /// Steer inbound TCP for the pod IP to ztunnel's listeners.
    pub const CAPTURE_INBOUND: u32 = 1 << 1;
    /// Also capture native IPv6 destinations (to `[::1]:15001`); off unless ztunnel listens there.
    pub const CAPTURE_IPV6: u32 = 1 << 2;
    /// `PodConfig::health_check_src` is set: inbound from it is never steered.
    pub const HAS_HEALTH_CHECK_SRC: u32 = 1 << 3;
    /// Put the pod's in-namespace connections on the sockmap fast path (issue 8).
    pub const FASTPATH: u32 = 1 << 4;
}

/// Kinds of in-pod listener, the second half of a [`ListenerKey`].
pub mod listener {
    pub const HBONE: u32 = 0;
    pub const PLAINTEXT: u32 = 1;
}

/// Direction of a [`PortKey`].
pub mod direction {
    pub const OUTBOUND: u8 = 0;
    pub const INBOUND: u8 = 1;
}

/// A 16-byte address as four words in network byte order (IPv4 stored IPv4-mapped).
pub type IpWords = [u32; 4];

/// The third word of an IPv4-mapped address (`0000:ffff` in network order).
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// IPv4-mapped form of an IPv4 address given as the kernel gives it (network order word).
pub const fn v4_mapped(ip4_be: u32) -> IpWords {
    [0, 0, V4_MAPPED_WORD, ip4_be]
}

/// Address words from the 16 octets of an IPv6 (or IPv4-mapped) address.
pub const fn words_from_octets(o: [u8; 16]) -> IpWords {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The 16 octets of address words.
pub const fn octets_from_words(w: IpWords) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Per-pod capture settings, keyed by the pod network namespace's cookie and by pod IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodConfig {
    /// The pod network namespace's cookie: the pod's identity in every other map.
    pub netns_cookie: u64,
    /// The pod's IP; sk_lookup steers only connections addressed to it.
    pub pod_ip: IpWords,
    /// Source of node health checks (kubelet probes), never steered inbound.
    pub health_check_src: IpWords,
    /// [`flags`] bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Key of `EXCLUDED_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub netns_cookie: u64,
    pub port: u16,
    /// [`direction`] value.
    pub direction: u8,
    pub _pad: [u8; 5],
}

/// An original destination as the application asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip: IpWords,
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family the application connected with.
    pub family: u16,
    pub _pad: u32,
}

/// Key of `ORIG_DST_BY_PEER`: the application socket's local address as ztunnel sees it as the
/// peer of the accepted socket. The netns cookie is needed because every pod's client sockets
/// come from 127.0.0.1, so two pods can use the same ephemeral port at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub netns_cookie: u64,
    pub ip: IpWords,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Key of `LISTENERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    /// [`listener`] kind.
    pub kind: u32,
    pub _pad: u32,
}

/// Key of `FLOWS` and `FLOW_FALLBACK`: one end of a TCP connection, from that socket's point
/// of view. The peer's key is the same with local and remote swapped, which is how `sk_msg`
/// finds where to send. The netns cookie is needed because every pod's loopback connections
/// use 127.0.0.1 and ephemeral ports collide between pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub netns_cookie: u64,
    pub local_ip: IpWords,
    pub remote_ip: IpWords,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub _pad: u32,
}

impl FlowKey {
    /// The key of the other end of the same connection.
    pub const fn peer(&self) -> FlowKey {
        FlowKey {
            netns_cookie: self.netns_cookie,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these are #[repr(C)] plain data with explicit padding fields, so every byte
    // is initialised and any bit pattern is valid.
    unsafe impl aya::Pod for super::PodConfig {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::FlowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PodConfig>(), 48);
        assert_eq!(core::mem::size_of::<PortKey>(), 16);
        assert_eq!(core::mem::size_of::<OrigDst>(), 24);
        assert_eq!(core::mem::size_of::<PeerKey>(), 32);
        assert_eq!(core::mem::size_of::<ListenerKey>(), 16);
        assert_eq!(core::mem::size_of::<FlowKey>(), 48);
    }

    #[test]
    fn v4_mapped_matches_octets() {
        let ip4 = u32::from_ne_bytes([10, 1, 2, 3]);
        let o = octets_from_words(v4_mapped(ip4));
        assert_eq!(o, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(words_from_octets(o), v4_mapped(ip4));
    }
}
