//! Which AuthorizationPolicies a proxy enforces, as Istio's ambient mode attaches them.
//!
//! - ztunnel (L4), for a destination workload: policies without `targetRef(s)`. A policy in
//!   the root namespace without selector applies mesh-wide, one in another namespace without
//!   selector to that namespace, one with a selector to the matching workloads of its
//!   namespace (of every namespace when it sits in the root namespace). See [`WorkloadScope`].
//! - A waypoint (L7): only policies attached with `targetRef(s)` (see
//!   [`attached_to_waypoint`]): its own `Gateway` (group `gateway.networking.k8s.io`, the
//!   policy in the Gateway's namespace), the destination `Service` (core group, the policy in
//!   the Service's namespace), or the `GatewayClass` `istio-waypoint` from the root namespace
//!   (every waypoint). Istio never applies selector policies at a waypoint, nor selector-less
//!   namespace or root-namespace ones, even when their selector matches the waypoint's pods
//!   (Istio's policy attachment: "waypoints never use selector"); those are ztunnel's.

use serde::Serialize;

use crate::istio::security::PolicyTargetReference;
use crate::istio::WorkloadSelector;
use crate::k8s::{Labels, WAYPOINT_GATEWAY_CLASS};
use crate::resource::AuthorizationPolicy;

const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Where a policy without `targetRef(s)` applies: ztunnel's view of policy scope. Also the
/// scope of a PeerAuthentication, which has the same selector rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum WorkloadScope {
    /// Root namespace, no selector: every workload.
    Mesh,
    /// No selector: every workload of the namespace.
    Namespace(String),
    /// Workloads whose labels contain `labels`, in `namespace` (`None`: a root-namespace
    /// policy, every namespace).
    Selector {
        namespace: Option<String>,
        labels: Labels,
    },
}

impl WorkloadScope {
    /// The scope of a resource in `namespace` with `selector`. An empty selector selects every
    /// workload of the namespace, as no selector does.
    pub fn new(
        namespace: &str,
        selector: Option<&WorkloadSelector>,
        root_namespace: &str,
    ) -> WorkloadScope {
        let root = namespace == root_namespace;
        match selector.filter(|s| !s.match_labels.is_empty()) {
            Some(s) => WorkloadScope::Selector {
                namespace: (!root).then(|| namespace.to_string()),
                labels: s.match_labels.clone(),
            },
            None if root => WorkloadScope::Mesh,
            None => WorkloadScope::Namespace(namespace.to_string()),
        }
    }

    /// Whether a workload of `namespace` with `labels` is in scope.
    pub fn applies(&self, namespace: &str, labels: &Labels) -> bool {
        match self {
            WorkloadScope::Mesh => true,
            WorkloadScope::Namespace(ns) => ns == namespace,
            WorkloadScope::Selector {
                namespace: ns,
                labels: sel,
            } => {
                ns.as_deref().is_none_or(|ns| ns == namespace)
                    && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
        }
    }
}

fn target_refs(p: &AuthorizationPolicy) -> impl Iterator<Item = &PolicyTargetReference> {
    p.spec.target_ref.iter().chain(&p.spec.target_refs)
}

/// ztunnel's scope of `policy`; `None` for a policy attached with `targetRef(s)`, which only a
/// waypoint (or gateway) enforces.
pub fn workload_scope(policy: &AuthorizationPolicy, root_namespace: &str) -> Option<WorkloadScope> {
    if target_refs(policy).next().is_some() {
        return None;
    }
    Some(WorkloadScope::new(
        policy.namespace(),
        policy.spec.selector.as_ref(),
        root_namespace,
    ))
}

/// What a waypoint enforces policy for: itself and, for service traffic, the destination
/// Service it serves.
#[derive(Clone, Copy, Debug)]
pub struct WaypointTarget<'a> {
    /// The waypoint's Gateway.
    pub namespace: &'a str,
    pub name: &'a str,
    /// The destination Service as (namespace, name), when the traffic is for a service.
    pub service: Option<(&'a str, &'a str)>,
    pub root_namespace: &'a str,
}

/// `group` as Kubernetes canonicalises it: the core group is spelled `""` or `core`.
fn canonical_group(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group
    }
}

/// Whether `policy` is attached to the waypoint `t` (see the module docs).
pub fn attached_to_waypoint(policy: &AuthorizationPolicy, t: &WaypointTarget<'_>) -> bool {
    let ns = policy.namespace();
    target_refs(policy).any(|r| {
        let group = canonical_group(&r.group);
        let ref_ns_ok = |expected: &str| r.namespace.as_deref().is_none_or(|n| n == expected);
        match r.kind.as_str() {
            "Gateway" => {
                group == GATEWAY_API_GROUP
                    && r.name == t.name
                    && ns == t.namespace
                    && ref_ns_ok(t.namespace)
            }
            "Service" => {
                group == "core"
                    && t.service
                        .is_some_and(|(sns, sname)| r.name == sname && ns == sns && ref_ns_ok(sns))
            }
            "GatewayClass" => {
                group == GATEWAY_API_GROUP
                    && r.name == WAYPOINT_GATEWAY_CLASS
                    && ns == t.root_namespace
            }
            _ => false,
        }
    })
}
