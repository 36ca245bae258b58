//! Building a [`Model`] from resources: every derived view is computed here, once.
//!
//! Selector matching is the only potentially quadratic step (services × pods, policies ×
//! pods), so pods are indexed by `(namespace, label key, label value)` and a selector only
//! walks the posting list of its first label. Loading 50,000 pods and 5,000 services stays
//! linear in practice.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use super::{
    routing, AllowedNamespaces, BuildOptions, Model, PeerAuthnIdx, Service, ServiceId, ServicePort,
    Waypoint, WaypointFor, WaypointRef, Workload, WorkloadId,
};
use crate::identity::Identity;
use crate::istio::WorkloadSelector;
use crate::k8s::{
    self, Gateway, IntOrString, Labels, Pod, CGROUP_ANNOTATION, DATAPLANE_MODE_LABEL,
    EXCLUDE_INBOUND_PORTS_ANNOTATION, EXCLUDE_OUTBOUND_PORTS_ANNOTATION, GATEWAY_NAME_LABEL,
    NETNS_ANNOTATION, USE_WAYPOINT_LABEL, WAYPOINT_GATEWAY_CLASS,
};
use crate::resource::{Kind, Resource};

/// Label naming the namespace of the waypoint in `istio.io/use-waypoint` (cross-namespace).
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint Gateway saying which traffic it serves.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// Pods indexed by namespace and by label, borrowing the workloads.
struct PodIndex<'a> {
    by_namespace: HashMap<&'a str, Vec<WorkloadId>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<WorkloadId>>,
}

impl<'a> PodIndex<'a> {
    fn new(workloads: &'a [Workload]) -> Self {
        let mut by_namespace: HashMap<&str, Vec<WorkloadId>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<WorkloadId>> = HashMap::new();
        for w in workloads {
            by_namespace.entry(&w.namespace).or_default().push(w.id);
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(w.id);
            }
        }
        PodIndex {
            by_namespace,
            by_label,
        }
    }

    /// Workloads of `namespace` whose labels contain all of `labels` (all of the namespace's
    /// workloads for an empty selector).
    fn select(&self, workloads: &[Workload], namespace: &str, labels: &Labels) -> Vec<WorkloadId> {
        let Some((k, v)) = labels.iter().next() else {
            return self
                .by_namespace
                .get(namespace)
                .cloned()
                .unwrap_or_default();
        };
        let Some(candidates) = self.by_label.get(&(namespace, k.as_str(), v.as_str())) else {
            return Vec::new();
        };
        candidates
            .iter()
            .copied()
            .filter(|id| selector_matches(labels, &workloads[id.0 as usize].labels))
            .collect()
    }

    /// Like [`PodIndex::select`] across all namespaces (root-namespace authorization policies).
    fn select_all_namespaces(&self, workloads: &[Workload], labels: &Labels) -> Vec<WorkloadId> {
        let mut out = Vec::new();
        for ns in self.by_namespace.keys() {
            out.extend(self.select(workloads, ns, labels));
        }
        out.sort();
        out
    }
}

fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|lv| lv == v))
}

fn selector_labels(sel: &Option<WorkloadSelector>) -> Option<&Labels> {
    sel.as_ref().map(|s| &s.match_labels)
}

