//! Engine semantics at L4 (what ztunnel enforces), scopes, warnings and decisions naming their
//! policy. The per-layer table of cases is `tests/authz_table.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use super::*;
use crate::resource::Resource;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/istio");
const ROOT: &str = "istio-system";

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(
            |doc| match Resource::deserialize(doc).expect("valid resource") {
                Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            },
        )
        .collect()
}

fn fixture(name: &str) -> Vec<AuthorizationPolicy> {
    let p = std::path::Path::new(FIXTURES).join(name);
    policies(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// ztunnel's view: the L4 policies in scope of a workload of `ns` with `labels`.
fn l4_for(all: &[AuthorizationPolicy], ns: &str, labels: &Labels) -> Authorizer {
    Authorizer::compile(
        Layer::L4,
        all.iter()
            .filter(|p| workload_scope(p, ROOT).is_some_and(|s| s.applies(ns, labels))),
    )
}

use crate::k8s::Labels;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn allowed(a: &Authorizer, src: Option<&Identity>, src_ip: &str, dst: &str) -> bool {
    let dst: SocketAddr = dst.parse().unwrap();
    let ip = src_ip.parse().unwrap();
    a.evaluate(&Attributes {
        source: src,
        source_ip: ip,
        remote_ip: ip,
        destination_ip: dst.ip(),
        destination_port: dst.port(),
        request: None,
    })
    .is_allowed()
}

#[test]
fn fixture_production_deny_all_then_allow_principal() {
    let all = fixture("authz-production.yaml");
    assert_eq!(all.len(), 2);
    let reviews = labels(&[("app", "reviews")]);
    let ratings = labels(&[("app", "ratings")]);
    let pp = id("spiffe://cluster.local/ns/production/sa/productpage");
    let evil = id("spiffe://cluster.local/ns/production/sa/evil");
    let d = "10.0.0.2:9080";
    let a = l4_for(&all, "production", &reviews);
    assert!(allowed(&a, Some(&pp), "10.0.0.1", d));
    assert!(!allowed(&a, Some(&evil), "10.0.0.1", d));
    assert!(!allowed(&a, None, "10.0.0.1", d));
    // deny-all covers the whole namespace: productpage cannot reach ratings.
    assert!(!allowed(
        &l4_for(&all, "production", &ratings),
        Some(&pp),
        "10.0.0.1",
        d
    ));
    // Other namespaces are untouched.
    assert!(allowed(
        &l4_for(&all, "staging", &reviews),
        Some(&evil),
        "10.0.0.1",
        d
    ));
}

#[test]
fn fixture_reviews_l7_allow_fails_closed_at_l4() {
    let all = fixture("authz-reviews.yaml");
    let a = l4_for(&all, "default", &labels(&[("app", "reviews")]));
    let pp = id("spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
    assert!(!allowed(&a, Some(&pp), "10.0.0.1", "10.0.0.2:9080"));
    let fields: Vec<_> = a.warnings().iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].to[0].operation.methods",
            "spec.rules[0].to[0].operation.paths"
        ]
    );
    assert!(a.warnings()[0]
        .to_string()
        .starts_with("AuthorizationPolicy default/reviews-policy: spec.rules[0]"));
}

#[test]
fn deny_wins_and_names_the_rule_l7_parts_of_a_deny_are_dropped_at_l4() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: ns}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: ns}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["nobody"]}}]
  - from: [{source: {namespaces: ["bad"]}}]
    to: [{operation: {methods: ["GET"]}}]
"#,
    );
    let a = l4_for(&all, "ns", &labels(&[]));
    let bad = id("spiffe://cluster.local/ns/bad/sa/x");
    let good = id("spiffe://cluster.local/ns/good/sa/x");
    let attrs = |src| Attributes {
        source: Some(src),
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
        request: None,
    };
    let d = a.evaluate(&attrs(&bad));
    assert_eq!(d.to_string(), "denied by DENY policy ns/deny-get rule 1");
    let d = a.evaluate(&attrs(&good));
    assert_eq!(d.to_string(), "allowed by ALLOW policy ns/allow-all rule 0");
}

#[test]
fn ip_blocks_ports_and_not_forms() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ips, namespace: ns}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {ipBlocks: ["10.1.0.0/16"], notIpBlocks: ["10.1.2.3"]}}]
    to: [{operation: {ports: ["5432"]}}]
  - from: [{source: {notPrincipals: ["cluster.local/ns/ns/sa/*"], remoteIpBlocks: ["192.168.0.0/24"]}}]
    to: [{operation: {notPorts: ["22"]}}]
