//! Unit tests of the derived views, on a small bookinfo-like cluster written as YAML.

use std::net::IpAddr;

use super::*;
use crate::istio::security::MtlsMode;
use crate::resource::Kind;

/// Parses multi-document YAML straight into resources (no validation: that is the loader's
/// job and has its own tests).
pub(crate) fn parse(yaml: &str) -> Vec<Resource> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| {
            let kind = Kind::from_api(
                v["apiVersion"].as_str().unwrap(),
                v["kind"].as_str().unwrap(),
            )
            .unwrap();
            match kind {
                Kind::Namespace => Resource::Namespace(serde_yaml::from_value(v).unwrap()),
                Kind::Pod => Resource::Pod(serde_yaml::from_value(v).unwrap()),
                Kind::Service => Resource::Service(serde_yaml::from_value(v).unwrap()),
                Kind::Gateway => Resource::Gateway(serde_yaml::from_value(v).unwrap()),
                Kind::VirtualService => {
                    Resource::VirtualService(serde_yaml::from_value(v).unwrap())
                }
                Kind::DestinationRule => {
                    Resource::DestinationRule(serde_yaml::from_value(v).unwrap())
                }
                Kind::PeerAuthentication => {
                    Resource::PeerAuthentication(serde_yaml::from_value(v).unwrap())
                }
                Kind::AuthorizationPolicy => {
                    Resource::AuthorizationPolicy(serde_yaml::from_value(v).unwrap())
                }
                Kind::IstioGateway => Resource::IstioGateway(serde_yaml::from_value(v).unwrap()),
            }
        })
        .collect()
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-abc, namespace: default, labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}
spec: {nodeName: node-a, serviceAccountName: waypoint}
status: {phase: Running, podIP: 10.0.0.100}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: default
  labels: {app: reviews, version: v1}
  annotations: {mesh.local/netns: /run/netns/reviews-v1, traffic.sidecar.istio.io/excludeInboundPorts: "9999, 8888"}
spec:
  nodeName: node-a
  serviceAccountName: bookinfo-reviews
  containers: [{name: c, ports: [{name: http, containerPort: 9080}]}]
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {nodeName: node-b, serviceAccountName: bookinfo-reviews}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v3, namespace: default, labels: {app: reviews, version: v3}}
spec: {nodeName: node-b}
status: {phase: Pending, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: default, labels: {app: reviews}}
status: {phase: Succeeded, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec: {nodeName: node-a}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: http}, {name: grpc-x, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: client, namespace: other, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.11, selector: {app: client}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: other}
spec:
  hosts: ["*.svc.cluster.local"]
  http: [{route: [{destination: {host: client}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: default}
spec:
  hosts: [reviews]
  gateways: [some-gateway]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-a, namespace: default}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-b, namespace: default}
spec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-reviews, namespace: istio-system}
spec: {host: reviews.default.svc.cluster.local}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec: {selector: {matchLabels: {app: reviews}}, portLevelMtls: {"9080": {mode: PERMISSIVE}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: default}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-l7, namespace: default}
spec: {targetRefs: [{kind: Service, group: "", name: reviews}]}
"#;

