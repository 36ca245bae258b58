//! Attaching the capture programs to one pod, and undoing it.
//!
//! Order matters both ways: map entries (enrolment, exclusions, listeners) are written before
//! the programs are attached, so the first connection already sees the complete pod config;
//! on drop the links go first, so no program runs against half-removed entries.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::programs::{
    cgroup_sock_addr::CgroupSockAddrLink, sk_lookup::SkLookupLink, sock_ops::SockOpsLink,
    CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps,
};
use ebpf_common::{direction, flags, listener, programs, ListenerKey, PodConfig, PortKey};
use serde::Serialize;

use super::{sys, Inner, RedirectError, Shared};

/// What ztunnel knows about a pod when it enrols it.
#[derive(Debug, Clone, Copy)]
pub struct PodCaptureSpec<'a> {
    /// The pod's cgroup v2 directory; every process of the pod must be in it or below it.
    pub cgroup: &'a Path,
    /// The pod's network namespace file (`/proc/<pid>/ns/net` or a bind mount of it).
    pub netns: &'a Path,
    /// The pod's IP; only connections addressed to it are steered inbound.
    pub pod_ip: IpAddr,
    /// ztunnel's HBONE listener, a listening TCP socket created in the pod's namespace.
    pub hbone_listener: BorrowedFd<'a>,
    /// ztunnel's plaintext inbound listener, likewise.
    pub plaintext_listener: BorrowedFd<'a>,
    /// Destination ports the pod's outbound connections keep going to directly.
    pub excluded_ports: &'a [u16],
    /// Ports on which inbound connections reach the application directly.
    pub excluded_inbound_ports: &'a [u16],
    /// Source address of the node's health checks (kubelet probes), never steered inbound.
    pub health_check_src: Option<IpAddr>,
}

/// A pod's capture. Dropping it detaches the programs from the pod's cgroup and network
/// namespace and removes the pod's map entries; the pod's traffic flows directly again.
pub struct PodAttachment {
    shared: Arc<Shared>,
    state: PodCaptureState,
    cgroup_id: (u64, u64),
    port_keys: Vec<PortKey>,
    config_written: bool,
    listener_keys: Vec<ListenerKey>,
    // Links detach when dropped; kept in fields so Drop can release them first.
    sock_addr: Vec<CgroupSockAddrLink>,
    sock_ops: Option<SockOpsLink>,
    sk_lookup: Option<SkLookupLink>,
}

/// A pod's capture as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodCaptureState {
    pub cgroup: PathBuf,
    pub netns: PathBuf,
    /// The cookie programs identify the pod's network namespace by.
    pub netns_cookie: u64,
    pub pod_ip: IpAddr,
    /// Programs attached right now (names as in the object).
    pub attached: Vec<&'static str>,
    pub excluded_ports: Vec<u16>,
    pub excluded_inbound_ports: Vec<u16>,
    pub health_check_src: Option<IpAddr>,
}

impl PodAttachment {
    /// Attach state for `/config_dump`.
    pub fn state(&self) -> &PodCaptureState {
        &self.state
    }

    /// The original destination of a connection accepted on this pod's outbound listener,
    /// given the accepted socket's peer address (consumed: a second call returns `None`).
    pub fn original_dst(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.shared.original_dst(self.state.netns_cookie, peer)
    }
}