pub(super) fn build(resources: Vec<Resource>, options: &BuildOptions) -> Model {
    let mut m = Model {
        trust_domain: options.trust_domain.clone(),
        root_namespace: options.root_namespace.clone(),
        cluster_domain: options.cluster_domain.clone(),
        ..Model::default()
    };
    // Namespaces first: a pod's capture mode depends on its namespace's labels, wherever the
    // Namespace sits in the list. Then pods become workloads as they are met (no list of
    // pods in between: with 50,000 of them, every extra copy shows).
    for r in &resources {
        if let Resource::Namespace(n) = r {
            m.namespaces
                .insert(n.metadata.name.clone(), n.metadata.labels.clone());
        }
    }
    let count = |k: Kind| resources.iter().filter(|r| r.kind() == k).count();
    m.workloads.reserve(count(Kind::Pod));
    let mut k8s_services = Vec::with_capacity(count(Kind::Service));
    m.virtual_services.reserve(count(Kind::VirtualService));
    m.destination_rules.reserve(count(Kind::DestinationRule));
    let mut gateways = Vec::new();
    for r in resources {
        match r {
            Resource::Namespace(_) => {}
            Resource::Pod(p) => {
                if let Some(mut w) = workload_from_pod(p, &m.namespaces, &options.trust_domain) {
                    w.id = WorkloadId(m.workloads.len() as u32);
                    m.workloads.push(w);
                }
            }
            Resource::Service(s) => k8s_services.push(s),
            Resource::Gateway(g) => gateways.push(g),
            Resource::VirtualService(v) => m.virtual_services.push(v),
            Resource::DestinationRule(d) => m.destination_rules.push(d),
            Resource::PeerAuthentication(p) => m.peer_authentications.push(p),
            Resource::AuthorizationPolicy(a) => m.authorization_policies.push(a),
            Resource::IstioGateway(g) => m.istio_gateways.push(g),
        }
    }

    let index = PodIndex::new(&m.workloads);

    // Waypoints first: services and workloads refer to them.
    let mut waypoints = Vec::new();
    for g in gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
    {
        let ns = g.metadata.namespace_or_default();
        let sel = Labels::from([(GATEWAY_NAME_LABEL.to_string(), g.metadata.name.clone())]);
        let pods = index.select(&m.workloads, ns, &sel);
        let addresses = pods
            .iter()
            .map(|id| m.workloads[id.0 as usize].ip)
            .collect();
        // Istio runs a waypoint as a service account named after the Gateway; a pod that
        // says otherwise is what actually holds the certificate.
        let service_account = pods
            .first()
            .map(|id| m.workloads[id.0 as usize].service_account.clone())
            .unwrap_or_else(|| g.metadata.name.clone());
        let waypoint_for = g
            .metadata
            .labels
            .get(WAYPOINT_FOR_LABEL)
            .and_then(|v| WaypointFor::parse(v))
            .unwrap_or_default();
        waypoints.push(Waypoint {
            reference: WaypointRef {
                name: g.metadata.name.clone(),
                namespace: ns.to_string(),
                identity: Identity::new(&options.trust_domain, ns, &service_account),
                service_account,
                addresses,
            },
            waypoint_for,
            allowed_namespaces: allowed_namespaces(g),
        });
    }
    let waypoint_map: HashMap<(&str, &str), &Waypoint> = waypoints
        .iter()
        .map(|w| {
            (
                (w.reference.namespace.as_str(), w.reference.name.as_str()),
                w,
            )
        })
        .collect();
    // Istio's binding: the object's own `istio.io/use-waypoint` label, else its namespace's
    // (`none` opts out and stops there); the namespace named by `use-waypoint-namespace` on the
    // same object, else the object's; the waypoint must admit the object's namespace and serve
    // this kind of traffic.
    let resolve_waypoint = |own: &Labels, ns: &str, for_services: bool| -> Option<WaypointRef> {
        let ns_labels = m.namespaces.get(ns);
        let (name, labels) = match own.get(USE_WAYPOINT_LABEL) {
            Some(n) => (n, own),
            None => {
                let l = ns_labels?;
                (l.get(USE_WAYPOINT_LABEL)?, l)
            }
        };
        if name == "none" {
            return None;
        }
        let wp_ns = labels
            .get(USE_WAYPOINT_NAMESPACE_LABEL)
            .map(String::as_str)
            .unwrap_or(ns);
        let wp = waypoint_map.get(&(wp_ns, name.as_str()))?;
        if !wp.allows_namespace(ns, ns_labels) {
            return None;
        }
        let serves = if for_services {
            wp.waypoint_for.serves_services()
        } else {
            wp.waypoint_for.serves_workloads()
        };
        serves.then(|| wp.reference.clone())
    };

    // Services and their endpoints.
    let mut services = Vec::with_capacity(k8s_services.len());
    let mut endpoints = Vec::with_capacity(k8s_services.len());
    for (i, s) in k8s_services.into_iter().enumerate() {
        let ns = s.metadata.namespace_or_default().to_string();
        let selector = s.spec.selector.clone().filter(|sel| !sel.is_empty());
        let eps: Vec<WorkloadId> = match &selector {
            Some(sel) => index
                .select(&m.workloads, &ns, sel)
                .into_iter()
                .filter(|id| m.workloads[id.0 as usize].ready)
                .collect(),
            None => Vec::new(),
        };
        let waypoint = resolve_waypoint(&s.metadata.labels, &ns, true);
        services.push(service_view(
            s,
            ServiceId(i as u32),
            ns,
            selector,
            waypoint,
            options,
        ));
        endpoints.push(eps);
    }
    // A waypoint's own pods never go through a waypoint: they are the ones enforcing L7.
    let workload_waypoints: Vec<Option<WaypointRef>> =
        m.workloads
            .iter()
            .map(|w| {
                let instance = w.labels.get(GATEWAY_NAME_LABEL).is_some_and(|gw| {
                    waypoint_map.contains_key(&(w.namespace.as_str(), gw.as_str()))
                });
                if instance {
                    None
                } else {
                    resolve_waypoint(&w.labels, &w.namespace, false)
                }
            })
            .collect();

    // Policies bound by selector.
    let pa_idx = peer_authn_index(&m, &index);
    let authz = authz_index(&m, &index);
    drop(index);

    for (w, wp) in m.workloads.iter_mut().zip(workload_waypoints) {
        w.waypoint = wp;
    }
    for (svc, eps) in services.iter().zip(&endpoints) {
        for id in eps {
            m.workloads[id.0 as usize].services.push(svc.id);
        }
    }
    m.peer_authn_by_workload = pa_idx;
    m.authz_mesh = authz.mesh;
    m.authz_by_namespace = authz.by_namespace;
    m.authz_by_target = authz.by_target;
    m.authz_by_workload = authz.per_workload;
    m.endpoints = endpoints;
    m.waypoints = waypoints;

    for w in &m.workloads {
        for ip in &w.ips {
            m.workload_by_ip.insert(*ip, w.id);
        }
        if let Some(node) = &w.node {
            m.workloads_by_node
                .entry(node.clone())
                .or_default()
                .push(w.id);
        }
    }
    for s in &services {
        for vip in &s.vips {
            m.service_by_vip.insert(*vip, s.id);
        }
        m.service_by_host.insert(s.hostname.clone(), s.id);
    }
    m.services = services;

    routing::index_virtual_services(&mut m);
    routing::merge_destination_rules(&mut m);
    m
}

