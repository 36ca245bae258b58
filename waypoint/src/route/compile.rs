//! The route compiler: a [`MeshSnapshot`] in, a [`RouteTable`] out.
//!
//! Runs once per config change, never per request. It resolves every host Istio-style (short
//! names relative to the resource's namespace), selects endpoints by service selector and
//! subset labels, merges subset traffic policies over the top-level one, compiles matchers,
//! retries, faults and authorization, and indexes virtual hosts by every name and cluster IP a
//! client may use. Cluster and endpoint *state* of the previous table is carried over by name
//! and address so a reload keeps pooled connections, breaker counts and ejections.
//!
//! Problems that Istio's validation would reject are reported as warnings naming the resource
//! and field; the offending rule is skipped (or its destination left without endpoints, which
//! answers 503 `UH`) while the rest keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::istio::networking::{
    Destination, HeaderOperations, HttpRoute, Subset, TrafficPolicy, VirtualServiceSpec,
};
use common::k8s::{IntOrString, Pod, Service, ServicePort, USE_WAYPOINT_LABEL};
use common::resource::{DestinationRule, VirtualService};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

use super::match_::RequestMatch;
use super::{
    Action, Forward, HeaderOps, HeaderRules, Mirror, Redirect, Rewrite, Route, RouteError,
    RouteTable, VirtualHost, WeightedCluster,
};
use crate::authz::AuthzTable;
use crate::balance::LbPolicy;
use crate::cluster::{Cluster, ClusterState, Endpoint, EndpointState};
use crate::config::{MeshSnapshot, ServeScope, WaypointConfig};
use crate::fault::Fault;
use crate::outlier::OutlierConfig;
use crate::pool_limits::Limits;
use crate::retry::RetryPolicy;
use crate::workload::{ServiceInfo, WorkloadInfo};

struct Svc<'a> {
    k8s: &'a Service,
    info: Arc<ServiceInfo>,
    pods: Vec<(&'a Pod, Arc<WorkloadInfo>)>,
}

struct Compiler<'a> {
    cfg: &'a WaypointConfig,
    snap: &'a MeshSnapshot,
    prev: Option<&'a RouteTable>,
    services: HashMap<String, Svc<'a>>,
    clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    warnings: Vec<String>,
}

