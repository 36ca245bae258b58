//! The model: one immutable snapshot of everything the mesh knows, built from a list of
//! [`Resource`]s and shared as `Arc<Model>`.
//!
//! Every view a proxy asks for on its hot path (workload by IP, service by VIP or hostname,
//! endpoints, policies per workload, waypoint per service) is computed once in
//! [`Model::build`]; queries are hash lookups or slice reads. A new configuration means a new
//! `Model`, swapped in whole by the source, so readers never see a half-applied change.

mod build;
pub mod host;
mod routing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_routing;
pub mod traffic;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::authz::scope::{attached_to_waypoint, WaypointTarget};
use crate::identity::{Identity, DEFAULT_TRUST_DOMAIN};
use crate::istio::security::MtlsMode;
use crate::k8s::{Labels, WAYPOINT_GATEWAY_CLASS};
use crate::resource::{
    AuthorizationPolicy, DestinationRule, IstioGateway, PeerAuthentication, Resource,
    VirtualService,
};

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// The Kubernetes cluster DNS domain used to form service FQDNs.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Knobs fixed for the lifetime of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildOptions {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Namespace whose selector-less policies apply to the whole mesh.
    pub root_namespace: String,
    /// DNS suffix of services (`<name>.<ns>.svc.<cluster_domain>`).
    pub cluster_domain: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
        }
    }
}

/// Index of a workload in [`Model::workloads`]; stable within one model only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadId(pub u32);

/// Index of a service in [`Model::services`]; stable within one model only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceId(pub u32);

/// A pod with an IP, as the proxies see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub id: WorkloadId,
    pub name: String,
    pub namespace: String,
    /// Primary IP (`status.podIP`, else the first of `status.podIPs`).
    pub ip: IpAddr,
    /// Every IP of the pod (dual stack), primary first.
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub labels: Labels,
    pub service_account: String,
    pub identity: Identity,
    /// `status.phase`; hand-written local configs may omit it, which counts as `Running`.
    pub phase: String,
    /// Running: eligible as an endpoint.
    pub ready: bool,
    /// Enrolled in ambient mode: namespace or pod labelled `istio.io/dataplane-mode=ambient`
    /// and the pod not labelled `istio.io/dataplane-mode=none`.
    pub captured: bool,
    /// The waypoint that serves traffic addressed to this workload directly (only waypoints
    /// whose `istio.io/waypoint-for` covers workloads).
    pub waypoint: Option<WaypointRef>,
    /// Local mode: the pod's network namespace path (annotation `mesh.local/netns`).
    pub netns: Option<PathBuf>,
    /// Local mode: the pod's cgroup v2 directory (annotation `mesh.local/cgroup`).
    pub cgroup: Option<PathBuf>,
    pub excluded_inbound_ports: Vec<u16>,
    pub excluded_outbound_ports: Vec<u16>,
    /// Named container ports, to resolve a Service's named `targetPort`.
    pub container_ports: BTreeMap<String, u16>,
    /// Services whose selector matches this workload.
    pub services: Vec<ServiceId>,
}

/// A waypoint (Gateway API `Gateway` of class `istio-waypoint`) a service or workload uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaypointRef {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub identity: Identity,
    /// IPs of the waypoint's pods (labelled `gateway.networking.k8s.io/gateway-name=<name>`).
    pub addresses: Vec<IpAddr>,
}

/// Which traffic a waypoint handles (`istio.io/waypoint-for` on the Gateway).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Istio's default.
    #[default]
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(WaypointFor::Service),
            "workload" => Some(WaypointFor::Workload),
            "all" => Some(WaypointFor::All),
            "none" => Some(WaypointFor::None),
            _ => None,
        }
    }
    pub fn serves_services(self) -> bool {
        matches!(self, WaypointFor::Service | WaypointFor::All)
    }
    pub fn serves_workloads(self) -> bool {
        matches!(self, WaypointFor::Workload | WaypointFor::All)
    }
}

/// Which namespaces may bind their services and pods to a waypoint: the `allowedRoutes` of
/// its HBONE listener (port 15008), as Istio reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowedNamespaces {
    /// The Gateway's own namespace (Gateway API's default).
    #[default]
    Same,
    All,
    /// Namespaces whose labels contain all of these. `None`: a selector this mesh cannot
    /// evaluate (`matchExpressions`), which admits no namespace.
    Selector(Option<Labels>),
}

