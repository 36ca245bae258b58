//! Unit tests of Istio's resolution rules: which VirtualService and DestinationRule take
//! effect, and which waypoint a service or pod is bound to.

use std::net::IpAddr;

use super::tests::parse;
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vs(name: &str, ns: &str, created: Option<&str>, hosts: &str, extra: &str) -> String {
    let ts = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}{ts}}}\nspec:\n  hosts: {hosts}\n{extra}  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]}}]\n---\n"
    )
}

const REVIEWS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 9080}]}\n---\n";

fn names(v: Vec<&VirtualService>) -> Vec<String> {
    v.iter()
        .map(|v| format!("{}/{}", v.namespace(), v.name()))
        .collect()
}

#[test]
fn oldest_virtual_service_takes_effect() {
    let fqdn = "reviews.default.svc.cluster.local";
    // Load order says `z` first; the timestamps say `a` is older.
    let y = [
        vs(
            "z",
            "default",
            Some("2024-01-02T00:00:00Z"),
            "[reviews]",
            "",
        ),
        vs(
            "a",
            "default",
            Some("2024-01-03T00:00:00Z"),
            "[reviews]",
            "",
        ),
        vs(
            "old",
            "default",
            Some("2023-06-01T00:00:00Z"),
            "[reviews]",
            "",
        ),
        vs(
            "ingress",
            "default",
            None,
            "[reviews]",
            "  gateways: [gw]\n",
        ),
    ]
    .concat();
    let m = Model::build(parse(&y));
    assert_eq!(
        names(m.virtual_services_for_host(fqdn)),
        ["default/old", "default/z", "default/a"]
    );
    assert_eq!(m.virtual_service_for_host(fqdn).unwrap().name(), "old");

    // Same timestamp (or none): name, then namespace, decides; never load order.
    let y = [
        vs("b", "default", None, "[reviews]", ""),
        vs("a", "zz", None, "[reviews.default.svc.cluster.local]", ""),
        vs("a", "default", None, "[reviews]", ""),
    ]
    .concat();
    let m = Model::build(parse(&y));
    assert_eq!(
        names(m.virtual_services_for_host(fqdn)),
        ["default/a", "zz/a", "default/b"]
    );

    // A wildcard host competes on the same terms: the older one wins.
    let y = [
        vs(
            "exact",
            "default",
            Some("2024-02-01T00:00:00Z"),
            "[reviews]",
            "",
        ),
        vs(
            "wild",
            "other",
            Some("2024-01-01T00:00:00Z"),
            "[\"*.svc.cluster.local\"]",
            "",
        ),
    ]
    .concat();
    let m = Model::build(parse(&y));
    assert_eq!(m.virtual_service_for_host(fqdn).unwrap().name(), "wild");
    assert!(m
        .virtual_service_for_host("ratings.default.svc.cluster.local")
        .is_some_and(|v| v.name() == "wild"));
    assert!(m.virtual_service_for_host("example.com").is_none());
}

#[test]
fn waypoint_sees_its_and_the_services_namespaces_only() {
    let y = [
        REVIEWS.to_string(),
        vs("elsewhere", "team", Some("2020-01-01T00:00:00Z"), "[reviews.default.svc.cluster.local]", ""),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp-only, namespace: default, creationTimestamp: \"2021-01-01T00:00:00Z\"}\nspec:\n  hosts: [reviews]\n  tcp: [{route: [{destination: {host: reviews}}]}]\n---\n".into(),
        vs("svc-ns", "default", Some("2022-01-01T00:00:00Z"), "[reviews]", ""),
        vs("wp-ns", "infra", Some("2021-06-01T00:00:00Z"), "[reviews.default.svc.cluster.local]", ""),
    ]
    .concat();
    let m = Model::build(parse(&y));
    let svc = m.service_by_vip(ip("10.96.0.10")).unwrap();
    // Mesh-wide, the oldest one is in effect.
    assert_eq!(
        m.virtual_service_for_host(&svc.hostname).unwrap().name(),
        "elsewhere"
    );
    // A waypoint in `infra`: `team` is out of reach, the TCP-only one has no HTTP routes.
    assert_eq!(
        m.virtual_service_for_waypoint(svc, "infra").unwrap().name(),
        "wp-ns"
    );
    assert_eq!(
        m.virtual_service_for_waypoint(svc, "default")
            .unwrap()
            .name(),
        "svc-ns"
    );
}

