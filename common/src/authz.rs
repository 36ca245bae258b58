//! The mesh's one AuthorizationPolicy engine, compiled per layer: ztunnel evaluates it at
//! [`Layer::L4`] for each connection, the waypoint at [`Layer::L7`] for each request.
//!
//! Policies are compiled once per configuration (CIDRs, ports, header names and value
//! patterns parsed) into [`CompiledPolicy`]s; evaluating a connection or request only compares.
//! Istio's decision order: a matching DENY denies (CUSTOM, not supported, is enforced as a DENY
//! for what its rules match, so it fails closed); otherwise, if any ALLOW policy applies, one
//! of its rules must match; otherwise the request is allowed. AUDIT never affects the decision.
//! An ALLOW policy without rules matches nothing (so `spec: {}` denies everything),
//! `rules: [{}]` matches everything, a DENY policy without rules matches nothing.
//!
//! Within a rule: any `from` source, any `to` operation and every `when` condition; within a
//! source or operation every field; within a field any value (`not*` fields and `notValues`:
//! none). Values are exact, `prefix*`, `*suffix` or `*` (present); ports are numbers.
//!
//! Attributes ([`Attributes`]): the source identity (principal and namespace read from
//! [`Identity`]'s fields), the source IP (the direct peer: `ipBlocks`, `source.ip`), the remote
//! IP (the original client: `remoteIpBlocks`, `remote.ip`), the destination IP and port, and,
//! at L7, the request: host (case-insensitive), method, path (normalised, see [`path`]),
//! headers (all values), request principal (none until JWT exists).
//!
//! Layer rules (see `compile` for the details): at L4, an ALLOW rule needing an HTTP attribute
//! never matches and a DENY rule needing one is enforced on its L4 parts; at both layers,
//! whatever is not understood makes an ALLOW rule never match and leaves a DENY rule matching
//! on the rest. Each such case is a [`Warning`] naming the policy and the field. Which
//! policies a proxy enforces is decided by [`scope`] (and the `Model` functions built on it).

mod compile;
mod matcher;
pub mod path;
pub mod scope;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;
use serde::Serialize;

use crate::identity::Identity;
use crate::istio::security::{AuthorizationPolicySpec, AuthzAction};
use crate::resource::AuthorizationPolicy;
use matcher::{CompiledRule, Ctx};

pub use path::{PathError, PathNormalization};
pub use scope::{attached_to_waypoint, workload_scope, WaypointTarget, WorkloadScope};

/// Where a policy is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Layer {
    /// ztunnel: connections; HTTP attributes are unknown.
    L4,
    /// The waypoint: HTTP requests.
    L7,
}

/// A policy's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyId {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A field of a policy that is not enforced as written, and how it is enforced instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub policy: PolicyId,
    /// Path of the field in the resource, e.g. `spec.rules[0].to[0].operation.methods`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuthorizationPolicy {}: {}: {}",
            self.policy, self.field, self.message
        )
    }
}

/// The HTTP part of what a policy may look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    /// `:authority` / `Host`, as sent (matched case-insensitively).
    pub host: &'a str,
    pub method: &'a str,
    /// The normalised path, without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The JWT principal (`iss/sub`). Always `None` until request authentication exists.
    pub request_principal: Option<&'a str>,
}

