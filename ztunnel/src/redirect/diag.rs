//! One TCP socket's receive memory through `sock_diag` (what `ss -m` prints for one socket),
//! for the fast path's write side: bytes redirected to an application's socket queue there
//! without backpressure, and on this kernel (6.18, measured) they are charged to that
//! socket's `sk_rmem_alloc`, so ztunnel can see how much the application has not read yet.
//!
//! The netlink socket must live in the namespace of the socket it asks about; it is created on
//! a short-lived thread that enters the namespace of one of ztunnel's own in-pod sockets.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `SOCK_DIAG_BY_FAMILY` request type.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_SKMEMINFO` attribute: `u32[SK_MEMINFO_VARS]`, `[0]` is `sk_rmem_alloc`,
/// `[1]` is `sk_rcvbuf`.
const INET_DIAG_SKMEMINFO: u16 = 7;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

/// A `NETLINK_SOCK_DIAG` socket in one network namespace.
#[derive(Debug)]
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocket {
    /// A diag socket in the network namespace `sock` lives in.
    pub fn in_netns_of(sock: BorrowedFd<'_>) -> io::Result<DiagSocket> {
        let ns = super::sys::socket_netns(sock)?;
        // setns affects only the calling thread: a throwaway thread keeps ztunnel's own threads
        // where they are; the socket keeps the namespace it was created in.
        let fd = std::thread::spawn(move || -> io::Result<OwnedFd> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            // SAFETY: plain socket(2); the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .map_err(|_| io::Error::other("sock_diag thread panicked"))??;
        Ok(DiagSocket { fd, seq: 0 })
    }

    /// `(sk_rmem_alloc, sk_rcvbuf)` of the TCP socket whose local address is `local` and whose
    /// peer is `remote`. `ENOENT` once it is gone (or a listener's, when one listens on
    /// `local`: the kernel's lookup falls back to it).
    pub fn rmem(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<(u32, u32)> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(self.seq, local, remote)?;
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse(&buf[..n as usize], self.seq)? {
                Some(v) => return Ok(v),
                None => continue, // a stale answer to an earlier request
            }
        }
    }
}

fn request(seq: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<Vec<u8>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let mut b = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext (bit n-1 asks for attribute n), pad, states.
    b.extend_from_slice(&[
        family as u8,
        libc::IPPROTO_TCP as u8,
        1 << (INET_DIAG_SKMEMINFO - 1),
        0,
    ]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: ports and addresses in network order, interface, cookie (none).
    b.extend_from_slice(&local.port().to_be_bytes());
    b.extend_from_slice(&remote.port().to_be_bytes());
    for a in [local, remote] {
        let mut words = [0u8; 16];
        match a {
            SocketAddr::V4(v4) => words[..4].copy_from_slice(&v4.ip().octets()),
            SocketAddr::V6(v6) => words.copy_from_slice(&v6.ip().octets()),
        }
        b.extend_from_slice(&words);
    }
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    debug_assert_eq!(b.len(), NLMSG_HDR + REQ_LEN);
    Ok(b)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The answer to request `seq`: `Ok(None)` if the message answers another request.
fn parse(b: &[u8], seq: u32) -> io::Result<Option<(u32, u32)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if u32_at(b, 8).ok_or_else(bad)? != seq {
        return Ok(None);
    }
    let b = b.get(..len).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(b, NLMSG_HDR).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(bad());
    }
    let mut at = NLMSG_HDR + MSG_LEN;
    while at + 4 <= b.len() {
        let alen = u16_at(b, at).ok_or_else(bad)? as usize;
        let atype = u16_at(b, at + 2).ok_or_else(bad)?;
        if alen < 4 {
            return Err(bad());
        }
        if atype == INET_DIAG_SKMEMINFO {
            let rmem = u32_at(b, at + 4).ok_or_else(bad)?;
            let rcvbuf = u32_at(b, at + 8).ok_or_else(bad)?;
            return Ok(Some((rmem, rcvbuf)));
        }
        at += (alen + 3) & !3;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "sock_diag answer without SKMEMINFO",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// Against a real socket pair on loopback: unread bytes show up in the reader's rmem and
    /// leave it once read; a socket that does not exist is ENOENT.
    #[test]
    fn reads_a_sockets_receive_memory() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut d = DiagSocket::in_netns_of(c.as_fd()).unwrap();
        let (sl, sr) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        let (empty, rcvbuf) = d.rmem(sl, sr).unwrap();
        assert!(rcvbuf > 0);
        c.write_all(&[7u8; 100_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (queued, _) = d.rmem(sl, sr).unwrap();
        assert!(queued >= empty + 100_000, "{empty} -> {queued}");
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).unwrap();
        let (after, _) = d.rmem(sl, sr).unwrap();
        assert!(after < 100_000, "{after}");
        // (A lookup falls back to a listener on the local port, so ask with the client's port.)
        let gone = d
            .rmem(c.local_addr().unwrap(), "127.0.0.1:1".parse().unwrap())
            .unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT), "{gone}");
    }
}
