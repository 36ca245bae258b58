//! ztunnel's view of the mesh: workloads by IP, services by VIP, compiled L4 policies.
//!
//! Built from `common`'s Kubernetes and Istio objects (the adapter is [`ProxyState::build`]);
//! published as an immutable snapshot behind [`StateHandle`] so lookups on the connection path
//! never lock.

pub mod policy;

use crate::identity::Identity;
use arc_swap::ArcSwap;
use common::k8s::{IntOrString, Labels, Pod, Service as K8sService, DATAPLANE_MODE_LABEL};
use common::resource::Resource;
use policy::{Authorization, PeerAuth, Target};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

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
}

fn port_list(v: Option<&String>) -> Vec<u16> {
    v.map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default()
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
    pub fn baggage(&self, cluster: &str) -> crate::hbone::Baggage {
        crate::hbone::Baggage {
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

fn pod_to_workload(pod: &Pod, ambient_ns: &HashMap<String, bool>, td: &str) -> Option<Workload> {
    let ip = pod
        .status
        .pod_ip
        .or_else(|| pod.status.pod_ips.first().map(|p| p.ip))?;
    let ns = pod.metadata.namespace_or_default().to_string();
    let sa = pod
        .spec
        .service_account_name
        .clone()
        .or_else(|| pod.spec.service_account.clone())
        .unwrap_or_else(|| "default".into());
    let labels = pod.metadata.labels.clone();
    let enrolled = match labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => ambient_ns.get(&ns).copied().unwrap_or(false),
    };
    let ann = &pod.metadata.annotations;
    let named_ports = pod
        .spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    Some(Workload {
        name: pod.metadata.name.clone(),
        identity: Identity::new(td, &ns, &sa),
        canonical_name: labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| pod.metadata.name.clone()),
        canonical_revision: labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "latest".into()),
        namespace: ns,
        ip,
        node: pod.spec.node_name.clone().unwrap_or_default(),
        service_account: sa,
        labels,
        enrolled,
        netns: ann.get(common::k8s::NETNS_ANNOTATION).map(PathBuf::from),
        cgroup: ann.get(common::k8s::CGROUP_ANNOTATION).map(PathBuf::from),
        named_ports,
        excluded_outbound_ports: port_list(ann.get(common::k8s::EXCLUDE_OUTBOUND_PORTS_ANNOTATION)),
        excluded_inbound_ports: port_list(ann.get(common::k8s::EXCLUDE_INBOUND_PORTS_ANNOTATION)),
    })
}

fn service_from(svc: &K8sService, workloads: &HashMap<IpAddr, Arc<Workload>>) -> Service {
    let ns = svc.metadata.namespace_or_default();
    let mut vips: Vec<IpAddr> = svc
        .spec
        .cluster_ips
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    if let Some(ip) = svc.spec.cluster_ip.as_ref().and_then(|s| s.parse().ok()) {
        if !vips.contains(&ip) {
            vips.insert(0, ip);
        }
    }
    let ports = svc
        .spec
        .ports
        .iter()
        .map(|p| ServicePort {
            port: p.port,
            target: match &p.target_port {
                Some(IntOrString::Int(n)) => TargetPort::Number(*n as u16),
                Some(IntOrString::String(s)) => match s.parse() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Named(s.clone()),
                },
                None => TargetPort::Number(p.port),
            },
        })
        .collect();
    let mut endpoints: Vec<IpAddr> = match &svc.spec.selector {
        Some(sel) if !sel.is_empty() => workloads
            .values()
            .filter(|w| w.namespace == ns && sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .map(|w| w.ip)
            .collect(),
        _ => vec![],
    };
    endpoints.sort();
    Service {
        name: svc.metadata.name.clone(),
        namespace: ns.to_string(),
        hostname: format!("{}.{}.svc.cluster.local", svc.metadata.name, ns),
        vips,
        ports,
        endpoints,
    }
}

impl ProxyState {
    /// Builds the snapshot from Kubernetes and Istio objects.
    pub fn build(resources: &[Resource], trust_domain: &str, cluster: &str) -> ProxyState {
        let ambient_ns: HashMap<String, bool> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Namespace(n) => Some((
                    n.metadata.name.clone(),
                    n.metadata
                        .labels
                        .get(DATAPLANE_MODE_LABEL)
                        .map(String::as_str)
                        == Some("ambient"),
                )),
                _ => None,
            })
            .collect();
        let mut st = ProxyState {
            trust_domain: trust_domain.to_string(),
            cluster: cluster.to_string(),
            ..Default::default()
        };
        for r in resources {
            match r {
                Resource::Pod(p) => {
                    if let Some(w) = pod_to_workload(p, &ambient_ns, trust_domain) {
                        st.workloads.insert(w.ip, Arc::new(w));
                    }
                }
                Resource::AuthorizationPolicy(p) => {
                    st.authorizations.extend(Authorization::compile(
                        p.namespace(),
                        p.name(),
                        &p.spec,
                    ));
                }
                Resource::PeerAuthentication(p) => {
                    st.peer_auths
                        .push(PeerAuth::compile(p.namespace(), p.name(), &p.spec));
                }
                _ => {}
            }
        }
        for r in resources {
            if let Resource::Service(s) = r {
                let svc = Arc::new(service_from(s, &st.workloads));
                for vip in &svc.vips {
                    st.services.insert(*vip, svc.clone());
                }
            }
        }
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