/// What a policy may look at: a connection, plus the request at L7.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The authenticated peer identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    /// The direct peer's address.
    pub source_ip: IpAddr,
    /// The original client's address (the direct peer when nothing says otherwise).
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None` at L4. At L7 without a request, HTTP fields fail closed.
    pub request: Option<RequestAttributes<'a>>,
}

/// One AuthorizationPolicy compiled for one layer.
#[derive(Clone, Debug, Serialize)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    /// The action as written (CUSTOM is enforced as DENY).
    pub action: AuthzAction,
    /// The rules that can match, each knowing its index in the policy.
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    /// Compiles `spec` of the policy `namespace/name` for `layer`; warnings are appended.
    pub fn compile(
        namespace: &str,
        name: &str,
        spec: &AuthorizationPolicySpec,
        layer: Layer,
        warnings: &mut Vec<Warning>,
    ) -> CompiledPolicy {
        let id = PolicyId {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        compile::compile(id, spec, layer, warnings)
    }

    fn denies(&self) -> bool {
        matches!(self.action, AuthzAction::Deny | AuthzAction::Custom)
    }

    /// Index of the first rule matching `cx`.
    fn first_match(&self, cx: &Ctx<'_>) -> Option<usize> {
        let deny_like = self.action != AuthzAction::Allow;
        self.rules
            .iter()
            .find(|r| r.matches(cx, deny_like))
            .map(|r| r.index)
    }
}

/// The policy and rule that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched<'p> {
    pub policy: &'p PolicyId,
    pub action: AuthzAction,
    /// Index in the policy's `rules`.
    pub rule: usize,
}

/// The outcome of an evaluation, naming what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Allowed by a matching ALLOW rule, or (`None`) because no ALLOW policy applies.
    Allow(Option<Matched<'p>>),
    /// Denied by a matching DENY (or CUSTOM) rule, or (`None`) because ALLOW policies apply
    /// and none matched.
    Deny(Option<Matched<'p>>),
}

impl Decision<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(None) => f.write_str("allowed: no ALLOW policy applies"),
            Decision::Deny(None) => f.write_str("denied: no ALLOW policy matched"),
            Decision::Allow(Some(m)) | Decision::Deny(Some(m)) => {
                let verb = if self.is_allowed() {
                    "allowed"
                } else {
                    "denied"
                };
                let action = match m.action {
                    AuthzAction::Allow => "ALLOW",
                    AuthzAction::Deny => "DENY",
                    AuthzAction::Custom => "CUSTOM (enforced as DENY)",
                    AuthzAction::Audit => "AUDIT",
                };
                write!(f, "{verb} by {action} policy {} rule {}", m.policy, m.rule)
            }
        }
    }
}

/// Evaluates the policies that apply to a connection or request, in Istio's order.
pub fn evaluate<'p, I>(policies: I, attrs: &Attributes<'_>) -> Decision<'p>
where
    I: IntoIterator<Item = &'p CompiledPolicy>,
    I::IntoIter: Clone,
{
    let policies = policies.into_iter();
    let cx = Ctx::new(attrs);
    let matched = |p: &'p CompiledPolicy, rule| Matched {
        policy: &p.id,
        action: p.action,
        rule,
    };
    for p in policies.clone().filter(|p| p.denies()) {
        if let Some(rule) = p.first_match(&cx) {
            return Decision::Deny(Some(matched(p, rule)));
        }
    }
    let mut allows = policies
        .filter(|p| p.action == AuthzAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    for p in allows {
        if let Some(rule) = p.first_match(&cx) {
            return Decision::Allow(Some(matched(p, rule)));
        }
    }
    Decision::Deny(None)
}

/// A frozen set of policies compiled for one layer: what one proxy enforces for one target.
#[derive(Clone, Debug, Serialize)]
pub struct Authorizer {
    layer: Layer,
    policies: Vec<CompiledPolicy>,
    #[serde(skip)]
    warnings: Vec<Warning>,
}

impl Authorizer {
    /// No policies: everything is allowed.
    pub fn empty(layer: Layer) -> Authorizer {
        Authorizer {
            layer,
            policies: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Compiles `policies` (already selected for the target, see [`scope`]) for `layer`.
    pub fn compile<'a>(
        layer: Layer,
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
    ) -> Authorizer {
        let mut warnings = Vec::new();
        let policies = policies
            .into_iter()
            .map(|p| {
                CompiledPolicy::compile(p.namespace(), p.name(), &p.spec, layer, &mut warnings)
            })
            .collect();
        Authorizer {
            layer,
            policies,
            warnings,
        }
    }

    pub fn layer(&self) -> Layer {
        self.layer
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// What could not be enforced as written, one entry per policy field.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// True when no policy can affect a decision (none, or only AUDIT).
    pub fn is_empty(&self) -> bool {
        self.policies.iter().all(|p| p.action == AuthzAction::Audit)
    }

    pub fn evaluate(&self, attrs: &Attributes<'_>) -> Decision<'_> {
        evaluate(&self.policies, attrs)
    }
}
