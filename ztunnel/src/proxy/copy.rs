//! Bidirectional copy with buffers that grow with the stream (1 KiB → 16 KiB → 256 KiB).
//!
//! Small request/response exchanges keep a small buffer (cache friendly, little memory per
//! idle connection); a bulk transfer that fills its buffer is promoted so each syscall and each
//! TLS record carries more. Half-close is propagated: EOF on one side shuts down the write
//! side of the other.
//!
//! When one side is an HBONE [`Tunnel`] the copy skips a user-space copy per byte (the profile
//! of a bulk transfer showed these memcpys as the largest user-space cost after AES):
//! - towards a tunnel, TCP data is read into a `BytesMut` whose filled part is split off and
//!   handed to h2 as the DATA payload itself (the buffer is reclaimed once h2 has written it);
//! - from a tunnel, each received DATA payload (`Bytes`) is written to the socket directly.
//!
//! Memory stays bounded: towards a tunnel h2's send capacity bounds what is queued (the read
//! stops while the write waits), from a tunnel at most one DATA frame is held.

use crate::redirect::FlowMeter;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use transport::hbone::Tunnel;
use transport::pool::PooledTunnel;

const SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];
/// Consecutive full reads before promoting the buffer.
const PROMOTE_AFTER: u32 = 2;

/// One end of a proxied connection. Plain byte streams use the defaults; a tunnel exposes its
/// zero-copy paths through [`Endpoint::as_tunnel`].
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    fn as_tunnel(&mut self) -> Option<&mut Tunnel> {
        None
    }
}

impl Endpoint for tokio::net::TcpStream {}
/// A borrowed endpoint (the caller keeps the socket, e.g. to arm a reset after the copy).
impl<T: Endpoint + ?Sized> Endpoint for &mut T {
    fn as_tunnel(&mut self) -> Option<&mut Tunnel> {
        (**self).as_tunnel()
    }
}
impl Endpoint for tokio::io::DuplexStream {}
impl Endpoint for Tunnel {
    fn as_tunnel(&mut self) -> Option<&mut Tunnel> {
        Some(self)
    }
}
impl Endpoint for PooledTunnel {
    fn as_tunnel(&mut self) -> Option<&mut Tunnel> {
        Some(&mut self.tunnel)
    }
}

/// One of ztunnel's in-pod sockets on the sockmap fast path, with its [`FlowMeter`]: reads and
/// writes are reported for the redirect window, and writes wait while the meter says the
/// application is too far behind (the backpressure redirected bytes do not get from the
/// kernel). Without a meter it is the plain socket.
pub struct Metered<T> {
    inner: T,
    meter: Option<FlowMeter>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Metered<T> {
    pub fn new(inner: T, meter: Option<FlowMeter>) -> Self {
        Metered {
            inner,
            meter,
            pause: None,
        }
    }

    /// Ready when a write may go ahead.
    fn poll_may_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(m) = &mut self.meter else {
            return Poll::Ready(());
        };
        loop {
            if let Some(p) = &mut self.pause {
                ready!(p.as_mut().poll(cx));
                self.pause = None;
            }
            match m.before_write() {
                None => return Poll::Ready(()),
                Some(d) => self.pause = Some(Box::pin(tokio::time::sleep(d))),
            }
        }
    }