/// Istio's resolution of a host written in a resource of namespace `ns`.
fn resolve(host: &str, ns: &str, domain: &str) -> String {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.contains('.') || h == "*" {
        h
    } else {
        format!("{h}.{ns}.svc.{domain}")
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Compiles a snapshot. `prev` donates live state to unchanged clusters and endpoints.
pub fn compile(
    cfg: &WaypointConfig,
    snap: &MeshSnapshot,
    prev: Option<&RouteTable>,
    generation: u64,
) -> RouteTable {
    let mut c = Compiler {
        cfg,
        snap,
        prev,
        services: HashMap::new(),
        clusters: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let workloads: Vec<(&Pod, Arc<WorkloadInfo>)> = snap
        .pods
        .iter()
        .map(|p| (p, Arc::new(WorkloadInfo::from_pod(p, &cfg.trust_domain))))
        .filter(|(p, w)| {
            w.ip.is_some() && p.status.phase.as_deref().is_none_or(|ph| ph == "Running")
        })
        .collect();
    let workloads_by_ip = workloads
        .iter()
        .filter_map(|(_, w)| Some((w.ip?, w.clone())))
        .collect();
    for s in &snap.services {
        let ns = s.metadata.namespace_or_default();
        let fqdn = format!("{}.{ns}.svc.{}", s.metadata.name, cfg.domain);
        let pods = match &s.spec.selector {
            Some(sel) if !sel.is_empty() => workloads
                .iter()
                .filter(|(p, w)| {
                    &*w.namespace == ns
                        && sel.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                })
                .map(|(p, w)| (*p, w.clone()))
                .collect(),
            _ => Vec::new(),
        };
        let info = Arc::new(ServiceInfo {
            name: Arc::from(s.metadata.name.as_str()),
            namespace: Arc::from(ns),
            fqdn: Arc::from(fqdn.as_str()),
        });
        c.services.insert(fqdn, Svc { k8s: s, info, pods });
    }

    let mut hosts: HashMap<Box<str>, Vec<(u16, Arc<VirtualHost>)>> = HashMap::new();
    let mut vhosts = Vec::new();
    let mut fqdns: Vec<String> = c.services.keys().cloned().collect();
    fqdns.sort();
    for fqdn in fqdns {
        let svc = &c.services[&fqdn];
        if !c.serves(svc.k8s) {
            continue;
        }
        let (k8s, info) = (svc.k8s, svc.info.clone());
        let authz = Arc::new(AuthzTable::for_service(
            cfg,
            k8s,
            &snap.authorization_policies,
            &mut c.warnings,
        ));
        let vss: Vec<&VirtualService> = applicable_vs(snap, &fqdn, &cfg.domain);
        for sp in &k8s.spec.ports {
            let routes = c.routes_for(&fqdn, sp.port, &vss);
            let vh = Arc::new(VirtualHost {
                name: format!("{fqdn}:{}", sp.port),
                service: info.clone(),
                port: sp.port,
                routes,
                authz: authz.clone(),
            });
            let ns = &*info.namespace;
            let name = &*info.name;
            let mut names = vec![
                name.to_string(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                fqdn.clone(),
            ];
            names.extend(
                k8s.spec
                    .cluster_ip
                    .iter()
                    .filter(|ip| *ip != "None")
                    .cloned(),
            );
            names.extend(k8s.spec.cluster_ips.iter().cloned());
            for vs in &vss {
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
            for n in names {
                let e = hosts.entry(n.into_boxed_str()).or_default();
                // Short names may collide across namespaces: the waypoint's own namespace wins.
                if let Some(pos) = e.iter().position(|(p, _)| *p == sp.port) {
                    if &*info.namespace == cfg.namespace.as_str() {
                        e[pos] = (sp.port, vh.clone());
                    }
                } else {
                    e.push((sp.port, vh.clone()));
                }
            }
            vhosts.push(vh);
        }
    }
    RouteTable {
        generation,
        hosts,
        virtual_hosts: vhosts,
        clusters: c.clusters,
        workloads_by_ip,
        warnings: c.warnings,
    }
}

fn applicable_vs<'s>(snap: &'s MeshSnapshot, fqdn: &str, domain: &str) -> Vec<&'s VirtualService> {
    let mut v: Vec<&VirtualService> = snap
        .virtual_services
        .iter()
        .filter(|vs| {
            // VirtualServices bound only to ingress gateways do not apply in the mesh.
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
        })
        .filter(|vs| {
            vs.spec
                .hosts
                .iter()
                .any(|h| host_matches(&resolve(h, vs.namespace(), domain), fqdn))
        })
        .collect();
    v.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    v
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

impl Compiler<'_> {
    fn serves(&self, s: &Service) -> bool {
        match self.cfg.scope {
            ServeScope::All => true,
            ServeScope::Waypoint => {
                let ns = s.metadata.namespace_or_default();
                let label = s.metadata.labels.get(USE_WAYPOINT_LABEL).or_else(|| {
                    self.snap
                        .namespaces
                        .iter()
                        .find(|n| n.metadata.name == ns)
                        .and_then(|n| n.metadata.labels.get(USE_WAYPOINT_LABEL))
                });
                label.is_some_and(|l| l == &self.cfg.name) && ns == self.cfg.namespace
            }
        }
    }

    fn routes_for(&mut self, fqdn: &str, port: u16, vss: &[&VirtualService]) -> Vec<Route> {
        let mut routes = Vec::new();
        for vs in vss {
            for (i, r) in vs.spec.http.iter().enumerate() {
                let what = format!("VirtualService {}/{} http[{i}]", vs.namespace(), vs.name());
                match self.route(vs, &vs.spec, r, port, &what) {
                    Ok(Some(route)) => routes.push(route),
                    Ok(None) => {}
                    Err(e) => self.warnings.push(format!("{what}: {e}; rule skipped")),
                }
            }
        }
        if vss.is_empty() {
            // No VirtualService: Istio's default route to the service itself.
            let cluster = self.cluster(fqdn, None, port, "default route");
            routes.push(Route {
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
            });
        }
        routes
    }

    fn route(
        &mut self,
        vs: &VirtualService,
        _spec: &VirtualServiceSpec,
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
                    self.dest_cluster(&d.destination, &ns, port, &format!("{what} route[{j}]"));
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
                        cluster: self.dest_cluster(m, &ns, port, &format!("{what} mirror")),
                        ppm: (pct * 10_000.0).round() as u32,
                    })
                }
                None => None,
            };
            Action::Forward(Forward {
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
        };
        Ok(Some(Route {
            name,
            matches,
            action,
            fault,
            headers,
        }))
    }

    fn dest_cluster(
        &mut self,
        d: &Destination,
        ns: &str,
        vh_port: u16,
        what: &str,
    ) -> Arc<Cluster> {
        let fqdn = resolve(&d.host, ns, &self.cfg.domain);
        let port = match (&d.port, self.services.get(&fqdn)) {
            (Some(p), _) => p.number as u16,
            (None, Some(s)) if s.k8s.spec.ports.iter().any(|p| p.port == vh_port) => vh_port,
            (None, Some(s)) => s.k8s.spec.ports.first().map_or(vh_port, |p| p.port),
            (None, None) => vh_port,
        };
        self.cluster(&fqdn, d.subset.as_deref(), port, what)
    }

    fn cluster(&mut self, fqdn: &str, subset: Option<&str>, port: u16, what: &str) -> Arc<Cluster> {
        let name: Arc<str> = Arc::from(Cluster::envoy_name(port, subset, fqdn).as_str());
        if let Some(c) = self.clusters.get(&name) {
            return c.clone();
        }
        let domain = self.cfg.domain.clone();
        let dr = self
            .snap
            .destination_rules
            .iter()
            .find(|dr| resolve(&dr.spec.host, dr.namespace(), &domain) == fqdn);
        let (svc_info, svc_port, pods) = match self.services.get(fqdn) {
            Some(s) => (
                s.info.clone(),
                s.k8s.spec.ports.iter().find(|p| p.port == port).cloned(),
                s.pods.clone(),
            ),
            None => {
                self.warnings.push(format!(
                    "{what}: host `{fqdn}` matches no service; it has no endpoints"
                ));
                let (n, ns) = fqdn.split_once('.').unwrap_or((fqdn, ""));
                let ns = ns.split('.').next().unwrap_or("");
                (
                    Arc::new(ServiceInfo {
                        name: n.into(),
                        namespace: ns.into(),
                        fqdn: fqdn.into(),
                    }),
                    None,
                    Vec::new(),
                )
            }
        };
        let subset_def: Option<&Subset> = match subset {
            None => None,
            Some(s) => {
                let found = dr.and_then(|dr| dr.spec.subsets.iter().find(|x| x.name == s));
                if found.is_none() {
                    self.warnings.push(format!(
                        "{what}: subset `{s}` of `{fqdn}` is not defined by any DestinationRule; it has no endpoints"
                    ));
                }
                found
            }
        };
        let top = dr.and_then(|d| d.spec.traffic_policy.as_ref());
        let sub = subset_def.and_then(|s| s.traffic_policy.as_ref());
        let policy = |f: fn(&TrafficPolicy) -> bool| sub.filter(|p| f(p)).or(top.filter(|p| f(p)));
        let lb = LbPolicy::from_istio(
            policy(|p| p.load_balancer.as_ref().is_some_and(|l| l.simple.is_some()))
                .and_then(|p| p.load_balancer.as_ref()?.simple),
        );
        let limits = Limits::default()
            .merged(top.and_then(|p| p.connection_pool.as_ref()))
            .merged(sub.and_then(|p| p.connection_pool.as_ref()));
        let outlier = policy(|p| p.outlier_detection.is_some())
            .and_then(|p| p.outlier_detection.as_ref())
            .map(OutlierConfig::compile);
        let h2_upgrade = policy(|p| {
            p.connection_pool
                .as_ref()
                .and_then(|c| c.http.as_ref())
                .and_then(|h| h.h2_upgrade_policy.as_ref())
                .is_some()
        })
        .and_then(|p| {
            p.connection_pool
                .as_ref()?
                .http
                .as_ref()?
                .h2_upgrade_policy
                .clone()
        });
        let http2 =
            svc_port.as_ref().is_some_and(is_h2_port) || h2_upgrade.as_deref() == Some("UPGRADE");

        let prev = self.prev.and_then(|t| t.clusters.get(&name));
        let state = prev
            .map(|c| c.state.clone())
            .unwrap_or_else(|| Arc::new(ClusterState::default()));
        let mut endpoints = Vec::new();
        if subset.is_none() || subset_def.is_some() {
            for (pod, w) in &pods {
                if let Some(sd) = subset_def {
                    if !sd.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)) {
                        continue;
                    }
                }
                let Some(ip) = w.ip else { continue };
                let target = svc_port.as_ref().map_or(port, |sp| target_port(sp, pod));
                let addr = SocketAddr::new(ip, target);
                let ep_state = prev
                    .and_then(|c| c.find_endpoint(addr))
                    .map(|e| e.state.clone())
                    .unwrap_or_else(|| Arc::new(EndpointState::default()));
                endpoints.push(Endpoint {
                    addr,
                    workload: w.clone(),
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

fn target_port(sp: &ServicePort, pod: &Pod) -> u16 {
    match &sp.target_port {
        Some(IntOrString::Int(i)) => u16::try_from(*i).unwrap_or(sp.port),
        Some(IntOrString::String(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map_or(sp.port, |p| p.container_port),
        None => sp.port,
    }
}

/// Kept for callers that only hold a DestinationRule list.
pub fn find_destination_rule<'a>(
    rules: &'a [DestinationRule],
    fqdn: &str,
    domain: &str,
) -> Option<&'a DestinationRule> {
    rules
        .iter()
        .find(|dr| resolve(&dr.spec.host, dr.namespace(), domain) == fqdn)
}
