//! ztunnel's view of the mesh: workloads by IP, services by VIP, compiled L4 policies, and
//! which waypoint (if any) stands in front of each service and workload.
//!
//! Waypoint binding (Istio ambient's `istio.io/use-waypoint`, resolved by `common`):
//! - [`Service::waypoint`]: traffic addressed to the service's VIP goes to this waypoint.
//! - [`Workload::waypoint`]: traffic addressed to the pod's IP goes to this waypoint (only a
//!   waypoint whose `istio.io/waypoint-for` covers workloads).
//! - [`Workload::bound_waypoints`]: every waypoint allowed to deliver to the pod — its own plus
//!   those of the services it is an endpoint of. When non-empty the destination ztunnel admits
//!   only these identities (see `proxy::inbound`).
//!
//! Built from `common`'s Kubernetes and Istio objects (the adapter is [`ProxyState::build`]);
//! published as an immutable snapshot behind [`StateHandle`] so lookups on the connection path
//! never lock.

pub mod policy;

use arc_swap::ArcSwap;
use common::k8s::Labels;
use common::model::{BuildOptions, Model};
use common::resource::Resource;
use policy::{Authorization, PeerAuth, Target};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use transport::identity::Identity;

/// A pod as ztunnel sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub node: String,
    pub service_account: String,
    pub identity: Identity,
    pub labels: Labels,
    /// In the mesh (ambient mode): reached over HBONE, protected by policy.
    pub enrolled: bool,
    /// Network namespace path (`mesh.local/netns`), if known.
    pub netns: Option<PathBuf>,
    /// cgroup v2 path (`mesh.local/cgroup`), if known.
    pub cgroup: Option<PathBuf>,
    /// Canonical service name / revision for telemetry (`app` / `version` labels).
    pub canonical_name: String,
    pub canonical_revision: String,
    /// Named container ports, to resolve named Service target ports.
    pub named_ports: BTreeMap<String, u16>,
    /// Outbound destination ports left uncaptured (`traffic.sidecar.istio.io/excludeOutboundPorts`).
    pub excluded_outbound_ports: Vec<u16>,
    /// Inbound ports left uncaptured (`traffic.sidecar.istio.io/excludeInboundPorts`).
    pub excluded_inbound_ports: Vec<u16>,
    /// Waypoint for traffic addressed to this pod's IP.
    pub waypoint: Option<Arc<Waypoint>>,
    /// Waypoints that may deliver to this pod (own + its services'); empty = no waypoint.
    pub bound_waypoints: Vec<Arc<Waypoint>>,
}

/// A waypoint as the data path needs it: where to send (any of `addresses`, HBONE port) and
/// which identity to verify (and to accept at the destination).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    pub addresses: Vec<IpAddr>,
}

impl From<&common::model::WaypointRef> for Waypoint {
    fn from(w: &common::model::WaypointRef) -> Self {
        Waypoint {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            identity: w.identity.clone(),
            addresses: w.addresses.clone(),
        }
    }
}

impl Workload {
    /// The policy target view of this workload.
    pub fn target(&self) -> Target<'_> {
        Target {
            namespace: &self.namespace,
            labels: &self.labels,
        }
    }

    /// Kind + name for baggage: a pod's owner is unknown locally, so `pod`.
    pub fn baggage(&self, cluster: &str) -> transport::hbone::Baggage {
        transport::hbone::Baggage {
            cluster: cluster.to_string(),
            namespace: self.namespace.clone(),
            workload_kind: "pod".into(),
            workload_name: self.name.clone(),
            service_name: self.canonical_name.clone(),
            service_version: self.canonical_revision.clone(),
        }
    }
}

/// A port of a service: service port → target port (number or container port name).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServicePort {
    pub port: u16,
    pub target: TargetPort,
}

/// Service target port.
#[derive(Clone, Debug, serde::Serialize)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

/// A service with a VIP and its endpoint pods.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoint pod IPs.
    pub endpoints: Vec<IpAddr>,
    /// Waypoint for traffic addressed to the service's VIPs.
    pub waypoint: Option<Arc<Waypoint>>,
}

