//! HBONE connection pool keyed by (source identity, destination identity, destination address).
//!
//! Invariants: a pooled connection carries at most `max_streams` open tunnels (counted by
//! [`StreamGuard`]s); at most one dial per key is in flight (a per-key async mutex), so a burst
//! of new connections to a fresh destination waits for that dial instead of opening a storm of
//! connections; connections idle (no stream) for `idle_timeout` are dropped, which closes them.
//! The map lock is held only to pick or insert a connection, never across an await.

use crate::hbone::{H2Client, HboneError, Tunnel};
use crate::identity::Identity;
use http::HeaderMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Pool key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Identity,
    pub dst: Identity,
    pub dst_addr: SocketAddr,
}

#[derive(Debug)]
struct PooledConn {
    client: H2Client,
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    conns: Mutex<HashMap<PoolKey, Vec<Arc<PooledConn>>>>,
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Pool of HBONE connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    max_streams: usize,
}

/// Keeps a stream slot of a pooled connection reserved.
#[derive(Debug)]
pub struct StreamGuard(Arc<PooledConn>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

/// A tunnel from the pool; holds its stream slot until dropped.
#[derive(Debug)]
pub struct PooledTunnel {
    pub tunnel: Tunnel,
    /// Response headers of the CONNECT (e.g. `baggage`).
    pub headers: HeaderMap,
    _guard: StreamGuard,
}

impl Pool {
    /// A pool with `max_streams` per connection; spawns the idle reaper (needs a runtime).
    pub fn new(max_streams: usize, idle_timeout: Duration) -> Pool {
        let pool = Pool {
            inner: Arc::default(),
            max_streams,
        };
        let weak = Arc::downgrade(&pool.inner);
        let period = (idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                reap(&inner, idle_timeout);
            }
        });
        pool
    }

    fn reserve(&self, key: &PoolKey) -> Option<Arc<PooledConn>> {
        let mut conns = self.inner.conns.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.client.is_closed());
        for c in list.iter() {
            let mut n = c.streams.load(Ordering::Acquire);
            while n < self.max_streams {
                match c
                    .streams
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(c.clone()),
                    Err(cur) => n = cur,
                }
            }
        }
        None
    }

    /// Opens a tunnel to `authority` on a pooled connection for `key`, dialing with `dial` if no
    /// connection has a free stream. A pooled connection that turns out to be dead (peer
    /// restarted) is evicted and the request retried once on a fresh dial.
    pub async fn connect<F, Fut>(
        &self,
        key: PoolKey,
        dial: F,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<PooledTunnel, HboneError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<H2Client, HboneError>>,
    {
        let mut retried = false;
        loop {
            let (conn, fresh) = self.checkout(&key, &dial).await?;
            let guard = StreamGuard(conn.clone());
            match conn.client.connect(authority, headers.clone()).await {
                Ok((tunnel, headers)) => {
                    return Ok(PooledTunnel {
                        tunnel,
                        headers,
                        _guard: guard,
                    })
                }
                Err(e) if e.is_connection() && !fresh && !retried => {
                    tracing::debug!(error = %e, "pooled HBONE connection is dead; redialing");
                    self.evict(&key, &conn);
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A connection with a reserved stream slot, and whether it was just dialed.
    async fn checkout<F, Fut>(
        &self,
        key: &PoolKey,
        dial: &F,
    ) -> Result<(Arc<PooledConn>, bool), HboneError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<H2Client, HboneError>>,
    {
        if let Some(c) = self.reserve(key) {
            return Ok((c, false));
        }
        let lock = self
            .inner
            .dialing
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let _dialing = lock.lock().await;
        if let Some(c) = self.reserve(key) {
            return Ok((c, false));
        }
        let client = dial().await?;
        let c = Arc::new(PooledConn {
            client,
            streams: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        self.inner
            .conns
            .lock()
            .entry(key.clone())
            .or_default()
            .push(c.clone());
        Ok((c, true))
    }

    fn evict(&self, key: &PoolKey, conn: &Arc<PooledConn>) {
        if let Some(list) = self.inner.conns.lock().get_mut(key) {
            list.retain(|c| !Arc::ptr_eq(c, conn));
        }
    }

    /// Number of pooled connections (for tests and `/config_dump`).
    pub fn connections(&self) -> usize {
        self.inner.conns.lock().values().map(Vec::len).sum()
    }
}

fn reap(inner: &Inner, idle_timeout: Duration) {
    let now = Instant::now();
    let mut conns = inner.conns.lock();
    conns.retain(|_, list| {
        list.retain(|c| {
            !c.client.is_closed()
                && (c.streams.load(Ordering::Acquire) > 0
                    || now.duration_since(*c.idle_since.lock()) < idle_timeout)
        });
        !list.is_empty()
    });
    let live: Vec<PoolKey> = conns.keys().cloned().collect();
    drop(conns);
    inner
        .dialing
        .lock()
        .retain(|k, m| live.contains(k) || Arc::strong_count(m) > 1);
}

impl AsyncRead for PooledTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tunnel).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tunnel).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tunnel).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tunnel).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
