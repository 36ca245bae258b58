//! [`Tunnel`]: one HTTP/2 `CONNECT` stream as a byte stream, driven on `h2` directly.
//!
//! Write path: a write takes as much HTTP/2 send capacity as is available (flow control: the
//! peer's stream and connection windows, capped by h2's per-stream send buffer), copies that
//! many bytes once into a reusable `BytesMut` slab and hands the frozen slice to h2 as a DATA
//! frame (no allocation per chunk once the slab is warm). With no capacity the write waits,
//! so a slow reader on the far side pushes back on our TCP peer instead of growing a buffer.
//!
//! Read path: DATA frames arrive as `Bytes` and are copied straight into the caller's buffer;
//! the window is released for each frame as it is taken, so at most one frame plus the
//! advertised window is held per stream.
//!
//! Half-close: `poll_shutdown` sends END_STREAM; END_STREAM from the peer reads as EOF.
//! Reset: a RST_STREAM from the peer surfaces as `ConnectionReset`; dropping a tunnel that is
//! not finished makes h2 send RST_STREAM(CANCEL).

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Smallest slab allocated for outgoing data. A slab holds a few writes (up to [`MAX_SLAB`]),
/// so it follows the copy buffer's size, and is reused once h2 has written its frames out.
const MIN_SLAB: usize = 4 * 1024;
const MAX_SLAB: usize = 1024 * 1024;

/// A byte stream carried in one HTTP/2 `CONNECT` stream. Shutting down the write side sends
/// END_STREAM (TCP half-close); dropping it resets the stream.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Unread rest of the last DATA frame.
    pending: Bytes,
    read_eof: bool,
    slab: BytesMut,
    shut: bool,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("stream", &self.send.stream_id())
            .field("read_eof", &self.read_eof)
            .field("shut", &self.shut)
            .finish()
    }
}

/// Maps an h2 error to the I/O error a TCP socket would have given.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl Tunnel {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Tunnel {
            send,
            recv,
            pending: Bytes::new(),
            read_eof: false,
            slab: BytesMut::new(),
            shut: false,
        }
    }

    /// Why the stream can no longer send: the peer's reset reason, or a broken pipe.
    fn send_closed(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("HBONE stream reset by peer: {reason}"),
            ),
            Poll::Ready(Err(e)) => h2_to_io(e),
            Poll::Pending => io::ErrorKind::BrokenPipe.into(),
        }
    }

    /// Copies `data` into the slab and returns it as a frozen, independently owned slice.
    fn stage(&mut self, data: &[u8]) -> Bytes {
        if self.slab.capacity() < data.len() {
            // Reclaims the old allocation when h2 is done with every slice of it.
            self.slab
                .reserve((data.len() * 4).clamp(MIN_SLAB, MAX_SLAB.max(data.len())));
        }
        self.slab.extend_from_slice(data);
        self.slab.split().freeze()
    }
}

/// Zero-copy paths used by ztunnel's copy loop: the generic `AsyncRead`/`AsyncWrite` impls
/// below stay for other callers (waypoint, tests).
impl Tunnel {
    /// Sends a prefix of `buf` as one DATA frame without copying it: as many bytes as there is
    /// send capacity for are split off the front of `buf` and handed to h2. Returns how many
    /// were taken (> 0), or waits for capacity, so backpressure is the same as `poll_write`.
    pub fn poll_send_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                let data = buf.split_to(n).freeze();
                return match self.send.send_data(data, false) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(self.send_closed(cx))),
                };
            }
            self.send.reserve_capacity(buf.len());
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(self.send_closed(cx))),
            }
        }
    }

    /// The next received chunk as h2 delivered it (no copy), or `None` at END_STREAM. Its
    /// flow-control window is released as it is taken, like `poll_read` does.
    pub fn poll_recv_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            if self.read_eof {
                return Poll::Ready(Ok(None));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => self.read_eof = true,
            }
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.read_eof = true,
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let cap = this.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                let data = this.stage(&buf[..n]);
                return match this.send.send_data(data, false) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(this.send_closed(cx))),
                };
            }
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(this.send_closed(cx))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the connection, which writes and flushes them itself.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        this.shut = true;
        // Give back capacity reserved but not used, then END_STREAM.
        this.send.reserve_capacity(0);
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(this.send_closed(cx))),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::hbone::{server, Admission, ConnectRequest, H2Client};
    use http::HeaderMap;
    use std::io::ErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HBONE client/server pair over an in-memory pipe; the server task either echoes the
    /// byte count after EOF (`reset == false`) or drops the tunnel after the first read.
    async fn pair(reset: bool) -> H2Client {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(server::serve(
            b,
            move |_req: ConnectRequest| async move {
                Admission::Accept {
                    headers: HeaderMap::new(),
                    task: Box::new(move |mut t| {
                        Box::pin(async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            let mut n = 0u64;
                            loop {
                                let k = t.read(&mut buf).await.unwrap();
                                if reset {
                                    return; // drop: RST_STREAM(CANCEL)
                                }
                                if k == 0 {
                                    break;
                                }
                                n += k as u64;
                            }
                            t.write_all(&n.to_be_bytes()).await.unwrap();
                            t.shutdown().await.unwrap();
                        })
                    }),
                }
            },
            std::future::pending(),
        ));
        H2Client::handshake(a).await.unwrap()
    }

    #[tokio::test]
    async fn half_close_both_ways_with_backpressure() {
        let c = pair(false).await;
        let (mut t, _) = c
            .connect("127.0.0.1:80".parse().unwrap(), HeaderMap::new())
            .await
            .unwrap();
        // More than the stream window, so the writer must wait for window updates.
        let data = vec![7u8; 9 * 1024 * 1024];
        t.write_all(&data).await.unwrap();
        t.shutdown().await.unwrap();
        let mut back = Vec::new();
        t.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, (data.len() as u64).to_be_bytes());
    }

    #[tokio::test]
    async fn peer_reset_reads_as_connection_reset() {
        let c = pair(true).await;
        let (mut t, _) = c
            .connect("127.0.0.1:80".parse().unwrap(), HeaderMap::new())
            .await
            .unwrap();
        t.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
}
