//! L7 AuthorizationPolicy, compiled per served service.
//!
//! Evaluation order is Istio's: any matching DENY policy denies; otherwise, if ALLOW policies
//! apply, one must match; otherwise the request is allowed. An ALLOW policy without rules
//! (`spec: {}`) matches nothing, so it denies everything. Denials answer 403
//! `RBAC: access denied`.
//!
//! Which policies apply to a service at this waypoint: those whose `targetRef(s)` name this
//! waypoint's Gateway or the Service, and — so the bookinfo-style policies users already have
//! keep working when L7 moves to the waypoint — policies in the service's namespace whose
//! `selector` is satisfied by the service's own selector, and namespace-wide (or root
//! namespace `istio-system`) policies without selector. AUDIT and CUSTOM are not enforced
//! (warned at compile time).
//!
//! Value forms: exact, `prefix*`, `*suffix`, `*`. `requestPrincipals` (JWT) is not supported yet:
//! a source that requires one never matches (fails closed for ALLOW, open for DENY is avoided by
//! a warning).

use std::net::IpAddr;

use common::istio::security::{AuthzAction, Condition, Operation, Rule, Source};
use common::k8s::Service;
use common::resource::AuthorizationPolicy;
use http::header::HeaderName;
use http::{HeaderMap, Method};
use ipnet::IpNet;
use serde::Serialize;

use crate::config::WaypointConfig;

