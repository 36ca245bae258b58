//! The analyzer on real inputs: each Istio fixture alone reports its real problems; with the
//! cluster it refers to (common/tests/data/cluster) it reports nothing spurious; each broken
//! input gives exactly one clear error naming file, resource and field.

use std::path::{Path, PathBuf};

use common::analyze::{analyze_dir, run_cli, Report};
use common::Severity;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A temp directory holding copies of `files` (and of every file of `dirs`).
fn dir_with(files: &[PathBuf], dirs: &[PathBuf]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let all = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .chain(files.iter().cloned());
    for f in all {
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    tmp
}

fn lines(report: &Report, severity: Severity) -> Vec<String> {
    report
        .diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn each_fixture_alone_reports_its_real_problems() {
    // Subsets each fixture routes to without defining them itself: the 503 trap.
    let undefined_subsets: &[(&str, &[&str])] = &[
        ("ab-test-vip.yaml", &["\"v2\"", "\"v1\""]),
        ("canary-90-10.yaml", &["\"v1\"", "\"v2\""]),
        ("fault-abort-delay.yaml", &["\"v1\""]),
        ("fault-delay-ratings.yaml", &["\"v1\""]),
        ("header-routing-jason.yaml", &["\"v2\"", "\"v1\""]),
        (
            "header-routing-test-canary.yaml",
            &["\"v3\"", "\"v2\"", "\"v1\""],
        ),
        ("premium-user.yaml", &["\"vip\"", "\"general\""]),
    ];
    for f in fixtures() {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let tmp = dir_with(std::slice::from_ref(&f), &[]);
        let report = analyze_dir(tmp.path());
        let errors = lines(&report, Severity::Error);
        // Alone, every error is a reference to something the file does not hold.
        for e in &errors {
            assert!(e.starts_with("Error [IST0101]") && e.contains(&name), "{e}");
        }
        let subset_errors: Vec<&String> = errors
            .iter()
            .filter(|e| e.contains(".subset: subset"))
            .collect();
        let expected = undefined_subsets
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, s)| *s);
        assert_eq!(
            subset_errors.len(),
            expected.len(),
            "{name}: {subset_errors:#?}"
        );
        for (e, s) in subset_errors.iter().zip(expected) {
            assert!(
                e.contains(&format!("subset {s} is defined by no DestinationRule")),
                "{e}"
            );
        }
        // Every mesh VirtualService host and DestinationRule host is flagged without Services.
        if name != "peer-authentication-strict.yaml" && !name.starts_with("authz-") {
            assert!(
                errors.iter().any(|e| e.contains("matches no Service")),
                "{name}"
            );
        }
    }
    let tmp = dir_with(
        &[fixtures()
            .into_iter()
            .find(|f| f.ends_with("authz-reviews.yaml"))
            .unwrap()],
        &[],
    );
    let warnings = lines(&analyze_dir(tmp.path()), Severity::Warning);
    assert_eq!(
        warnings,
        ["Warning [IST0127] (AuthorizationPolicy default/reviews-policy authz-reviews.yaml:7) spec.selector: AuthorizationPolicy selector app=reviews matches no pod in namespace default"]
    );
}

#[test]
fn fixtures_with_their_cluster_report_nothing_spurious() {
    for f in fixtures() {
        let tmp = dir_with(std::slice::from_ref(&f), &[data("cluster")]);
        let report = analyze_dir(tmp.path());
        assert!(
            lines(&report, Severity::Error).is_empty(),
            "{}: {:#?}",
            f.display(),
            lines(&report, Severity::Error)
        );
        // Only the deliberate warnings remain: deprecated fields and the unserved ingress.
        for w in lines(&report, Severity::Warning) {
            assert!(
                w.contains("[IST0002]") || w.contains("[IST0903]"),
                "{}: {w}",
                f.display()
            );
        }
    }
}

