//! Compiling one AuthorizationPolicy for one [`Layer`]: every field becomes a clause with parsed
//! values, or, when it cannot be enforced as written, is resolved at compile time in the
//! direction that fails closed, with a [`Warning`] naming the policy and the field.
//!
//! A field cannot be enforced when the layer lacks the attribute (an HTTP attribute at L4) or
//! when it is not understood (an unknown `when` key, an unparsable CIDR, port or header name,
//! `requestPrincipals` and `request.auth.*` while JWT authentication does not exist,
//! `connection.sni`). Then an ALLOW rule never matches, and a DENY (or CUSTOM) rule is enforced
//! without that field, so it matches on the rest of the rule.

use std::net::IpAddr;

use http::header::HeaderName;
use ipnet::IpNet;

use super::matcher::{Clause, CompiledRule, Conjunction, StrMatch, Test};
use super::{CompiledPolicy, Layer, PolicyId, Warning};
use crate::istio::security::{AuthorizationPolicySpec, AuthzAction, Condition, Rule};

/// What a field tests, before its values are parsed.
enum Kind<'a> {
    Principal,
    Namespace,
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Host,
    Method,
    Path,
    /// `request.headers[<name>]`, the name as written.
    Header(&'a str),
    /// Known to Istio but not enforceable by this mesh.
    Unsupported {
        l7: bool,
        why: &'static str,
    },
}

impl Kind<'_> {
    fn is_l7(&self) -> bool {
        match self {
            Kind::Host | Kind::Method | Kind::Path | Kind::Header(_) => true,
            Kind::Unsupported { l7, .. } => *l7,
            _ => false,
        }
    }
}

const NO_JWT: &str = "request authentication (JWT) is not supported yet";

/// The `when` keys Istio defines, by what they test.
fn condition_kind(key: &str) -> Kind<'_> {
    match key {
        "source.ip" => Kind::SourceIp,
        "remote.ip" => Kind::RemoteIp,
        "source.namespace" => Kind::Namespace,
        "source.principal" => Kind::Principal,
        "destination.ip" => Kind::DestinationIp,
        "destination.port" => Kind::DestinationPort,
        "connection.sni" => Kind::Unsupported {
            l7: false,
            why: "`connection.sni` is not available to this mesh's proxies",
        },
        k if k.starts_with("request.headers[") && k.ends_with(']') => {
            Kind::Header(&k["request.headers[".len()..k.len() - 1])
        }
        k if k.starts_with("request.auth.") => Kind::Unsupported {
            l7: true,
            why: NO_JWT,
        },
        k if k.starts_with("experimental.") => Kind::Unsupported {
            l7: true,
            why: "experimental Envoy filter metadata is not supported",
        },
        _ => Kind::Unsupported {
            l7: false,
            why: "unknown condition key",
        },
    }
}

fn strs(v: &[String]) -> Vec<StrMatch> {
    v.iter().map(|s| StrMatch::parse(s)).collect()
}

fn cidrs(v: &[String]) -> Result<Vec<IpNet>, String> {
    v.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
        })
        .collect()
}

