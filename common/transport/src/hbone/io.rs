//! [`ReadBuffered`]: a socket with a user-space read buffer, placed under the TLS layer.
//!
//! rustls reads the socket in small steps (it asks for a few KiB beyond what it holds, at most
//! one TLS record), so a bulk transfer costs about one `recv` per 16 KiB record. Reading the
//! socket in large chunks here and serving rustls from memory replaces most of those syscalls
//! with a memcpy of data that is still in cache. Writes pass straight through (vectored too).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream whose reads are served from a buffer of `capacity` bytes (none if 0). The
/// buffer is allocated on the first read that uses it.
#[derive(Debug)]
pub struct ReadBuffered<T> {
    inner: T,
    buf: Box<[u8]>,
    capacity: usize,
    pos: usize,
    cap: usize,
}

impl<T> ReadBuffered<T> {
    pub fn new(inner: T, capacity: usize) -> Self {
        ReadBuffered {
            inner,
            buf: Box::default(),
            capacity,
            pos: 0,
            cap: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadBuffered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.cap {
            // Nothing buffered: a caller asking for at least a buffer's worth reads directly.
            if out.remaining() >= this.capacity {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; this.capacity].into_boxed_slice();
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.pos = 0;
            this.cap = rb.filled().len();
        }
        let n = (this.cap - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadBuffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_in_order_from_large_ones() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&d2).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut r = ReadBuffered::new(r, 64 * 1024);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096 + 7];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    }
}