pub(super) fn attach(
    shared: &Arc<Shared>,
    pod: &PodCaptureSpec<'_>,
) -> Result<PodAttachment, RedirectError> {
    if !sys::is_cgroup2(pod.cgroup) {
        return Err(RedirectError::NoCgroupV2 {
            path: pod.cgroup.to_path_buf(),
        });
    }
    let bad_netns = |reason: String| RedirectError::BadNetns {
        path: pod.netns.to_path_buf(),
        reason,
    };
    if !sys::is_nsfs(pod.netns) {
        return Err(bad_netns("not a namespace file (nsfs)".into()));
    }
    let netns_id = sys::file_id(pod.netns).map_err(|e| bad_netns(e.to_string()))?;
    let cgroup_id = sys::file_id(pod.cgroup).map_err(|e| RedirectError::Kernel {
        operation: format!("stat {}", pod.cgroup.display()),
        source: Box::new(e),
    })?;
    for (name, fd) in [
        ("HBONE", pod.hbone_listener),
        ("plaintext", pod.plaintext_listener),
    ] {
        let bad = |reason: String| RedirectError::BadListener {
            listener: name,
            reason,
        };
        if !sys::is_tcp_listener(fd).map_err(|e| bad(e.to_string()))? {
            return Err(bad("not a listening TCP socket".into()));
        }
        // sk_lookup can only hand a connection to a socket of the namespace it runs in.
        if sys::socket_netns_id(fd).map_err(|e| bad(e.to_string()))? != netns_id {
            return Err(bad(format!(
                "not created in the pod's network namespace {}",
                pod.netns.display()
            )));
        }
    }
    let netns_cookie =
        sys::netns_cookie(pod.plaintext_listener).map_err(|e| bad_netns(e.to_string()))?;

    {
        let mut inner = shared.inner.lock();
        if inner.cgroups.contains(&cgroup_id) {
            return Err(RedirectError::AlreadyAttached {
                what: format!("cgroup {}", pod.cgroup.display()),
            });
        }
        if inner.netns.contains(&netns_cookie) {
            return Err(RedirectError::AlreadyAttached {
                what: format!("network namespace {}", pod.netns.display()),
            });
        }
        if inner.pod_ips.contains(&pod.pod_ip) {
            return Err(RedirectError::AlreadyAttached {
                what: format!("pod IP {}", pod.pod_ip),
            });
        }
        inner.cgroups.insert(cgroup_id);
        inner.netns.insert(netns_cookie);
        inner.pod_ips.insert(pod.pod_ip);
    }

    // From here on, `att`'s Drop undoes whatever step failed half-way. It takes the lock
    // itself, so the lock is released before an error drops it.
    let mut att = PodAttachment {
        shared: shared.clone(),
        state: PodCaptureState {
            cgroup: pod.cgroup.to_path_buf(),
            netns: pod.netns.to_path_buf(),
            netns_cookie,
            pod_ip: pod.pod_ip,
            attached: Vec::new(),
            excluded_ports: pod.excluded_ports.to_vec(),
            excluded_inbound_ports: pod.excluded_inbound_ports.to_vec(),
            health_check_src: pod.health_check_src,
        },
        cgroup_id,
        port_keys: Vec::new(),
        config_written: false,
        listener_keys: Vec::new(),
        sock_addr: Vec::new(),
        sock_ops: None,
        sk_lookup: None,
    };
    let result = {
        let mut inner = shared.inner.lock();
        fill(&mut inner, &mut att, pod)
    };
    result?;

    tracing::info!(
        cgroup = %pod.cgroup.display(),
        netns = %pod.netns.display(),
        pod_ip = %pod.pod_ip,
        netns_cookie,
        "pod capture attached"
    );
    Ok(att)
}

