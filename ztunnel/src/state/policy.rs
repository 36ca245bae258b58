//! L4 policy at the destination: PeerAuthentication modes and AuthorizationPolicy evaluation.
//!
//! Istio resources are compiled once per config snapshot into matchers with parsed CIDRs and
//! ports, so evaluation on each connection only compares values. Semantics follow Istio's
//! ambient translation: DENY before ALLOW; if any ALLOW policy applies, one must match; L7
//! fields (methods, paths, hosts, request principals, non-L4 `when` keys) make an ALLOW rule
//! never match and are ignored in a DENY rule, each with a warning naming the policy.

use crate::identity::Identity;
use common::istio::security::{
    AuthorizationPolicySpec, AuthzAction, MtlsMode, PeerAuthenticationSpec, Rule,
};
use common::istio::WorkloadSelector;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Istio's root namespace: policies there without a selector apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// What the policy engine knows about a connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Peer address of the connection that reached this ztunnel (or the HBONE peer's address).
    pub src_ip: IpAddr,
    /// Original client address (from `forwarded` when a waypoint or gateway is in between).
    pub remote_ip: IpAddr,
    /// Authenticated peer identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// Destination workload address and port.
    pub dst: SocketAddr,
}

/// The labels and namespace of the destination workload.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Clone, Debug, serde::Serialize)]
enum Scope {
    Global,
    Namespace(String),
    Selector(String, BTreeMap<String, String>),
}

impl Scope {
    fn new(namespace: &str, selector: Option<&WorkloadSelector>) -> Scope {
        match selector {
            Some(s) if !s.match_labels.is_empty() => {
                let ns = if namespace == ROOT_NAMESPACE {
                    String::new()
                } else {
                    namespace.to_string()
                };
                Scope::Selector(ns, s.match_labels.clone())
            }
            _ if namespace == ROOT_NAMESPACE => Scope::Global,
            _ => Scope::Namespace(namespace.to_string()),
        }
    }

    fn applies(&self, t: Target<'_>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Namespace(ns) => ns == t.namespace,
            Scope::Selector(ns, labels) => {
                (ns.is_empty() || ns == t.namespace)
                    && labels.iter().all(|(k, v)| t.labels.get(k) == Some(v))
            }
        }
    }
}

/// A principal pattern: exact, `*`, `prefix*` or `*suffix`.
#[derive(Clone, Debug, serde::Serialize)]
enum StrMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    fn new(s: &str) -> StrMatch {
        if s == "*" {
            StrMatch::Any
        } else if let Some(p) = s.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            StrMatch::Suffix(p.to_string())
        } else {
            StrMatch::Exact(s.to_string())
        }
    }
    fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => e == v,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

/// One L4 match (a `from` source, a `to` operation or a `when` condition, already merged).
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Match {
    principals: Vec<StrMatch>,
    not_principals: Vec<StrMatch>,
    namespaces: Vec<StrMatch>,
    not_namespaces: Vec<StrMatch>,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
    remote_ip_blocks: Vec<IpNet>,
    not_remote_ip_blocks: Vec<IpNet>,
    dst_ips: Vec<IpNet>,
    not_dst_ips: Vec<IpNet>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

fn any_or_empty<T>(v: &[T], f: impl Fn(&T) -> bool) -> bool {
    v.is_empty() || v.iter().any(f)
}

impl Match {
    fn matches(&self, c: &ConnInfo) -> bool {
        let principal = c.src_identity.as_ref().map(|i| i.principal());
        let ns = c.src_identity.as_ref().map(|i| i.namespace.as_str());
        let pm = |m: &StrMatch| principal.as_deref().is_some_and(|p| m.matches(p));
        let nm = |m: &StrMatch| ns.is_some_and(|n| m.matches(n));
        any_or_empty(&self.principals, pm)
            && !self.not_principals.iter().any(pm)
            && any_or_empty(&self.namespaces, nm)
            && !self.not_namespaces.iter().any(nm)
            && any_or_empty(&self.ip_blocks, |n| n.contains(&c.src_ip))
            && !self.not_ip_blocks.iter().any(|n| n.contains(&c.src_ip))
            && any_or_empty(&self.remote_ip_blocks, |n| n.contains(&c.remote_ip))
            && !self
                .not_remote_ip_blocks
                .iter()
                .any(|n| n.contains(&c.remote_ip))
            && any_or_empty(&self.dst_ips, |n| n.contains(&c.dst.ip()))
            && !self.not_dst_ips.iter().any(|n| n.contains(&c.dst.ip()))
            && any_or_empty(&self.ports, |p| *p == c.dst.port())
            && !self.not_ports.contains(&c.dst.port())
    }
}

/// A compiled rule: any `from`, any `to`, all `when`.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct CompiledRule {
    from: Vec<Match>,
    to: Vec<Match>,
    when: Vec<Match>,
}

