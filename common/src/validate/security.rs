//! Validation of PeerAuthentication and AuthorizationPolicy specs: the shapes Istio's webhook
//! rejects (principals with a scheme, malformed CIDRs, unknown condition keys, selector and
//! targetRefs together).

use std::net::IpAddr;

use super::Checker;
use crate::diagnostic::{codes, Severity};
use crate::istio::security::{AuthorizationPolicySpec, AuthzAction, PeerAuthenticationSpec};

pub(super) fn peer_authentication(spec: &PeerAuthenticationSpec, c: &mut Checker) {
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        c.error(
            "spec.portLevelMtls",
            "portLevelMtls requires a workload selector",
        );
    }
    for port in spec.port_level_mtls.keys() {
        if *port == 0 || *port > 65535 {
            c.error(
                format!("spec.portLevelMtls.{port}"),
                format!("port {port} is outside 1..=65535"),
            );
        }
    }
}

/// Condition keys Istio accepts in `when` (exact, or prefixes ending in `[` / `.`).
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];
const CONDITION_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

pub(super) fn authorization_policy(spec: &AuthorizationPolicySpec, c: &mut Checker) {
    let has_refs = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if has_refs && spec.selector.is_some() {
        c.error(
            "spec.selector",
            "selector and targetRef(s) cannot both be set",
        );
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        c.error(
            "spec.targetRef",
            "targetRef and targetRefs cannot both be set",
        );
    }
    for (i, r) in spec.target_ref.iter().chain(&spec.target_refs).enumerate() {
        let field = if spec.target_ref.is_some() {
            "spec.targetRef".to_string()
        } else {
            format!("spec.targetRefs[{i}]")
        };
        if r.name.is_empty() || r.kind.is_empty() {
            c.error(field, "kind and name are required");
        }
    }
    match spec.action {
        AuthzAction::Custom => {
            if spec.provider.is_none() {
                c.error("spec.provider", "action CUSTOM requires a provider");
            }
            c.push(Severity::Warning, codes::NOT_IMPLEMENTED, "spec.action", "action CUSTOM (external authorization) is parsed but not implemented; the policy has no effect");
        }
        AuthzAction::Audit => c.push(
            Severity::Warning,
            codes::NOT_IMPLEMENTED,
            "spec.action",
            "action AUDIT is parsed but not implemented; the policy has no effect",
        ),
        _ => c.unimplemented(&spec.provider, || "spec.provider".into()),
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let sp = format!("{rp}.from[{j}].source");
            let s = &from.source;
            for (name, list) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
            ] {
                for (k, v) in list.iter().enumerate() {
                    principal(v, &format!("{sp}.{name}[{k}]"), c);
                }
            }
            for (name, list) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, v) in list.iter().enumerate() {
                    ip_block(v, &format!("{sp}.{name}[{k}]"), c);
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let op = format!("{rp}.to[{j}].operation");
            for (name, list) in [
                ("ports", &to.operation.ports),
                ("notPorts", &to.operation.not_ports),
            ] {
                for (k, v) in list.iter().enumerate() {
                    if !v.parse::<u16>().is_ok_and(|p| p > 0) {
                        c.error(
                            format!("{op}.{name}[{k}]"),
                            format!("`{v}` is not a port number"),
                        );
                    }
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let cp = format!("{rp}.when[{j}]");
            let known = CONDITION_KEYS.contains(&cond.key.as_str())
                || CONDITION_PREFIXES.iter().any(|p| cond.key.starts_with(p));
            if !known {
                c.error(
                    format!("{cp}.key"),
                    format!("unknown condition key `{}`", cond.key),
                );
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                c.error(cp.clone(), "one of values or notValues is required");
            }
            if matches!(
                cond.key.as_str(),
                "source.ip" | "remote.ip" | "destination.ip"
            ) {
                for (k, v) in cond.values.iter().chain(&cond.not_values).enumerate() {
                    ip_block(v, &format!("{cp}.values[{k}]"), c);
                }
            }
        }
    }
}

/// Principals are `<trust domain>/ns/<namespace>/sa/<service account>`, without the
/// `spiffe://` scheme, optionally with one `*` at the start or the end.
fn principal(v: &str, p: &str, c: &mut Checker) {
    if v.starts_with("spiffe://") {
        c.error(
            p,
            format!("principal `{v}` must not include the spiffe:// prefix"),
        );
        return;
    }
    if v.is_empty() {
        c.error(p, "principal must not be empty");
        return;
    }
    let inner = v.trim_start_matches('*').trim_end_matches('*');
    if inner.contains('*') {
        c.error(
            p,
            format!("principal `{v}`: `*` is only allowed at the start or the end"),
        );
        return;
    }
    if v.contains('*') {
        return;
    }
    let parts: Vec<&str> = v.split('/').collect();
    if !matches!(parts.as_slice(), [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty())
    {
        c.push(
            Severity::Warning,
            codes::SCHEMA_VALIDATION_ERROR,
            p,
            format!("principal `{v}` is not of the form <trust domain>/ns/<namespace>/sa/<service account> and will match no peer"),
        );
    }
}

fn ip_block(v: &str, p: &str, c: &mut Checker) {
    if v.parse::<IpAddr>().is_err() && v.parse::<ipnet::IpNet>().is_err() {
        c.error(p, format!("`{v}` is not an IP address or CIDR"));
    }
}
