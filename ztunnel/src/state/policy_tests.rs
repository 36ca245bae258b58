//! The L4 adapter: connections to attributes, policies to their destinations, and
//! PeerAuthentication levels. The engine's semantics are tested in `common` (`authz`).

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
fn deny_names_policy_and_rule_and_target_ref_policies_are_the_waypoints() {
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
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: svc}]
"#;
    let (p, _) = parse(yaml);
    assert_eq!(p.len(), 2, "the targetRef policy is not ztunnel's");
    let l = labels(&[]);
    let t = Target {
        namespace: "ns",
        labels: &l,
    };
    let bad = Some("spiffe://cluster.local/ns/bad/sa/x");
    let good = Some("spiffe://cluster.local/ns/good/sa/x");
    // The DENY's HTTP part cannot be checked at L4: it is enforced on its namespace alone.
    assert_eq!(
        authorize(&p, t, &conn(bad, "10.0.0.1", "10.0.0.2:80")),
        Decision::Deny("denied by DENY policy ns/deny-get rule 0".into())
    );
    assert_eq!(
        authorize(&p, t, &conn(good, "10.0.0.1", "10.0.0.2:80")),
        Decision::Allow
    );
}

#[test]
fn remote_ip_is_the_original_client() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: clients, namespace: ns}
spec:
  rules: [{from: [{source: {remoteIpBlocks: ["192.168.0.0/24"]}}]}]
"#;
    let (p, _) = parse(yaml);
    let l = labels(&[]);
    let t = Target {
        namespace: "ns",
        labels: &l,
    };
    let mut c = conn(None, "10.0.0.9", "10.0.0.2:80");
    assert!(matches!(authorize(&p, t, &c), Decision::Deny(_)));
    c.remote_ip = "192.168.0.7".parse().unwrap();
    assert_eq!(authorize(&p, t, &c), Decision::Allow);
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