"#,
    );
    let a = l4_for(&all, "ns", &labels(&[("app", "db")]));
    let in_ns = id("spiffe://cluster.local/ns/ns/sa/a");
    let other = id("spiffe://cluster.local/ns/other/sa/a");
    let cases = [
        (None, "10.1.0.9", "10.9.9.9:5432", true),
        (None, "10.1.2.3", "10.9.9.9:5432", false),
        (None, "10.1.0.9", "10.9.9.9:5433", false),
        (None, "10.2.0.9", "10.9.9.9:5432", false),
        (None, "192.168.0.7", "10.9.9.9:8080", true),
        (None, "192.168.0.7", "10.9.9.9:22", false),
        (Some(&in_ns), "192.168.0.7", "10.9.9.9:8080", false),
        (Some(&other), "192.168.0.7", "10.9.9.9:8080", true),
        // IPv4 seen through a dual-stack socket.
        (None, "::ffff:10.1.0.9", "10.9.9.9:5432", true),
    ];
    for (src, ip, dst, want) in cases {
        assert_eq!(allowed(&a, src, ip, dst), want, "{src:?} {ip} -> {dst}");
    }
    let web = l4_for(&all, "ns", &labels(&[("app", "web")]));
    assert!(web.is_empty());
    assert!(allowed(&web, None, "1.1.1.1", "10.9.9.9:1"));
}

#[test]
fn allow_rules_with_only_l7_never_match_at_l4_but_do_at_l7() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: ns}
spec:
  rules:
  - to: [{operation: {paths: ["/x"]}}]
  - when: [{key: "request.headers[x]", values: ["y"]}]
"#,
    );
    let a = l4_for(&all, "ns", &labels(&[]));
    assert!(!allowed(&a, None, "1.1.1.1", "2.2.2.2:80"));
    assert_eq!(a.warnings().len(), 2);
    assert_eq!(
        a.warnings()[1].field,
        "spec.rules[1].when[0] (key `request.headers[x]`)"
    );
    assert!(Authorizer::compile(Layer::L7, &all).warnings().is_empty());
}

#[test]
fn unusable_values_fail_closed_with_a_warning_per_field() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-allow, namespace: ns}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]
  - to: [{operation: {ports: ["http"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-deny, namespace: ns}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: ["nonsense"], namespaces: ["x"]}}]
"#,
    );
    for layer in [Layer::L4, Layer::L7] {
        let a = Authorizer::compile(layer, &all);
        let w: Vec<_> = a.warnings().iter().map(|w| w.field.clone()).collect();
        assert_eq!(
            w,
            [
                "spec.rules[0].from[0].source.ipBlocks",
                "spec.rules[1].to[0].operation.ports",
                "spec.rules[2].from[0].source.requestPrincipals",
                "spec.rules[0].from[0].source.notIpBlocks",
            ],
            "{layer:?}"
        );
        assert!(a.warnings()[0].message.contains("never matches"));
        assert!(a.warnings()[3].message.contains("enforced without it"));
        // The deny still matches namespace x; nothing else is allowed.
        let x = id("spiffe://cluster.local/ns/x/sa/a");
        let y = id("spiffe://cluster.local/ns/y/sa/a");
        assert_eq!(
            a.evaluate(&Attributes {
                source: Some(&x),
                source_ip: "10.0.0.1".parse().unwrap(),
                remote_ip: "10.0.0.1".parse().unwrap(),
                destination_ip: "10.0.0.2".parse().unwrap(),
                destination_port: 80,
                request: None,
            })
            .to_string(),
            "denied by DENY policy ns/bad-deny rule 0"
        );
        assert!(!allowed(&a, Some(&y), "10.0.0.1", "10.0.0.2:80"));
    }
}