impl CompiledRule {
    fn matches(&self, c: &ConnInfo) -> bool {
        any_or_empty(&self.from, |m| m.matches(c))
            && any_or_empty(&self.to, |m| m.matches(c))
            && self.when.iter().all(|m| m.matches(c))
    }
}

/// Policy action at L4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// A compiled AuthorizationPolicy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Authorization {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    scope: Scope,
    rules: Vec<CompiledRule>,
}

fn cidrs(name: &str, field: &str, v: &[String]) -> Vec<IpNet> {
    v.iter()
        .filter_map(|s| {
            let r = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            if r.is_err() {
                tracing::warn!(policy = name, field, value = %s, "invalid CIDR ignored");
            }
            r.ok()
        })
        .collect()
}

fn ports(name: &str, v: &[String]) -> Vec<u16> {
    v.iter()
        .filter_map(|s| {
            let r = s.parse::<u16>();
            if r.is_err() {
                tracing::warn!(policy = name, value = %s, "invalid port ignored");
            }
            r.ok()
        })
        .collect()
}

fn strs(v: &[String]) -> Vec<StrMatch> {
    v.iter().map(|s| StrMatch::new(s)).collect()
}

/// Compiles one rule. `None` means the rule can never match (L7 fields in an ALLOW policy).
fn compile_rule(name: &str, action: Action, rule: &Rule) -> Option<CompiledRule> {
    let l7 = |field: &str| -> bool {
        match action {
            Action::Allow => tracing::warn!(
                policy = name, field,
                "L7 field in an ALLOW rule cannot be enforced at L4 (ztunnel); the rule will never match. Use a waypoint"
            ),
            Action::Deny => tracing::warn!(
                policy = name, field,
                "L7 field in a DENY rule cannot be enforced at L4 (ztunnel); it is ignored and the rest of the rule applies. Use a waypoint"
            ),
        }
        action == Action::Allow
    };
    let mut out = CompiledRule::default();
    for f in &rule.from {
        let s = &f.source;
        if !s.request_principals.is_empty() && l7("requestPrincipals") {
            return None;
        }
        if !s.not_request_principals.is_empty() && l7("notRequestPrincipals") {
            return None;
        }
        out.from.push(Match {
            principals: strs(&s.principals),
            not_principals: strs(&s.not_principals),
            namespaces: strs(&s.namespaces),
            not_namespaces: strs(&s.not_namespaces),
            ip_blocks: cidrs(name, "ipBlocks", &s.ip_blocks),
            not_ip_blocks: cidrs(name, "notIpBlocks", &s.not_ip_blocks),
            remote_ip_blocks: cidrs(name, "remoteIpBlocks", &s.remote_ip_blocks),
            not_remote_ip_blocks: cidrs(name, "notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ..Match::default()
        });
    }
    for t in &rule.to {
        let o = &t.operation;
        for (field, v) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !v.is_empty() && l7(field) {
                return None;
            }
        }
        out.to.push(Match {
            ports: ports(name, &o.ports),
            not_ports: ports(name, &o.not_ports),
            ..Match::default()
        });
    }
    for c in &rule.when {
        let mut m = Match::default();
        match c.key.as_str() {
            "source.ip" => {
                m.ip_blocks = cidrs(name, "when source.ip", &c.values);
                m.not_ip_blocks = cidrs(name, "when source.ip", &c.not_values);
            }
            "remote.ip" => {
                m.remote_ip_blocks = cidrs(name, "when remote.ip", &c.values);
                m.not_remote_ip_blocks = cidrs(name, "when remote.ip", &c.not_values);
            }
            "source.namespace" => {
                m.namespaces = strs(&c.values);
                m.not_namespaces = strs(&c.not_values);
            }
            "source.principal" => {
                m.principals = strs(&c.values);
                m.not_principals = strs(&c.not_values);
            }
            "destination.ip" => {
                m.dst_ips = cidrs(name, "when destination.ip", &c.values);
                m.not_dst_ips = cidrs(name, "when destination.ip", &c.not_values);
            }
            "destination.port" => {
                m.ports = ports(name, &c.values);
                m.not_ports = ports(name, &c.not_values);
            }
            other => {
                if l7(&format!("when {other}")) {
                    return None;
                }
                continue;
            }
        }
        out.when.push(m);
    }
    Some(out)
}