/// The namespaces a waypoint admits: the `allowedRoutes` of its HBONE listener (15008), as
/// Istio reads them; `Same` without such a listener.
fn allowed_namespaces(g: &Gateway) -> AllowedNamespaces {
    let Some(rn) = g
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HBONE" && l.port == 15008)
        .and_then(|l| l.allowed_routes.as_ref())
        .and_then(|a| a.namespaces.as_ref())
    else {
        return AllowedNamespaces::Same;
    };
    match rn.from.as_deref() {
        Some("All") => AllowedNamespaces::All,
        Some("Selector") => AllowedNamespaces::Selector(
            rn.selector
                .as_ref()
                .filter(|s| s.match_expressions.is_empty())
                .map(|s| s.match_labels.clone()),
        ),
        _ => AllowedNamespaces::Same,
    }
}

fn workload_from_pod(p: Pod, namespaces: &BTreeMap<String, Labels>, td: &str) -> Option<Workload> {
    let phase = p
        .status
        .phase
        .clone()
        .unwrap_or_else(|| "Running".to_string());
    // Finished pods' IPs are reused by new pods; they must not shadow them.
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let mut ips: Vec<IpAddr> = p.status.pod_ip.into_iter().collect();
    for pip in &p.status.pod_ips {
        if !ips.contains(&pip.ip) {
            ips.push(pip.ip);
        }
    }
    let ip = *ips.first()?;
    let meta = p.metadata;
    let namespace = meta.namespace_or_default().to_string();
    let service_account = p
        .spec
        .service_account_name
        .or(p.spec.service_account)
        .unwrap_or_else(|| "default".to_string());
    let ns_mode = namespaces
        .get(&namespace)
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL));
    let captured = match meta.labels.get(DATAPLANE_MODE_LABEL) {
        Some(mode) => mode == "ambient",
        None => ns_mode.is_some_and(|m| m == "ambient"),
    };
    let ports_of = |key: &str| -> Vec<u16> {
        meta.annotations
            .get(key)
            .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let container_ports = p
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|cp| cp.name.clone().map(|n| (n, cp.container_port)))
        .collect();
    Some(Workload {
        id: WorkloadId(0),
        identity: Identity::new(td, &namespace, &service_account),
        excluded_inbound_ports: ports_of(EXCLUDE_INBOUND_PORTS_ANNOTATION),
        excluded_outbound_ports: ports_of(EXCLUDE_OUTBOUND_PORTS_ANNOTATION),
        netns: meta.annotations.get(NETNS_ANNOTATION).map(PathBuf::from),
        cgroup: meta.annotations.get(CGROUP_ANNOTATION).map(PathBuf::from),
        name: meta.name,
        namespace,
        ip,
        ips,
        node: p.spec.node_name,
        labels: meta.labels,
        service_account,
        ready: phase == "Running",
        phase,
        captured,
        waypoint: None,
        container_ports,
        services: Vec::new(),
    })
}

