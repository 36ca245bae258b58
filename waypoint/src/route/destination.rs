//! Route selection by tunnel destination, as Istio's waypoint selects: the HBONE `CONNECT`
//! names the original destination, and that address alone picks the virtual host.
//!
//! - A service VIP and port: the service's virtual host for that port, if the service is
//!   bound to this waypoint.
//! - A pod IP: the pod's [`WorkloadHost`], if the pod itself is bound to this waypoint
//!   (`istio.io/use-waypoint` on the pod or its namespace, waypoint serving workloads).
//!   Traffic goes to that pod on the tunnel's port, through the same authorization, telemetry
//!   and upstream path as service traffic. Any port is served, as Istio's original-destination
//!   cluster does: ports are compiled when the pod declares them or a service targets them,
//!   and on first use otherwise (then kept by later reloads).
//! - Anything else is not this waypoint's to serve and is refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Serialize, Serializer};

use super::compile::default_route;
use super::{RouteTable, VirtualHost};
use crate::authz::AuthzTable;
use crate::balance::LbPolicy;
use crate::cluster::{Cluster, ClusterState, Endpoint, EndpointState};
use crate::pool_limits::Limits;
use crate::workload::{ServiceInfo, WorkloadInfo};

/// A pod bound to this waypoint, with its virtual host per port.
pub struct WorkloadHost {
    pub workload: Arc<WorkloadInfo>,
    pub ip: IpAddr,
    /// Destination labels of traffic addressed to the pod: no service.
    pub service: Arc<ServiceInfo>,
    pub authz: Arc<AuthzTable>,
    ports: RwLock<BTreeMap<u16, Arc<VirtualHost>>>,
}

impl Serialize for WorkloadHost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            workload: &'a str,
            namespace: &'a str,
            ip: IpAddr,
            ports: Vec<u16>,
        }
        View {
            workload: &self.workload.pod_name,
            namespace: &self.workload.namespace,
            ip: self.ip,
            ports: self.known_ports(),
        }
        .serialize(s)
    }
}

impl WorkloadHost {
    pub fn new(workload: Arc<WorkloadInfo>, ip: IpAddr, authz: Arc<AuthzTable>) -> Self {
        let service = Arc::new(ServiceInfo {
            name: Arc::from("unknown"),
            namespace: workload.namespace.clone(),
            fqdn: Arc::from("unknown"),
        });
        WorkloadHost {
            workload,
            ip,
            service,
            authz,
            ports: RwLock::new(BTreeMap::new()),
        }
    }

    /// Ports with a compiled virtual host.
    pub fn known_ports(&self) -> Vec<u16> {
        self.ports.read().keys().copied().collect()
    }

    pub(super) fn insert(&self, port: u16, vh: Arc<VirtualHost>) {
        self.ports.write().insert(port, vh);
    }

    /// The virtual host for `port`, compiled on first use.
    pub fn vhost(self: &Arc<Self>, port: u16) -> Arc<VirtualHost> {
        if let Some(vh) = self.ports.read().get(&port) {
            return vh.clone();
        }
        let vh = workload_vhost(self, port, None);
        self.ports.write().entry(port).or_insert(vh).clone()
    }
}

/// Istio's name for a waypoint's cluster to one pod port.
fn cluster_name(ip: IpAddr, port: u16) -> String {
    format!("inbound-pod|{port}||{ip}")
}

/// The virtual host of `host` for `port`: a default route to the pod on that port. State of
/// the same cluster in `prev` (the previous table's host for the pod) carries over.
pub(super) fn workload_vhost(
    host: &WorkloadHost,
    port: u16,
    prev: Option<&Arc<WorkloadHost>>,
) -> Arc<VirtualHost> {
    let addr = SocketAddr::new(host.ip, port);
    let prev_cluster = prev
        .and_then(|p| p.ports.read().get(&port).cloned())
        .and_then(|vh| match vh.routes.first().map(|r| &r.action) {
            Some(super::Action::Forward(f)) => Some(f.clusters[0].cluster.clone()),
            _ => None,
        });
    let state = prev_cluster
        .as_ref()
        .map(|c| c.state.clone())
        .unwrap_or_else(|| Arc::new(ClusterState::default()));
    let ep_state = prev_cluster
        .as_ref()
        .and_then(|c| c.find_endpoint(addr))
        .map(|e| e.state.clone())
        .unwrap_or_else(|| Arc::new(EndpointState::default()));
    state.total.store(1, std::sync::atomic::Ordering::Release);
    let cluster = Arc::new(Cluster {
        name: Arc::from(cluster_name(host.ip, port).as_str()),
        service: host.service.clone(),
        subset: None,
        port,
        endpoints: vec![Endpoint {
            addr,
            workload: host.workload.clone(),
            state: ep_state,
        }],
        lb: LbPolicy::from_istio(None),
        limits: Limits::default(),
        outlier: None,
        http2: false,
        state,
    });
    Arc::new(VirtualHost {
        name: format!("{}:{port}", host.ip),
        service: host.service.clone(),
        workload: Some(host.workload.clone()),
        port,
        routes: vec![default_route(cluster)],
        authz: host.authz.clone(),
    })
}

impl RouteTable {
    /// The virtual host for a tunnel to `dst` (the `CONNECT` authority), or `None` when this
    /// waypoint does not serve that destination (see the module docs).
    pub fn vhost_for_destination(&self, dst: SocketAddr) -> Option<Arc<VirtualHost>> {
        if let Some(vh) = self.by_destination.get(&dst) {
            return Some(vh.clone());
        }
        self.workload_hosts
            .get(&dst.ip())
            .map(|w| w.vhost(dst.port()))
    }

    /// Pods served when addressed directly.
    pub fn workload_host(&self, ip: IpAddr) -> Option<&Arc<WorkloadHost>> {
        self.workload_hosts.get(&ip)
    }
}