/// A declared waypoint and what it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    #[serde(flatten)]
    pub reference: WaypointRef,
    pub waypoint_for: WaypointFor,
    pub allowed_namespaces: AllowedNamespaces,
}

impl Waypoint {
    /// Whether objects of `namespace` (labelled `namespace_labels`) may use this waypoint.
    pub fn allows_namespace(&self, namespace: &str, namespace_labels: Option<&Labels>) -> bool {
        match &self.allowed_namespaces {
            AllowedNamespaces::All => true,
            AllowedNamespaces::Same => namespace == self.reference.namespace,
            AllowedNamespaces::Selector(None) => false,
            AllowedNamespaces::Selector(Some(sel)) => {
                // Kubernetes labels every namespace with its own name.
                let own = (NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
                sel.iter().all(|(k, v)| {
                    (k == &own.0 && v == &own.1)
                        || namespace_labels
                            .and_then(|l| l.get(k))
                            .is_some_and(|lv| lv == v)
                })
            }
        }
    }

    /// True for the waypoint `name` in `namespace`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.reference.namespace == namespace && self.reference.name == name
    }
}

/// Label Kubernetes sets on every Namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Kubernetes Service as the proxies see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>.svc.<cluster domain>`.
    pub hostname: String,
    /// Cluster IPs; empty for headless services.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `None`: the service selects no pods (endpoints managed elsewhere).
    pub selector: Option<Labels>,
    pub waypoint: Option<WaypointRef>,
    pub labels: Labels,
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// The pod port: `targetPort` when numeric, the service port when absent, `None` when
    /// `targetPort` names a container port (see [`Model::target_port`]).
    pub target_port: Option<u16>,
    /// `targetPort` when it names a container port.
    pub target_port_name: Option<String>,
    pub protocol: String,
    /// `appProtocol`, else the protocol Istio infers from the port name prefix (`http-…`).
    pub app_protocol: Option<String>,
}

/// The PeerAuthentications that apply to a workload, narrowest last; Istio applies the
/// narrowest one that sets a mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerAuthnSet<'a> {
    pub mesh: Option<&'a PeerAuthentication>,
    pub namespace: Option<&'a PeerAuthentication>,
    pub workload: Option<&'a PeerAuthentication>,
}

impl PeerAuthnSet<'_> {
    /// The effective mTLS mode for a connection to `port` (a workload port): port-level
    /// settings of the workload policy first, then workload, namespace, mesh; `PERMISSIVE`
    /// when nothing sets it (Istio's default).
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        if let Some(m) = self
            .workload
            .and_then(|p| p.spec.port_level_mtls.get(&u32::from(port)))
            .map(|m| m.mode)
            .filter(|m| *m != MtlsMode::Unset)
        {
            return m;
        }
        [self.workload, self.namespace, self.mesh]
            .into_iter()
            .flatten()
            .filter_map(|p| p.spec.mtls.as_ref().map(|m| m.mode))
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive)
    }
}

/// Indices into [`Model::peer_authentications`] for one workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct PeerAuthnIdx {
    mesh: Option<u32>,
    namespace: Option<u32>,
    workload: Option<u32>,
}

/// The immutable snapshot. See the module docs.
#[derive(Debug, Default, Serialize)]
pub struct Model {
    pub trust_domain: String,
    pub root_namespace: String,
    pub cluster_domain: String,
    /// Namespace name → labels.
    namespaces: BTreeMap<String, Labels>,
    workloads: Vec<Workload>,
    services: Vec<Service>,
    waypoints: Vec<Waypoint>,
    virtual_services: Vec<VirtualService>,
    destination_rules: Vec<DestinationRule>,
    peer_authentications: Vec<PeerAuthentication>,
    authorization_policies: Vec<AuthorizationPolicy>,
    istio_gateways: Vec<IstioGateway>,