#[test]
fn custom_is_a_deny_and_audit_changes_nothing() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{from: [{source: {namespaces: ["x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: ns}
spec:
  action: AUDIT
  rules: [{}]
"#,
    );
    let a = Authorizer::compile(Layer::L4, &all);
    assert_eq!(a.warnings().len(), 1);
    assert_eq!(a.warnings()[0].field, "spec.action");
    let x = id("spiffe://cluster.local/ns/x/sa/a");
    let y = id("spiffe://cluster.local/ns/y/sa/a");
    assert!(!allowed(&a, Some(&x), "1.1.1.1", "2.2.2.2:80"));
    assert!(allowed(&a, Some(&y), "1.1.1.1", "2.2.2.2:80"));
    let audit_only = Authorizer::compile(Layer::L4, &all[1..]);
    assert!(audit_only.is_empty());
}

#[test]
fn workload_scopes() {
    let sel = |kv: &[(&str, &str)]| crate::istio::WorkloadSelector {
        match_labels: labels(kv),
    };
    let app = labels(&[("app", "a")]);
    assert_eq!(WorkloadScope::new(ROOT, None, ROOT), WorkloadScope::Mesh);
    assert!(WorkloadScope::new(ROOT, None, ROOT).applies("x", &app));
    let ns = WorkloadScope::new("x", Some(&sel(&[])), ROOT);
    assert_eq!(ns, WorkloadScope::Namespace("x".into()));
    assert!(ns.applies("x", &app) && !ns.applies("y", &app));
    let s = WorkloadScope::new("x", Some(&sel(&[("app", "a")])), ROOT);
    assert!(s.applies("x", &app) && !s.applies("y", &app) && !s.applies("x", &labels(&[])));
    let root_sel = WorkloadScope::new(ROOT, Some(&sel(&[("app", "a")])), ROOT);
    assert!(root_sel.applies("y", &app) && !root_sel.applies("y", &labels(&[])));
}

#[test]
fn waypoint_attachment_follows_istio() {
    let all = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-other-ns, namespace: other}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: default}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-no-group, namespace: default}
spec:
  targetRef: {kind: Gateway, name: waypoint}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-other, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: ratings}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-not-root, namespace: default}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-pod, namespace: default}
spec:
  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {}
"#,
    );
    let t = WaypointTarget {
        namespace: "default",
        name: "waypoint",
        service: Some(("default", "reviews")),
        root_namespace: ROOT,
    };
    let names: Vec<_> = all
        .iter()
        .filter(|p| attached_to_waypoint(p, &t))
        .map(|p| p.name())
        .collect();
    assert_eq!(names, ["gw", "svc", "class"]);
    // ztunnel takes exactly the ones without targetRefs.
    let l4: Vec<_> = all
        .iter()
        .filter(|p| workload_scope(p, ROOT).is_some())
        .map(|p| p.name())
        .collect();
    assert_eq!(l4, ["ns-wide", "waypoint-pod", "mesh"]);
}

#[test]
fn model_applicability_agrees_with_scopes() {
    let mut yaml =
        std::fs::read_to_string(std::path::Path::new(FIXTURES).join("authz-production.yaml"))
            .unwrap();
    yaml.push_str(
        r#"
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: production, labels: {app: reviews}}
spec: {serviceAccountName: reviews}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-1, namespace: production, labels: {app: ratings}}
spec: {serviceAccountName: ratings}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: production}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-l7, namespace: production}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp, namespace: production}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
"#,
    );
    let loaded = crate::load::load_str(std::path::Path::new("x.yaml"), &yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let model = crate::Model::build(loaded.resources);
    for w in model.workloads() {
        let mut from_model: Vec<_> = model
            .authorization_policies_for(w)
            .map(|p| p.name().to_string())
            .collect();
        let mut from_scope: Vec<_> = model
            .authorization_policies()
            .iter()
            .filter(|p| {
                workload_scope(p, &model.root_namespace)
                    .is_some_and(|s| s.applies(&w.namespace, &w.labels))
            })
            .map(|p| p.name().to_string())
            .collect();
        from_model.sort();
        from_scope.sort();
        assert_eq!(from_model, from_scope, "{}", w.name);
    }
    let svc = model
        .services()
        .iter()
        .find(|s| s.name == "reviews")
        .unwrap();
    let names =
        |v: Vec<&AuthorizationPolicy>| v.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(model.authorization_policies_for_waypoint("production", "waypoint", Some(svc))),
        ["reviews-l7", "wp"]
    );
    assert_eq!(
        names(model.authorization_policies_for_waypoint("production", "waypoint", None)),
        ["wp"]
    );
    assert!(model
        .authorization_policies_for_waypoint("default", "waypoint", Some(svc))
        .iter()
        .all(|p| p.name() == "reviews-l7"));
}
