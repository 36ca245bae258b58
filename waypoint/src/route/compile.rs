//! The route compiler: a `common::Model` in, a [`RouteTable`] out.
//!
//! Runs once per config change, never per request. Istio's resolution rules are `common`'s
//! (which services and pods are bound to this waypoint, the one VirtualService in effect for a
//! service, the DestinationRule a client in the waypoint's namespace sees, a subset's merged
//! traffic policy, named target ports); this module turns their answers into matchers,
//! clusters, retries, faults and authorization tables, and indexes virtual hosts by the
//! tunnel destinations that reach them (service VIP and port, bound pod IP). Cluster and
//! endpoint *state* of the previous table is carried over by name and address so a reload
//! keeps pooled connections, breaker counts and ejections.
//!
//! Problems that Istio's validation would reject are reported as warnings naming the resource
//! and field; the offending rule is skipped (or its destination left without endpoints, which
//! answers 503 `UH`) while the rest keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::istio::networking::{Destination, HeaderOperations, HttpRoute};
use common::model::{traffic, Service, ServiceId, ServicePort};
use common::resource::VirtualService;
use common::Model;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

use super::destination::{self, WorkloadHost};
use super::match_::RequestMatch;
use super::{
    Action, Forward, HeaderOps, HeaderRules, Mirror, Redirect, Rewrite, Route, RouteError,
    RouteTable, VirtualHost, WeightedCluster,
};
use crate::authz::AuthzTable;
use crate::balance::LbPolicy;
use crate::cluster::{Cluster, ClusterState, Endpoint, EndpointState};
use crate::config::{ServeScope, WaypointConfig};
use crate::fault::Fault;
use crate::outlier::OutlierConfig;
use crate::pool_limits::Limits;
use crate::retry::RetryPolicy;
use crate::workload::{ServiceInfo, WorkloadInfo};

struct Compiler<'a> {
    cfg: &'a WaypointConfig,
    model: &'a Model,
    prev: Option<&'a RouteTable>,
    /// Per model workload (by id).
    workloads: Vec<Arc<WorkloadInfo>>,
    services: HashMap<ServiceId, Arc<ServiceInfo>>,
    clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    warnings: Vec<String>,
}

