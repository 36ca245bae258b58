//! Route selection by tunnel destination, as ztunnel hands traffic over: each downstream
//! connection carries the `CONNECT` authority (service VIP:port or pod IP:port) as its original
//! destination, here through an in-memory acceptor (the HBONE acceptor fills the same field).
//! The `Host` header never selects; destinations not bound to this waypoint are refused; a
//! waypoint in one namespace serves services and pods of others that choose it.

mod support;

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::sync::mpsc;
use waypoint::config::{ServeScope, WaypointConfig};
use waypoint::listener::Acceptor;
use waypoint::proxy::ConnInfo;
use waypoint::upstream::{BoxFuture, BoxIo};
use waypoint::Waypoint;

/// Tunnels as duplex pipes, each with its original destination.
struct TunnelAcceptor(mpsc::Receiver<(tokio::io::DuplexStream, SocketAddr)>);

impl Acceptor for TunnelAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, ConnInfo)>> {
        Box::pin(async move {
            let (s, dst) = self.0.recv().await.ok_or(io::ErrorKind::BrokenPipe)?;
            let info = ConnInfo {
                // The client pod (127.0.0.1 in the config below).
                peer: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:15008".parse().unwrap(),
                peer_identity: None,
                original_dst: Some(dst),
            };
            Ok((Box::new(s) as BoxIo, info))
        })
    }
}

struct Tunnels {
    tx: mpsc::Sender<(tokio::io::DuplexStream, SocketAddr)>,
    wp: Waypoint,
}

impl Tunnels {
    fn start(name: &str, namespace: &str, m: &common::Model) -> Tunnels {
        let cfg = WaypointConfig {
            name: name.into(),
            namespace: namespace.into(),
            scope: ServeScope::Waypoint,
            ..test_config()
        };
        let wp = Waypoint::new(cfg, m);
        for w in &wp.tables().warnings {
            eprintln!("config warning: {w}");
        }
        let (tx, rx) = mpsc::channel(16);
        let server = wp.clone();
        tokio::spawn(async move { server.serve(TunnelAcceptor(rx)).await });
        Tunnels { tx, wp }
    }

    /// GET `/` through a tunnel to `dst` with `Host: host`: the response's status and
    /// headers, or `None` when the waypoint refused the tunnel.
    async fn get(&self, dst: &str, host: &str) -> Option<Got> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.tx.send((server, dst.parse().unwrap())).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: bookstore}
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
metadata: {name: pod-waypoint, namespace: bookstore, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: bookstore
  labels: {istio.io/use-waypoint: shared-waypoint, istio.io/use-waypoint-namespace: infra}
spec:
  clusterIP: 10.96.7.1
  selector: {app: books}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: unbound, namespace: bookstore}
spec:
  clusterIP: 10.96.7.2
  selector: {app: unbound}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: books-v1, namespace: bookstore, labels: {app: books, version: v1}}
spec: {serviceAccountName: books}
status: {phase: Running, podIP: 127.0.70.1}
---
apiVersion: v1
kind: Pod
metadata: {name: unbound-v1, namespace: bookstore, labels: {app: unbound}}
status: {phase: Running, podIP: 127.0.70.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: ledger-0
  namespace: bookstore
  labels: {app: ledger, istio.io/use-waypoint: pod-waypoint}
spec: {serviceAccountName: ledger}
status: {phase: Running, podIP: 127.0.70.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {serviceAccountName: client}
status: {phase: Running, podIP: 127.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: books, namespace: bookstore}
spec:
  hosts: [books]
  http:
  - headers: {response: {set: {x-routed-by: shared-waypoint}}}
    route: [{destination: {host: books}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_service_selected_by_vip_not_host() {
    let _books = backend("127.0.70.1:8080", "books-v1", always(Behavior::Ok)).await;
    let unbound = backend("127.0.70.2:8080", "unbound-v1", always(Behavior::Ok)).await;
    let t = Tunnels::start("shared-waypoint", "infra", &model(&[MESH]));

    // The VIP picks the service and its VirtualService; the Host header names nothing served.
    let g = t.get("10.96.7.1:80", "no-such-host.example").await.unwrap();
    assert_eq!((g.status, g.body.as_str()), (200, "books-v1"));
    assert_eq!(g.header("x-routed-by"), "shared-waypoint");
    // A Host naming another service changes nothing either.
    let g = t.get("10.96.7.1:80", "unbound.bookstore:80").await.unwrap();
    assert_eq!(g.body, "books-v1");

    // Not bound to this waypoint: refused, nothing forwarded.
    assert!(t.get("10.96.7.2:80", "books.bookstore").await.is_none());
    assert!(t.get("127.0.70.2:8080", "unbound").await.is_none());
    // A port the service does not have.
    assert!(t.get("10.96.7.1:81", "books").await.is_none());
    assert_eq!(unbound.hits(), 0);
    // Bound pods of another waypoint are not this one's either.
    assert!(t.get("127.0.70.3:9090", "ledger").await.is_none());

    let m = metrics(&t.wp);
    assert!(
        m.contains("destination_service=\"books.bookstore.svc.cluster.local\"")
            && m.contains("source_workload=\"client\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_bound_traffic_goes_to_that_pod_on_the_tunnel_port() {
    let ledger = backend("127.0.70.3:9090", "ledger-0", always(Behavior::Ok)).await;
    let t = Tunnels::start("pod-waypoint", "bookstore", &model(&[MESH]));
    for _ in 0..3 {
        let g = t.get("127.0.70.3:9090", "anything").await.unwrap();
        assert_eq!((g.status, g.body.as_str()), (200, "ledger-0"));
    }
    assert_eq!(ledger.hits(), 3);
    // A workload waypoint serves no service traffic.
    assert!(t.get("10.96.7.1:80", "books").await.is_none());
    let m = metrics(&t.wp);
    assert!(
        m.contains("destination_workload=\"ledger-0\"") && m.contains("response_code=\"200\""),
        "{m}"
    );

    // Unbinding the pod (label removed) takes effect on reload.
    let unbound = MESH.replace(
        "labels: {app: ledger, istio.io/use-waypoint: pod-waypoint}",
        "labels: {app: ledger}",
    );
    t.wp.update(&model(&[&unbound]));
    assert!(t.get("127.0.70.3:9090", "anything").await.is_none());
}
