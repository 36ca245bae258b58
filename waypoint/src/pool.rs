//! Upstream connection pooling, under the cluster's circuit-breaker limits.
//!
//! HTTP/1.1: a per-endpoint stack of idle connections. A request takes an idle connection,
//! else opens one if `maxConnections` allows, else waits as a *pending* request (bounded by
//! `http1MaxPendingRequests`; beyond it: overflow, 503 `UO`). The connection travels with the
//! response body as a [`Lease`] and comes back when the body ends (and is closed instead after
//! `maxRequestsPerConnection` uses).
//!
//! HTTP/2: one multiplexed connection per endpoint, published through an `ArcSwapOption` so
//! the hot path is a lock-free load; only dialling takes a (per-endpoint) async lock, so a
//! burst opens one connection, not a storm.
//!
//! The idle stack is behind a `parking_lot` mutex held for a push or a pop only (never across
//! an await); every connection holds a circuit-breaker permit for its whole life.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;

use crate::body::ReqBody;
use crate::cluster::{Cluster, Endpoint, EndpointState};
use crate::error::{ErrorKind, ProxyError};
use crate::pool_limits::{Breaker, Permit};
use crate::upstream::{BoxIo, ConnectTarget, Connector};

/// How long a finished response may take to free its connection before we give up on it.
const RETURN_GRACE: Duration = Duration::from_secs(1);

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    uses: u32,
}

/// Per-endpoint connections.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
    h2: ArcSwapOption<http2::SendRequest<ReqBody>>,
    dial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

/// An HTTP/1.1 connection on loan to one response.
pub struct Lease {
    tx: http1::SendRequest<ReqBody>,
    uses: u32,
    max_uses: u32,
    ep: Arc<EndpointState>,
    breaker: Arc<Breaker>,
}

impl Lease {
    /// Gives the connection back once it can take another request.
    pub fn release(mut self) {
        if self.max_uses != 0 && self.uses >= self.max_uses {
            return; // dropped: closes when idle, frees its permit
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.tx.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => self.put_back(),
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                // hyper's connection task has not seen the end of the message yet.
                tokio::spawn(async move {
                    if let Ok(Ok(())) = tokio::time::timeout(RETURN_GRACE, self.tx.ready()).await {
                        self.put_back();
                    }
                });
            }
        }
    }

    fn put_back(self) {
        self.ep.pool.idle.lock().push(Idle {
            tx: self.tx,
            uses: self.uses,
        });
        self.breaker.released.notify_waiters();
    }
}

fn classify(e: hyper::Error) -> ProxyError {
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(|h| h.reason())
        == Some(h2::Reason::REFUSED_STREAM);
    let kind = if refused {
        ErrorKind::RefusedStream
    } else {
        ErrorKind::UpstreamReset
    };
    ProxyError::new(kind).with_cause(e)
}

async fn dial(
    cluster: &Cluster,
    ep: &Endpoint,
    connector: &dyn Connector,
) -> Result<BoxIo, ProxyError> {
    let target = ConnectTarget {
        addr: ep.addr,
        identity: &ep.workload.identity,
        service_host: &cluster.service.fqdn,
    };
    match tokio::time::timeout(cluster.limits.connect_timeout, connector.connect(target)).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(ProxyError::new(ErrorKind::ConnectFailure).with_cause(e)),
        Err(_) => Err(ProxyError::new(ErrorKind::ConnectTimeout)),
    }
}

async fn open_h1(
    cluster: &Cluster,
    ep: &Endpoint,
    connector: &dyn Connector,
    permit: Permit,
) -> Result<http1::SendRequest<ReqBody>, ProxyError> {
    let io = dial(cluster, ep, connector).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::new(ErrorKind::ConnectFailure).with_cause(e))?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(permit);
    });
    Ok(tx)
}

/// Sends one attempt to `ep`, returning response headers and, for HTTP/1, the connection lease.
pub async fn send(
    cluster: &Cluster,
    ep: &Endpoint,
    connector: &dyn Connector,
    req: Request<ReqBody>,
) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
    if cluster.http2 {
        send_h2(cluster, ep, connector, req)
            .await
            .map(|r| (r, None))
    } else {
        send_h1(cluster, ep, connector, req).await
    }
}

async fn send_h1(
    cluster: &Cluster,
    ep: &Endpoint,
    connector: &dyn Connector,
    mut req: Request<ReqBody>,
) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
    let breaker = &cluster.state.breaker;
    let limits = &cluster.limits;
    let mut pending: Option<Permit> = None;
    loop {
        // Registered before checking, so a release between check and wait is not lost.
        let notified = breaker.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let idle = {
            let mut stack = ep.state.pool.idle.lock();
            let mut found = None;
            while let Some(c) = stack.pop() {
                if !c.tx.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let (mut tx, uses) = match idle {
            Some(c) => (c.tx, c.uses),
            None => match breaker.try_connection(limits) {
                Some(permit) => (open_h1(cluster, ep, connector, permit).await?, 0),
                None => {
                    if pending.is_none() {
                        pending = Some(
                            breaker
                                .try_pending(limits)
                                .ok_or_else(|| ProxyError::new(ErrorKind::Overflow))?,
                        );
                    }
                    notified.await;
                    continue;
                }
            },
        };
        drop(pending.take());
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let lease = Lease {
                    tx,
                    uses: uses + 1,
                    max_uses: limits.max_requests_per_connection,
                    ep: ep.state.clone(),
                    breaker: breaker.clone(),
                };
                return Ok((resp, Some(lease)));
            }
            Err(mut e) => match e.take_message() {
                // Never written (the idle connection had just closed): try another one.
                Some(r) if uses > 0 => req = r,
                _ => return Err(classify(e.into_error())),
            },
        }
    }
}

async fn send_h2(
    cluster: &Cluster,
    ep: &Endpoint,
    connector: &dyn Connector,
    mut req: Request<ReqBody>,
) -> Result<Response<Incoming>, ProxyError> {
    // HTTP/2 wants an absolute URI; the request path builds origin-form for HTTP/1.
    if req.uri().authority().is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        *req.uri_mut() =
            format!("http://{host}{pq}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| {
                    ProxyError::new(ErrorKind::BadRequest).with_cause(e)
                })?;
        req.headers_mut().remove(http::header::HOST);
    }
    let pool = &ep.state.pool;
    let mut tx = match pool.h2.load_full().filter(|t| !t.is_closed()) {
        Some(t) => (*t).clone(),
        None => {
            let _dialing = pool.dial.lock().await;
            match pool.h2.load_full().filter(|t| !t.is_closed()) {
                Some(t) => (*t).clone(),
                None => {
                    let permit = cluster
                        .state
                        .breaker
                        .try_connection(&cluster.limits)
                        .ok_or_else(|| ProxyError::new(ErrorKind::Overflow))?;
                    let io = dial(cluster, ep, connector).await?;
                    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                        .initial_stream_window_size(4 * 1024 * 1024)
                        .initial_connection_window_size(16 * 1024 * 1024)
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| ProxyError::new(ErrorKind::ConnectFailure).with_cause(e))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(permit);
                    });
                    pool.h2.store(Some(Arc::new(tx.clone())));
                    tx
                }
            }
        }
    };
    tx.ready().await.map_err(classify)?;
    tx.send_request(req).await.map_err(classify)
}
