//! The maps shared by all programs; names and layouts are defined in `ebpf-common` so the
//! loader agrees with them. See ebpf/README.md for who writes and who reads each one.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
};
use ebpf_common::{
    capacity, counter, fastpath, FlowKey, IpWords, ListenerKey, OrigDst, PeerKey, PodConfig,
    PortKey,
};

/// Enrolled network namespaces (by netns cookie); written by ztunnel only.
#[map]
pub static POD_CONFIG: HashMap<u64, PodConfig> = HashMap::with_max_entries(capacity::PODS, 0);

/// The same records by pod IP, for sk_lookup (no netns cookie helper there).
#[map]
pub static POD_BY_IP: HashMap<IpWords, PodConfig> = HashMap::with_max_entries(capacity::PODS, 0);

/// Excluded ports per pod and direction; written by ztunnel only.
#[map]
pub static EXCLUDED_PORTS: HashMap<PortKey, u8> =
    HashMap::with_max_entries(capacity::EXCLUDED_PORTS, 0);

/// Original destinations between connect() and ESTABLISHED. LRU: a connect that never
/// completes leaves an entry nobody deletes.
#[map]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(capacity::ORIG_DST, 0);

/// Original destinations by client address, for ztunnel's accept path (which deletes them).
#[map]
pub static ORIG_DST_BY_PEER: LruHashMap<PeerKey, OrigDst> =
    LruHashMap::with_max_entries(capacity::ORIG_DST, 0);

/// ztunnel's in-pod listening sockets; inserted by ztunnel, used by sk_lookup.
#[map]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(capacity::LISTENERS, 0);

/// Outcome counters, see `ebpf_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Fast path: both ends of in-namespace connections; the `sk_msg` program is attached here.
#[map]
pub static FLOWS: SockHash<FlowKey> = SockHash::with_max_entries(capacity::FLOWS, 0);

/// Fast path: sending directions pinned to the normal TCP path. LRU: entries of closed
/// connections are never deleted explicitly (a new connection on the same 4-tuple clears its
/// own key when it is registered).
#[map]
pub static FLOW_FALLBACK: LruHashMap<FlowKey, u8> =
    LruHashMap::with_max_entries(capacity::FLOW_FALLBACK, 0);

/// Fast path: bytes redirected so far per sending direction (the redirect window). LRU,
/// cleared at registration like `FLOW_FALLBACK`; an evicted entry only makes the window
/// start again (more queueing, never reordering).
#[map]
pub static FLOW_SENT: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(capacity::FLOW_FALLBACK, 0);

/// Fast path: bytes ztunnel has read of a sending direction (keyed like `FLOW_SENT`).
#[map]
pub static FLOW_READ: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(capacity::FLOW_FALLBACK, 0);

/// Fast path counters, see `ebpf_common::fastpath`.
#[map]
pub static FASTPATH_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(fastpath::LEN, 0);