fn dr(name: &str, ns: &str, created: &str, host: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  host: \"{host}\"\n{body}---\n"
    )
}

#[test]
fn destination_rule_precedence_and_merging() {
    let fqdn = "reviews.default.svc.cluster.local";
    let y = [
        // Same namespace, same host: merged oldest first, whatever the load order.
        dr("late", "default", "2024-03-01T00:00:00Z", "reviews", "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets: [{name: v1, labels: {version: late}}, {name: v3, labels: {version: v3}}]\n"),
        dr("early", "default", "2024-01-01T00:00:00Z", "reviews", "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n  subsets: [{name: v1, labels: {version: v1}}]\n"),
        dr("client", "frontend", "2024-01-01T00:00:00Z", fqdn, "  subsets: [{name: c, labels: {version: c}}]\n"),
        dr("wide", "frontend", "2024-01-01T00:00:00Z", "*.svc.cluster.local", "  subsets: [{name: w, labels: {version: w}}]\n"),
        dr("narrow", "team", "2024-01-01T00:00:00Z", "*.default.svc.cluster.local", "  subsets: [{name: n, labels: {version: n}}]\n"),
        dr("broad", "team", "2024-01-01T00:00:00Z", "*.cluster.local", "  subsets: [{name: b, labels: {version: b}}]\n"),
        dr("mesh", "istio-system", "2024-01-01T00:00:00Z", "*", "  subsets: [{name: m, labels: {version: m}}]\n"),
    ]
    .concat();
    let m = Model::build(parse(&y));
    let d = m.destination_rule_for_host(fqdn, "default").unwrap();
    assert_eq!(d.name(), "early");
    let subsets: Vec<_> = d
        .spec
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(subsets, [("v1", "v1"), ("v3", "v3")]);
    let lb = d
        .spec
        .traffic_policy
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref();
    assert_eq!(
        lb.unwrap().simple,
        Some(crate::istio::networking::SimpleLb::LeastRequest)
    );
    // The client's namespace first: exact host beats its wildcard.
    assert_eq!(
        m.destination_rule_for_host(fqdn, "frontend")
            .unwrap()
            .name(),
        "client"
    );
    assert_eq!(
        m.destination_rule_for_host("ratings.default.svc.cluster.local", "frontend")
            .unwrap()
            .name(),
        "wide"
    );
    // The most specific wildcard of a namespace.
    assert_eq!(
        m.destination_rule_for_host("ratings.default.svc.cluster.local", "team")
            .unwrap()
            .name(),
        "narrow"
    );
    // The service's namespace, then the root namespace.
    assert_eq!(
        m.destination_rule_for_host(fqdn, "shop").unwrap().name(),
        "early"
    );
    assert_eq!(
        m.destination_rule_for_host("x.y.svc.cluster.local", "shop")
            .unwrap()
            .name(),
        "mesh"
    );
}

const BINDING: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: bookstore, labels: {team: books}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: shop-wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: shared-waypoint, istio.io/use-waypoint-namespace: infra}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared-waypoint, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: private-waypoint, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: books-only, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: books}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pod-wp, namespace: bookstore, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Pod
metadata: {name: shared-waypoint-0, namespace: infra, labels: {gateway.networking.k8s.io/gateway-name: shared-waypoint}}
spec: {serviceAccountName: shared-waypoint}
status: {podIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: shop-wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: shop-wp}}
status: {podIP: 10.0.9.2}
---
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: bookstore
  labels: {istio.io/use-waypoint: shared-waypoint, istio.io/use-waypoint-namespace: infra}