    #[serde(skip)]
    workload_by_ip: HashMap<IpAddr, WorkloadId>,
    #[serde(skip)]
    workloads_by_node: HashMap<String, Vec<WorkloadId>>,
    #[serde(skip)]
    service_by_vip: HashMap<IpAddr, ServiceId>,
    #[serde(skip)]
    service_by_host: HashMap<String, ServiceId>,
    /// Per service (by id): ready endpoints.
    #[serde(skip)]
    endpoints: Vec<Vec<WorkloadId>>,
    /// Per VirtualService (by index): its rank in Istio's order of precedence.
    #[serde(skip)]
    vs_rank: Vec<u32>,
    /// Mesh-bound VirtualServices by resolved exact host, in rank order.
    #[serde(skip)]
    vs_by_host: HashMap<String, Vec<u32>>,
    /// Mesh-bound VirtualServices with a wildcard host: (pattern, index), in rank order.
    #[serde(skip)]
    vs_wildcard: Vec<(String, u32)>,
    /// Merged DestinationRules keyed by (DR namespace, resolved host or wildcard pattern).
    #[serde(skip)]
    merged_drs: HashMap<(String, String), DestinationRule>,
    /// Wildcard DestinationRule hosts per namespace, most specific first.
    #[serde(skip)]
    dr_wildcards: HashMap<String, Vec<String>>,
    #[serde(skip)]
    peer_authn_by_workload: Vec<PeerAuthnIdx>,
    /// Root-namespace policies without selector: every workload.
    #[serde(skip)]
    authz_mesh: Vec<u32>,
    /// Selector-less policies by namespace.
    #[serde(skip)]
    authz_by_namespace: HashMap<String, Vec<u32>>,
    /// Per workload (by id): selector policies that match it.
    #[serde(skip)]
    authz_by_workload: Vec<Vec<u32>>,
    /// `targetRef(s)` policies keyed by (kind, namespace, name) of the target.
    #[serde(skip)]
    authz_by_target: HashMap<(String, String, String), Vec<u32>>,
}

impl Model {
    /// Builds a model with default options (trust domain `cluster.local`, root namespace
    /// `istio-system`). Resources are assumed validated (see `load`): this never fails, and
    /// ill-formed leftovers (a pod without an IP, an unknown waypoint) are simply not indexed.
    pub fn build(resources: Vec<Resource>) -> Model {
        Model::build_with(resources, &BuildOptions::default())
    }

    /// Builds a model with explicit options.
    pub fn build_with(resources: Vec<Resource>, options: &BuildOptions) -> Model {
        build::build(resources, options)
    }

    // === workloads ===

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    pub fn workload(&self, id: WorkloadId) -> &Workload {
        &self.workloads[id.0 as usize]
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workload_by_ip.get(&ip).map(|id| self.workload(*id))
    }