const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Serialize)]
enum Pat {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pat {
    fn new(s: &str, fold: bool) -> Pat {
        let s = if fold {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        };
        if s == "*" {
            Pat::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pat::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pat::Suffix(p.to_string())
        } else {
            Pat::Exact(s)
        }
    }
    fn matches(&self, v: &str) -> bool {
        match self {
            Pat::Any => true,
            Pat::Exact(e) => v == e,
            Pat::Prefix(p) => v.starts_with(p.as_str()),
            Pat::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

fn pats(v: &[String], fold: bool) -> Vec<Pat> {
    v.iter().map(|s| Pat::new(s, fold)).collect()
}

/// `field` set: one must match; `not_field` set: none may match. Missing value fails `field`.
fn check(pos: &[Pat], neg: &[Pat], v: Option<&str>) -> bool {
    if !pos.is_empty() && !v.is_some_and(|v| pos.iter().any(|p| p.matches(v))) {
        return false;
    }
    !(v.is_some_and(|v| neg.iter().any(|p| p.matches(v))))
}

fn nets(v: &[String]) -> Vec<IpNet> {
    v.iter()
        .filter_map(|s| {
            s.parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

fn check_ip(pos: &[IpNet], neg: &[IpNet], ip: Option<IpAddr>) -> bool {
    if !pos.is_empty() && !ip.is_some_and(|ip| pos.iter().any(|n| n.contains(&ip))) {
        return false;
    }
    !ip.is_some_and(|ip| neg.iter().any(|n| n.contains(&ip)))
}

#[derive(Clone, Debug, Serialize)]
struct CSource {
    principals: Vec<Pat>,
    not_principals: Vec<Pat>,
    namespaces: Vec<Pat>,
    not_namespaces: Vec<Pat>,
    #[serde(skip)]
    ip_blocks: Vec<IpNet>,
    #[serde(skip)]
    not_ip_blocks: Vec<IpNet>,
    needs_request_principal: bool,
}

#[derive(Clone, Debug, Serialize)]
struct COperation {
    hosts: Vec<Pat>,
    not_hosts: Vec<Pat>,
    ports: Vec<Pat>,
    not_ports: Vec<Pat>,
    methods: Vec<Pat>,
    not_methods: Vec<Pat>,
    paths: Vec<Pat>,
    not_paths: Vec<Pat>,
}

#[derive(Clone, Debug, Serialize)]
enum Key {
    Header(#[serde(serialize_with = "ser_name")] HeaderName),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    DestinationIp,
    Unsupported(String),
}

fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

#[derive(Clone, Debug, Serialize)]
struct CCondition {
    key: Key,
    values: Vec<Pat>,
    not_values: Vec<Pat>,
    #[serde(skip)]
    values_ip: Vec<IpNet>,
    #[serde(skip)]
    not_values_ip: Vec<IpNet>,
}

#[derive(Clone, Debug, Serialize)]
struct CRule {
    from: Vec<CSource>,
    to: Vec<COperation>,
    when: Vec<CCondition>,
}

#[derive(Clone, Debug, Serialize)]
struct CPolicy {
    name: String,
    rules: Vec<CRule>,
}

/// What a policy may look at.
pub struct AuthzInput<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub headers: &'a HeaderMap,
    pub source_ip: Option<IpAddr>,
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub destination_ip: Option<IpAddr>,
}

/// The outcome of evaluation.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming the policy (or `none` when no ALLOW policy matched).
    Deny(String),
}

/// Compiled policies for one service.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuthzTable {
    deny: Vec<CPolicy>,
    allow: Vec<CPolicy>,
}

impl CSource {
    fn compile(s: &Source) -> Self {
        CSource {
            principals: pats(&s.principals, false),
            not_principals: pats(&s.not_principals, false),
            namespaces: pats(&s.namespaces, false),
            not_namespaces: pats(&s.not_namespaces, false),
            ip_blocks: nets(if s.ip_blocks.is_empty() {
                &s.remote_ip_blocks
            } else {
                &s.ip_blocks
            }),
            not_ip_blocks: nets(if s.not_ip_blocks.is_empty() {
                &s.not_remote_ip_blocks
            } else {
                &s.not_ip_blocks
            }),
            needs_request_principal: !s.request_principals.is_empty(),
        }
    }
    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        !self.needs_request_principal
            && check(&self.principals, &self.not_principals, r.principal)
            && check(&self.namespaces, &self.not_namespaces, r.namespace)
            && check_ip(&self.ip_blocks, &self.not_ip_blocks, r.source_ip)
    }
}

impl COperation {
    fn compile(o: &Operation) -> Self {
        COperation {
            hosts: pats(&o.hosts, true),
            not_hosts: pats(&o.not_hosts, true),
            ports: pats(&o.ports, false),
            not_ports: pats(&o.not_ports, false),
            methods: pats(&o.methods, false),
            not_methods: pats(&o.not_methods, false),
            paths: pats(&o.paths, false),
            not_paths: pats(&o.not_paths, false),
        }
    }
    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        let host = r.host.to_ascii_lowercase();
        let port = r.port.to_string();
        check(&self.hosts, &self.not_hosts, Some(&host))
            && check(&self.ports, &self.not_ports, Some(&port))
            && check(&self.methods, &self.not_methods, Some(r.method.as_str()))
            && check(&self.paths, &self.not_paths, Some(r.path))
    }
}

impl CCondition {
    fn compile(c: &Condition) -> Self {
        let key = if let Some(h) = c
            .key
            .strip_prefix("request.headers[")
            .and_then(|s| s.strip_suffix(']'))
        {
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map(Key::Header)
                .unwrap_or_else(|_| Key::Unsupported(c.key.clone()))
        } else {
            match c.key.as_str() {
                "source.ip" | "remote.ip" => Key::SourceIp,
                "source.namespace" => Key::SourceNamespace,
                "source.principal" => Key::SourcePrincipal,
                "destination.port" => Key::DestinationPort,
                "destination.ip" => Key::DestinationIp,
                other => Key::Unsupported(other.to_string()),
            }
        };
        CCondition {
            key,
            values: pats(&c.values, false),
            not_values: pats(&c.not_values, false),
            values_ip: nets(&c.values),
            not_values_ip: nets(&c.not_values),
        }
    }
    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        match &self.key {
            Key::Header(h) => {
                let v = r.headers.get(h).and_then(|v| v.to_str().ok());
                check(&self.values, &self.not_values, v)
            }
            Key::SourceIp => check_ip(&self.values_ip, &self.not_values_ip, r.source_ip),
            Key::DestinationIp => check_ip(&self.values_ip, &self.not_values_ip, r.destination_ip),
            Key::SourceNamespace => check(&self.values, &self.not_values, r.namespace),
            Key::SourcePrincipal => check(&self.values, &self.not_values, r.principal),
            Key::DestinationPort => {
                check(&self.values, &self.not_values, Some(&r.port.to_string()))
            }
            Key::Unsupported(_) => false,
        }
    }
}

impl CRule {
    fn compile(r: &Rule) -> Self {
        CRule {
            from: r.from.iter().map(|f| CSource::compile(&f.source)).collect(),
            to: r
                .to
                .iter()
                .map(|t| COperation::compile(&t.operation))
                .collect(),
            when: r.when.iter().map(CCondition::compile).collect(),
        }
    }
    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(r)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(r)))
            && self.when.iter().all(|c| c.matches(r))
    }
}