#[test]
fn broken_inputs_give_one_clear_error_each() {
    let broken = data("broken");
    let tmp = dir_with(&[], &[data("cluster"), broken.clone()]);
    let report = analyze_dir(tmp.path());
    let errors = lines(&report, Severity::Error);
    let expected = [
        "Error [IST0106] (VirtualService default/bad-duration bad-duration.yaml:12) spec.http[0].timeout: invalid duration `2 seconds`",
        "Error [IST0106] (bad-yaml.yaml:7) invalid YAML: did not find expected ',' or ']', while parsing a flow sequence",
        "Error [IST0106] (DestinationRule default/missing-host missing-field.yaml:5) spec.host: required field is missing",
        "Error [IST0106] (VirtualService default/negative-weight negative-weight.yaml:17) spec.http[0].route[1].weight: weight -10 is outside [0, 100]",
        "Error [IST0101] (VirtualService default/unknown-subset unknown-subset.yaml:12) spec.http[0].route[0].destination.subset: subset \"v9\" is defined by no DestinationRule for ratings.default.svc.cluster.local",
        "Error [IST0106] (VirtualService default/wrong-type wrong-type.yaml:12) spec.http[0].route[0].weight: invalid type: string \"lots\", expected i64",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (e, want) in errors.iter().zip(expected) {
        assert!(e.starts_with(want), "got:  {e}\nwant: {want}");
    }
    assert_eq!(std::fs::read_dir(&broken).unwrap().count(), expected.len());
}

#[test]
fn analyzer_promotes_weights_and_flags_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("vs.yaml"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews}, weight: 50}
    - {destination: {host: reviews}, weight: 30}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews, port: {number: 1234}}}]}]
",
    )
    .unwrap();
    for f in std::fs::read_dir(data("cluster")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let errors = lines(&analyze_dir(tmp.path()), Severity::Error);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("Error [IST0905] (VirtualService default/a vs.yaml:7) spec.http[0].route: destination weights sum to 80"));
    assert!(errors[1].starts_with("Error [IST0109] (VirtualService default/b vs.yaml:15) spec.hosts[0]: host reviews.default.svc.cluster.local is also routed by VirtualService default/a"));
    assert!(errors[2].starts_with("Error [IST0101] (VirtualService default/b vs.yaml:16) spec.http[0].route[0].destination.port.number: port 1234 is not a port"));
}

#[test]
fn cli_exit_codes() {
    let mut out = Vec::new();
    assert_eq!(run_cli(&data("cluster"), &mut out), 0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("0 error(s), 0 warning(s)\n"), "{text}");
    let mut out = Vec::new();
    assert_eq!(run_cli(&data("broken"), &mut out), 1);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines().filter(|l| l.starts_with("Error [")).count() >= 6,
        "{text}"
    );
}

#[test]
fn analyzer_follows_istio_precedence_and_waypoint_admission() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.yaml"),
        "apiVersion: v1
kind: Service
metadata: {name: books, namespace: shop, labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: infra}}
spec: {clusterIP: 10.96.9.1, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: infra}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-newer, namespace: shop, creationTimestamp: \"2024-05-01T00:00:00Z\"}
spec:
  hosts: [books]
  http: [{route: [{destination: {host: books}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-older, namespace: shop, creationTimestamp: \"2024-01-01T00:00:00Z\"}
spec:
  hosts: [books]
  http: [{route: [{destination: {host: books}}]}]
",
    )
    .unwrap();
    let errors = lines(&analyze_dir(tmp.path()), Severity::Error);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    // Not admitted by the waypoint's HBONE listener (no allowedRoutes: its own namespace only).
    assert!(
        errors[0].contains("(Service shop/books config.yaml:3)")
            && errors[0].contains("does not admit namespace shop"),
        "{}",
        errors[0]
    );
    // The newer VirtualService is the one that does not take effect, whatever the load order.
    assert!(
        errors[1].contains("(VirtualService shop/a-newer config.yaml:")
            && errors[1].contains("is also routed by VirtualService shop/b-older"),
        "{}",
        errors[1]
    );
}