/// Compiles a model. `prev` donates live state to unchanged clusters and endpoints.
pub fn compile(
    cfg: &WaypointConfig,
    model: &Model,
    prev: Option<&RouteTable>,
    generation: u64,
) -> RouteTable {
    let mut c = Compiler {
        cfg,
        model,
        prev,
        workloads: model
            .workloads()
            .iter()
            .map(|w| Arc::new(WorkloadInfo::from_workload(w)))
            .collect(),
        services: HashMap::new(),
        clusters: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let mut workloads_by_ip = HashMap::new();
    for w in model.workloads().iter().filter(|w| w.ready) {
        for ip in &w.ips {
            workloads_by_ip.insert(*ip, c.workloads[w.id.0 as usize].clone());
        }
    }

    let mut hosts: HashMap<Box<str>, Vec<(u16, Arc<VirtualHost>)>> = HashMap::new();
    let mut by_destination = HashMap::new();
    let mut vhosts = Vec::new();
    let mut served: Vec<&Service> = model.services().iter().filter(|s| c.serves(s)).collect();
    served.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    for svc in served {
        let info = c.service_info(svc);
        let authz = Arc::new(AuthzTable::compile(
            model.authorization_policies_for_waypoint(&cfg.namespace, &cfg.name, Some(svc)),
            &mut c.warnings,
        ));
        let vs = model.virtual_service_for_waypoint(svc, &cfg.namespace);
        for sp in &svc.ports {
            let routes = c.routes_for(svc, sp.port, vs);
            let vh = Arc::new(VirtualHost {
                name: format!("{}:{}", svc.hostname, sp.port),
                service: info.clone(),
                workload: None,
                port: sp.port,
                routes,
                authz: authz.clone(),
            });
            for vip in &svc.vips {
                by_destination.insert(SocketAddr::new(*vip, sp.port), vh.clone());
            }
            for n in host_names(svc, vs) {
                let e = hosts.entry(n.into_boxed_str()).or_default();
                // Short names may collide across namespaces: the waypoint's own namespace wins.
                if let Some(pos) = e.iter().position(|(p, _)| *p == sp.port) {
                    if svc.namespace == cfg.namespace {
                        e[pos] = (sp.port, vh.clone());
                    }
                } else {
                    e.push((sp.port, vh.clone()));
                }
            }
            vhosts.push(vh);
        }
    }
    let workload_hosts = c.workload_hosts();
    RouteTable {
        generation,
        hosts,
        by_destination,
        workload_hosts,
        virtual_hosts: vhosts,
        clusters: c.clusters,
        workloads_by_ip,
        warnings: c.warnings,
    }
}

/// Every name a plaintext client may put in `Host` for the service (the test listener's
/// selection; tunnels select by destination).
fn host_names(svc: &Service, vs: Option<&VirtualService>) -> Vec<String> {
    let (name, ns) = (&svc.name, &svc.namespace);
    let mut names = vec![
        name.to_string(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        svc.hostname.clone(),
    ];
    names.extend(svc.vips.iter().map(ToString::to_string));
    if let Some(vs) = vs {
        names.extend(
            vs.spec
                .hosts
                .iter()
                .filter(|h| !h.contains('*'))
                .map(|h| h.to_ascii_lowercase()),
        );
    }
    names.sort();
    names.dedup();
    names
}

fn header_ops(h: Option<&HeaderOperations>, what: &str, warnings: &mut Vec<String>) -> HeaderOps {
    let Some(h) = h else {
        return HeaderOps::default();
    };
    let mut ops = HeaderOps::default();
    let mut pair = |k: &String, v: &String| -> Option<(HeaderName, HeaderValue)> {
        match (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                warnings.push(format!("{what}: invalid header `{k}: {v}` ignored"));
                None
            }
        }
    };
    ops.set = h.set.iter().filter_map(|(k, v)| pair(k, v)).collect();
    ops.add = h.add.iter().filter_map(|(k, v)| pair(k, v)).collect();
    ops.remove = h
        .remove
        .iter()
        .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    ops
}

fn header_rules(
    h: Option<&common::istio::networking::Headers>,
    what: &str,
    w: &mut Vec<String>,
) -> HeaderRules {
    HeaderRules {
        request: header_ops(h.and_then(|h| h.request.as_ref()), what, w),
        response: header_ops(h.and_then(|h| h.response.as_ref()), what, w),
    }
}

/// A route forwarding everything to `cluster`: Istio's route when no VirtualService applies.
pub(super) fn default_route(cluster: Arc<Cluster>) -> Route {
    Route {
        name: "default".into(),
        matches: Vec::new(),
        action: Action::Forward(Forward {
            clusters: vec![WeightedCluster {
                weight: 100,
                cluster,
                headers: HeaderRules::default(),
            }],
            total_weight: 100,
            rewrite: None,
            timeout: None,
            retry: RetryPolicy::istio_default(),
            mirror: None,
        }),
        fault: None,
        headers: HeaderRules::default(),
    }
}

impl Compiler<'_> {
    fn is_this_waypoint(&self, wp: Option<&common::model::WaypointRef>) -> bool {
        wp.is_some_and(|w| w.name == self.cfg.name && w.namespace == self.cfg.namespace)
    }

    fn serves(&self, s: &Service) -> bool {
        match self.cfg.scope {
            ServeScope::All => true,
            ServeScope::Waypoint => self.is_this_waypoint(s.waypoint.as_ref()),
        }
    }

    fn service_info(&mut self, s: &Service) -> Arc<ServiceInfo> {
        self.services
            .entry(s.id)
            .or_insert_with(|| {
                Arc::new(ServiceInfo {
                    name: Arc::from(s.name.as_str()),
                    namespace: Arc::from(s.namespace.as_str()),
                    fqdn: Arc::from(s.hostname.as_str()),
                })
            })
            .clone()
    }

    /// Pods bound to this waypoint (their own label or their namespace's), each with the
    /// ports known now or seen by the previous table compiled up front.
    fn workload_hosts(&mut self) -> HashMap<std::net::IpAddr, Arc<WorkloadHost>> {
        let mut out = HashMap::new();
        let model = self.model;
        for w in model.workloads() {
            if !w.ready || !self.is_this_waypoint(w.waypoint.as_ref()) {
                continue;
            }
            // Traffic addressed to a pod has no Service: only the policies attached to this
            // waypoint's Gateway (or its class) apply.
            let authz = Arc::new(AuthzTable::compile(
                model.authorization_policies_for_waypoint(
                    &self.cfg.namespace,
                    &self.cfg.name,
                    None,
                ),
                &mut self.warnings,
            ));
            let prev = self.prev.and_then(|t| t.workload_hosts.get(&w.ip));
            let mut ports: Vec<u16> = w.container_ports.values().copied().collect();
            for sid in &w.services {
                let svc = model.service(*sid);
                ports.extend(svc.ports.iter().filter_map(|p| model.target_port(p, w)));
            }
            if let Some(p) = prev {
                ports.extend(p.known_ports());
            }
            let host = Arc::new(WorkloadHost::new(
                self.workloads[w.id.0 as usize].clone(),
                w.ip,
                authz,
            ));
            for port in ports {
                let vh = destination::workload_vhost(&host, port, prev);
                if let Some(Action::Forward(f)) = vh.routes.first().map(|r| &r.action) {
                    let c = f.clusters[0].cluster.clone();
                    self.clusters.insert(c.name.clone(), c);
                }
                host.insert(port, vh);
            }
            for ip in &w.ips {
                out.insert(*ip, host.clone());
            }
        }
        out
    }

    fn routes_for(&mut self, svc: &Service, port: u16, vs: Option<&VirtualService>) -> Vec<Route> {
        let Some(vs) = vs else {
            // No VirtualService: Istio's default route to the service itself.
            let cluster = self.cluster(&svc.hostname, None, port, "default route");
            return vec![default_route(cluster)];
        };
        let mut routes = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let what = format!("VirtualService {}/{} http[{i}]", vs.namespace(), vs.name());
            match self.route(vs, r, port, &what) {
                Ok(Some(route)) => routes.push(route),
                Ok(None) => {}
                Err(e) => self.warnings.push(format!("{what}: {e}; rule skipped")),
            }
        }
        routes
    }

    fn route(
        &mut self,
        vs: &VirtualService,
        r: &HttpRoute,
        port: u16,
        what: &str,
    ) -> Result<Option<Route>, RouteError> {
        let ns = vs.namespace().to_string();
        let mut matches = Vec::new();
        for m in &r.matches {
            if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
                continue;
            }
            matches.push(RequestMatch::compile(m)?);
        }
        if !r.matches.is_empty() && matches.is_empty() {
            return Ok(None); // every block was for a gateway
        }
        if matches.iter().any(|m| m.port.is_some_and(|p| p != port))
            && matches.iter().all(|m| m.port.is_some_and(|p| p != port))
        {
            return Ok(None); // only for other ports of this service
        }
        let fault = r
            .fault
            .as_ref()
            .map(Fault::compile)
            .transpose()
            .map_err(|e| RouteError::Invalid(e.to_string()))?
            .flatten();
        let headers = header_rules(r.headers.as_ref(), what, &mut self.warnings);
        let name = r
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", vs.name(), ns));
        let action = if let Some(rd) = &r.redirect {
            let code = rd.redirect_code.unwrap_or(301);
            let code = u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.is_redirection())
                .ok_or_else(|| {
                    RouteError::Invalid(format!("redirect.redirectCode {code} is not a 3xx"))
                })?;
            Action::Redirect(Redirect {
                uri: rd.uri.clone(),
                authority: rd.authority.clone(),
                port: rd.port.and_then(|p| u16::try_from(p).ok()),
                scheme: rd.scheme.clone(),
                code,
            })
        } else if let Some(d) = &r.direct_response {
            let code = u16::try_from(d.status)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    RouteError::Invalid(format!("directResponse.status {}", d.status))
                })?;
            Action::Direct(code)
        } else {
            Action::Forward(self.forward(r, &ns, port, what)?)
        };
        Ok(Some(Route {
            name,
            matches,
            action,
            fault,
            headers,
        }))
    }

    fn forward(
        &mut self,
        r: &HttpRoute,
        ns: &str,
        port: u16,
        what: &str,
    ) -> Result<Forward, RouteError> {
        if r.route.is_empty() {
            return Err(RouteError::Invalid(
                "no route, redirect or directResponse".into(),
            ));
        }
        let mut clusters = Vec::new();
        for (j, d) in r.route.iter().enumerate() {
            let weight = match (d.weight, r.route.len()) {
                (Some(w), _) if w < 0 => {
                    return Err(RouteError::Invalid(format!(
                        "route[{j}].weight {w} is negative"
                    )))
                }
                (Some(w), _) => w as u32,
                (None, 1) => 100,
                (None, _) => 0,
            };
            let cluster =
                self.dest_cluster(&d.destination, ns, port, &format!("{what} route[{j}]"));
            clusters.push(WeightedCluster {
                weight,
                cluster,
                headers: header_rules(d.headers.as_ref(), what, &mut self.warnings),
            });
        }
        let total_weight: u32 = clusters.iter().map(|c| c.weight).sum();
        if clusters.len() > 1 && total_weight != 100 {
            self.warnings.push(format!(
                "{what}: route weights sum to {total_weight}, not 100; traffic is split in proportion"
            ));
        }
        let mirror = match &r.mirror {
            Some(m) => {
                let pct = r
                    .mirror_percentage
                    .map(|p| p.value)
                    .or(r.mirror_percent.map(f64::from))
                    .unwrap_or(100.0)
                    .clamp(0.0, 100.0);
                Some(Mirror {
                    cluster: self.dest_cluster(m, ns, port, &format!("{what} mirror")),
                    ppm: (pct * 10_000.0).round() as u32,
                })
            }
            None => None,
        };
        Ok(Forward {
            clusters,
            total_weight,
            rewrite: r.rewrite.as_ref().map(|rw| Rewrite {
                uri: rw.uri.clone(),
                authority: rw.authority.clone(),
            }),
            timeout: r.timeout.map(|t| t.as_std()).filter(|t| !t.is_zero()),
            retry: RetryPolicy::compile(r.retries.as_ref())
                .map_err(|e| RouteError::Invalid(e.to_string()))?,
            mirror,
        })
    }

    fn dest_cluster(
        &mut self,
        d: &Destination,
        ns: &str,
        vh_port: u16,
        what: &str,
    ) -> Arc<Cluster> {
        let fqdn = self.model.resolve_host(&d.host, ns);
        let port = match (&d.port, self.model.service_by_fqdn(&fqdn)) {
            (Some(p), _) => p.number as u16,
            (None, Some(s)) if s.ports.iter().any(|p| p.port == vh_port) => vh_port,
            (None, Some(s)) => s.ports.first().map_or(vh_port, |p| p.port),
            (None, None) => vh_port,
        };
        self.cluster(&fqdn, d.subset.as_deref(), port, what)
    }

    fn cluster(&mut self, fqdn: &str, subset: Option<&str>, port: u16, what: &str) -> Arc<Cluster> {
        let name: Arc<str> = Arc::from(Cluster::envoy_name(port, subset, fqdn).as_str());
        if let Some(c) = self.clusters.get(&name) {
            return c.clone();
        }
        let model = self.model;
        // The waypoint is the client: its namespace comes first in DestinationRule lookup.
        let dr = model.destination_rule_for_host(fqdn, &self.cfg.namespace);
        let svc = model.service_by_fqdn(fqdn);
        let svc_info = match svc {
            Some(s) => self.service_info(s),
            None => {
                self.warnings.push(format!(
                    "{what}: host `{fqdn}` matches no service; it has no endpoints"
                ));
                let (n, ns) = fqdn.split_once('.').unwrap_or((fqdn, ""));
                let ns = ns.split('.').next().unwrap_or("");
                Arc::new(ServiceInfo {
                    name: n.into(),
                    namespace: ns.into(),
                    fqdn: fqdn.into(),
                })
            }
        };
        let svc_port = svc.and_then(|s| s.ports.iter().find(|p| p.port == port));
        let subset_def = subset.and_then(|s| {
            let found = dr.and_then(|dr| traffic::subset(dr, s));
            if found.is_none() {
                self.warnings.push(format!(
                    "{what}: subset `{s}` of `{fqdn}` is not defined by any DestinationRule; it has no endpoints"
                ));
            }
            found
        });
        let policy = dr.and_then(|dr| traffic::cluster_policy(dr, subset, port));
        let policy = policy.as_ref();
        let lb = LbPolicy::from_istio(
            policy
                .and_then(|p| p.load_balancer.as_ref())
                .and_then(|l| l.simple),
        );
        let pool = policy.and_then(|p| p.connection_pool.as_ref());
        let limits = Limits::default().merged(pool);
        let outlier = policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(OutlierConfig::compile);
        let h2_upgrade = pool
            .and_then(|c| c.http.as_ref())
            .and_then(|h| h.h2_upgrade_policy.as_deref());
        let http2 = svc_port.is_some_and(is_h2_port) || h2_upgrade == Some("UPGRADE");

        let prev = self.prev.and_then(|t| t.clusters.get(&name));
        let state = prev
            .map(|c| c.state.clone())
            .unwrap_or_else(|| Arc::new(ClusterState::default()));
        let mut endpoints = Vec::new();
        if let (Some(s), true) = (svc, subset.is_none() || subset_def.is_some()) {
            for w in model.endpoints(s) {
                if let Some(sd) = subset_def {
                    if !sd.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)) {
                        continue;
                    }
                }
                // A named target port the pod does not declare: not an endpoint of this port.
                let target = match svc_port {
                    Some(sp) => match model.target_port(sp, w) {
                        Some(t) => t,
                        None => continue,
                    },
                    None => port,
                };
                let addr = SocketAddr::new(w.ip, target);
                let ep_state = prev
                    .and_then(|c| c.find_endpoint(addr))
                    .map(|e| e.state.clone())
                    .unwrap_or_else(|| Arc::new(EndpointState::default()));
                endpoints.push(Endpoint {
                    addr,
                    workload: self.workloads[w.id.0 as usize].clone(),
                    state: ep_state,
                });
            }
        }
        state.total.store(endpoints.len() as u32, Ordering::Release);
        let now = tokio::time::Instant::now();
        let ejected = endpoints
            .iter()
            .filter(|e| e.state.outlier.is_ejected(now, &*state))
            .count();
        state.ejected.store(ejected as u32, Ordering::Release);
        let c = Arc::new(Cluster {
            name: name.clone(),
            service: svc_info,
            subset: subset.map(Arc::from),
            port,
            endpoints,
            lb,
            limits,
            outlier,
            http2,
            state,
        });
        self.clusters.insert(name, c.clone());
        c
    }
}

