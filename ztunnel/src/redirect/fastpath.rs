//! The sockmap fast path (issue 8), userspace side: attaches the `sk_msg` program to the
//! `FLOWS` sockhash, registers ztunnel's own in-pod sockets in it, and reads its counters.
//!
//! Pod sockets are registered by the kernel (`sock_ops` on the pod cgroup, at ESTABLISHED).
//! ztunnel's sockets are not in any pod cgroup, so ztunnel registers them here through their
//! fd ([`super::Capture::accelerate`]): the socket accepted on the outbound listener, and the
//! socket it delivers to the application from. It must do so before it writes to them: the
//! first byte of a direction decides for the rest of the connection whether that direction is
//! redirected (see `ebpf/programs/src/fastpath.rs` for why it can never switch back).
//!
//! It is an accelerator: if the program cannot be loaded or attached, capture still works,
//! [`FastpathStatus::Unavailable`] says why, and nothing is registered.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::SkMsg,
    Ebpf,
};
use ebpf_common::{fastpath as slot, maps, programs, FlowKey};
use parking_lot::Mutex;
use serde::Serialize;

use super::diag::DiagSocket;
use super::{program, sys, take_map, RedirectError};

/// Environment variable switching the fast path: `on` or `off` (the default).
pub const FASTPATH_ENV: &str = "MESH_FASTPATH";

/// Whether the fast path runs, for `/config_dump` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum FastpathStatus {
    /// Switched off (flag or [`FASTPATH_ENV`]); traffic takes the loopback TCP path.
    Off,
    /// The `sk_msg` program is attached; pods enrolled from now on are accelerated.
    Active,
    /// Switched on but could not be set up (old kernel, verifier); traffic takes the normal
    /// path. The reason is the kernel's or the verifier's.
    Unavailable(String),
}

/// Fast path counters since the programs were loaded (all pods together).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FastpathCounters {
    /// 1 if the fast path was switched on but could not be set up, else 0 (a gauge to alert on).
    pub setup_failed: u64,
    /// Pod sockets the kernel put on the fast path (each accelerated connection has one).
    pub pod_sockets: u64,
    /// ztunnel sockets put on the fast path through [`super::Capture::accelerate`].
    pub ztunnel_sockets: u64,
    /// Pod sockets that could not be added (map full).
    pub add_errors: u64,
    /// Writes and bytes handed straight to the peer socket.
    pub msgs_redirected: u64,
    pub bytes_redirected: u64,
    /// Bytes written on fast-path sockets that took the normal TCP path anyway.
    pub bytes_passed: u64,
    /// Connection directions pinned to TCP because their first byte found no peer socket.
    pub directions_fell_back: u64,
    /// Connection directions pinned to TCP because they ran more than the redirect window
    /// ahead of their reader (bulk transfers into a slower reader; the kernel gives
    /// redirected bytes no backpressure of their own).
    pub directions_over_window: u64,
}

impl FastpathCounters {
    /// (metric name, Prometheus type, help, value) for exporting; names without `_total`,
    /// which the exporter appends to counters.
    pub fn metrics(&self) -> [(&'static str, &'static str, &'static str, u64); 9] {
        [
            (
                "ztunnel_fastpath_setup_failed",
                "gauge",
                "1 if the sockmap fast path was switched on but could not be set up",
                self.setup_failed,
            ),
            (
                "ztunnel_fastpath_pod_sockets",
                "counter",
                "Pod sockets put on the sockmap fast path",
                self.pod_sockets,
            ),
            (
                "ztunnel_fastpath_ztunnel_sockets",
                "counter",
                "ztunnel sockets put on the sockmap fast path from userspace",
                self.ztunnel_sockets,
            ),
            (
                "ztunnel_fastpath_add_errors",
                "counter",
                "Pod sockets that could not be put on the fast path",
                self.add_errors,
            ),
            (
                "ztunnel_fastpath_msgs_redirected",
                "counter",
                "Writes handed straight to the peer socket",
                self.msgs_redirected,
            ),
            (
                "ztunnel_fastpath_bytes_redirected",
                "counter",
                "Bytes handed straight to the peer socket",
                self.bytes_redirected,
            ),
            (
                "ztunnel_fastpath_bytes_passed",
                "counter",
                "Bytes of fast-path sockets that took the TCP path",
                self.bytes_passed,
            ),
            (
                "ztunnel_fastpath_directions_fell_back",
                "counter",
                "Connection directions pinned to the TCP path (no peer socket)",
                self.directions_fell_back,
            ),
            (
                "ztunnel_fastpath_directions_over_window",
                "counter",
                "Connection directions pinned to the TCP path for running too far ahead of \
                 their reader",
                self.directions_over_window,
            ),
        ]
    }
}

/// Parse a switch value (`on`/`off`, also `true`/`false`, `1`/`0`).
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" | "" => Some(false),
        _ => None,
    }
}

