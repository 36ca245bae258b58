//! Writes the Kubernetes objects and Istio resources of a test mesh as YAML, in the same shapes
//! a user writes in `deploy/local/`, so tests exercise the real configuration path.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// A pod of the test mesh, as the config describes it.
#[derive(Clone, Debug)]
pub struct PodDef {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub service_account: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub cgroup: String,
    /// Extra labels, e.g. `istio.io/dataplane-mode: none` or the waypoint gateway label.
    pub labels: Vec<(String, String)>,
}

pub fn namespace(name: &str, ambient: bool) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    if ambient {
        s.push_str("  labels:\n    istio.io/dataplane-mode: ambient\n");
    }
    s
}

pub fn pod(p: &PodDef) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}",
        p.name
    );
    let _ = writeln!(s, "  namespace: {}", p.namespace);
    if p.app.is_empty() && p.labels.is_empty() {
        s.push_str("  labels: {}\n");
    } else {
        s.push_str("  labels:\n");
    }
    if !p.app.is_empty() {
        let _ = writeln!(s, "    app: {}\n    version: {}", p.app, p.version);
    }
    for (k, v) in &p.labels {
        let _ = writeln!(s, "    {k}: \"{v}\"");
    }
    let _ = writeln!(s, "  annotations:\n    mesh.local/netns: {}", p.netns);
    let _ = writeln!(s, "    mesh.local/cgroup: {}", p.cgroup);
    let _ = writeln!(
        s,
        "spec:\n  nodeName: {}\n  serviceAccountName: {}",
        p.node, p.service_account
    );
    let _ = writeln!(s, "status:\n  phase: Running\n  podIP: {}", p.ip);
    s
}

pub fn service(
    name: &str,
    namespace: &str,
    vip: Ipv4Addr,
    port: u16,
    waypoint: Option<&str>,
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    if let Some(w) = waypoint {
        let _ = writeln!(s, "  labels:\n    istio.io/use-waypoint: {w}");
    }
    let _ = write!(
        s,
        "spec:\n  clusterIP: {vip}\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: {port}\n    targetPort: {port}\n    appProtocol: http\n"
    );
    s
}

pub fn waypoint_gateway(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
    )
}

pub fn peer_authentication(namespace: &str, name: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// Joins documents into one multi-document YAML file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}
