//! Clusters and endpoints: a (service, subset, port) with its pods, its policies (balancer,
//! limits, outlier detection) and the live state those policies act on.
//!
//! Invariant: a [`Cluster`] is immutable once compiled; everything that changes per request
//! lives in [`ClusterState`] / [`EndpointState`] behind `Arc`s, so a config reload can build a
//! new `Cluster` that *reuses* the state of an unchanged cluster or endpoint (keeping pooled
//! connections, circuit-breaker counts and ejections) while in-flight requests keep using the
//! old one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::balance::LbPolicy;
use crate::outlier::{EjectionBudget, OutlierConfig, OutlierState};
use crate::pool::ConnPool;
use crate::pool_limits::{Breaker, Limits};
use crate::workload::{ServiceInfo, WorkloadInfo};

/// One routable upstream: Envoy's `outbound|<port>|<subset>|<fqdn>` cluster.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: Arc<str>,
    pub service: Arc<ServiceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<Arc<str>>,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
    /// Speak HTTP/2 (prior knowledge) to the endpoints.
    pub http2: bool,
    #[serde(skip)]
    pub state: Arc<ClusterState>,
}

/// Mutable, shared state of a cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub breaker: Arc<Breaker>,
    /// Round-robin cursor.
    pub rr: AtomicUsize,
    /// Endpoints currently ejected (kept in step by `OutlierState`).
    pub ejected: AtomicU32,
    /// Endpoints in the current compiled cluster.
    pub total: AtomicU32,
}

impl EjectionBudget for ClusterState {
    fn ejected_and_total(&self) -> (u32, u32) {
        (
            self.ejected.load(Ordering::Acquire),
            self.total.load(Ordering::Acquire),
        )
    }
    fn on_eject(&self) {
        self.ejected.fetch_add(1, Ordering::AcqRel);
    }
    fn on_return(&self) {
        // Saturating: a reload may have recounted in between.
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(1))
            });
    }
}

/// One pod behind a cluster.
#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub workload: Arc<WorkloadInfo>,
    #[serde(skip)]
    pub state: Arc<EndpointState>,
}

/// Mutable, shared state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight (for LEAST_REQUEST).
    pub active: AtomicU32,
    pub outlier: OutlierState,
    pub pool: ConnPool,
}

/// Counts a request as active on an endpoint for as long as it lives.
pub struct ActiveGuard(Arc<EndpointState>);

impl ActiveGuard {
    pub fn new(ep: &Arc<EndpointState>) -> Self {
        ep.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(ep.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Cluster {
    /// Envoy's cluster name.
    pub fn envoy_name(port: u16, subset: Option<&str>, fqdn: &str) -> String {
        format!("outbound|{port}|{}|{fqdn}", subset.unwrap_or(""))
    }

    pub fn find_endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}
