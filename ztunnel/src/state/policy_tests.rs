//! Policy evaluation tables, including the fixtures in tests/fixtures/istio.

use super::*;
use common::resource::Resource;
use serde::Deserialize;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/istio");

fn parse(yaml: &str) -> (Vec<Authorization>, Vec<PeerAuth>) {
    let mut authz = vec![];
    let mut pa = vec![];
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        match Resource::deserialize(doc).expect("valid resource") {
            Resource::AuthorizationPolicy(p) => {
                authz.extend(Authorization::compile(p.namespace(), p.name(), &p.spec))
            }
            Resource::PeerAuthentication(p) => {
                pa.push(PeerAuth::compile(p.namespace(), p.name(), &p.spec))
            }
            _ => {}
        }
    }
    (authz, pa)
}

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(FIXTURES).join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

fn conn(id: Option<&str>, src: &str, dst: &str) -> ConnInfo {
    let src_ip: IpAddr = src.parse().unwrap();
    ConnInfo {
        src_ip,
        remote_ip: src_ip,
        src_identity: id.map(|i| i.parse().unwrap()),
        dst: dst.parse().unwrap(),
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn fixture_authz_production_deny_all_then_allow_principal() {
    let (p, _) = parse(&fixture("authz-production.yaml"));
    assert_eq!(p.len(), 2);
    let reviews = labels(&[("app", "reviews")]);
    let other = labels(&[("app", "ratings")]);
    let t = |l| Target {
        namespace: "production",
        labels: l,
    };
    let pp = Some("spiffe://cluster.local/ns/production/sa/productpage");
    let evil = Some("spiffe://cluster.local/ns/production/sa/evil");
    let d = "10.0.0.2:9080";
    assert_eq!(
        authorize(&p, t(&reviews), &conn(pp, "10.0.0.1", d)),
        Decision::Allow
    );
    assert!(matches!(
        authorize(&p, t(&reviews), &conn(evil, "10.0.0.1", d)),
        Decision::Deny(_)
    ));
    assert!(matches!(
        authorize(&p, t(&reviews), &conn(None, "10.0.0.1", d)),
        Decision::Deny(_)
    ));
    // deny-all applies to the whole namespace: productpage cannot reach ratings.
    assert!(matches!(
        authorize(&p, t(&other), &conn(pp, "10.0.0.1", d)),
        Decision::Deny(_)
    ));
    // Other namespaces are untouched.
    let t2 = Target {
        namespace: "staging",
        labels: &reviews,
    };
    assert_eq!(
        authorize(&p, t2, &conn(evil, "10.0.0.1", d)),
        Decision::Allow
    );
}

#[test]
fn fixture_authz_reviews_l7_allow_fails_closed() {
    let (p, _) = parse(&fixture("authz-reviews.yaml"));
    let reviews = labels(&[("app", "reviews")]);
    let t = Target {
        namespace: "default",
        labels: &reviews,
    };
    let pp = Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
    // The ALLOW rule has methods/paths: never matches at L4, and deny-all applies.
    assert!(matches!(
        authorize(&p, t, &conn(pp, "10.0.0.1", "10.0.0.2:9080")),
        Decision::Deny(_)
    ));
}

#[test]
fn deny_over_allow_and_l7_in_deny_is_ignored() {
    let yaml = r#"
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
  - from: [{source: {namespaces: ["bad"]}}]
    to: [{operation: {methods: ["GET"]}}]
"#;
    let (p, _) = parse(yaml);
    let l = labels(&[]);
    let t = Target {
        namespace: "ns",
        labels: &l,
    };
    let bad = Some("spiffe://cluster.local/ns/bad/sa/x");
    let good = Some("spiffe://cluster.local/ns/good/sa/x");
    assert_eq!(
        authorize(&p, t, &conn(bad, "10.0.0.1", "10.0.0.2:80")),
        Decision::Deny("denied by DENY policy ns/deny-get".into())
    );
    assert_eq!(
        authorize(&p, t, &conn(good, "10.0.0.1", "10.0.0.2:80")),
        Decision::Allow
    );
}

#[test]
fn ip_blocks_ports_and_not_forms() {
    let yaml = r#"
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
"#;
    let (p, _) = parse(yaml);
    let db = labels(&[("app", "db")]);
    let web = labels(&[("app", "web")]);
    let t = Target {
        namespace: "ns",
        labels: &db,
    };
    let cases = [
        (None, "10.1.0.9", "10.9.9.9:5432", true),
        (None, "10.1.2.3", "10.9.9.9:5432", false),
        (None, "10.1.0.9", "10.9.9.9:5433", false),
        (None, "10.2.0.9", "10.9.9.9:5432", false),
        (None, "192.168.0.7", "10.9.9.9:8080", true),
        (None, "192.168.0.7", "10.9.9.9:22", false),
        (
            Some("spiffe://cluster.local/ns/ns/sa/a"),
            "192.168.0.7",
            "10.9.9.9:8080",
            false,
        ),
        (
            Some("spiffe://cluster.local/ns/other/sa/a"),
            "192.168.0.7",
            "10.9.9.9:8080",
            true,
        ),
    ];
    for (id, src, dst, allowed) in cases {
        let got = authorize(&p, t, &conn(id, src, dst)) == Decision::Allow;
        assert_eq!(got, allowed, "{id:?} {src} -> {dst}");
    }
    let t2 = Target {
        namespace: "ns",
        labels: &web,
    };
    assert_eq!(
        authorize(&p, t2, &conn(None, "1.1.1.1", "10.9.9.9:1")),
        Decision::Allow
    );
}

#[test]
fn allow_rule_with_only_l7_never_matches() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: ns}
spec:
  rules:
  - to: [{operation: {paths: ["/x"]}}]
  - when: [{key: "request.headers[x]", values: ["y"]}]
"#;
    let (p, _) = parse(yaml);
    let l = labels(&[]);
    let t = Target {
        namespace: "ns",
        labels: &l,
    };
    assert!(matches!(
        authorize(&p, t, &conn(None, "1.1.1.1", "2.2.2.2:80")),
        Decision::Deny(_)
    ));
}

#[test]
fn peer_authentication_levels() {
    let (_, mut pa) = parse(&fixture("peer-authentication-strict.yaml"));
    let l = labels(&[("app", "legacy")]);
    let t = Target {
        namespace: "default",
        labels: &l,
    };
    assert_eq!(mtls_mode(&pa, t, 80), MtlsMode::Strict);
    assert_eq!(mtls_mode(&[], t, 80), MtlsMode::Permissive);
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-permissive, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
"#;
    pa.extend(parse(yaml).1);
    assert_eq!(mtls_mode(&pa, t, 80), MtlsMode::Strict);
    assert_eq!(mtls_mode(&pa, t, 8080), MtlsMode::Disable);
    let other = labels(&[("app", "x")]);
    let t2 = Target {
        namespace: "default",
        labels: &other,
    };
    assert_eq!(mtls_mode(&pa, t2, 80), MtlsMode::Permissive);
    let t3 = Target {
        namespace: "prod",
        labels: &other,
    };
    assert_eq!(mtls_mode(&pa, t3, 80), MtlsMode::Strict);
}