impl AuthzTable {
    /// Selects and compiles the policies that apply to `svc` at this waypoint.
    pub fn for_service(
        cfg: &WaypointConfig,
        svc: &Service,
        policies: &[AuthorizationPolicy],
        warnings: &mut Vec<String>,
    ) -> Self {
        let svc_ns = svc.metadata.namespace_or_default();
        let mut t = AuthzTable::default();
        for p in policies {
            let ns = p.namespace();
            let refs: Vec<_> = p
                .spec
                .target_ref
                .iter()
                .chain(&p.spec.target_refs)
                .collect();
            let applies =
                if !refs.is_empty() {
                    refs.iter().any(|r| {
                        let rns = r.namespace.as_deref().unwrap_or(ns);
                        (r.kind == "Gateway" && r.name == cfg.name && rns == cfg.namespace)
                            || (r.kind == "Service" && r.name == svc.metadata.name && rns == svc_ns)
                    })
                } else if let Some(sel) = &p.spec.selector {
                    ns == svc_ns
                        && svc.spec.selector.as_ref().is_some_and(|s| {
                            sel.match_labels.iter().all(|(k, v)| s.get(k) == Some(v))
                        })
                } else {
                    ns == svc_ns || ns == ROOT_NAMESPACE
                };
            if !applies {
                continue;
            }
            let what = format!("AuthorizationPolicy {ns}/{}", p.name());
            let compiled = CPolicy {
                name: format!("{ns}/{}", p.name()),
                rules: p.spec.rules.iter().map(CRule::compile).collect(),
            };
            for r in &compiled.rules {
                for c in &r.when {
                    if let Key::Unsupported(k) = &c.key {
                        warnings.push(format!(
                            "{what}: condition key `{k}` is not supported; it never matches"
                        ));
                    }
                }
            }
            match p.spec.action {
                AuthzAction::Allow => t.allow.push(compiled),
                AuthzAction::Deny => t.deny.push(compiled),
                AuthzAction::Audit | AuthzAction::Custom => warnings.push(format!(
                    "{what}: action {:?} is not enforced by the waypoint",
                    p.spec.action
                )),
            }
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    pub fn evaluate(&self, r: &AuthzInput<'_>) -> Decision {
        for p in &self.deny {
            if p.rules.iter().any(|rule| rule.matches(r)) {
                return Decision::Deny(p.name.clone());
            }
        }
        if self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|p| p.rules.iter().any(|rule| rule.matches(r)))
        {
            Decision::Allow
        } else {
            Decision::Deny("none".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MeshSnapshot;
    use std::path::Path;

    fn svc(ns: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = "reviews".into();
        s.metadata.namespace = Some(ns.into());
        s.spec.selector = Some([("app".to_string(), "reviews".to_string())].into());
        s
    }

    fn input<'a>(
        h: &'a HeaderMap,
        m: &'a Method,
        path: &'a str,
        principal: Option<&'a str>,
    ) -> AuthzInput<'a> {
        AuthzInput {
            method: m,
            path,
            host: "reviews:9080",
            port: 9080,
            headers: h,
            source_ip: Some("10.0.0.1".parse().unwrap()),
            principal,
            namespace: principal.map(|_| "default"),
            destination_ip: None,
        }
    }

    #[test]
    fn fixture_reviews_policy() {
        let mut snap = MeshSnapshot::default();
        snap.add_yaml(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/istio/authz-reviews.yaml"
            ))
            .unwrap(),
            Path::new("authz-reviews.yaml"),
        )
        .unwrap();
        let mut w = Vec::new();
        let t = AuthzTable::for_service(
            &WaypointConfig::default(),
            &svc("default"),
            &snap.authorization_policies,
            &mut w,
        );
        let h = HeaderMap::new();
        let pp = Some("cluster.local/ns/default/sa/bookinfo-productpage");
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", pp)),
            Decision::Allow
        );
        assert!(matches!(
            t.evaluate(&input(&h, &Method::POST, "/reviews/1", pp)),
            Decision::Deny(_)
        ));
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/ratings", pp)),
            Decision::Deny(_)
        ));
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", None)),
            Decision::Deny(_)
        ));
        // Other namespaces' policies do not apply.
        let t = AuthzTable::for_service(
            &WaypointConfig::default(),
            &svc("prod"),
            &snap.authorization_policies,
            &mut w,
        );
        assert!(t.is_empty());
    }

    #[test]
    fn deny_first_not_forms_and_conditions() {
        let y = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/*"], notMethods: ["GET"]}}]
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  rules:
  - from: [{source: {notNamespaces: ["evil"]}}]
    to: [{operation: {paths: ["*.html", "/admin/*", "/exact"]}}]
    when: [{key: source.ip, values: ["10.0.0.0/8"]}]
"#;
        let mut snap = MeshSnapshot::default();
        snap.add_yaml(y, Path::new("x.yaml")).unwrap();
        let mut w = Vec::new();
        let t = AuthzTable::for_service(
            &WaypointConfig::default(),
            &svc("default"),
            &snap.authorization_policies,
            &mut w,
        );
        let mut h = HeaderMap::new();
        let p = Some("cluster.local/ns/default/sa/x");
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/index.html", p)),
            Decision::Allow
        );
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/admin/x", p)),
            Decision::Allow
        );
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/exact", p)),
            Decision::Allow
        );
        assert_eq!(
            t.evaluate(&input(&h, &Method::DELETE, "/admin/x", p)),
            Decision::Deny("default/deny-admin".into())
        );
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/other", p)),
            Decision::Deny(_)
        ));
        h.insert("x-block", "yes".parse().unwrap());
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/index.html", p)),
            Decision::Deny(_)
        ));
    }
}