fn service_view(
    s: k8s::Service,
    id: ServiceId,
    namespace: String,
    selector: Option<Labels>,
    waypoint: Option<WaypointRef>,
    options: &BuildOptions,
) -> Service {
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in s.spec.cluster_ip.iter().chain(&s.spec.cluster_ips) {
        if let Ok(ip) = ip.parse() {
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
    }
    let ports = s
        .spec
        .ports
        .iter()
        .map(|p| {
            let (target_port, target_port_name) = match &p.target_port {
                None => (Some(p.port), None),
                Some(IntOrString::Int(n)) => (u16::try_from(*n).ok(), None),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => (Some(n), None),
                    Err(_) => (None, Some(s.clone())),
                },
            };
            ServicePort {
                name: p.name.clone(),
                port: p.port,
                target_port,
                target_port_name,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                app_protocol: p
                    .app_protocol
                    .clone()
                    .or_else(|| p.name.as_deref().and_then(protocol_from_port_name)),
            }
        })
        .collect();
    Service {
        id,
        hostname: format!(
            "{}.{namespace}.svc.{}",
            s.metadata.name, options.cluster_domain
        ),
        name: s.metadata.name,
        namespace,
        vips,
        ports,
        selector,
        waypoint,
        labels: s.metadata.labels,
    }
}

/// Istio's protocol selection by port name: `<protocol>[-<suffix>]`.
fn protocol_from_port_name(name: &str) -> Option<String> {
    let prefix = name.split('-').next().unwrap_or(name).to_ascii_lowercase();
    matches!(
        prefix.as_str(),
        "http"
            | "http2"
            | "https"
            | "grpc"
            | "grpc-web"
            | "tcp"
            | "tls"
            | "mongo"
            | "mysql"
            | "redis"
    )
    .then_some(prefix)
}

fn peer_authn_index(m: &Model, index: &PodIndex) -> Vec<PeerAuthnIdx> {
    let mut by_ns_default: HashMap<&str, u32> = HashMap::new();
    let mut per_workload = vec![PeerAuthnIdx::default(); m.workloads.len()];
    for (i, pa) in m.peer_authentications.iter().enumerate() {
        let ns = pa.namespace();
        match selector_labels(&pa.spec.selector) {
            None => {
                by_ns_default.entry(ns).or_insert(i as u32);
            }
            Some(sel) => {
                for id in index.select(&m.workloads, ns, sel) {
                    per_workload[id.0 as usize].workload.get_or_insert(i as u32);
                }
            }
        }
    }
    let mesh = by_ns_default.get(m.root_namespace.as_str()).copied();
    for (w, idx) in m.workloads.iter().zip(per_workload.iter_mut()) {
        idx.mesh = mesh;
        idx.namespace = by_ns_default.get(w.namespace.as_str()).copied();
    }
    per_workload
}

/// Authorization policy indices (see the fields of [`Model`] of the same names).
struct AuthzIndex {
    mesh: Vec<u32>,
    by_namespace: HashMap<String, Vec<u32>>,
    by_target: HashMap<(String, String, String), Vec<u32>>,
    per_workload: Vec<Vec<u32>>,
}

fn authz_index(m: &Model, index: &PodIndex) -> AuthzIndex {
    let mut per_workload = vec![Vec::new(); m.workloads.len()];
    let mut mesh = Vec::new();
    let mut by_ns: HashMap<String, Vec<u32>> = HashMap::new();
    let mut by_target: HashMap<(String, String, String), Vec<u32>> = HashMap::new();
    for (i, ap) in m.authorization_policies.iter().enumerate() {
        let i = i as u32;
        let ns = ap.namespace();
        let refs: Vec<_> = ap
            .spec
            .target_ref
            .iter()
            .chain(&ap.spec.target_refs)
            .collect();
        if !refs.is_empty() {
            for r in refs {
                let target_ns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
                by_target
                    .entry((r.kind.clone(), target_ns, r.name.clone()))
                    .or_default()
                    .push(i);
            }
            continue;
        }
        let root = ns == m.root_namespace;
        match selector_labels(&ap.spec.selector) {
            None if root => mesh.push(i),
            None => by_ns.entry(ns.to_string()).or_default().push(i),
            Some(sel) => {
                let ids = if root {
                    index.select_all_namespaces(&m.workloads, sel)
                } else {
                    index.select(&m.workloads, ns, sel)
                };
                for id in ids {
                    per_workload[id.0 as usize].push(i);
                }
            }
        }
    }
    AuthzIndex {
        mesh,
        by_namespace: by_ns,
        by_target,
        per_workload,
    }
}
