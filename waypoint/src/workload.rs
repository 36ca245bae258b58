//! Who is who: the facts about a pod or a service the request path needs (names, labels,
//! identity, app/version for metrics), extracted once per config snapshot and shared by `Arc`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use common::Identity;
use serde::Serialize;

/// A workload (pod) as the waypoint sees it: a source to match and authorize, or an endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    /// Workload name as Istio reports it (the pod name without its ReplicaSet/pod hash).
    pub name: Arc<str>,
    pub pod_name: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub identity: Identity,
    /// `identity.principal()`, precomputed for policy checks.
    pub principal: Arc<str>,
    /// `app` (or `app.kubernetes.io/name`) label, `unknown` when absent.
    pub app: Arc<str>,
    /// `version` (or `app.kubernetes.io/version`) label, `unknown` when absent.
    pub version: Arc<str>,
    pub ip: Option<IpAddr>,
    pub node: Option<Arc<str>>,
}

/// The Deployment-style name of a pod: strips `-<replicaset hash>-<pod id>` when both look
/// generated, so metrics aggregate per workload as Istio's do.
fn workload_name(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    let (Some(id), Some(hash), Some(base)) = (parts.next(), parts.next(), parts.next()) else {
        return pod;
    };
    let generated = |s: &str, lo: usize, hi: usize| {
        (lo..=hi).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if generated(id, 5, 5) && generated(hash, 6, 10) {
        base
    } else {
        pod
    }
}

impl WorkloadInfo {
    /// The request path's view of a model workload.
    pub fn from_workload(w: &common::model::Workload) -> Self {
        Self::new(
            &w.name,
            &w.namespace,
            w.labels.clone(),
            w.identity.clone(),
            Some(w.ip),
            w.node.as_deref(),
        )
    }

    fn new(
        pod_name: &str,
        ns: &str,
        labels: BTreeMap<String, String>,
        identity: Identity,
        ip: Option<IpAddr>,
        node: Option<&str>,
    ) -> Self {
        let label = |a: &str, b: &str| -> Arc<str> {
            labels
                .get(a)
                .or_else(|| labels.get(b))
                .map(|s| Arc::from(s.as_str()))
                .unwrap_or_else(|| Arc::from(common::telemetry::UNKNOWN))
        };
        WorkloadInfo {
            name: Arc::from(workload_name(pod_name)),
            pod_name: Arc::from(pod_name),
            namespace: Arc::from(ns),
            principal: Arc::from(identity.principal().as_str()),
            identity,
            app: label("app", "app.kubernetes.io/name"),
            version: label("version", "app.kubernetes.io/version"),
            ip,
            node: node.map(Arc::from),
            labels,
        }
    }

    /// A workload for unit tests (service account named after the pod).
    #[cfg(test)]
    pub fn for_test(name: &str, ns: &str, labels: BTreeMap<String, String>) -> Self {
        let identity = Identity::new(common::identity::DEFAULT_TRUST_DOMAIN, ns, name);
        Self::new(name, ns, labels, identity, None, None)
    }
}

/// A Kubernetes Service the waypoint serves or routes to.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// `<name>.<namespace>.svc.<domain>`.
    pub fqdn: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names() {
        assert_eq!(workload_name("reviews-v1-545db77b95-2zqkx"), "reviews-v1");
        assert_eq!(workload_name("reviews-v1"), "reviews-v1");
        assert_eq!(workload_name("a-b-c"), "a-b-c");
    }
}
