//! Circuit breaking: DestinationRule `connectionPool` limits as Envoy enforces them per cluster.
//!
//! Counters are atomics shared by every request of a cluster (and kept across config reloads
//! when the cluster's name is unchanged). Admission is an optimistic increment that is undone
//! when it overshoots, so concurrent requests never hold a lock. Each admitted unit is an RAII
//! guard: a request that is cancelled mid-flight still gives its slot back.
//!
//! Overflow is answered with 503 and the response flag `UO` by the caller.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::istio::networking::ConnectionPoolSettings;
use serde::Serialize;
use tokio::sync::Notify;

/// Istio's default for every limit: 2^32-1, i.e. effectively none.
pub const UNLIMITED: u32 = u32::MAX;
/// Istio's default `connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Compiled limits of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

fn limit(v: Option<i64>) -> Option<u32> {
    // Zero or negative means "unset" in Istio's API.
    v.filter(|v| *v > 0)
        .map(|v| u32::try_from(v).unwrap_or(UNLIMITED))
}

impl Limits {
    /// Applies `settings` on top of `self`. The settings are a cluster's effective
    /// `connectionPool` (see `common::model::traffic`: a subset's pool replaces the rule's
    /// whole), so callers apply it once, over the defaults.
    pub fn merged(&self, settings: Option<&ConnectionPoolSettings>) -> Limits {
        let mut l = self.clone();
        let Some(s) = settings else { return l };
        if let Some(tcp) = &s.tcp {
            if let Some(v) = limit(tcp.max_connections) {
                l.max_connections = v;
            }
            if let Some(d) = tcp.connect_timeout.filter(|d| !d.as_std().is_zero()) {
                l.connect_timeout = d.as_std();
            }
        }
        if let Some(h) = &s.http {
            if let Some(v) = limit(h.http1_max_pending_requests) {
                l.max_pending_requests = v;
            }
            if let Some(v) = limit(h.http2_max_requests) {
                l.max_requests = v;
            }
            if let Some(v) = limit(h.max_retries) {
                l.max_retries = v;
            }
            if let Some(v) = limit(h.max_requests_per_connection) {
                l.max_requests_per_connection = v;
            }
        }
        l
    }
}

/// Live counters of one cluster.
#[derive(Debug, Default)]
pub struct Breaker {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Woken whenever a connection is released or closes, so pending requests re-check.
    pub released: Notify,
}

/// Which counter a guard holds.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Connection,
    Pending,
    Request,
    Retry,
}

/// A held unit of a limit; released on drop.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    slot: Slot,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker
            .counter(self.slot)
            .fetch_sub(1, Ordering::AcqRel);
        if matches!(self.slot, Slot::Connection) {
            self.breaker.released.notify_waiters();
        }
    }
}

impl Breaker {
    fn counter(&self, slot: Slot) -> &AtomicU32 {
        match slot {
            Slot::Connection => &self.connections,
            Slot::Pending => &self.pending,
            Slot::Request => &self.requests,
            Slot::Retry => &self.retries,
        }
    }

    fn try_acquire(self: &Arc<Self>, slot: Slot, max: u32) -> Option<Permit> {
        let c = self.counter(slot);
        if max == UNLIMITED {
            c.fetch_add(1, Ordering::AcqRel);
        } else {
            c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .ok()?;
        }
        Some(Permit {
            breaker: self.clone(),
            slot,
        })
    }

    pub fn try_connection(self: &Arc<Self>, l: &Limits) -> Option<Permit> {
        self.try_acquire(Slot::Connection, l.max_connections)
    }
    pub fn try_pending(self: &Arc<Self>, l: &Limits) -> Option<Permit> {
        self.try_acquire(Slot::Pending, l.max_pending_requests)
    }
    pub fn try_request(self: &Arc<Self>, l: &Limits) -> Option<Permit> {
        self.try_acquire(Slot::Request, l.max_requests)
    }
    pub fn try_retry(self: &Arc<Self>, l: &Limits) -> Option<Permit> {
        self.try_acquire(Slot::Retry, l.max_retries)
    }

    /// Current counts: (connections, pending, requests, retries).
    pub fn snapshot(&self) -> (u32, u32, u32, u32) {
        (
            self.connections.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::istio::networking::{HttpSettings, TcpSettings};

    #[test]
    fn limits_merge_and_admit() {
        let top = Limits::default().merged(Some(&ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(1),
                ..Default::default()
            }),
            http: Some(HttpSettings {
                http1_max_pending_requests: Some(1),
                http2_max_requests: Some(500),
                ..Default::default()
            }),
        }));
        let sub = top.merged(Some(&ConnectionPoolSettings {
            tcp: None,
            http: Some(HttpSettings {
                http2_max_requests: Some(1000),
                ..Default::default()
            }),
        }));
        assert_eq!((sub.max_connections, sub.max_requests), (1, 1000));
        let b = Arc::new(Breaker::default());
        let c1 = b.try_connection(&top).unwrap();
        assert!(b.try_connection(&top).is_none());
        let p1 = b.try_pending(&top).unwrap();
        assert!(b.try_pending(&top).is_none());
        drop(c1);
        drop(p1);
        assert!(b.try_connection(&top).is_some());
        assert_eq!(b.snapshot(), (0, 0, 0, 0));
    }
}