/// [`FASTPATH_ENV`] as a switch; unset or unparsable means off (an unparsable value is
/// logged: an accelerator should never stop ztunnel from starting).
pub fn enabled_from_env() -> bool {
    let Ok(value) = std::env::var(FASTPATH_ENV) else {
        return false;
    };
    parse_switch(&value).unwrap_or_else(|| {
        tracing::warn!("{FASTPATH_ENV}={value:?} is not on/off; fast path stays off");
        false
    })
}

/// The fast path's maps and state; part of the capture's shared state.
pub(crate) struct Fastpath {
    status: FastpathStatus,
    /// `None` unless [`FastpathStatus::Active`].
    maps: Option<Maps>,
    added_by_ztunnel: AtomicU64,
}

struct Maps {
    flows: Mutex<SockHash<MapData, FlowKey>>,
    fallback: Mutex<HashMap<MapData, FlowKey, u8>>,
    sent: Mutex<HashMap<MapData, FlowKey, u64>>,
    read: Arc<Mutex<HashMap<MapData, FlowKey, u64>>>,
    counters: PerCpuArray<MapData, u64>,
}

/// ztunnel's side of the redirect window (see `ebpf_common::fastpath::REDIRECT_WINDOW`) for
/// one of its accelerated in-pod sockets, both directions:
/// - reading: what ztunnel has read of the application's writes goes to `FLOW_READ`, so the
///   `sk_msg` program measures how far the application really is ahead of ztunnel, and a
///   connection whose reader keeps up stays on the fast path however many bytes it carries;
/// - writing: the application reports nothing, so ztunnel asks the kernel how much of what it
///   wrote the application has not read yet (its socket's receive memory, through
///   `sock_diag`), reports the rest as read, and holds its own writes while the application
///   lags by more than half a window — the backpressure TCP would have given, so the direction
///   stays on the fast path instead of being pinned to TCP.
pub struct FlowMeter {
    map: Arc<Mutex<HashMap<MapData, FlowKey, u64>>>,
    /// The application's sending direction (its own key, as the program looks it up).
    app_key: FlowKey,
    /// ztunnel's sending direction.
    own_key: FlowKey,
    /// ztunnel's socket (a duplicate, to find its namespace when first needed), its address
    /// and the application's.
    sock: OwnedFd,
    local: SocketAddr,
    peer: SocketAddr,
    read: u64,
    read_reported: u64,
    written: u64,
    written_checked: u64,
    diag: Option<DiagSocket>,
    /// `sock_diag` failed once (old kernel, no permission): writes are no longer held, and the
    /// window pins the direction instead.
    diag_failed: bool,
    /// Holding writes; the next pause if the application still lags.
    holding: bool,
    pause: Duration,
}

/// Hold writes while the application has more than this unread: half the window, so the
/// check interval and a write in flight never take the direction past it.
const WRITE_HIGH_WATER: u64 = slot::REDIRECT_WINDOW / 2;
const PAUSE_MIN: Duration = Duration::from_millis(1);
const PAUSE_MAX: Duration = Duration::from_millis(32);

impl FlowMeter {
    /// `n` more bytes were read from the socket. One map update per
    /// `READ_REPORT_EVERY` bytes; a failed update is retried at the next read (until then the
    /// program over-counts the lag, which only pins the direction earlier).
    pub fn consumed(&mut self, n: usize) {
        self.read += n as u64;
        if self.read - self.read_reported >= slot::READ_REPORT_EVERY
            && self.map.lock().insert(self.app_key, self.read, 0).is_ok()
        {
            self.read_reported = self.read;
        }
    }

