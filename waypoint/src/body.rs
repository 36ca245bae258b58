//! Body types of the proxy path, without boxing.
//!
//! [`ReqBody`] is what we send upstream: nothing, a buffered copy (replayable for retries and
//! mirrors), or the client's stream. [`RespBody`] is what we send downstream: the upstream's
//! stream or a local reply; it counts bytes, gives the upstream HTTP/1 connection back to the
//! pool when the response ends, and completes the request's telemetry when it is dropped
//! (after the last byte, or when the client goes away) — so the access log and metrics see
//! the real response size and duration.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Completion;
use crate::pool::Lease;

/// Request body sent upstream.
pub enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    /// The client's body, streamed; the counter totals bytes seen for telemetry.
    Stream(Incoming, Arc<AtomicU64>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(s, n) => {
                let r = Pin::new(s).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    if let Some(d) = f.data_ref() {
                        n.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s, _) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s, _) => s.size_hint(),
        }
    }
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// Response body sent downstream.
pub struct RespBody {
    inner: Inner,
    bytes: u64,
    lease: Option<Lease>,
    completion: Option<Box<Completion>>,
    /// Released when the response ends (circuit-breaker slot, in-flight count).
    held: Option<Box<dyn Send + Sync>>,
    done: bool,
}

impl RespBody {
    pub fn upstream(b: Incoming, lease: Option<Lease>) -> Self {
        RespBody {
            inner: Inner::Upstream(b),
            bytes: 0,
            lease,
            completion: None,
            held: None,
            done: false,
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b: Bytes = b.into();
        RespBody {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
            bytes: 0,
            lease: None,
            completion: None,
            held: None,
            done: false,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Attaches the telemetry to finish when this body ends.
    pub fn set_completion(&mut self, c: Box<Completion>) {
        self.completion = Some(c);
    }

    /// Keeps `h` alive until the response ends.
    pub fn hold(&mut self, h: Box<dyn Send + Sync>) {
        self.held = Some(h);
    }

    fn finish(&mut self) {
        if let Some(l) = self.lease.take() {
            l.release();
        }
        self.held = None;
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(s) => Pin::new(s).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => {
                // The upstream connection broke mid-body: never reuse it.
                this.lease = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(s) => s.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let complete = self.done || self.is_end_stream();
        if complete {
            self.finish();
        }
        // An unfinished HTTP/1 response leaves the connection mid-message; the lease drops
        // it unreturned.
        self.lease = None;
        self.held = None;
        if let Some(c) = self.completion.take() {
            c.complete(self.bytes, complete);
        }
    }
}
