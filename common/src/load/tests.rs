//! Loader tests: document splitting, line numbers, error paths, unknown kinds and fields,
//! duplicates, and the content cache.

use std::path::Path;

use super::*;

fn errors(text: &str) -> Vec<String> {
    load_str(Path::new("t.yaml"), text)
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn splits_documents_with_lines() {
    let docs = split_documents("a: 1\n---\nb: 2\n---\n\n---\nc: 3");
    let lines: Vec<usize> = docs.iter().map(|d| d.0).collect();
    assert_eq!(lines, [1, 3, 5, 7]);
}

#[test]
fn reports_type_errors_with_path_and_line() {
    let text = "# leading comment
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: ns}
spec:
  hosts: [r]
  http:
  - route:
    - destination: {host: r}
      weight: lots
";
    let got = errors(text);
    assert_eq!(
        got,
        ["Error [IST0106] (VirtualService ns/r t.yaml:11) spec.http[0].route[0].weight: invalid type: string \"lots\", expected i64"]
    );
}

#[test]
fn unknown_kinds_and_fields_warn() {
    let text = "apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: d, uid: x, resourceVersion: \"1\"}
spec:
  host: d
  trafficPolicy:
    loadBalancr: {simple: RANDOM}
    tls: {mode: ISTIO_MUTUAL}
status: {}
";
    let got = errors(text);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[0], "Warning [IST0901] (ConfigMap default/cm t.yaml:1) kind ConfigMap (v1) is not read by this mesh; skipped");
    assert!(got[1].starts_with("Warning [IST0902] (DestinationRule default/d t.yaml:11) spec.trafficPolicy.loadBalancr: unknown field"));
    assert!(got[2].starts_with("Warning [IST0903] (DestinationRule default/d t.yaml:12) spec.trafficPolicy.tls: field is valid in Istio but parsed and not implemented"));
}

#[test]
fn semantic_errors() {
    let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v}
spec:
  hosts: [v]
  http:
  - match:
    - uri: {exact: /a, prefix: /b}
    - headers:
        x: {regex: \"(unclosed\"}
    redirect: {uri: /x, redirectCode: 305}
    retries: {attempts: -1}
    fault: {abort: {httpStatus: 503, percentage: {value: 101}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec:
  rules:
  - from:
    - source:
        principals: [spiffe://cluster.local/ns/a/sa/b]
        ipBlocks: [10.0.0.0/33]
";
    let got = errors(text);
    let expect = [
        "(VirtualService default/v t.yaml:8) spec.http[0].match[0].uri: only one of exact, prefix or regex may be set",
        "(VirtualService default/v t.yaml:10) spec.http[0].match[1].headers.x.regex: invalid RE2 regex",
        "(VirtualService default/v t.yaml:11) spec.http[0].redirect.redirectCode: redirect code 305",
        "(VirtualService default/v t.yaml:12) spec.http[0].retries.attempts: attempts must not be negative",
        "(VirtualService default/v t.yaml:13) spec.http[0].fault.abort.percentage.value: percentage 101",
        "(AuthorizationPolicy default/a t.yaml:22) spec.rules[0].from[0].source.principals[0]: principal `spiffe://",
        "(AuthorizationPolicy default/a t.yaml:23) spec.rules[0].from[0].source.ipBlocks[0]: `10.0.0.0/33` is not",
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for (g, e) in got.iter().zip(expect) {
        assert!(
            g.starts_with("Error [IST0106]") && g.contains(e),
            "{g}\n  should contain {e}"
        );
    }
}

#[test]
fn duplicates_and_lists() {
    let text = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: s}
- apiVersion: v1
  kind: Service
  metadata: {name: s, namespace: default}
  spec:
    ports: [{port: 0}]
";
    let got = errors(text);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].contains("(Service default/s t.yaml:11) spec.ports[0].port: port must be in"),
        "{}",
        got[0]
    );
    assert!(got[1].contains("[IST0904] (Service default/s t.yaml:9) metadata.name: Service default/s is defined twice; first at t.yaml:1"), "{}", got[1]);
}

#[test]
fn cache_reparses_only_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
    std::fs::write(dir.path().join("a.yaml"), ns("a")).unwrap();
    std::fs::write(dir.path().join("b.yml"), ns("b")).unwrap();
    std::fs::create_dir(dir.path().join(".hidden")).unwrap();
    std::fs::write(dir.path().join(".hidden/c.yaml"), ns("c")).unwrap();
    let mut loader = Loader::new();
    let first = loader.load_dir(dir.path());
    assert_eq!(first.resources.len(), 2);
    let a_before = loader.cache[Path::new("a.yaml")].1.clone();
    std::fs::write(dir.path().join("b.yml"), ns("b2")).unwrap();
    let second = loader.load_dir(dir.path());
    assert_eq!(second.resources[1].metadata().name, "b2");
    assert!(Arc::ptr_eq(&a_before, &loader.cache[Path::new("a.yaml")].1));
    std::fs::remove_file(dir.path().join("b.yml")).unwrap();
    assert_eq!(loader.load_dir(dir.path()).resources.len(), 1);
    assert_eq!(loader.cache.len(), 1);
}