/// An immutable snapshot of what ztunnel needs.
#[derive(Debug, Default, serde::Serialize)]
pub struct ProxyState {
    pub trust_domain: String,
    pub cluster: String,
    pub workloads: HashMap<IpAddr, Arc<Workload>>,
    pub services: HashMap<IpAddr, Arc<Service>>,
    pub authorizations: Vec<Authorization>,
    pub peer_auths: Vec<PeerAuth>,
}

impl ProxyState {
    /// Builds the snapshot from Kubernetes and Istio objects (through `common`'s model
    /// builder, the same path the directory source takes).
    pub fn build(resources: &[Resource], trust_domain: &str, cluster: &str) -> ProxyState {
        let opts = BuildOptions {
            trust_domain: trust_domain.to_string(),
            ..BuildOptions::default()
        };
        Self::from_model(&Model::build_with(resources.to_vec(), &opts), cluster)
    }

    /// Adapts a `common` model snapshot: workloads and services keyed by IP, policies compiled.
    pub fn from_model(model: &Model, cluster: &str) -> ProxyState {
        let mut st = ProxyState {
            trust_domain: model.trust_domain.clone(),
            cluster: cluster.to_string(),
            ..Default::default()
        };
        // Built unwrapped first so service waypoints can be folded into `bound_waypoints`.
        let mut workloads: HashMap<IpAddr, Workload> = HashMap::new();
        for w in model.workloads() {
            let labels = w.labels.clone();
            let wl = Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                ip: w.ip,
                node: w.node.clone().unwrap_or_default(),
                service_account: w.service_account.clone(),
                identity: w.identity.clone(),
                canonical_name: labels.get("app").cloned().unwrap_or_else(|| w.name.clone()),
                canonical_revision: labels
                    .get("version")
                    .cloned()
                    .unwrap_or_else(|| "latest".into()),
                labels,
                enrolled: w.captured,
                netns: w.netns.clone(),
                cgroup: w.cgroup.clone(),
                named_ports: w.container_ports.clone(),
                excluded_outbound_ports: w.excluded_outbound_ports.clone(),
                excluded_inbound_ports: w.excluded_inbound_ports.clone(),
                waypoint: w.waypoint.as_ref().map(|r| Arc::new(r.into())),
                bound_waypoints: Vec::new(),
            };
            workloads.insert(wl.ip, wl);
        }
        for s in model.services() {
            let svc = Arc::new(Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                hostname: s.hostname.clone(),
                vips: s.vips.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        port: p.port,
                        target: match (&p.target_port, &p.target_port_name) {
                            (Some(n), _) => TargetPort::Number(*n),
                            (None, Some(name)) => TargetPort::Named(name.clone()),
                            (None, None) => TargetPort::Number(p.port),
                        },
                    })
                    .collect(),
                endpoints: model.endpoints(s).map(|w| w.ip).collect(),
                waypoint: s.waypoint.as_ref().map(|r| Arc::new(r.into())),
            });
            for vip in &svc.vips {
                st.services.insert(*vip, svc.clone());
            }
            if let Some(wp) = &svc.waypoint {
                for ip in &svc.endpoints {
                    if let Some(w) = workloads.get_mut(ip) {
                        if !w.bound_waypoints.contains(wp) {
                            w.bound_waypoints.push(wp.clone());
                        }
                    }
                }
            }
        }
        for (ip, mut w) in workloads {
            if let Some(wp) = w.waypoint.clone() {
                if !w.bound_waypoints.contains(&wp) {
                    w.bound_waypoints.insert(0, wp);
                }
            }
            // A waypoint pod is never bound to itself (it is the one that enforces L7).
            let id = w.identity.clone();
            w.bound_waypoints.retain(|wp| wp.identity != id);
            st.workloads.insert(ip, Arc::new(w));
        }
        st.authorizations = model
            .authorization_policies()
            .iter()
            .filter_map(|p| Authorization::compile(p.namespace(), p.name(), &p.spec))
            .collect();
        st.peer_auths = model
            .peer_authentications()
            .iter()
            .map(|p| PeerAuth::compile(p.namespace(), p.name(), &p.spec))
            .collect();
        st
    }

    /// The workload with this IP.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    /// The service with this VIP.
    pub fn service(&self, vip: IpAddr) -> Option<&Arc<Service>> {
        self.services.get(&vip)
    }

    /// The waypoint bound to `w` whose identity is `id`, if `id` is one of them.
    pub fn waypoint_of<'a>(w: &'a Workload, id: Option<&Identity>) -> Option<&'a Arc<Waypoint>> {
        let id = id?;
        w.bound_waypoints.iter().find(|wp| &wp.identity == id)
    }

    /// The waypoint that must see traffic to the original destination `dst`, sent by `src`:
    /// the service's (VIP) or the workload's (pod IP). `None` when there is none or `src` is
    /// that waypoint itself (a waypoint never sends to itself).
    pub fn waypoint_for(&self, dst: SocketAddr, src: &Identity) -> Option<Arc<Waypoint>> {
        let wp = match self.service(dst.ip()) {
            Some(svc) => svc.waypoint.clone(),
            None => self.workload(dst.ip()).and_then(|w| w.waypoint.clone()),
        }?;
        (&wp.identity != src).then_some(wp)
    }

    /// Enrolled workloads scheduled on `node`.
    pub fn node_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads
            .values()
            .filter(move |w| w.enrolled && w.node == node)
    }
}

