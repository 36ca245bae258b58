//! The analyzer behind `ztunnel analyze <dir>`: the loader's findings plus the checks that need
//! the whole configuration, in the spirit of `istioctl analyze` (same codes where Istio has
//! one). It catches the classic pitfalls before they become 503s: a VirtualService host or
//! route destination that matches no Service, a route to a subset no DestinationRule defines,
//! weights that do not sum to 100, a DestinationRule for an unknown host, a policy selector
//! that matches no pod, a waypoint that does not exist, duplicate or conflicting resources.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::diagnostic::{codes, Code, Diagnostic, Severity};
use crate::istio::WorkloadSelector;
use crate::k8s::{Labels, Pod, USE_WAYPOINT_LABEL};
use crate::load::{Loaded, Loader, Origin};
use crate::model::{BuildOptions, Model};
use crate::resource::Resource;

/// Every finding about one configuration, sorted by file and line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub resources: usize,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }
}

/// Loads and analyzes a directory with default build options.
pub fn analyze_dir(path: &Path) -> Report {
    let loaded = Loader::new().load_dir(path);
    analyze(&loaded, &BuildOptions::default())
}

/// Analyzes a load: its diagnostics (weights not summing to 100 become errors here) plus the
/// cross-resource checks.
pub fn analyze(loaded: &Loaded, options: &BuildOptions) -> Report {
    let mut diagnostics: Vec<Diagnostic> = loaded
        .diagnostics
        .iter()
        .cloned()
        .map(|mut d| {
            if d.code == codes::WEIGHTS_NOT_100 {
                d.severity = Severity::Error;
            }
            d
        })
        .collect();
    let model = Model::build_with(loaded.resources.clone(), options);
    let mut a = Analysis {
        model: &model,
        out: &mut diagnostics,
        pods_by_ns: HashMap::new(),
    };
    for r in &loaded.resources {
        if let Resource::Pod(p) = r {
            a.pods_by_ns
                .entry(p.metadata.namespace_or_default())
                .or_default()
                .push(p);
        }
    }
    for (r, origin) in loaded.resources.iter().zip(&loaded.origins) {
        let at = At {
            origin,
            resource: r.key().to_string(),
        };
        match r {
            Resource::VirtualService(vs) => {
                let ns = vs.namespace();
                let mesh =
                    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
                for (i, h) in vs.spec.hosts.iter().enumerate() {
                    let fqdn = model.resolve_host(h, ns);
                    if !mesh {
                        continue; // gateway hosts are external names
                    }
                    let path = format!("spec.hosts[{i}]");
                    if !fqdn.contains('*') && model.service_by_fqdn(&fqdn).is_none() {
                        a.push(
                            &at,
                            Severity::Error,
                            codes::REFERENCED_RESOURCE_NOT_FOUND,
                            &path,
                            format!("host \"{h}\" ({fqdn}) matches no Service"),
                        );
                    }
                    // Istio applies one VirtualService per host (the oldest; see
                    // `model::routing`): every other one for the host is flagged.
                    if !fqdn.contains('*') {
                        let winner = model
                            .virtual_service_for_host(&fqdn)
                            .filter(|w| w.namespace() != ns || w.name() != vs.name());
                        if let Some(w) = winner {
                            let first = format!("VirtualService {}/{}", w.namespace(), w.name());
                            a.push(&at, Severity::Error, codes::CONFLICTING_VIRTUAL_SERVICE_HOSTS, &path, format!("host {fqdn} is also routed by {first}; only one VirtualService per host takes effect: {first}, the oldest by creationTimestamp, then name, then namespace"));
                        }
                    }
                }
                for (i, route) in vs.spec.http.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        let p = format!("spec.http[{i}].route[{j}].destination");
                        a.destination(
                            &at,
                            ns,
                            &p,
                            &d.destination.host,
                            d.destination.subset.as_deref(),
                            d.destination.port.as_ref().map(|p| p.number),
                        );
                    }
                    if let Some(m) = &route.mirror {
                        let p = format!("spec.http[{i}].mirror");
                        a.destination(
                            &at,
                            ns,
                            &p,
                            &m.host,
                            m.subset.as_deref(),
                            m.port.as_ref().map(|p| p.number),
                        );
                    }
                }
            }
            Resource::DestinationRule(dr) => {
                let fqdn = model.resolve_host(&dr.spec.host, dr.namespace());
                if !dr.spec.host.is_empty()
                    && !fqdn.contains('*')
                    && model.service_by_fqdn(&fqdn).is_none()
                {
                    a.push(
                        &at,
                        Severity::Error,
                        codes::REFERENCED_RESOURCE_NOT_FOUND,
                        "spec.host",
                        format!("host \"{}\" ({fqdn}) matches no Service", dr.spec.host),
                    );
                }
            }
            Resource::AuthorizationPolicy(ap) => {
                a.selector(
                    &at,
                    ap.namespace(),
                    &ap.spec.selector,
                    "AuthorizationPolicy",
                );
            }
            Resource::PeerAuthentication(pa) => {
                a.selector(&at, pa.namespace(), &pa.spec.selector, "PeerAuthentication");
            }
            Resource::Namespace(n) => a.waypoint_label(&at, &n.metadata.name, &n.metadata.labels),
            Resource::Service(s) => {
                a.waypoint_label(&at, s.metadata.namespace_or_default(), &s.metadata.labels)
            }
            Resource::Pod(p) => {
                a.waypoint_label(&at, p.metadata.namespace_or_default(), &p.metadata.labels)
            }
            Resource::Gateway(_) | Resource::IstioGateway(_) => {}
        }
    }
    diagnostics.sort_by(|x, y| (&x.file, x.line).cmp(&(&y.file, y.line)));
    Report {
        resources: loaded.resources.len(),
        diagnostics,
    }
}