    fn wrote(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let (Some(m), Poll::Ready(Ok(n))) = (&mut self.meter, &r) {
            m.wrote(*n);
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(m) = &mut this.meter {
            m.consumed(buf.filled().len() - before);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_may_write(cx));
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_may_write(cx));
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Endpoint> Endpoint for Metered<T> {}

/// What a direction holds between its read and its write.
enum Held {
    /// Generic: a reusable buffer, `buf[pos..cap]` unwritten.
    Plain {
        buf: Vec<u8>,
        pos: usize,
        cap: usize,
    },
    /// Towards a tunnel: read bytes not yet handed to h2.
    ToTunnel(BytesMut),
    /// From a tunnel: the rest of the last DATA payload.
    FromTunnel(Bytes),
}

struct Direction {
    held: Held,
    level: usize,
    full_reads: u32,
    read_done: bool,
    shut: bool,
    total: u64,
}

impl Direction {
    fn new(from_tunnel: bool, to_tunnel: bool) -> Self {
        let held = if from_tunnel {
            Held::FromTunnel(Bytes::new())
        } else if to_tunnel {
            Held::ToTunnel(BytesMut::new())
        } else {
            Held::Plain {
                buf: vec![0; SIZES[0]],
                pos: 0,
                cap: 0,
            }
        };
        Direction {
            held,
            level: 0,
            full_reads: 0,
            read_done: false,
            shut: false,
            total: 0,
        }
    }

    fn is_empty(&self) -> bool {
        match &self.held {
            Held::Plain { pos, cap, .. } => pos == cap,
            Held::ToTunnel(b) => b.is_empty(),
            Held::FromTunnel(b) => b.is_empty(),
        }
    }

    /// One read into the held buffer: `Ok(0)` is EOF.
    fn poll_fill<R: Endpoint + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
    ) -> Poll<io::Result<usize>> {
        let want = SIZES[self.level];
        let mut offered = want;
        let n = match &mut self.held {
            Held::Plain { buf, pos, cap } => {
                *pos = 0;
                *cap = 0;
                let mut rb = ReadBuf::new(buf);
                ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
                *cap = rb.filled().len();
                *cap
            }
            Held::ToTunnel(buf) => {
                if buf.capacity() < want / 4 {
                    // Reuses the allocation once h2 has written every slice split off it.
                    buf.reserve(want);
                }
                offered = buf.capacity().min(want);
                let mut limited = (&mut *buf).limit(offered);
                ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut *r),
                    cx,
                    &mut limited
                ))?
            }
            Held::FromTunnel(pending) => {
                let t = r.as_tunnel().expect("FromTunnel reads a tunnel");
                match ready!(t.poll_recv_chunk(cx))? {
                    Some(b) => {
                        *pending = b;
                        pending.len()
                    }
                    None => 0,
                }
            }
        };
        if n > 0 && !matches!(self.held, Held::FromTunnel(_)) {
            self.maybe_promote(n, offered);
        }
        Poll::Ready(Ok(n))
    }

    /// One write of held bytes; returns how many were taken.
    fn poll_drain<W: Endpoint + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<usize>> {
        let n = match &mut self.held {
            Held::Plain { buf, pos, cap } => {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*pos..*cap]))?;
                *pos += n;
                n
            }
            Held::ToTunnel(buf) => {
                let t = w.as_tunnel().expect("ToTunnel writes a tunnel");
                ready!(t.poll_send_buf(cx, buf))?
            }
            Held::FromTunnel(pending) => {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, pending))?;
                pending.advance(n);
                n
            }
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        counter: Option<&Counter>,
    ) -> Poll<io::Result<u64>>
    where
        R: Endpoint + ?Sized,
        W: Endpoint + ?Sized,
    {
        loop {
            if self.is_empty() && !self.read_done {
                match self.poll_fill(cx, r) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to write either: flush what we wrote so far, then wait.
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        return Poll::Pending;
                    }
                }
            }
            while !self.is_empty() {
                let n = ready!(self.poll_drain(cx, w))?;
                self.total += n as u64;
                if let Some(c) = counter {
                    c.inc_by(n as u64);
                }
            }
            if self.read_done {
                if !self.shut {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(self.total));
            }
        }
    }

    /// Promotes to the next buffer size after [`PROMOTE_AFTER`] reads that filled what was
    /// offered to them.
    fn maybe_promote(&mut self, n: usize, offered: usize) {
        if n < offered || self.level + 1 >= SIZES.len() {
            self.full_reads = 0;
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= PROMOTE_AFTER {
            self.level += 1;
            self.full_reads = 0;
            if let Held::Plain { buf, .. } = &mut self.held {
                // Unwritten bytes are at the front of the buffer and kept by the resize.
                buf.resize(SIZES[self.level], 0);
            }
        }
    }
}