fn is_h2_port(p: &ServicePort) -> bool {
    let proto = p
        .app_protocol
        .as_deref()
        .or(p.name.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    ["http2", "grpc", "h2c", "kubernetes.io/h2c"]
        .iter()
        .any(|x| proto == *x || proto.starts_with(&format!("{x}-")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::model;
    use crate::pool_limits::UNLIMITED;

    const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
status: {podIP: 10.0.0.2}
"#;

    fn table(extra: &str, cfg: &WaypointConfig) -> RouteTable {
        let m = model(
            &format!("{BASE}---\n{extra}"),
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        compile(cfg, &m, None, 1)
    }

    fn forward_cluster(vh: &VirtualHost) -> Arc<Cluster> {
        match &vh.routes[0].action {
            Action::Forward(f) => f.clusters[0].cluster.clone(),
            _ => panic!("not a forward"),
        }
    }

    #[test]
    fn one_virtual_service_per_host_the_oldest() {
        let vs = |name: &str, ts: &str, subset: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{ts}\"}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {{host: reviews, subset: {subset}}}}}]}}]\n---\n")
        };
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}\n";
        let extra = [
            vs("a-newer", "2024-02-01T00:00:00Z", "v1"),
            vs("z-older", "2024-01-01T00:00:00Z", "v2"),
            dr.to_string(),
        ]
        .concat();
        let t = table(&extra, &WaypointConfig::default());
        let vh = t
            .vhost_for_destination("10.96.0.10:9080".parse().unwrap())
            .unwrap();
        // Only the older VirtualService's rules, not both concatenated.
        assert_eq!(vh.routes.len(), 1);
        assert_eq!(forward_cluster(&vh).subset.as_deref(), Some("v2"));
        assert_eq!(forward_cluster(&vh).endpoints.len(), 1);
    }

    #[test]
    fn destination_rules_as_the_waypoints_namespace_sees_them() {
        let dr = |ns: &str, body: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: {ns}}}\nspec:\n  host: reviews.default.svc.cluster.local\n{body}---\n")
        };
        let extra = [
            dr(
                "default",
                "  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 10}, http: {http2MaxRequests: 20}}\n    loadBalancer: {simple: RANDOM}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 3}}}\n",
            ),
            dr("infra", "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"),
        ]
        .concat();
        // A waypoint in `default` sees the service namespace's rule.
        let t = table(&extra, &WaypointConfig::default());
        let all = &t.clusters["outbound|9080||reviews.default.svc.cluster.local"];
        assert_eq!(all.lb, LbPolicy::Random);
        assert_eq!(
            (all.limits.max_connections, all.limits.max_requests),
            (10, 20)
        );
        // The subset's `connectionPool` replaces the rule's whole: no tcp or http2 limit left.
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v1}}]}]\n";
        let t = table(&format!("{extra}{vs}"), &WaypointConfig::default());
        let v1 = &t.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"];
        assert_eq!(v1.limits.max_pending_requests, 3);
        assert_eq!(
            (v1.limits.max_connections, v1.limits.max_requests),
            (UNLIMITED, UNLIMITED)
        );
        assert_eq!(v1.lb, LbPolicy::Random);
        // A waypoint in `infra` is a client there: its namespace's rule comes first.
        let cfg = WaypointConfig {
            namespace: "infra".into(),
            ..WaypointConfig::default()
        };
        let t = table(&extra, &cfg);
        let all = &t.clusters["outbound|9080||reviews.default.svc.cluster.local"];
        assert_eq!(all.lb, LbPolicy::RoundRobin);
        assert_eq!(all.limits.max_connections, UNLIMITED);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: named, namespace: default}\nspec: {clusterIP: 10.96.0.11, selector: {app: reviews}, ports: [{name: http, port: 80, targetPort: web}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v3, namespace: default, labels: {app: reviews, version: v3}}\nspec: {containers: [{name: c, ports: [{name: web, containerPort: 8081}]}]}\nstatus: {podIP: 10.0.0.3}\n";
        let t = table(extra, &WaypointConfig::default());
        let c = &t.clusters["outbound|80||named.default.svc.cluster.local"];
        // Only the pod that declares the named port is an endpoint, on that port.
        let eps: Vec<_> = c.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(eps, ["10.0.0.3:8081"]);
    }
}
