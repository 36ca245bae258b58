//! Waypoint binding end to end, in real namespaces with real eBPF capture and mTLS: a waypoint
//! in namespace `infra` serving a service of namespace `bookstore` that chose it
//! (`istio.io/use-waypoint` + `istio.io/use-waypoint-namespace`), and a workload waypoint
//! serving one pod labelled `istio.io/use-waypoint`. ztunnel hands each connection over with
//! the original destination as the tunnel's `CONNECT` authority; the waypoint picks its routes
//! from that destination. Proof that the waypoint is in the path: what only it can do (a
//! VirtualService's header and fault, an AuthorizationPolicy attached to its Gateway) and its
//! own metrics. Runs as root; never skips.

use std::time::Duration;

use mesh_tests::config::{self, PodDef};
use mesh_tests::mesh::{metric_sum, CaptureMode, Mesh};

const CLIENT: &str = "client-0";
const BOOKS_VIP: &str = "10.96.5.1";
const SHARED_WAYPOINT_POD: &str = "shared-waypoint-0";
const POD_WAYPOINT_POD: &str = "pod-waypoint-0";
const PORT: u16 = 9080;

const RESOURCES: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: bookstore
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: infra
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shared-waypoint
  namespace: infra
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: All
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: pod-waypoint
  namespace: bookstore
  labels:
    istio.io/waypoint-for: workload
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
---
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: bookstore
  labels:
    istio.io/use-waypoint: shared-waypoint
    istio.io/use-waypoint-namespace: infra
spec:
  clusterIP: 10.96.5.1
  selector:
    app: books
  ports:
  - name: http
    port: 9080
    targetPort: 9080
    appProtocol: http
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: books
  namespace: bookstore
spec:
  hosts:
  - books
  http:
  - match:
    - uri:
        prefix: /teapot
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: books
  - headers:
      request:
        set:
          end-user: set-by-shared-waypoint
      response:
        set:
          x-served-by: shared-waypoint
    route:
    - destination:
        host: books
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ledger-no-secrets
  namespace: bookstore
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: pod-waypoint
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/secret*"]
"#;

fn pod(mesh: &mut Mesh, name: &str, node: &str, ns: &str, app: &str, sa: &str) -> PodDef {
    let mut p = mesh
        .add_pod(name, node, app, "v1", sa)
        .expect("adding a pod");
    p.namespace = ns.to_string();
    p
}

fn waypoint_pod(mesh: &mut Mesh, name: &str, node: &str, ns: &str, gateway: &str) -> PodDef {
    let mut p = pod(mesh, name, node, ns, "", gateway);
    p.labels = vec![
        (
            "gateway.networking.k8s.io/gateway-name".into(),
            gateway.into(),
        ),
        ("istio.io/dataplane-mode".into(), "none".into()),
    ];
    p
}

/// Two nodes: the client and both waypoints on node1, the bookstore pods on node2 (so every
/// hop crosses the fabric over HBONE).
fn binding_mesh() -> Mesh {
    let mut mesh = Mesh::new(2, CaptureMode::Ebpf).expect("creating the mesh");
    let mut pods = vec![
        pod(&mut mesh, CLIENT, "node1", "default", "client", "client"),
        pod(
            &mut mesh,
            "books-v1",
            "node2",
            "bookstore",
            "books",
            "books",
        ),
        pod(
            &mut mesh,
            "ledger-0",
            "node2",
            "bookstore",
            "ledger",
            "ledger",
        ),
        waypoint_pod(
            &mut mesh,
            SHARED_WAYPOINT_POD,
            "node1",
            "infra",
            "shared-waypoint",
        ),
        waypoint_pod(
            &mut mesh,
            POD_WAYPOINT_POD,
            "node1",
            "bookstore",
            "pod-waypoint",
        ),
    ];
    pods[2]
        .labels
        .push(("istio.io/use-waypoint".into(), "pod-waypoint".into()));
    for p in &pods {
        mesh.pods.insert(p.name.clone(), p.clone());
    }
    let docs: Vec<String> = std::iter::once(config::namespace("default", true))
        .chain(pods.iter().map(config::pod))
        .collect();
    mesh.write_config("10-pods.yaml", &config::docs(&docs))
        .unwrap();
    mesh.write_config("20-binding.yaml", RESOURCES).unwrap();
    for (p, app) in [("books-v1", "books"), ("ledger-0", "ledger")] {
        mesh.start_app(p, app, "v1", PORT).expect("starting an app");
    }
    mesh.start_all_ztunnels().expect("starting ztunnels");
    mesh.start_waypoint(SHARED_WAYPOINT_POD, "shared-waypoint")
        .expect("starting the shared waypoint");
    mesh.start_waypoint(POD_WAYPOINT_POD, "pod-waypoint")
        .expect("starting the pod waypoint");
    mesh
}