spec: {clusterIP: 10.96.1.1, selector: {app: books}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: denied
  namespace: bookstore
  labels: {istio.io/use-waypoint: private-waypoint, istio.io/use-waypoint-namespace: infra}
spec: {clusterIP: 10.96.1.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: selected
  namespace: bookstore
  labels: {istio.io/use-waypoint: books-only, istio.io/use-waypoint-namespace: infra}
spec: {clusterIP: 10.96.1.3, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: to-pod-wp, namespace: bookstore, labels: {istio.io/use-waypoint: pod-wp}}
spec: {clusterIP: 10.96.1.4, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.2.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: opted-out, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.2.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: apps}
spec: {clusterIP: 10.96.3.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: books-0, namespace: bookstore, labels: {app: books}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: books-db, namespace: bookstore, labels: {app: db, istio.io/use-waypoint: pod-wp}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: books-cache, namespace: bookstore, labels: {istio.io/use-waypoint: shared-waypoint, istio.io/use-waypoint-namespace: infra}}
status: {podIP: 10.1.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-0, namespace: shop}
status: {podIP: 10.2.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {istio.io/use-waypoint: none}}
status: {podIP: 10.2.0.2}
"#;

fn svc_wp(m: &Model, vip: &str) -> Option<(String, String)> {
    let s = m.service_by_vip(ip(vip)).unwrap();
    s.waypoint
        .as_ref()
        .map(|w| (w.namespace.clone(), w.name.clone()))
}

fn pod_wp(m: &Model, pod_ip: &str) -> Option<(String, String)> {
    let w = m.workload_by_ip(ip(pod_ip)).unwrap();
    w.waypoint
        .as_ref()
        .map(|w| (w.namespace.clone(), w.name.clone()))
}

fn wp(ns: &str, name: &str) -> Option<(String, String)> {
    Some((ns.to_string(), name.to_string()))
}

#[test]
fn services_bind_across_namespaces_when_the_waypoint_allows_it() {
    let m = Model::build(parse(BINDING));
    // Service label + use-waypoint-namespace, waypoint admitting every namespace.
    assert_eq!(svc_wp(&m, "10.96.1.1"), wp("infra", "shared-waypoint"));
    let books = m.service_by_vip(ip("10.96.1.1")).unwrap();
    let reference = books.waypoint.as_ref().unwrap();
    assert_eq!(reference.addresses, vec![ip("10.0.9.1")]);
    assert_eq!(
        reference.identity.to_string(),
        "spiffe://cluster.local/ns/infra/sa/shared-waypoint"
    );
    // No allowedRoutes: only the Gateway's own namespace may use it (Gateway API's default).
    assert_eq!(svc_wp(&m, "10.96.1.2"), None);
    // A selector on namespace labels.
    assert_eq!(svc_wp(&m, "10.96.1.3"), wp("infra", "books-only"));
    // A workload-only waypoint serves no service.
    assert_eq!(svc_wp(&m, "10.96.1.4"), None);
    // Namespace label, same namespace; `none` on the service opts out.
    assert_eq!(svc_wp(&m, "10.96.2.1"), wp("shop", "shop-wp"));
    assert_eq!(svc_wp(&m, "10.96.2.2"), None);
    // Namespace labels naming a waypoint in another namespace.
    assert_eq!(svc_wp(&m, "10.96.3.1"), wp("infra", "shared-waypoint"));
    assert!(m.waypoint("infra", "private-waypoint").is_some_and(|w| !w
        .allows_namespace("bookstore", None)
        && w.allows_namespace("infra", None)));
}

#[test]
fn pods_bind_by_their_own_label_or_their_namespace() {
    let m = Model::build(parse(BINDING));
    // Pod label naming a workload waypoint of its namespace.
    assert_eq!(pod_wp(&m, "10.1.0.2"), wp("bookstore", "pod-wp"));
    // A service-only waypoint does not take workload traffic, even when named on the pod.
    assert_eq!(pod_wp(&m, "10.1.0.3"), None);
    // A pod selected by a bound service is not itself bound.
    assert_eq!(pod_wp(&m, "10.1.0.1"), None);
    // `waypoint-for: all` through the namespace label; `none` on the pod opts out.
    assert_eq!(pod_wp(&m, "10.2.0.1"), wp("shop", "shop-wp"));
    assert_eq!(pod_wp(&m, "10.2.0.2"), None);
    // The waypoint's own pod is never sent through a waypoint.
    assert_eq!(pod_wp(&m, "10.0.9.2"), None);
}
