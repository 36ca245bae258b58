//! L4 policy at the destination: PeerAuthentication modes, and AuthorizationPolicy through
//! `common`'s engine compiled for [`Layer::L4`].
//!
//! Policies are compiled once per config snapshot, each with its `common` scope (the
//! workloads it selects), so a connection evaluates only its destination's policies. The
//! semantics (Istio's order, HTTP attributes failing closed at L4, warnings naming policy and
//! field) are the engine's; this module only adapts a connection to its attributes.

use common::authz::{self, Attributes, CompiledPolicy, Layer, WorkloadScope};
use common::istio::security::{
    AuthorizationPolicySpec, AuthzAction, MtlsMode, PeerAuthenticationSpec,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use transport::identity::Identity;

/// Istio's root namespace: policies there without a selector apply mesh-wide.
pub const ROOT_NAMESPACE: &str = common::model::DEFAULT_ROOT_NAMESPACE;

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

/// A compiled AuthorizationPolicy with the workloads it applies to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Authorization {
    pub namespace: String,
    pub name: String,
    pub action: AuthzAction,
    scope: WorkloadScope,
    policy: CompiledPolicy,
}

impl Authorization {
    /// Compiles an AuthorizationPolicy for L4, logging what cannot be enforced here. `None`
    /// for a policy attached with `targetRef(s)`: a waypoint enforces those.
    pub fn compile(namespace: &str, name: &str, spec: &AuthorizationPolicySpec) -> Option<Self> {
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            return None;
        }
        let mut warnings = Vec::new();
        let policy = CompiledPolicy::compile(namespace, name, spec, Layer::L4, &mut warnings);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Some(Authorization {
            namespace: namespace.to_string(),
            name: name.to_string(),
            action: spec.action,
            scope: WorkloadScope::new(namespace, spec.selector.as_ref(), ROOT_NAMESPACE),
            policy,
        })
    }

    /// Whether this policy selects the destination workload.
    pub fn applies(&self, t: Target<'_>) -> bool {
        self.scope.applies(t.namespace, t.labels)
    }
}

/// Result of authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming the deciding policy and rule (or that no ALLOW policy matched).
    Deny(String),
}

/// Evaluates the policies of `target` for a connection, in Istio's order.
pub fn authorize(policies: &[Authorization], target: Target<'_>, c: &ConnInfo) -> Decision {
    let attrs = Attributes {
        source: c.src_identity.as_ref(),
        source_ip: c.src_ip,
        remote_ip: c.remote_ip,
        destination_ip: c.dst.ip(),
        destination_port: c.dst.port(),
        request: None,
    };
    let applicable = policies
        .iter()
        .filter(move |p| p.applies(target))
        .map(|p| &p.policy);
    let d = authz::evaluate(applicable, &attrs);
    if d.is_allowed() {
        tracing::trace!(decision = %d, dst = %c.dst, "authorized");
        Decision::Allow
    } else {
        Decision::Deny(d.to_string())
    }
}

/// A compiled PeerAuthentication.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerAuth {
    pub namespace: String,
    pub name: String,
    scope: WorkloadScope,
    mode: MtlsMode,
    port_modes: BTreeMap<u32, MtlsMode>,
}

impl PeerAuth {
    /// Compiles a PeerAuthentication.
    pub fn compile(namespace: &str, name: &str, spec: &PeerAuthenticationSpec) -> Self {
        PeerAuth {
            namespace: namespace.to_string(),
            name: name.to_string(),
            scope: WorkloadScope::new(namespace, spec.selector.as_ref(), ROOT_NAMESPACE),
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
    let level = |pred: fn(&WorkloadScope) -> bool| {
        peer_auths
            .iter()
            .filter(|p| pred(&p.scope) && p.scope.applies(target.namespace, target.labels))
            .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    };
    let workload = |s: &WorkloadScope| {
        matches!(
            s,
            WorkloadScope::Selector {
                namespace: Some(_),
                ..
            }
        )
    };
    if let Some(p) = level(workload) {
        let m = p.port_modes.get(&(port as u32)).copied().unwrap_or(p.mode);
        if m != MtlsMode::Unset {
            return m;
        }
    }
    let namespace = |s: &WorkloadScope| matches!(s, WorkloadScope::Namespace(_));
    let mesh = |s: &WorkloadScope| matches!(s, WorkloadScope::Mesh);
    for pred in [namespace as fn(&WorkloadScope) -> bool, mesh] {
        if let Some(p) = level(pred) {
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