/// Resolves a service port to the endpoint's target port.
pub fn target_port(svc: &Service, port: u16, endpoint: &Workload) -> Option<u16> {
    let sp = svc.ports.iter().find(|p| p.port == port)?;
    match &sp.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Named(n) => endpoint.named_ports.get(n).copied(),
    }
}

/// The current state; swapped whole on each config change.
#[derive(Debug, Clone)]
pub struct StateHandle(Arc<ArcSwap<ProxyState>>);

impl StateHandle {
    /// A handle holding `st`.
    pub fn new(st: ProxyState) -> Self {
        StateHandle(Arc::new(ArcSwap::from_pointee(st)))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<ProxyState> {
        self.0.load_full()
    }

    /// Publishes a new snapshot.
    pub fn store(&self, st: ProxyState) {
        self.0.store(Arc::new(st));
    }
}

/// Where an outbound connection goes after resolution.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Workload to reach (None when the destination is outside the mesh).
    pub workload: Option<Arc<Workload>>,
    /// Destination workload address (`podIP:targetPort`) or the original address.
    pub addr: SocketAddr,
    /// Service hit through its VIP, if any.
    pub service: Option<Arc<Service>>,
}

impl ProxyState {
    /// Resolves an original destination: service VIP → an endpoint (`pick` chooses the index
    /// among endpoints), pod IP → that workload, otherwise passthrough.
    pub fn resolve(&self, dst: SocketAddr, pick: impl FnOnce(usize) -> usize) -> Option<Upstream> {
        if let Some(svc) = self.service(dst.ip()) {
            let eps: Vec<&Arc<Workload>> = svc
                .endpoints
                .iter()
                .filter_map(|ip| self.workload(*ip))
                .filter(|w| target_port(svc, dst.port(), w).is_some())
                .collect();
            if eps.is_empty() {
                return None;
            }
            let w = eps[pick(eps.len()) % eps.len()];
            let port = target_port(svc, dst.port(), w)?;
            return Some(Upstream {
                workload: Some(w.clone()),
                addr: SocketAddr::new(w.ip, port),
                service: Some(svc.clone()),
            });
        }
        let workload = self.workload(dst.ip()).cloned();
        let service = workload.as_ref().and_then(|w| {
            self.services
                .values()
                .find(|s| s.endpoints.contains(&w.ip))
                .cloned()
        });
        Some(Upstream {
            workload,
            addr: dst,
            service,
        })
    }
}
