//! End-to-end: the whole mesh in real network namespaces with real eBPF capture, real mTLS and
//! real clients. Runs as root (CI is root); nothing here skips. Each test builds its own mesh
//! with unique names and tears it down on drop, even when an assertion fails.

use std::time::Duration;

use mesh_tests::mesh::{metric_sum, workspace_root};
use mesh_tests::scenarios::{self, StepReport, CLIENT, DETAILS_URL, REVIEWS_URL};

fn demo_mesh() -> mesh_tests::mesh::Mesh {
    let id = mesh_tests::netns::unique_id();
    let mut quiet = |_: &str| {};
    scenarios::bring_up(&id, &workspace_root().join("deploy/local"), &mut quiet)
        .expect("bringing up the demo mesh")
}

fn assert_steps(steps: &[StepReport]) {
    let mut failures = Vec::new();
    for s in steps {
        for c in &s.checks {
            if !c.ok {
                failures.push(format!(
                    "{}: {} measured {} expected {}",
                    s.title, c.what, c.measured, c.expected
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "steps failed:\n{}",
        failures.join("\n")
    );
}

/// The demo's walkthrough, asserted: every step's numbers match its configuration.
#[test]
fn demo_walkthrough_matches_configuration() {
    let mesh = demo_mesh();
    let mut quiet = |_: &str| {};
    let steps = scenarios::all(&mesh, &mut quiet, 1000).expect("running the steps");
    assert_steps(&steps);
}

/// A pod on node1 reaches reviews (pods on node2/node3) through the waypoint on node3; going
/// around the waypoint is refused.
#[test]
fn waypoint_handoff_and_bypass_refused() {
    let mesh = demo_mesh();
    let (code, body) = mesh.curl(CLIENT, REVIEWS_URL, &[]).unwrap();
    assert_eq!(code, 200, "reviews via waypoint: {body}");
    let wp = mesh.pod_metrics("reviews-waypoint-0").unwrap();
    let served = metric_sum(
        &wp,
        "istio_requests_total",
        &["destination_service_name=\"reviews\""],
    );
    assert!(served >= 1.0, "waypoint did not serve the request:\n{wp}");

    // Straight to a reviews pod's IP from an enrolled pod: the destination ztunnel accepts
    // reviews traffic only from the waypoint's identity.
    let v1 = mesh.pod_ip("reviews-v1");
    let (code, _) = mesh
        .curl(CLIENT, &format!("http://{v1}:9080/reviews"), &[])
        .unwrap();
    assert_ne!(code, 200, "direct pod traffic bypassed the waypoint");

    // Plaintext from outside the mesh (a node namespace is not enrolled): STRICT refuses.
    let node1 = &mesh.topo.node("node1").ns;
    let out = node1
        .exec(&[
            "sh",
            "-c",
            &format!(
                "curl -s --max-time 3 -o /dev/null -w '%{{http_code}}' http://{v1}:9080/ || true"
            ),
        ])
        .unwrap();
    assert_ne!(out.trim(), "200", "plaintext reached a STRICT pod");
}

/// Capture is real: an enrolled pod's curl to a pod IP and to a cluster IP both go through
/// ztunnel (counted by the destination ztunnel as mTLS from the client's identity).
#[test]
fn enrolled_pod_traffic_is_captured_and_counted() {
    let mesh = demo_mesh();
    let details = mesh.pod_ip("details-v1");
    let (c1, _) = mesh.curl(CLIENT, DETAILS_URL, &[]).unwrap();
    let (c2, _) = mesh
        .curl(CLIENT, &format!("http://{details}:9080/"), &[])
        .unwrap();
    assert_eq!((c1, c2), (200, 200));
    std::thread::sleep(Duration::from_millis(300));
    let m = mesh.ztunnel_metrics("node2").unwrap();
    let opened = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "destination_workload=\"details-v1\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
        ],
    );
    assert!(
        opened >= 2.0,
        "expected ≥2 mTLS connections counted at details' ztunnel:\n{m}"
    );
}

/// SIGKILL a ztunnel and start it again: traffic resumes and nothing is attached twice.
#[test]
fn ztunnel_restart_reenrols_without_duplicates() {
    let mut mesh = demo_mesh();
    let (code, _) = mesh.curl(CLIENT, DETAILS_URL, &[]).unwrap();
    assert_eq!(code, 200);
    let cg = mesh.topo.pod(CLIENT).cgroup.path.clone();
    let attached = || {
        mesh_tests::netns::run("bpftool", &["cgroup", "show", &cg.display().to_string()])
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
            .count()
    };
    let before = attached();
    assert!(
        before > 0,
        "no programs attached to the client pod's cgroup"
    );
    mesh.ztunnels.get_mut("node1").unwrap().kill9();
    mesh.start_ztunnel("node1").unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if mesh
            .curl(CLIENT, DETAILS_URL, &[])
            .map(|(c, _)| c == 200)
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok, "traffic did not resume after the restart");
    assert_eq!(
        attached(),
        before,
        "programs attached twice after a restart"
    );
}

/// Inbound plaintext to an enrolled pod: refused under STRICT; under PERMISSIVE it is steered
/// by eBPF (sk_lookup) to ztunnel's 15006 listener, delivered, and counted as `none`.
#[test]
fn inbound_plaintext_strict_refused_permissive_counted() {
    let mesh = demo_mesh();
    let details = mesh.pod_ip("details-v1");
    let url = format!("http://{details}:9080/details");
    // A node namespace is outside the mesh: its connections are plaintext.
    let node1 = &mesh.topo.node("node1").ns;
    let plain = || {
        node1
            .exec(&[
                "sh",
                "-c",
                &format!("curl -s --max-time 3 -o /dev/null -w '%{{http_code}}' {url} || true"),
            ])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_ne!(
        plain(),
        "200",
        "plaintext reached a pod under mesh-wide STRICT"
    );
    let permissive = mesh_tests::config::peer_authentication("default", "permissive", "PERMISSIVE");
    mesh.write_config("55-permissive.yaml", &permissive)
        .unwrap();
    let mut got = String::new();
    for _ in 0..50 {
        got = plain();
        if got == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(got, "200", "PERMISSIVE did not accept plaintext");
    let m = mesh.ztunnel_metrics("node2").unwrap();
    let counted = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "destination_workload=\"details-v1\"",
            "connection_security_policy=\"none\"",
        ],
    );
    assert!(
        counted >= 1.0,
        "plaintext connection not counted as `none`:\n{m}"
    );
}

/// A DENY on a path at the waypoint cannot be bypassed with dot segments or encoded dots: the
/// waypoint normalises the path (Istio's default) before authorization, as a real client
/// (`curl --path-as-is`) sends it raw.
#[test]
fn waypoint_path_deny_not_bypassed_by_dot_segments() {
    let mesh = demo_mesh();
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: reviews-no-admin\n  namespace: default\nspec:\n  targetRefs:\n  - kind: Service\n    group: \"\"\n    name: reviews\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin*\"]\n";
    mesh.write_config("61-authz-admin.yaml", deny).unwrap();
    let base = REVIEWS_URL.trim_end_matches("/reviews");
    let code = |path: &str| {
        mesh.curl(CLIENT, &format!("{base}{path}"), &["--path-as-is"])
            .map(|(c, _)| c)
            .unwrap_or(0)
    };
    let mut applied = false;
    for _ in 0..50 {
        if code("/admin") == 403 {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(applied, "the DENY on /admin* never took effect");
    for path in [
        "/x/../admin",
        "/./admin",
        "/reviews/../admin/x",
        "/%2e%2e/admin",
        "/x/%2E%2e/admin",
        "/x/.%2e/admin",
    ] {
        assert_eq!(code(path), 403, "{path} bypassed the DENY on /admin*");
    }
    assert_eq!(code("/reviews"), 200, "the DENY must not catch other paths");
}
