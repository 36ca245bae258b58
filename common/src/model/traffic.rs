//! The traffic policy that applies to one cluster (host, subset, port), as Istio derives it
//! from a DestinationRule.
//!
//! - Port-level settings: an entry of `portLevelSettings` for the port replaces the policy's
//!   `loadBalancer`, `connectionPool`, `outlierDetection` and `tls` as a whole, including the
//!   ones it leaves unset (they fall back to the defaults, not to the top level).
//! - Subsets (Istio's `MergeTrafficPolicy`): the rule's policy (port-level settings applied)
//!   is the base; each top-level field the subset's policy sets replaces the base's field
//!   whole — a subset `connectionPool` with only `http` set drops the rule's `tcp` limits —
//!   and the subset's own port-level entry for the port then replaces those four fields.

use crate::istio::networking::{PortTrafficPolicy, Subset, TrafficPolicy};
use crate::resource::DestinationRule;

/// The subset named `name` of a (merged) DestinationRule.
pub fn subset<'a>(rule: &'a DestinationRule, name: &str) -> Option<&'a Subset> {
    rule.spec.subsets.iter().find(|s| s.name == name)
}

/// The policy for traffic to `port` of the rule's host, in `subset` when given (an unknown
/// subset contributes nothing). `None` when nothing applies. The result has no port-level
/// settings left: they are applied.
pub fn cluster_policy(
    rule: &DestinationRule,
    subset_name: Option<&str>,
    port: u16,
) -> Option<TrafficPolicy> {
    let sub = subset_name
        .and_then(|n| subset(rule, n))
        .and_then(|s| s.traffic_policy.as_deref());
    merge_traffic_policy(rule.spec.traffic_policy.as_deref(), sub, port)
}

/// Istio's merge of a rule's top-level policy and a subset's policy for `port` (see the
/// module docs).
pub fn merge_traffic_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> Option<TrafficPolicy> {
    let base = top.map(|p| for_port(p, port));
    let Some(sub) = subset else {
        return base;
    };
    let mut merged = base.unwrap_or_default();
    if sub.connection_pool.is_some() {
        merged.connection_pool = sub.connection_pool.clone();
    }
    if sub.load_balancer.is_some() {
        merged.load_balancer = sub.load_balancer.clone();
    }
    if sub.outlier_detection.is_some() {
        merged.outlier_detection = sub.outlier_detection.clone();
    }
    if sub.tls.is_some() {
        merged.tls = sub.tls.clone();
    }
    if sub.tunnel.is_some() {
        merged.tunnel = sub.tunnel.clone();
    }
    if sub.proxy_protocol.is_some() {
        merged.proxy_protocol = sub.proxy_protocol.clone();
    }
    if let Some(pl) = port_entry(sub, port) {
        apply_port_entry(&mut merged, pl);
    }
    Some(merged)
}

/// `policy` with its port-level entry for `port` applied.
fn for_port(policy: &TrafficPolicy, port: u16) -> TrafficPolicy {
    let mut out = TrafficPolicy {
        port_level_settings: Vec::new(),
        ..policy.clone()
    };
    if let Some(pl) = port_entry(policy, port) {
        apply_port_entry(&mut out, pl);
    }
    out
}

fn port_entry(policy: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    policy.port_level_settings.iter().find(|pl| {
        pl.port
            .as_ref()
            .is_some_and(|p| p.number == u32::from(port))
    })
}

fn apply_port_entry(policy: &mut TrafficPolicy, pl: &PortTrafficPolicy) {
    policy.connection_pool = pl.connection_pool.clone();
    policy.load_balancer = pl.load_balancer.clone();
    policy.outlier_detection = pl.outlier_detection.clone();
    policy.tls = pl.tls.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::networking::SimpleLb;
    use crate::model::tests::parse;
    use crate::resource::Resource;

    fn rule(yaml: &str) -> DestinationRule {
        match parse(yaml).pop() {
            Some(Resource::DestinationRule(d)) => d,
            other => panic!("not a DestinationRule: {other:?}"),
        }
    }

    const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 10}
      http: {http1MaxPendingRequests: 5}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9443}
      loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool:
        http: {http2MaxRequests: 7}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        outlierDetection: {consecutive5xxErrors: 9}
  - name: plain
    labels: {version: v3}
"#;

    fn lb(p: &TrafficPolicy) -> Option<SimpleLb> {
        p.load_balancer.as_ref()?.simple
    }

    #[test]
    fn subset_fields_replace_whole() {
        let r = rule(RULE);
        let p = cluster_policy(&r, Some("v1"), 9080).unwrap();
        let cp = p.connection_pool.as_ref().unwrap();
        // The subset set `connectionPool.http` only: the rule's tcp limits are gone.
        assert!(cp.tcp.is_none());
        assert_eq!(cp.http.as_ref().unwrap().http2_max_requests, Some(7));
        assert_eq!(cp.http.as_ref().unwrap().http1_max_pending_requests, None);
        // Fields the subset does not set come from the rule.
        assert_eq!(lb(&p), Some(SimpleLb::Random));
        assert!(p.outlier_detection.is_some());
        assert!(p.port_level_settings.is_empty());
    }

    #[test]
    fn port_level_entries_replace_without_inheriting() {
        let r = rule(RULE);
        // The rule's 9443 entry sets only the balancer: pool and outlier go back to defaults.
        let p = cluster_policy(&r, None, 9443).unwrap();
        assert_eq!(lb(&p), Some(SimpleLb::LeastRequest));
        assert!(p.connection_pool.is_none() && p.outlier_detection.is_none());
        // Another port keeps the top level.
        let p = cluster_policy(&r, None, 9080).unwrap();
        assert_eq!(lb(&p), Some(SimpleLb::Random));
        assert!(p.connection_pool.is_some());
        // A subset without a policy sees the rule's policy for the port.
        let p = cluster_policy(&r, Some("plain"), 9443).unwrap();
        assert_eq!(lb(&p), Some(SimpleLb::LeastRequest));
        // The subset's own port-level entry wins for its port, replacing all four fields.
        let p = cluster_policy(&r, Some("v2"), 9080).unwrap();
        assert_eq!(
            p.outlier_detection.as_ref().unwrap().consecutive_5xx_errors,
            Some(9)
        );
        assert!(p.load_balancer.is_none() && p.connection_pool.is_none());
        let p = cluster_policy(&r, Some("v2"), 9081).unwrap();
        assert_eq!(lb(&p), Some(SimpleLb::Random));
        // Unknown subset: the rule's policy.
        let p = cluster_policy(&r, Some("nope"), 9080).unwrap();
        assert_eq!(lb(&p), Some(SimpleLb::Random));
    }

    #[test]
    fn nothing_applies_without_policies() {
        let r = rule(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: x, subsets: [{name: a, labels: {v: a}}]}\n",
        );
        assert!(cluster_policy(&r, Some("a"), 80).is_none());
        assert!(cluster_policy(&r, None, 80).is_none());
    }
}