    /// `n` more bytes were written to the socket.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// Before a write: `None` to go ahead, `Some(pause)` to wait that long and ask again (the
    /// application is more than half a window behind). Asks the kernel once per
    /// `READ_REPORT_EVERY` bytes written, and at every retry while holding.
    pub fn before_write(&mut self) -> Option<Duration> {
        if self.diag_failed
            || (!self.holding && self.written - self.written_checked < slot::READ_REPORT_EVERY)
        {
            return None;
        }
        self.written_checked = self.written;
        let unread = match self.app_unread() {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "fast path: sock_diag unavailable, writes not held");
                self.diag_failed = true;
                return None;
            }
        };
        let _ = self
            .map
            .lock()
            .insert(self.own_key, self.written.saturating_sub(unread), 0);
        if unread > WRITE_HIGH_WATER {
            let pause = if self.holding {
                (self.pause * 2).min(PAUSE_MAX)
            } else {
                PAUSE_MIN
            };
            self.holding = true;
            self.pause = pause;
            Some(pause)
        } else {
            self.holding = false;
            None
        }
    }

    fn app_unread(&mut self) -> std::io::Result<u64> {
        let diag = match &mut self.diag {
            Some(d) => d,
            None => self
                .diag
                .insert(DiagSocket::in_netns_of(self.sock.as_fd())?),
        };
        // The application's socket: local and peer swapped.
        Ok(u64::from(diag.rmem(self.peer, self.local)?.0))
    }
}

impl std::fmt::Debug for FlowMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowMeter")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("read", &self.read)
            .field("written", &self.written)
            .finish()
    }
}

impl Fastpath {
    /// Attach the `sk_msg` program to `FLOWS` if `enabled`. Never fails: a fast path that
    /// cannot be set up is reported in the status and counters, and capture goes on without.
    pub(crate) fn setup(ebpf: &mut Ebpf, enabled: bool) -> Fastpath {
        let (status, maps) = if !enabled {
            (FastpathStatus::Off, None)
        } else {
            match attach(ebpf) {
                Ok(maps) => (FastpathStatus::Active, Some(maps)),
                Err(e) => {
                    tracing::warn!("sockmap fast path unavailable, using the normal path: {e}");
                    (FastpathStatus::Unavailable(e.to_string()), None)
                }
            }
        };
        Fastpath {
            status,
            maps,
            added_by_ztunnel: AtomicU64::new(0),
        }
    }

    pub(crate) fn status(&self) -> &FastpathStatus {
        &self.status
    }

    pub(crate) fn active(&self) -> bool {
        self.maps.is_some()
    }