/// Write the pod's map entries, then attach the programs, recording each step in `att`.
fn fill(
    inner: &mut Inner,
    att: &mut PodAttachment,
    pod: &PodCaptureSpec<'_>,
) -> Result<(), RedirectError> {
    let netns_cookie = att.state.netns_cookie;
    let bad_netns = |reason: String| RedirectError::BadNetns {
        path: pod.netns.to_path_buf(),
        reason,
    };
    let map_err = |what: &str, e: aya::maps::MapError| RedirectError::kernel(what.to_string(), e);
    let ports = pod
        .excluded_ports
        .iter()
        .map(|p| (*p, direction::OUTBOUND))
        .chain(
            pod.excluded_inbound_ports
                .iter()
                .map(|p| (*p, direction::INBOUND)),
        );
    for (port, dir) in ports {
        let key = PortKey {
            netns_cookie,
            port,
            direction: dir,
            _pad: [0; 5],
        };
        inner
            .excluded
            .insert(key, 1, 0)
            .map_err(|e| map_err("writing excluded ports", e))?;
        att.port_keys.push(key);
    }
    for (kind, fd) in [
        (listener::HBONE, pod.hbone_listener),
        (listener::PLAINTEXT, pod.plaintext_listener),
    ] {
        let key = ListenerKey {
            netns_cookie,
            kind,
            _pad: 0,
        };
        inner
            .listeners
            .insert(key, fd, 0)
            .map_err(|e| map_err("adding a listener to the LISTENERS sockhash", e))?;
        att.listener_keys.push(key);
    }
    let mut config = PodConfig {
        netns_cookie,
        pod_ip: sys::ip_words(pod.pod_ip),
        flags: flags::CAPTURE_OUTBOUND | flags::CAPTURE_INBOUND,
        ..PodConfig::default()
    };
    // Pods enrolled while the fast path runs get it for their in-namespace connections;
    // connections already on it keep it until they close, even after detach.
    if att.shared.fastpath.active() {
        config.flags |= flags::FASTPATH;
    }
    if let Some(src) = pod.health_check_src {
        config.health_check_src = sys::ip_words(src);
        config.flags |= flags::HAS_HEALTH_CHECK_SRC;
    }
    inner
        .pod_config
        .insert(netns_cookie, config, 0)
        .map_err(|e| map_err("enrolling the pod in POD_CONFIG", e))?;
    att.config_written = true;
    inner
        .pod_by_ip
        .insert(config.pod_ip, config, 0)
        .map_err(|e| map_err("enrolling the pod in POD_BY_IP", e))?;

    let cgroup = File::open(pod.cgroup).map_err(|e| RedirectError::kernel("open cgroup", e))?;
    let ebpf = &mut inner.ebpf;
    for name in [programs::CONNECT4, programs::CONNECT6] {
        let p: &mut CgroupSockAddr = super::program(ebpf, name)?;
        // With bpf_link (kernel >= 5.7, which aya uses) the kernel always attaches in
        // multi mode and rejects the ALLOW_MULTI flag, so "Single" here means "no flags": we
        // coexist with a CNI's own cgroup programs.
        let id = p
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| attach_error(name, pod.cgroup, e))?;
        att.sock_addr.push(
            p.take_link(id)
                .map_err(|e| attach_error(name, pod.cgroup, e))?,
        );
        att.state.attached.push(name);
    }
    let p: &mut SockOps = super::program(ebpf, programs::SOCK_OPS)?;
    let id = p
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| attach_error(programs::SOCK_OPS, pod.cgroup, e))?;
    att.sock_ops = Some(
        p.take_link(id)
            .map_err(|e| attach_error(programs::SOCK_OPS, pod.cgroup, e))?,
    );
    att.state.attached.push(programs::SOCK_OPS);

    let netns = File::open(pod.netns).map_err(|e| bad_netns(e.to_string()))?;
    let p: &mut SkLookup = super::program(ebpf, programs::SK_LOOKUP)?;
    let id = p
        .attach(netns.as_fd())
        .map_err(|e| attach_error(programs::SK_LOOKUP, pod.netns, e))?;
    att.sk_lookup = Some(
        p.take_link(id)
            .map_err(|e| attach_error(programs::SK_LOOKUP, pod.netns, e))?,
    );
    att.state.attached.push(programs::SK_LOOKUP);

    Ok(())
}

fn attach_error(program: &str, target: &Path, e: aya::programs::ProgramError) -> RedirectError {
    RedirectError::kernel(format!("attaching {program} to {}", target.display()), e)
}

impl Drop for PodAttachment {
    fn drop(&mut self) {
        // Links first: once they are gone no program can see the entries removed below.
        self.sock_addr.clear();
        self.sock_ops = None;
        self.sk_lookup = None;
        self.state.attached.clear();

        let cookie = self.state.netns_cookie;
        let mut inner = self.shared.inner.lock();
        for key in self.listener_keys.drain(..) {
            let _ = inner.listeners.remove(&key);
        }
        for key in self.port_keys.drain(..) {
            let _ = inner.excluded.remove(&key);
        }
        if self.config_written {
            let _ = inner.pod_config.remove(&cookie);
            let _ = inner.pod_by_ip.remove(&sys::ip_words(self.state.pod_ip));
        }
        // Records of connections ztunnel never accepted. Cookies of sockets are not tied to
        // the namespace in the map, so those age out of the LRU instead.
        let mut by_peer = self.shared.by_peer.lock();
        let stale: Vec<_> = by_peer
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == cookie)
            .collect();
        for key in stale {
            let _ = by_peer.remove(&key);
        }
        inner.cgroups.remove(&self.cgroup_id);
        inner.netns.remove(&cookie);
        inner.pod_ips.remove(&self.state.pod_ip);
        tracing::info!(
            cgroup = %self.state.cgroup.display(),
            netns = %self.state.netns.display(),
            "pod capture detached"
        );
    }
}