fn ports(v: &[String]) -> Result<Vec<u16>, String> {
    v.iter()
        .map(|s| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{s}` is not a port number"))
        })
        .collect()
}

/// Compiles the rules of one policy, collecting warnings.
struct RuleCompiler<'a> {
    layer: Layer,
    action: AuthzAction,
    policy: &'a PolicyId,
    warnings: &'a mut Vec<Warning>,
    /// Set when the rule being compiled can never match (ALLOW only).
    never: bool,
}

impl RuleCompiler<'_> {
    /// DENY and CUSTOM deny what they match; AUDIT is compiled the same way (it only reports).
    fn deny_like(&self) -> bool {
        self.action != AuthzAction::Allow
    }

    fn action_name(&self) -> &'static str {
        match self.action {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }

    /// Records that `field` cannot be enforced and resolves the rule accordingly.
    fn unusable(&mut self, field: String, why: &str) {
        let message = if self.deny_like() {
            format!(
                "{why}; this {} rule is enforced without it, matching on the rest of the rule \
                 (more restrictive than written)",
                self.action_name()
            )
        } else {
            self.never = true;
            format!("{why}; this ALLOW rule never matches (more restrictive than written)")
        };
        self.warnings.push(Warning {
            policy: self.policy.clone(),
            field,
            message,
        });
    }

    fn needs_l7(&mut self, field: String, what: &str) {
        self.unusable(
            field,
            &format!(
                "{what} is an HTTP attribute that ztunnel (L4) cannot check; attach the policy \
                 to a waypoint with targetRefs to enforce it"
            ),
        );
    }

    /// A clause for `values` of `kind`, or `None` when the field is absent or unusable.
    fn clause(
        &mut self,
        field: String,
        kind: &Kind<'_>,
        values: &[String],
        negated: bool,
    ) -> Option<Clause> {
        if values.is_empty() {
            return None;
        }
        let test = match kind {
            Kind::Principal => Ok(Test::Principal(strs(values))),
            Kind::Namespace => Ok(Test::Namespace(strs(values))),
            Kind::SourceIp => cidrs(values).map(Test::SourceIp),
            Kind::RemoteIp => cidrs(values).map(Test::RemoteIp),
            Kind::DestinationIp => cidrs(values).map(Test::DestinationIp),
            Kind::DestinationPort => ports(values).map(Test::DestinationPort),
            Kind::Host => Ok(Test::Host(strs(values))),
            Kind::Method => Ok(Test::Method(strs(values))),
            Kind::Path => Ok(Test::Path(strs(values))),
            Kind::Header(name) => HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map(|name| Test::Header {
                    name,
                    values: strs(values),
                })
                .map_err(|_| format!("`{name}` is not a valid header name")),
            Kind::Unsupported { why, .. } => Err(why.to_string()),
        };
        match test {
            Ok(test) => Some(Clause {
                test,
                negated,
                loose: self.deny_like() != negated,
            }),
            Err(why) => {
                self.unusable(field, &why);
                None
            }
        }
    }

    /// A field of a `source` or `operation`: checked against the layer, then compiled.
    fn field(
        &mut self,
        out: &mut Conjunction,
        path: &str,
        name: &str,
        kind: Kind<'_>,
        values: &[String],
        negated: bool,
    ) {
        if values.is_empty() {
            return;
        }
        let field = format!("{path}.{name}");
        if self.layer == Layer::L4 && kind.is_l7() {
            self.needs_l7(field, &format!("`{name}`"));
            return;
        }
        out.extend(self.clause(field, &kind, values, negated));
    }

    fn condition(&mut self, out: &mut Conjunction, path: String, c: &Condition) {
        let kind = condition_kind(&c.key);
        let field = format!("{path} (key `{}`)", c.key);
        if let Kind::Unsupported { why, .. } = kind {
            self.unusable(field, why);
            return;
        }
        if self.layer == Layer::L4 && kind.is_l7() {
            self.needs_l7(field, &format!("condition `{}`", c.key));
            return;
        }
        out.extend(self.clause(format!("{field}.values"), &kind, &c.values, false));
        out.extend(self.clause(format!("{field}.notValues"), &kind, &c.not_values, true));
    }

    fn rule(&mut self, index: usize, rule: &Rule) -> Option<CompiledRule> {
        self.never = false;
        let p = format!("spec.rules[{index}]");
        let mut from = Vec::new();
        for (j, f) in rule.from.iter().enumerate() {
            let s = &f.source;
            let path = format!("{p}.from[{j}].source");
            let mut c = Conjunction::new();
            for (name, kind, values, negated) in [
                ("principals", Kind::Principal, &s.principals, false),
                ("notPrincipals", Kind::Principal, &s.not_principals, true),
                ("namespaces", Kind::Namespace, &s.namespaces, false),
                ("notNamespaces", Kind::Namespace, &s.not_namespaces, true),
                ("ipBlocks", Kind::SourceIp, &s.ip_blocks, false),
                ("notIpBlocks", Kind::SourceIp, &s.not_ip_blocks, true),
                ("remoteIpBlocks", Kind::RemoteIp, &s.remote_ip_blocks, false),
                (
                    "notRemoteIpBlocks",
                    Kind::RemoteIp,
                    &s.not_remote_ip_blocks,
                    true,
                ),
            ] {
                self.field(&mut c, &path, name, kind, values, negated);
            }
            for (name, values) in [
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ] {
                let kind = Kind::Unsupported {
                    l7: true,
                    why: NO_JWT,
                };
                self.field(&mut c, &path, name, kind, values, false);
            }
            from.push(c);
        }
        let mut to = Vec::new();
        for (j, t) in rule.to.iter().enumerate() {
            let o = &t.operation;
            let path = format!("{p}.to[{j}].operation");
            let mut c = Conjunction::new();
            for (name, kind, values, negated) in [
                ("hosts", Kind::Host, &o.hosts, false),
                ("notHosts", Kind::Host, &o.not_hosts, true),
                ("ports", Kind::DestinationPort, &o.ports, false),
                ("notPorts", Kind::DestinationPort, &o.not_ports, true),
                ("methods", Kind::Method, &o.methods, false),
                ("notMethods", Kind::Method, &o.not_methods, true),
                ("paths", Kind::Path, &o.paths, false),
                ("notPaths", Kind::Path, &o.not_paths, true),
            ] {
                self.field(&mut c, &path, name, kind, values, negated);
            }
            to.push(c);
        }
        let mut when = Conjunction::new();
        for (k, c) in rule.when.iter().enumerate() {
            self.condition(&mut when, format!("{p}.when[{k}]"), c);
        }
        (!self.never).then_some(CompiledRule {
            index,
            from,
            to,
            when,
        })
    }
}

/// Compiles `spec` (of the policy `id`) for `layer`. Warnings are appended to `warnings`.
pub(super) fn compile(
    id: PolicyId,
    spec: &AuthorizationPolicySpec,
    layer: Layer,
    warnings: &mut Vec<Warning>,
) -> CompiledPolicy {
    let mut own = Vec::new();
    if spec.action == AuthzAction::Custom {
        own.push(Warning {
            policy: id.clone(),
            field: "spec.action".into(),
            message: "action CUSTOM (external authorization) is not supported; the policy is \
                      enforced as DENY for what its rules match (fails closed)"
                .into(),
        });
    }
    let mut rc = RuleCompiler {
        layer,
        action: spec.action,
        policy: &id,
        warnings: &mut own,
        never: false,
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rc.rule(i, r))
        .collect();
    // AUDIT never changes a decision: what it cannot check is not worth a warning.
    if spec.action != AuthzAction::Audit {
        warnings.extend(own);
    }
    CompiledPolicy {
        id,
        action: spec.action,
        rules,
    }
}