    pub fn workloads_on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads_by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|id| self.workload(*id))
    }

    // === services ===

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[id.0 as usize]
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Service> {
        self.service_by_vip.get(&ip).map(|id| self.service(*id))
    }

    /// Looks up a service by the name a client in `from_namespace` uses: `reviews`,
    /// `reviews.default`, `reviews.default.svc` or the FQDN (a `:port` suffix is ignored).
    pub fn service_by_host(&self, host: &str, from_namespace: &str) -> Option<&Service> {
        let fqdn = host::lookup_candidate(host, from_namespace, &self.cluster_domain);
        self.service_by_host.get(&fqdn).map(|id| self.service(*id))
    }

    /// The service with exactly this FQDN.
    pub fn service_by_fqdn(&self, fqdn: &str) -> Option<&Service> {
        self.service_by_host.get(fqdn).map(|id| self.service(*id))
    }

    /// Ready workloads (running, with an IP) selected by the service.
    pub fn endpoints<'a>(&'a self, service: &Service) -> impl Iterator<Item = &'a Workload> + 'a {
        self.endpoint_ids(service)
            .iter()
            .map(|id| self.workload(*id))
    }

    pub fn endpoint_ids(&self, service: &Service) -> &[WorkloadId] {
        self.endpoints
            .get(service.id.0 as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The service's endpoints whose labels contain every `subset_labels` entry (a
    /// DestinationRule subset). Linear in the service's endpoints.
    pub fn subset_endpoints<'a>(
        &'a self,
        service: &Service,
        subset_labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.endpoints(service).filter(move |w| {
            subset_labels
                .iter()
                .all(|(k, v)| w.labels.get(k).is_some_and(|lv| lv == v))
        })
    }

    /// The pod port a service port reaches on `workload`, resolving a named `targetPort`
    /// through the workload's container ports.
    pub fn target_port(&self, port: &ServicePort, workload: &Workload) -> Option<u16> {
        match (&port.target_port, &port.target_port_name) {
            (Some(p), _) => Some(*p),
            (None, Some(name)) => workload.container_ports.get(name).copied(),
            (None, None) => Some(port.port),
        }
    }

    // === waypoints ===

    pub fn waypoints(&self) -> &[Waypoint] {
        &self.waypoints
    }

    pub fn waypoint(&self, namespace: &str, name: &str) -> Option<&Waypoint> {
        self.waypoints
            .iter()
            .find(|w| w.reference.namespace == namespace && w.reference.name == name)
    }

    // === namespaces ===

    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }

    // === Istio resources ===

    /// Istio's resolution of `host` written in a resource of `namespace` (short names are
    /// namespace-relative; anything with a dot is taken as written).
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        host::resolve_resource_host(host, namespace, &self.cluster_domain)
    }

    /// PeerAuthentications that apply to the workload (mesh, namespace, workload level).
    pub fn peer_authentications_for(&self, workload: &Workload) -> PeerAuthnSet<'_> {
        let idx = self
            .peer_authn_by_workload
            .get(workload.id.0 as usize)
            .copied()
            .unwrap_or_default();
        let get = |i: Option<u32>| i.map(|i| &self.peer_authentications[i as usize]);
        PeerAuthnSet {
            mesh: get(idx.mesh),
            namespace: get(idx.namespace),
            workload: get(idx.workload),
        }
    }

    /// Selector-bound AuthorizationPolicies (enforced by ztunnel) that apply to the workload:
    /// root-namespace ones mesh-wide, then the workload's namespace, with or without selector.
    /// Policies with `targetRef(s)` are not here: see [`Model::authorization_policies_for_target`].
    pub fn authorization_policies_for<'a>(
        &'a self,
        workload: &Workload,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        let ns = self.authz_by_namespace.get(&workload.namespace);
        let selected = self.authz_by_workload.get(workload.id.0 as usize);
        self.authz_mesh
            .iter()
            .chain(ns.into_iter().flatten())
            .chain(selected.into_iter().flatten())
            .map(|i| &self.authorization_policies[*i as usize])
    }

    /// AuthorizationPolicies attached by `targetRef(s)` to a `Service` or `Gateway` (enforced
    /// by the waypoint). `kind` is the Kubernetes kind (`Service`, `Gateway`, `ServiceEntry`).
    pub fn authorization_policies_for_target<'a>(
        &'a self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        self.authz_by_target
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .map(|i| &self.authorization_policies[*i as usize])
    }

    /// AuthorizationPolicies the waypoint `waypoint_namespace/waypoint_name` enforces for
    /// traffic to `service` (`None`: traffic not addressed to a service): those attached by
    /// `targetRef(s)` to its Gateway, to that Service, or to the waypoint GatewayClass, in load
    /// order. Selector and namespace-wide policies never apply at a waypoint (see
    /// [`crate::authz::scope`]). The caller passes a service this waypoint serves.
    pub fn authorization_policies_for_waypoint<'a>(
        &'a self,
        waypoint_namespace: &str,
        waypoint_name: &str,
        service: Option<&Service>,
    ) -> Vec<&'a AuthorizationPolicy> {
        let target = WaypointTarget {
            namespace: waypoint_namespace,
            name: waypoint_name,
            service: service.map(|s| (s.namespace.as_str(), s.name.as_str())),
            root_namespace: &self.root_namespace,
        };
        let mut keys = vec![
            ("Gateway", waypoint_namespace, waypoint_name),
            (
                "GatewayClass",
                self.root_namespace.as_str(),
                WAYPOINT_GATEWAY_CLASS,
            ),
        ];
        if let Some(s) = service {
            keys.push(("Service", s.namespace.as_str(), s.name.as_str()));
        }
        let mut found: Vec<u32> = keys
            .into_iter()
            .filter_map(|(kind, ns, name)| {
                self.authz_by_target
                    .get(&(kind.to_string(), ns.to_string(), name.to_string()))
            })
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .map(|i| &self.authorization_policies[i as usize])
            .filter(|p| attached_to_waypoint(p, &target))
            .collect()
    }

    pub fn virtual_services(&self) -> &[VirtualService] {
        &self.virtual_services
    }
    pub fn destination_rules(&self) -> &[DestinationRule] {
        &self.destination_rules
    }
    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_authentications
    }
    pub fn authorization_policies(&self) -> &[AuthorizationPolicy] {
        &self.authorization_policies
    }
    pub fn istio_gateways(&self) -> &[IstioGateway] {
        &self.istio_gateways
    }
}