/// Copies `a → b` and `b → a` until both directions reach EOF. Returns bytes (a→b, b→a).
/// `a_to_b`/`b_to_a` are incremented as bytes are written.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: Option<&Counter>,
    b_to_a: Option<&Counter>,
) -> io::Result<(u64, u64)>
where
    A: Endpoint + ?Sized,
    B: Endpoint + ?Sized,
{
    let (a_tun, b_tun) = (a.as_tunnel().is_some(), b.as_tunnel().is_some());
    // Tunnel to tunnel never happens here; if it did, the plain path would still be correct.
    let (a_tun, b_tun) = if a_tun && b_tun {
        (false, false)
    } else {
        (a_tun, b_tun)
    };
    let mut ab = Direction::new(a_tun, b_tun);
    let mut ba = Direction::new(b_tun, a_tun);
    let mut ab_done = None;
    let mut ba_done = None;
    poll_fn(|cx| {
        if ab_done.is_none() {
            if let Poll::Ready(r) = ab.poll_copy(cx, &mut *a, &mut *b, a_to_b) {
                ab_done = Some(r?);
            }
        }
        if ba_done.is_none() {
            if let Poll::Ready(r) = ba.poll_copy(cx, &mut *b, &mut *a, b_to_a) {
                ba_done = Some(r?);
            }
        }
        match (ab_done, ba_done) {
            (Some(x), Some(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_growth() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64 * 1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(64 * 1024);
        let counter = Counter::default();
        let c2 = counter.clone();
        let proxy = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_a, &mut proxy_b, Some(&c2), None).await
        });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let (ab, ba) = proxy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (3_000_000, 3));
        assert_eq!(counter.get(), 3_000_000);
    }

    /// Both ends of a tunnel use the zero-copy paths (TCP-like side → tunnel splits its read
    /// buffer into DATA frames, tunnel → TCP-like side writes DATA payloads directly): 6 MB
    /// each way through an echoing application, in order, with half-close at the end.
    #[tokio::test]
    async fn copies_through_tunnel_without_staging() {
        use transport::hbone::{server, Admission, ConnectRequest, H2Client};
        let (a, b) = tokio::io::duplex(256 * 1024);
        tokio::spawn(server::serve(
            b,
            |_req: ConnectRequest| async move {
                Admission::Accept {
                    headers: http::HeaderMap::new(),
                    task: Box::new(|mut t| {
                        Box::pin(async move {
                            // The "application": echoes everything, then closes its side.
                            let (mut proxy_side, app) = tokio::io::duplex(64 * 1024);
                            let app = tokio::spawn(async move {
                                let (mut r, mut w) = tokio::io::split(app);
                                tokio::io::copy(&mut r, &mut w).await.unwrap();
                                w.shutdown().await.unwrap();
                            });
                            copy_bidirectional(&mut t, &mut proxy_side, None, None)
                                .await
                                .unwrap();
                            app.await.unwrap();
                        })
                    }),
                }
            },
            std::future::pending(),
        ));
        let client = H2Client::handshake(a).await.unwrap();
        let (mut tunnel, _) = client
            .connect("127.0.0.1:80".parse().unwrap(), http::HeaderMap::new())
            .await
            .unwrap();
        let (mut user, mut proxy_side) = tokio::io::duplex(64 * 1024);
        let up = Counter::default();
        let up2 = up.clone();
        let proxy = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_side, &mut tunnel, Some(&up2), None).await
        });
        let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let (mut r, mut w) = tokio::io::split(user);
        let writer = tokio::spawn(async move {
            // Mixed write sizes: small ones keep the copy buffers small, large ones grow them.
            let mut off = 0;
            for (k, size) in [100usize, 1000, 70_000, 300_000].iter().cycle().enumerate() {
                if off >= d2.len() {
                    break;
                }
                let end = (off + size + k % 3).min(d2.len());
                w.write_all(&d2[off..end]).await.unwrap();
                off = end;
            }
            w.shutdown().await.unwrap();
            w
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        let w = writer.await.unwrap();
        user = r.unsplit(w);
        drop(user);
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");
        let (ab, ba) = proxy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (6_000_000, 6_000_000));
        assert_eq!(up.get(), 6_000_000);
    }
}
