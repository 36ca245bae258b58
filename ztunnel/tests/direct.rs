//! In-process tests over loopback: two ztunnel "nodes" in one process, pods on 127.N.0.x.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn hbone_carries_tcp_between_nodes_with_metrics() {
    let mesh = Mesh::new();
    let ca = ca();
    let res = mesh.resources("");
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let n2 = node("node2", res, ca.clone(), |_| {}).await;
    let app = echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig.set_outbound(mesh.client_ip, None, app);

    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_eq!(roundtrip(&mut s, &payload).await.unwrap(), payload);
    s.shutdown().await.unwrap();
    let mut rest = vec![];
    s.read_to_end(&mut rest).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let m2 = n2.zt.inputs().metrics.encode();
    let dst = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/client-sa\"",
        "destination_workload=\"server\"",
    ];
    assert_eq!(
        metric(&m2, "istio_tcp_connections_opened_total", &dst),
        1,
        "{m2}"
    );
    assert_eq!(
        metric(&m2, "istio_tcp_connections_closed_total", &dst),
        1,
        "{m2}"
    );
    assert_eq!(metric(&m2, "istio_tcp_received_bytes_total", &dst), 200_000);
    assert_eq!(metric(&m2, "istio_tcp_sent_bytes_total", &dst), 200_000);
    let m1 = n1.zt.inputs().metrics.encode();
    assert_eq!(
        metric(&m1, "istio_tcp_sent_bytes_total", &["reporter=\"source\""]),
        200_000
    );
    // Metrics are also served over HTTP on the metrics port.
    let body = http_get(n2.zt.metrics_addr(), "/metrics").await;
    assert!(body.contains("istio_tcp_connections_opened_total"));
    let ready = http_get(n2.zt.readiness_addr(), "/healthz/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let dump = http_get(n1.zt.admin_addr(), "/config_dump").await;
    assert!(
        dump.contains("spiffe://cluster.local/ns/demo/sa/client-sa"),
        "{dump}"
    );
    // A second connection reuses the pooled HBONE connection.
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"again").await.unwrap(), b"again");
    assert_eq!(n1.zt.inputs().pool.connections(), 1);
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---"#;

#[tokio::test]
async fn strict_rejects_plaintext_permissive_accepts_and_labels_none() {
    let mesh = Mesh::new();
    let ca = ca();
    let n2 = node("node2", mesh.resources(STRICT), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n2.orig.set_inbound_port(mesh.server_ip, 8080);

    let mut s = TcpStream::connect((mesh.server_ip, 15006)).await.unwrap();
    let r = roundtrip(&mut s, b"hello").await;
    assert!(r.is_err(), "STRICT must refuse plaintext, got {r:?}");
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(&m, "ztunnel_refused_connections_total", &["strict_mtls"]),
        1
    );

    n2.zt.update(&mesh.resources(""));
    let mut s = TcpStream::connect((mesh.server_ip, 15006)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"hello").await.unwrap(), b"hello");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "connection_security_policy=\"none\"",
                "destination_workload=\"server\""
            ]
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn authorization_denies_then_allows_by_principal() {
    let mesh = Mesh::new();
    let ca = ca();
    let deny_all = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: demo}
spec: {}
---"#;
    let allow = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client-sa"]}}]
---"#;
    let n1 = node("node1", mesh.resources(deny_all), ca.clone(), |_| {}).await;
    let n2 = node("node2", mesh.resources(deny_all), ca.clone(), |_| {}).await;
    let app = echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig.set_outbound(mesh.client_ip, None, app);

    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert!(roundtrip(&mut s, b"x").await.is_err(), "deny-all refuses");
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "ztunnel_refused_connections_total",
            &["reason=\"policy\""]
        ),
        1
    );

    n2.zt.update(&mesh.resources(&format!("{deny_all}{allow}")));
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"ok").await.unwrap(), b"ok");
}

#[tokio::test]
async fn same_node_short_path_keeps_policy_and_telemetry() {
    let b = block();
    let c: std::net::IpAddr = format!("127.{b}.0.1").parse().unwrap();
    let s_ip: std::net::IpAddr = format!("127.{b}.0.2").parse().unwrap();
    let yaml = [
        ambient_ns("demo"),
        pod("client", "demo", "client-sa", c, "node1", "client"),
        pod("server", "demo", "server-sa", s_ip, "node1", "server"),
    ]
    .concat();
    let n1 = node("node1", parse(&yaml), ca(), |_| {}).await;
    let app = echo(SocketAddr::new(s_ip, 8080)).await;
    n1.orig.set_outbound(c, None, app);
    let mut s = TcpStream::connect((c, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"local").await.unwrap(), b"local");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = n1.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client-sa\""
            ]
        ),
        1,
        "{m}"
    );
    assert_eq!(
        n1.zt.inputs().pool.connections(),
        0,
        "no HBONE dial on the same node"
    );
}

#[tokio::test]
async fn service_vip_resolves_to_endpoint() {
    let mesh = Mesh::new();
    let b = mesh.server_ip.to_string();
    let vip = format!("127.{}.9.9", b.split('.').nth(1).unwrap());
    let svc = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: demo}}
spec:
  clusterIP: "{vip}"
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: 8080}}]
---"#
    );
    let ca = ca();
    let n1 = node("node1", mesh.resources(&svc), ca.clone(), |_| {}).await;
    let n2 = node("node2", mesh.resources(&svc), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig
        .set_outbound(mesh.client_ip, None, format!("{vip}:80").parse().unwrap());
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"svc").await.unwrap(), b"svc");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"server.demo.svc.cluster.local\""]
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn graceful_drain_lets_open_connections_finish() {
    let mesh = Mesh::new();
    let ca = ca();
    let res = mesh.resources("");
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let n2 = node("node2", res, ca.clone(), |c| {
        c.drain_timeout = Duration::from_secs(5)
    })
    .await;
    let app = echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig.set_outbound(mesh.client_ip, None, app);
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"before").await.unwrap(), b"before");
    let zt2 = n2.zt.clone();
    let drain = tokio::spawn(async move { zt2.shutdown().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        roundtrip(&mut s, b"during").await.unwrap(),
        b"during",
        "open stream survives drain"
    );
    s.shutdown().await.unwrap();
    let mut rest = vec![];
    let _ = s.read_to_end(&mut rest).await;
    tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .expect("drain finishes once the connection closes")
        .unwrap();
    assert!(
        TcpStream::connect((mesh.server_ip, 15008)).await.is_err(),
        "listener closed"
    );
}