impl Authorization {
    /// Compiles an AuthorizationPolicy. AUDIT and CUSTOM are not L4 actions: they return `None`
    /// with a warning.
    pub fn compile(namespace: &str, name: &str, spec: &AuthorizationPolicySpec) -> Option<Self> {
        let full = format!("{namespace}/{name}");
        let action = match spec.action {
            AuthzAction::Allow => Action::Allow,
            AuthzAction::Deny => Action::Deny,
            other => {
                tracing::warn!(policy = %full, action = ?other, "action not supported by ztunnel; policy ignored");
                return None;
            }
        };
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            // targetRef policies bind to waypoints/services; ztunnel enforces selector-based ones.
            return None;
        }
        let rules = spec
            .rules
            .iter()
            .filter_map(|r| compile_rule(&full, action, r))
            .collect();
        Some(Authorization {
            namespace: namespace.to_string(),
            name: name.to_string(),
            action,
            scope: Scope::new(namespace, spec.selector.as_ref()),
            rules,
        })
    }

    /// Whether this policy selects the destination workload.
    pub fn applies(&self, t: Target<'_>) -> bool {
        self.scope.applies(t)
    }

    /// Whether any rule matches (a policy without rules matches nothing).
    pub fn matches(&self, c: &ConnInfo) -> bool {
        self.rules.iter().any(|r| r.matches(c))
    }
}

/// Result of authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming the policy (or "no ALLOW policy matched").
    Deny(String),
}

/// Evaluates `policies` for a connection to `target`.
pub fn authorize(policies: &[Authorization], target: Target<'_>, c: &ConnInfo) -> Decision {
    let applicable = || policies.iter().filter(|p| p.applies(target));
    if let Some(p) = applicable().find(|p| p.action == Action::Deny && p.matches(c)) {
        return Decision::Deny(format!("denied by DENY policy {}/{}", p.namespace, p.name));
    }
    let mut allows = applicable()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| p.matches(c)) {
        Decision::Allow
    } else {
        Decision::Deny("no ALLOW policy matched".to_string())
    }
}

/// A compiled PeerAuthentication.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerAuth {
    pub namespace: String,
    pub name: String,
    scope: Scope,
    mode: MtlsMode,
    port_modes: BTreeMap<u32, MtlsMode>,
}

impl PeerAuth {
    /// Compiles a PeerAuthentication.
    pub fn compile(namespace: &str, name: &str, spec: &PeerAuthenticationSpec) -> Self {
        PeerAuth {
            namespace: namespace.to_string(),
            name: name.to_string(),
            scope: Scope::new(namespace, spec.selector.as_ref()),
            mode: spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default(),
            port_modes: spec
                .port_level_mtls
                .iter()
                .map(|(p, m)| (*p, m.mode))
                .collect(),
        }
    }
}

/// Effective mTLS mode for `port` of `target`: workload (with per-port), then namespace, then
/// mesh; PERMISSIVE when nothing is set.
pub fn mtls_mode(peer_auths: &[PeerAuth], target: Target<'_>, port: u16) -> MtlsMode {
    let level = |pred: &dyn Fn(&Scope) -> bool| {
        peer_auths
            .iter()
            .filter(|p| pred(&p.scope) && p.scope.applies(target))
            .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    };
    if let Some(p) = level(&|s| matches!(s, Scope::Selector(ns, _) if !ns.is_empty())) {
        let m = p.port_modes.get(&(port as u32)).copied().unwrap_or(p.mode);
        if m != MtlsMode::Unset {
            return m;
        }
    }
    fn is_ns(s: &Scope) -> bool {
        matches!(s, Scope::Namespace(_))
    }
    fn is_global(s: &Scope) -> bool {
        matches!(s, Scope::Global)
    }
    for pred in [is_ns as fn(&Scope) -> bool, is_global] {
        if let Some(p) = level(&pred) {
            if p.mode != MtlsMode::Unset {
                return p.mode;
            }
        }
    }
    MtlsMode::Permissive
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
