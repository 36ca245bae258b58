//! The few raw socket and file-system queries the loader needs that std, nix and socket2 do
//! not offer: a socket's network-namespace cookie and namespace, and file-system magic numbers.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use ebpf_common::{octets_from_words, words_from_octets, IpWords};

/// `SO_NETNS_COOKIE` (Linux 5.14); not in every libc crate release.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `SIOCGSKNS`: open the network namespace a socket belongs to (Linux 4.9).
const SIOCGSKNS: libc::c_ulong = 0x894C;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The cookie the kernel gives the socket's network namespace; BPF programs see the same value
/// from `bpf_get_netns_cookie`, so it is how maps tell pods apart.
pub fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, output buffer and length describe `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The network namespace a socket lives in, opened.
pub fn socket_netns(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// (device, inode) of the network namespace a socket lives in.
pub fn socket_netns_id(sock: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let ns = socket_netns(sock)?;
    let stat = nix::sys::stat::fstat(ns.as_raw_fd()).map_err(io::Error::from)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// (device, inode) of a file, the identity of a namespace or cgroup.
pub fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let stat = nix::sys::stat::stat(path).map_err(io::Error::from)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Whether `path` is on a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC)
}

/// Whether `path` is a namespace file (`/proc/<pid>/ns/net`, a bind mount under /run/netns).
pub fn is_nsfs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == NSFS_MAGIC)
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libc targets
    Ok(st.filesystem_type().0 as i64)
}

/// Whether `sock` is a listening TCP socket.
pub fn is_tcp_listener(sock: BorrowedFd<'_>) -> io::Result<bool> {
    let s = socket2::SockRef::from(&sock);
    Ok(s.r#type()? == socket2::Type::STREAM && s.is_listener()?)
}

/// An address as the 16-byte words maps use (IPv4 mapped).
pub fn ip_words(ip: IpAddr) -> IpWords {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    words_from_octets(v6.octets())
}

/// The address map words hold: IPv4 if mapped, else IPv6.
pub fn ip_from_words(words: IpWords) -> IpAddr {
    let v6 = Ipv6Addr::from(octets_from_words(words));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The local address of a socket.
pub fn local_addr(sock: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    socket2::SockRef::from(&sock)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// The peer address of a connected socket.
pub fn peer_addr(sock: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    socket2::SockRef::from(&sock)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// The cgroup v2 directory this process runs in (from `/proc/self/cgroup` and the cgroup2 mount
/// in `/proc/self/mountinfo`), or `None` when there is no cgroup v2 hierarchy.
pub fn own_cgroup() -> Option<std::path::PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .trim_start_matches('/')
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint options... - fstype source superoptions.
    let mount = mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| std::path::PathBuf::from(point))
    })?;
    Some(mount.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_mapped_and_comes_back_as_ipv4() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let words = ip_words(v4);
        assert_eq!(ip_words("::ffff:10.1.2.3".parse().unwrap()), words);
        assert_eq!(ip_from_words(words), v4);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(ip_from_words(ip_words(v6)), v6);
    }

    /// This machine (and CI) runs on cgroup v2: the test process's own cgroup is found.
    #[test]
    fn own_cgroup_is_a_cgroup2_directory() {
        let cg = own_cgroup().expect("no cgroup v2 membership found");
        assert!(is_cgroup2(&cg), "{} is not on cgroup2", cg.display());
    }
}