    /// Register one of ztunnel's sockets. `Ok(false)` when there is nothing to do: the fast
    /// path is off, or the connection does not stay inside one namespace.
    pub(crate) fn accelerate(&self, sock: BorrowedFd<'_>) -> Result<bool, RedirectError> {
        let Some(maps) = &self.maps else {
            return Ok(false);
        };
        let Some(key) = flow_key(sock)? else {
            return Ok(false);
        };
        // A previous connection on the same 4-tuple may have left its pin and byte count
        // behind (LRU).
        let _ = maps.fallback.lock().remove(&key);
        let _ = maps.sent.lock().remove(&key);
        maps.flows
            .lock()
            .insert(key, sock.as_raw_fd(), 0)
            .map_err(|e| RedirectError::kernel("adding a socket to the FLOWS sockhash", e))?;
        self.added_by_ztunnel.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// A [`FlowMeter`] for `sock` (one of ztunnel's accelerated sockets), `None` when the fast
    /// path is off or the connection leaves the namespace.
    pub(crate) fn flow_meter(&self, sock: BorrowedFd<'_>) -> Option<FlowMeter> {
        let maps = self.maps.as_ref()?;
        let (key, local, peer) = flow_key_addrs(sock).ok()??;
        Some(FlowMeter {
            map: maps.read.clone(),
            app_key: key.peer(),
            own_key: key,
            sock: sock.try_clone_to_owned().ok()?,
            local,
            peer,
            read: 0,
            read_reported: 0,
            written: 0,
            written_checked: 0,
            diag: None,
            diag_failed: false,
            holding: false,
            pause: PAUSE_MIN,
        })
    }

    /// Take the connection of `sock` off the fast path in both directions, keeping every
    /// byte already redirected readable, in order (see the module docs of the programs).
    pub(crate) fn decelerate(&self, sock: BorrowedFd<'_>) -> Result<(), RedirectError> {
        let Some(maps) = &self.maps else {
            return Ok(());
        };
        let Some(key) = flow_key(sock)? else {
            return Ok(());
        };
        let mut fallback = maps.fallback.lock();
        for k in [key, key.peer()] {
            fallback
                .insert(k, 1, 0)
                .map_err(|e| RedirectError::kernel("pinning a flow to the TCP path", e))?;
        }
        Ok(())
    }

    /// Delete the socket's entry from `FLOWS` (see `Capture::fastpath_forget`).
    pub(crate) fn forget(&self, sock: BorrowedFd<'_>) -> Result<(), RedirectError> {
        let (Some(maps), Some(key)) = (&self.maps, flow_key(sock)?) else {
            return Ok(());
        };
        maps.flows
            .lock()
            .remove(&key)
            .map_err(|e| RedirectError::kernel("deleting a socket from FLOWS", e))
    }

    pub(crate) fn counters(&self) -> FastpathCounters {
        let mut c = FastpathCounters {
            setup_failed: u64::from(matches!(self.status, FastpathStatus::Unavailable(_))),
            ztunnel_sockets: self.added_by_ztunnel.load(Ordering::Relaxed),
            ..FastpathCounters::default()
        };
        let Some(maps) = &self.maps else {
            return c;
        };
        let read = |index: u32| -> u64 {
            maps.counters
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        c.pod_sockets = read(slot::SOCKETS_ADDED);
        c.add_errors = read(slot::ADD_ERRORS);
        c.msgs_redirected = read(slot::MSGS_REDIRECTED);
        c.bytes_redirected = read(slot::BYTES_REDIRECTED);
        c.bytes_passed = read(slot::BYTES_PASSED);
        c.directions_fell_back = read(slot::DIRECTIONS_FELL_BACK);
        c.directions_over_window = read(slot::DIRECTIONS_OVER_WINDOW);
        c
    }
}

fn attach(ebpf: &mut Ebpf) -> Result<Maps, RedirectError> {
    let flows: SockHash<MapData, FlowKey> = take_map(ebpf, maps::FLOWS)?;
    let fallback = take_map(ebpf, maps::FLOW_FALLBACK)?;
    let sent = take_map(ebpf, maps::FLOW_SENT)?;
    let read = take_map(ebpf, maps::FLOW_READ)?;
    let counters = take_map(ebpf, maps::FASTPATH_COUNTERS)?;
    let p: &mut SkMsg = program(ebpf, programs::SK_MSG)?;
    p.load()
        .map_err(|e| super::load_error(programs::SK_MSG, e))?;
    // The link lives as long as the program, i.e. the `Ebpf` in the capture's shared state.
    p.attach(flows.fd())
        .map_err(|e| RedirectError::kernel("attaching mesh_sk_msg to the FLOWS sockhash", e))?;
    Ok(Maps {
        flows: Mutex::new(flows),
        fallback: Mutex::new(fallback),
        sent: Mutex::new(sent),
        read: Arc::new(Mutex::new(read)),
        counters,
    })
}

/// The `FLOWS` key of a connected socket, or `None` if its two ends have different addresses
/// (the connection leaves the namespace, so there is no peer socket to hand bytes to).
fn flow_key(sock: BorrowedFd<'_>) -> Result<Option<FlowKey>, RedirectError> {
    Ok(flow_key_addrs(sock)?.map(|(k, _, _)| k))
}

/// [`flow_key`] with the socket's local and peer addresses.
fn flow_key_addrs(
    sock: BorrowedFd<'_>,
) -> Result<Option<(FlowKey, SocketAddr, SocketAddr)>, RedirectError> {
    let io = |what: &str, e: std::io::Error| RedirectError::Kernel {
        operation: format!("reading the {what} of a socket to accelerate"),
        source: Box::new(e),
    };
    let local: SocketAddr = sys::local_addr(sock).map_err(|e| io("local address", e))?;
    let remote: SocketAddr = sys::peer_addr(sock).map_err(|e| io("peer address", e))?;
    let netns_cookie = sys::netns_cookie(sock).map_err(|e| io("netns cookie", e))?;
    let (local_ip, remote_ip) = (sys::ip_words(local.ip()), sys::ip_words(remote.ip()));
    if local_ip != remote_ip {
        return Ok(None);
    }
    let key = FlowKey {
        netns_cookie,
        local_ip,
        remote_ip,
        local_port: local.port(),
        remote_port: remote.port(),
        _pad: 0,
    };
    Ok(Some((key, local, remote)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        assert_eq!(parse_switch("on"), Some(true));
        assert_eq!(parse_switch(" OFF "), Some(false));
        assert_eq!(parse_switch("1"), Some(true));
        assert_eq!(parse_switch("maybe"), None);
    }
}