fn model() -> Model {
    Model::build(parse(CLUSTER))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn workloads_by_ip_and_node() {
    let m = model();
    let w = m.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(w.name, "reviews-v1");
    assert_eq!(
        w.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    assert!(w.captured && w.ready);
    assert_eq!(
        w.netns.as_deref(),
        Some(std::path::Path::new("/run/netns/reviews-v1"))
    );
    assert_eq!(w.excluded_inbound_ports, vec![9999, 8888]);
    // The finished pod that once had 10.0.0.2 does not shadow the live one.
    assert_eq!(m.workload_by_ip(ip("10.0.0.2")).unwrap().name, "reviews-v2");
    let on_a: Vec<_> = m
        .workloads_on_node("node-a")
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(on_a, ["waypoint-abc", "reviews-v1", "client"]);
    assert!(!m.workload_by_ip(ip("10.0.0.100")).unwrap().captured);
    assert!(!m.workload_by_ip(ip("10.0.1.1")).unwrap().captured);
    assert_eq!(
        m.workload_by_ip(ip("10.0.0.3"))
            .unwrap()
            .identity
            .service_account,
        "default"
    );
}

#[test]
fn services_by_vip_host_and_endpoints() {
    let m = model();
    let s = m.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(s.hostname, "reviews.default.svc.cluster.local");
    for h in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
    ] {
        assert_eq!(m.service_by_host(h, "default").unwrap().id, s.id, "{h}");
    }
    assert!(m.service_by_host("reviews", "other").is_none());
    // Pending v3 is not an endpoint.
    let eps: Vec<_> = m.endpoints(s).map(|w| w.name.as_str()).collect();
    assert_eq!(eps, ["reviews-v1", "reviews-v2"]);
    let v2 = Labels::from([("version".to_string(), "v2".to_string())]);
    let sub: Vec<_> = m
        .subset_endpoints(s, &v2)
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(sub, ["reviews-v2"]);
    let w1 = m.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(m.target_port(&s.ports[0], w1), Some(9080));
    assert_eq!(s.ports[1].target_port, Some(81));
    assert_eq!(s.ports[1].app_protocol.as_deref(), Some("grpc"));
    assert_eq!(w1.services, vec![s.id]);
}

#[test]
fn waypoints_resolve_like_istio() {
    let m = model();
    let s = m.service_by_host("reviews", "default").unwrap();
    let wp = s.waypoint.as_ref().unwrap();
    assert_eq!(
        (wp.name.as_str(), wp.namespace.as_str()),
        ("waypoint", "default")
    );
    assert_eq!(wp.addresses, vec![ip("10.0.0.100")]);
    assert_eq!(wp.service_account, "waypoint");
    // `waypoint-for: all` covers workloads; the namespace label reaches the pod.
    assert!(m.workload_by_ip(ip("10.0.0.1")).unwrap().waypoint.is_some());
    // Opt-out and no-label cases.
    assert!(m
        .service_by_host("client", "other")
        .unwrap()
        .waypoint
        .is_none());
    assert!(m.workload_by_ip(ip("10.0.1.1")).unwrap().waypoint.is_none());
}

#[test]
fn istio_resources_indexed() {
    let m = model();
    let fqdn = "reviews.default.svc.cluster.local";
    let vs: Vec<_> = m
        .virtual_services_for_host(fqdn)
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    // The gateway-bound one is excluded; the wildcard one comes after the exact one.
    assert_eq!(vs, ["reviews", "wild"]);
    let dr = m.destination_rule_for_host(fqdn, "default").unwrap();
    let subsets: Vec<_> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(subsets, ["v1", "v2"]);
    assert!(dr.spec.traffic_policy.is_some());
    // A client elsewhere still finds the service-namespace rule before the root one.
    assert_eq!(
        m.destination_rule_for_host(fqdn, "other").unwrap().name(),
        "reviews-a"
    );
    assert!(m
        .destination_rule_for_host("x.y.svc.cluster.local", "default")
        .is_none());
}

#[test]
fn policies_per_workload() {
    let m = model();
    let w = m.workload_by_ip(ip("10.0.0.1")).unwrap();
    let pa = m.peer_authentications_for(w);
    assert_eq!(pa.mesh.unwrap().name(), "default");
    assert!(pa.namespace.is_none());
    assert_eq!(pa.workload.unwrap().name(), "reviews");
    assert_eq!(pa.mode_for_port(9080), MtlsMode::Permissive);
    assert_eq!(pa.mode_for_port(80), MtlsMode::Strict);
    let names: Vec<_> = m
        .authorization_policies_for(w)
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["mesh-deny", "reviews"]);
    let client = m.workload_by_ip(ip("10.0.1.1")).unwrap();
    let names: Vec<_> = m
        .authorization_policies_for(client)
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["mesh-deny", "ns-wide"]);
    let targeted: Vec<_> = m
        .authorization_policies_for_target("Service", "default", "reviews")
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(targeted, ["waypoint-l7"]);
}

#[test]
fn serializes_for_config_dump() {
    let m = model();
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["workloads"].as_array().unwrap().len(), 5);
    assert_eq!(json["trust_domain"], "cluster.local");
}
