//! Every Istio fixture from the seed documents loads unchanged: no errors, and only the
//! warnings that name fields this mesh deliberately does not act on.

use std::path::{Path, PathBuf};

use common::load::{load_dir, load_str};
use common::Severity;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio")
}

#[test]
fn every_fixture_loads_without_errors() {
    let dir = fixtures_dir();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures directory") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        count += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap();
        let loaded = load_str(Path::new(name), &text);
        for d in &loaded.diagnostics {
            println!("{d}");
        }
        assert!(
            !loaded.has_errors(),
            "{}: {:?}",
            path.display(),
            loaded.diagnostics
        );
        assert!(!loaded.resources.is_empty(), "{}", path.display());
    }
    assert!(count >= 19, "expected the 19 fixtures, found {count}");
}

#[test]
fn fixture_warnings_are_the_meaningful_ones() {
    let loaded = load_dir(&fixtures_dir());
    let warnings: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(ToString::to_string)
        .collect();
    for w in &warnings {
        println!("{w}");
    }
    // The legacy outlier field still works but is deprecated upstream.
    assert!(warnings.iter().any(|w| w.contains("[IST0002]")
        && w.contains("DestinationRule default/my-app-dr canary-80-20-least-conn.yaml:11")
        && w.contains("spec.trafficPolicy.outlierDetection.consecutiveErrors")));
    // The ingress Gateway is parsed, not served.
    assert!(warnings
        .iter()
        .any(|w| w.contains("[IST0903]") && w.contains("bookinfo-gateway.yaml:6) spec:")));
}
