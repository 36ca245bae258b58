//! Bidirectional copy with buffers that grow with the stream (1 KiB → 16 KiB → 256 KiB).
//!
//! Small request/response exchanges keep a small buffer (cache friendly, little memory per
//! idle connection); a bulk transfer that fills its buffer is promoted so each syscall and each
//! TLS record carries more. No allocation happens per chunk: a buffer is only reallocated on
//! promotion (twice at most). Half-close is propagated: EOF on one side shuts down the write
//! side of the other.

use prometheus_client::metrics::counter::Counter;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];
/// Consecutive full reads before promoting the buffer.
const PROMOTE_AFTER: u32 = 2;

struct Direction {
    buf: Vec<u8>,
    level: usize,
    full_reads: u32,
    pos: usize,
    cap: usize,
    read_done: bool,
    shut: bool,
    total: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0; SIZES[0]],
            level: 0,
            full_reads: 0,
            pos: 0,
            cap: 0,
            read_done: false,
            shut: false,
            total: 0,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        counter: Option<&Counter>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                self.pos = 0;
                self.cap = 0;
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.cap = n;
                            self.maybe_promote(n);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to write either: flush what we wrote so far, then wait.
                        ready!(w.as_mut().poll_flush(cx))?;
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                if let Some(c) = counter {
                    c.inc_by(n as u64);
                }
            }
            if self.read_done && self.pos == self.cap {
                if !self.shut {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(self.total));
            }
        }
    }

    fn maybe_promote(&mut self, n: usize) {
        if n < self.buf.len() || self.level + 1 >= SIZES.len() {
            self.full_reads = 0;
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= PROMOTE_AFTER && self.pos == 0 {
            // Keep the unread bytes: they are at the front of the buffer.
            self.level += 1;
            self.buf.resize(SIZES[self.level], 0);
            self.full_reads = 0;
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
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Direction::new();
    let mut ba = Direction::new();
    let mut ab_done = None;
    let mut ba_done = None;
    poll_fn(|cx| {
        if ab_done.is_none() {
            if let Poll::Ready(r) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), a_to_b) {
                ab_done = Some(r?);
            }
        }
        if ba_done.is_none() {
            if let Poll::Ready(r) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), b_to_a) {
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
}