/// `curl` from the client, retried for a few seconds while enrolment settles; returns the
/// status and the response headers followed by the body.
fn get(mesh: &Mesh, url: &str, want: u16) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = mesh.curl(CLIENT, url, &["-D", "-"]).expect("running curl");
        if last.0 == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

#[test]
fn cross_namespace_waypoint_serves_the_service_that_chose_it() {
    let mesh = binding_mesh();
    let url = format!("http://{BOOKS_VIP}:{PORT}/books");
    let (code, out) = get(&mesh, &url, 200);
    assert_eq!(code, 200, "books via the shared waypoint: {out}");
    // Set by the VirtualService, which only the waypoint applies: on the request the app
    // echoes, and on the response.
    assert!(
        out.contains("set-by-shared-waypoint"),
        "request header missing: {out}"
    );
    assert!(
        out.to_ascii_lowercase()
            .contains("x-served-by: shared-waypoint"),
        "response header missing: {out}"
    );
    assert!(out.contains("\"pod\":\"books-v1\""), "{out}");
    let (code, out) = get(&mesh, &format!("http://{BOOKS_VIP}:{PORT}/teapot"), 418);
    assert_eq!(code, 418, "the waypoint's fault: {out}");

    let m = mesh.pod_metrics(SHARED_WAYPOINT_POD).unwrap();
    let served = metric_sum(
        &m,
        "istio_requests_total",
        &[
            "reporter=\"waypoint\"",
            "destination_service_name=\"books\"",
            "destination_service_namespace=\"bookstore\"",
            "destination_workload=\"books-v1\"",
            "response_code=\"200\"",
        ],
    );
    assert!(served >= 1.0, "the shared waypoint did not count it:\n{m}");

    // Around the waypoint, straight to the pod: its ztunnel admits only the waypoint.
    let books = mesh.pod_ip("books-v1");
    let (code, _) = mesh
        .curl(CLIENT, &format!("http://{books}:{PORT}/books"), &[])
        .unwrap();
    assert_ne!(code, 200, "direct pod traffic bypassed the waypoint");
}

#[test]
fn workload_waypoint_serves_the_pod_that_chose_it() {
    let mesh = binding_mesh();
    let ledger = mesh.pod_ip("ledger-0");
    let (code, out) = get(&mesh, &format!("http://{ledger}:{PORT}/entries"), 200);
    assert_eq!(code, 200, "ledger via its waypoint: {out}");
    assert!(out.contains("\"pod\":\"ledger-0\""), "{out}");
    // The policy attached to the waypoint's Gateway: only the waypoint can answer this.
    let (code, out) = get(&mesh, &format!("http://{ledger}:{PORT}/secret"), 403);
    assert_eq!(code, 403, "the waypoint's L7 policy: {out}");
    assert!(out.contains("RBAC: access denied"), "{out}");

    let m = mesh.pod_metrics(POD_WAYPOINT_POD).unwrap();
    for status in ["200", "403"] {
        let n = metric_sum(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "destination_workload=\"ledger-0\"",
                &format!("response_code=\"{status}\""),
            ],
        );
        assert!(n >= 1.0, "no {status} counted by the pod waypoint:\n{m}");
    }
    // The service waypoint saw none of it.
    let shared = mesh.pod_metrics(SHARED_WAYPOINT_POD).unwrap();
    assert_eq!(
        metric_sum(
            &shared,
            "istio_requests_total",
            &["destination_workload=\"ledger-0\""]
        ),
        0.0,
        "{shared}"
    );
}