/// Prints one line per finding and a summary; returns the process exit code (0: no errors).
pub fn run_cli(path: &Path, out: &mut impl Write) -> i32 {
    let report = analyze_dir(path);
    let mut write = || -> std::io::Result<()> {
        for d in &report.diagnostics {
            writeln!(out, "{d}")?;
        }
        writeln!(
            out,
            "Analyzed {} resources in {}: {} error(s), {} warning(s)",
            report.resources,
            path.display(),
            report.count(Severity::Error),
            report.count(Severity::Warning)
        )
    };
    if write().is_err() {
        return 2;
    }
    i32::from(report.has_errors())
}

/// The resource a finding is about.
struct At<'a> {
    origin: &'a Origin,
    resource: String,
}

struct Analysis<'a> {
    model: &'a Model,
    out: &'a mut Vec<Diagnostic>,
    pods_by_ns: HashMap<&'a str, Vec<&'a Pod>>,
}

impl Analysis<'_> {
    fn push(&mut self, at: &At, severity: Severity, code: Code, path: &str, message: String) {
        let mut d = Diagnostic::new(severity, code, message);
        d.file = Some(at.origin.file.to_path_buf());
        d.line = Some(at.origin.line_of(path));
        d.resource = Some(at.resource.clone());
        d.path = Some(path.to_string());
        self.out.push(d);
    }

    /// A route destination: the host must be a Service, the port one of its ports, the subset
    /// defined by the DestinationRule the route's namespace sees for that host.
    fn destination(
        &mut self,
        at: &At,
        ns: &str,
        path: &str,
        host: &str,
        subset: Option<&str>,
        port: Option<u32>,
    ) {
        if host.is_empty() {
            return; // already a schema error
        }
        let fqdn = self.model.resolve_host(host, ns);
        match self.model.service_by_fqdn(&fqdn) {
            None => self.push(
                at,
                Severity::Error,
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                &format!("{path}.host"),
                format!("destination host \"{host}\" ({fqdn}) matches no Service"),
            ),
            Some(svc) => {
                if let Some(port) =
                    port.filter(|p| !svc.ports.iter().any(|sp| u32::from(sp.port) == *p))
                {
                    let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
                    self.push(
                        at,
                        Severity::Error,
                        codes::REFERENCED_RESOURCE_NOT_FOUND,
                        &format!("{path}.port.number"),
                        format!(
                            "port {port} is not a port of {fqdn} (ports: {})",
                            ports.join(", ")
                        ),
                    );
                }
            }
        }
        // Checked even without a Service: the 503 trap is independent of it.
        if let Some(subset) = subset {
            let defined = self
                .model
                .destination_rule_for_host(&fqdn, ns)
                .is_some_and(|dr| dr.spec.subsets.iter().any(|s| s.name == subset));
            if !defined {
                self.push(
                    at,
                    Severity::Error,
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    &format!("{path}.subset"),
                    format!("subset \"{subset}\" is defined by no DestinationRule for {fqdn}"),
                );
            }
        }
    }

    fn selector(&mut self, at: &At, ns: &str, sel: &Option<WorkloadSelector>, kind: &str) {
        let Some(sel) = sel else { return };
        let root = ns == self.model.root_namespace;
        let matches = |p: &&Pod| sel.matches(&p.metadata.labels);
        let found = if root {
            self.pods_by_ns.values().flatten().any(matches)
        } else {
            self.pods_by_ns.get(ns).into_iter().flatten().any(matches)
        };
        if !found {
            let labels: Vec<String> = sel
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let scope = if root {
                "any namespace".to_string()
            } else {
                format!("namespace {ns}")
            };
            self.push(
                at,
                Severity::Warning,
                codes::NO_MATCHING_WORKLOADS,
                "spec.selector",
                format!(
                    "{kind} selector {} matches no pod in {scope}",
                    labels.join(",")
                ),
            );
        }
    }

    fn waypoint_label(&mut self, at: &At, ns: &str, labels: &Labels) {
        let Some(name) = labels.get(USE_WAYPOINT_LABEL).filter(|n| *n != "none") else {
            return;
        };
        let wp_ns = labels
            .get("istio.io/use-waypoint-namespace")
            .map(String::as_str)
            .unwrap_or(ns);
        match self.model.waypoint(wp_ns, name) {
            None => self.push(at, Severity::Error, codes::REFERENCED_RESOURCE_NOT_FOUND, "metadata.labels", format!("waypoint {wp_ns}/{name} (label {USE_WAYPOINT_LABEL}) is no Gateway of class istio-waypoint")),
            Some(w) if !w.allows_namespace(ns, self.model.namespace_labels(ns)) => self.push(at, Severity::Error, codes::REFERENCED_RESOURCE_NOT_FOUND, "metadata.labels", format!("waypoint {wp_ns}/{name} (label {USE_WAYPOINT_LABEL}) does not admit namespace {ns}: its HBONE listener's allowedRoutes.namespaces leaves it out, so nothing here uses it")),
            Some(_) => {}
        }
    }
}
