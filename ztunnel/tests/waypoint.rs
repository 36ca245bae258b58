//! Waypoint handoff, in-process over loopback.
//!
//! Topology (block 127.B.0.0/16): `client` on node1, `server` (behind Service `server`, which
//! uses waypoint `server-waypoint`) and `other` (Service `other`, no waypoint) on node2, and
//! the waypoint pod `server-waypoint-0` (not captured) at 127.B.0.3. The waypoint is a small
//! stand-in: an HBONE server with a certificate for `server-waypoint`'s identity from the test
//! CA that records each `CONNECT` (authority, peer identity) and forwards the bytes over HBONE
//! to the server pod, as the real waypoint does after L7 routing.

mod support;

use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use transport::hbone::{server, Admission, ConnectRequest, H2Client, HboneError, Tunnel};
use transport::identity::{CaDir, Identity, IdentityCert};
use transport::tls;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

struct Topo {
    client: IpAddr,
    server: IpAddr,
    waypoint: IpAddr,
    other: IpAddr,
    server_vip: IpAddr,
    other_vip: IpAddr,
}

impl Topo {
    fn new() -> Topo {
        let b = block();
        let ip = |s: &str| format!("127.{b}.{s}").parse().unwrap();
        Topo {
            client: ip("0.1"),
            server: ip("0.2"),
            waypoint: ip("0.3"),
            other: ip("0.4"),
            server_vip: ip("9.9"),
            other_vip: ip("9.8"),
        }
    }

    /// The mesh plus `extra` (policies).
    fn yaml(&self, extra: &str) -> String {
        let Topo {
            server_vip,
            other_vip,
            waypoint,
            ..
        } = self;
        [
            ambient_ns("demo"),
            pod(
                "client",
                "demo",
                "client-sa",
                self.client,
                "node1",
                "client",
            ),
            pod(
                "server",
                "demo",
                "server-sa",
                self.server,
                "node2",
                "server",
            ),
            pod("other", "demo", "other-sa", self.other, "node2", "other"),
            format!(
                r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: server-waypoint, namespace: demo}}
spec: {{gatewayClassName: istio-waypoint}}
---
apiVersion: v1
kind: Pod
metadata:
  name: server-waypoint-0
  namespace: demo
  labels: {{gateway.networking.k8s.io/gateway-name: server-waypoint, istio.io/dataplane-mode: none}}
spec: {{nodeName: node3, serviceAccountName: server-waypoint}}
status: {{podIP: "{waypoint}"}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: demo, labels: {{istio.io/use-waypoint: server-waypoint}}}}
spec:
  clusterIP: "{server_vip}"
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: demo}}
spec:
  clusterIP: "{other_vip}"
  selector: {{app: other}}
  ports: [{{port: 80, targetPort: 8080}}]
---"#
            ),
            extra.to_string(),
        ]
        .concat()
    }
}

/// What the stand-in waypoint saw: (CONNECT authority, peer identity from the client cert).
type Seen = Arc<Mutex<Vec<(SocketAddr, Option<Identity>)>>>;
/// Request headers of each `CONNECT` the stand-in waypoint saw.
type Headers = Arc<Mutex<Vec<http::HeaderMap>>>;

/// Starts the stand-in waypoint on `topo.waypoint:15008` presenting `identity`'s certificate;
/// each admitted tunnel is forwarded over HBONE to `server:8080` (authority = pod IP, like
/// the real waypoint after picking an endpoint).
async fn waypoint(topo: &Topo, ca: &CaDir, identity: Identity) -> (Seen, Headers) {
    let cert =
        IdentityCert::from_issued(&ca.issue(&identity, Duration::from_secs(600)).unwrap()).unwrap();
    let server_cfg = tls::server_config(cert.clone(), ca.roots(), "cluster.local").unwrap();
    let client_cfg = tls::client_config(cert, ca.roots(), vec![id("server-sa")]).unwrap();
    let listener = TcpListener::bind((topo.waypoint, 15008)).await.unwrap();
    let seen: Seen = Arc::default();
    let headers: Headers = Arc::default();
    let headers2 = headers.clone();
    let (wp_ip, server_ip) = (topo.waypoint, topo.server);
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, headers, client_cfg) = (
                acceptor.clone(),
                seen2.clone(),
                headers2.clone(),
                client_cfg.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls::peer_identity(tls.get_ref().1);
                let handler = move |req: ConnectRequest| {
                    seen.lock().push((req.authority, peer.clone()));
                    headers.lock().push(req.headers.clone());
                    let client_cfg = client_cfg.clone();
                    async move {
                        let up = match forward(wp_ip, server_ip, client_cfg).await {
                            Ok(t) => t,
                            Err(e) => {
                                eprintln!("stand-in waypoint: forward failed: {e}");
                                return Admission::Reject(http::StatusCode::BAD_GATEWAY);
                            }
                        };
                        Admission::Accept {
                            headers: http::HeaderMap::new(),
                            task: Box::new(move |mut down: Tunnel| {
                                Box::pin(async move {
                                    let mut up = up;
                                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                                })
                            }),
                        }
                    }
                };
                let _ = server::serve(tls, handler, std::future::pending()).await;
            });
        }
    });
    (seen, headers)
}

/// HBONE from the waypoint pod's own address to the server pod.
async fn forward(
    from: IpAddr,
    server_ip: IpAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Tunnel, HboneError> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(SocketAddr::new(server_ip, 15008)).await?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::dummy_server_name(), tcp)
        .await?;
    let h2 = H2Client::handshake(tls).await?;
    let mut headers = http::HeaderMap::new();
    headers.insert("forwarded", "for=\"127.0.0.1:1\"".parse().unwrap());
    Ok(h2
        .connect(SocketAddr::new(server_ip, 8080), headers)
        .await?
        .0)
}

/// An HBONE client with `sa`'s certificate straight to the server pod.
async fn direct_hbone(topo: &Topo, ca: &CaDir, sa: &str) -> Result<Tunnel, HboneError> {
    let cert =
        IdentityCert::from_issued(&ca.issue(&id(sa), Duration::from_secs(600)).unwrap()).unwrap();
    let cfg = tls::client_config(cert, ca.roots(), vec![id("server-sa")]).unwrap();
    let tcp = TcpStream::connect((topo.server, 15008)).await?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::dummy_server_name(), tcp)
        .await?;
    let h2 = H2Client::handshake(tls).await?;
    Ok(h2
        .connect(SocketAddr::new(topo.server, 8080), http::HeaderMap::new())
        .await?
        .0)
}

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---"#;

/// (a) service VIP of a waypoint-bound service → the waypoint, authority VIP:port, waypoint
/// identity verified; the destination labels the waypoint as source. (b) a service without a
/// waypoint goes straight to its endpoint.
#[tokio::test]
async fn service_with_waypoint_goes_through_waypoint_others_stay_l4() {
    let t = Topo::new();
    let ca = ca();
    let res = parse(&t.yaml(STRICT));
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let n2 = node("node2", res, ca.clone(), |_| {}).await;
    let (seen, headers) = waypoint(&t, &ca, id("server-waypoint")).await;
    echo(SocketAddr::new(t.server, 8080)).await;
    echo(SocketAddr::new(t.other, 8080)).await;

    // (a)
    let vip = SocketAddr::new(t.server_vip, 80);
    n1.orig.set_outbound(t.client, None, vip);
    let mut s = TcpStream::connect((t.client, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"via-wp").await.unwrap(), b"via-wp");
    drop(s);
    assert_eq!(
        seen.lock().as_slice(),
        &[(vip, Some(id("client-sa")))],
        "waypoint got CONNECT VIP:port from the client's identity"
    );
    {
        let h = headers.lock();
        let get = |k: &str| {
            h[0].get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let fwd = get("forwarded");
        assert!(
            fwd.starts_with(&format!("for=\"{}:", t.client))
                && fwd.ends_with(";host=server.demo.svc.cluster.local"),
            "{fwd}"
        );
        assert!(get("baggage").contains("k8s.pod.name=client"), "{h:?}");
        assert!(get("traceparent").starts_with("00-"), "{h:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m2 = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "source_workload=\"server-waypoint-0\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/server-waypoint\"",
                "destination_workload=\"server\"",
                "destination_service=\"server.demo.svc.cluster.local\"",
            ]
        ),
        1,
        "{m2}"
    );
    let m1 = n1.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_workload=\"server-waypoint-0\"",
                "destination_service=\"server.demo.svc.cluster.local\"",
            ]
        ),
        1,
        "{m1}"
    );

    // (b)
    n1.orig
        .set_outbound(t.client, None, SocketAddr::new(t.other_vip, 80));
    let mut s = TcpStream::connect((t.client, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"l4").await.unwrap(), b"l4");
    drop(s);
    assert_eq!(seen.lock().len(), 1, "no waypoint for `other`");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m2 = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client-sa\"",
                "destination_workload=\"other\"",
            ]
        ),
        1,
        "{m2}"
    );
}

/// The source ztunnel verifies the waypoint's identity: a server at the waypoint's address
/// with another identity's certificate is refused.
#[tokio::test]
async fn waypoint_identity_is_verified() {
    let t = Topo::new();
    let ca = ca();
    let res = parse(&t.yaml(""));
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let _n2 = node("node2", res, ca.clone(), |_| {}).await;
    let (seen, _) = waypoint(&t, &ca, id("impostor")).await;
    echo(SocketAddr::new(t.server, 8080)).await;
    n1.orig
        .set_outbound(t.client, None, SocketAddr::new(t.server_vip, 80));
    let mut s = TcpStream::connect((t.client, 15001)).await.unwrap();
    assert!(roundtrip(&mut s, b"x").await.is_err());
    assert!(seen.lock().is_empty(), "no CONNECT reached the impostor");
    let m1 = n1.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m1,
            "ztunnel_refused_connections_total",
            &["reason=\"hbone_connect\""]
        ),
        1,
        "{m1}"
    );
}

/// (c) direct HBONE to a waypoint-bound pod: refused (401) for any identity but the
/// waypoint's, including a captured client dialing the pod IP; the waypoint's is accepted.
#[tokio::test]
async fn direct_hbone_to_waypoint_bound_pod_only_from_waypoint() {
    let t = Topo::new();
    let ca = ca();
    let res = parse(&t.yaml(STRICT));
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let n2 = node("node2", res, ca.clone(), |_| {}).await;
    echo(SocketAddr::new(t.server, 8080)).await;

    match direct_hbone(&t, &ca, "client-sa").await {
        Err(HboneError::Status(s)) => assert_eq!(s, http::StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {other:?}"),
    }
    // A captured client addressing the pod IP (no workload waypoint) is refused at node2.
    n1.orig
        .set_outbound(t.client, None, SocketAddr::new(t.server, 8080));
    let mut s = TcpStream::connect((t.client, 15001)).await.unwrap();
    assert!(roundtrip(&mut s, b"x").await.is_err(), "bypass refused");
    let m2 = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m2,
            "ztunnel_refused_connections_total",
            &["listener=\"hbone\"", "reason=\"bypassed_waypoint\""]
        ),
        2,
        "{m2}"
    );

    let mut tunnel = direct_hbone(&t, &ca, "server-waypoint")
        .await
        .expect("waypoint identity admitted");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tunnel.write_all(b"wp").await.unwrap();
    let mut buf = [0u8; 2];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"wp");

    // Other pods of the node are unaffected.
    echo(SocketAddr::new(t.other, 8080)).await;
    let other = direct_hbone_to(&ca, "client-sa", t.other, "other-sa").await;
    assert!(other.is_ok(), "{other:?}");

    // The same-node short path (other → server on node2) cannot bypass the waypoint either.
    n2.orig
        .set_outbound(t.other, None, SocketAddr::new(t.server, 8080));
    let mut s = TcpStream::connect((t.other, 15001)).await.unwrap();
    assert!(roundtrip(&mut s, b"x").await.is_err(), "same-node bypass");
    let m2 = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m2,
            "ztunnel_refused_connections_total",
            &["listener=\"outbound\"", "reason=\"bypassed_waypoint\""]
        ),
        1,
        "{m2}"
    );
}

/// A waypoint may use the service VIP:port as authority (mapped to the pod's target port);
/// anyone else gets 400 for an authority that is not the pod.
#[tokio::test]
async fn vip_authority_accepted_from_waypoint_only() {
    let t = Topo::new();
    let ca = ca();
    let _n2 = node("node2", parse(&t.yaml(STRICT)), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(t.server, 8080)).await;
    let vip = SocketAddr::new(t.server_vip, 80);
    let mut tunnel = hbone_as(&ca, "server-waypoint", t.server, "server-sa", vip)
        .await
        .expect("waypoint may address the VIP");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tunnel.write_all(b"vip").await.unwrap();
    let mut buf = [0u8; 3];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"vip");
    match hbone_as(&ca, "client-sa", t.server, "server-sa", vip).await {
        Err(HboneError::Status(s)) => assert_eq!(s, http::StatusCode::BAD_REQUEST),
        other => panic!("expected 400, got {other:?}"),
    }
}

async fn direct_hbone_to(
    ca: &CaDir,
    sa: &str,
    dst: IpAddr,
    dst_sa: &str,
) -> Result<Tunnel, HboneError> {
    hbone_as(ca, sa, dst, dst_sa, SocketAddr::new(dst, 8080)).await
}

/// HBONE as `sa` to `dst`'s ztunnel (expecting `dst_sa`), `CONNECT authority`.
async fn hbone_as(
    ca: &CaDir,
    sa: &str,
    dst: IpAddr,
    dst_sa: &str,
    authority: SocketAddr,
) -> Result<Tunnel, HboneError> {
    let cert =
        IdentityCert::from_issued(&ca.issue(&id(sa), Duration::from_secs(600)).unwrap()).unwrap();
    let cfg = tls::client_config(cert, ca.roots(), vec![id(dst_sa)]).unwrap();
    let tcp = TcpStream::connect((dst, 15008)).await?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::dummy_server_name(), tcp)
        .await?;
    let h2 = H2Client::handshake(tls).await?;
    Ok(h2.connect(authority, http::HeaderMap::new()).await?.0)
}

/// L4 AuthorizationPolicy at the destination sees the waypoint as the principal.
#[tokio::test]
async fn l4_policy_applies_to_waypoint_traffic() {
    let t = Topo::new();
    let ca = ca();
    let allow_client_only = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client-sa"]}}]
---"#;
    let allow_waypoint = allow_client_only.replace("sa/client-sa", "sa/server-waypoint");
    let n2 = node(
        "node2",
        parse(&t.yaml(allow_client_only)),
        ca.clone(),
        |_| {},
    )
    .await;
    echo(SocketAddr::new(t.server, 8080)).await;
    match direct_hbone(&t, &ca, "server-waypoint").await {
        Err(HboneError::Status(s)) => assert_eq!(s, http::StatusCode::UNAUTHORIZED),
        other => panic!("expected 401 by policy, got {other:?}"),
    }
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "ztunnel_refused_connections_total",
            &["reason=\"policy\""]
        ),
        1,
        "{m}"
    );
    n2.zt.update(&parse(&t.yaml(&allow_waypoint)));
    assert!(direct_hbone(&t, &ca, "server-waypoint").await.is_ok());
}

/// (d) PERMISSIVE does not open a plaintext path around the waypoint.
#[tokio::test]
async fn permissive_plaintext_to_waypoint_bound_pod_refused() {
    let t = Topo::new();
    let ca = ca();
    let n2 = node("node2", parse(&t.yaml("")), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(t.server, 8080)).await;
    echo(SocketAddr::new(t.other, 8080)).await;
    n2.orig.set_inbound_port(t.server, 8080);
    n2.orig.set_inbound_port(t.other, 8080);

    let mut s = TcpStream::connect((t.server, 15006)).await.unwrap();
    assert!(roundtrip(&mut s, b"x").await.is_err(), "plaintext bypass");
    let m = n2.zt.inputs().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "ztunnel_refused_connections_total",
            &[
                "listener=\"inbound_plaintext\"",
                "reason=\"bypassed_waypoint\""
            ]
        ),
        1,
        "{m}"
    );
    // A pod without a waypoint still accepts PERMISSIVE plaintext.
    let mut s = TcpStream::connect((t.other, 15006)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"ok").await.unwrap(), b"ok");
}

/// A workload-addressed waypoint (`waypoint-for: workload`, label on the pod): traffic to the
/// pod IP goes to the waypoint with the pod's `ip:port` as authority.
#[tokio::test]
async fn workload_waypoint_gets_pod_addressed_traffic() {
    let t = Topo::new();
    let ca = ca();
    // Re-label: the Gateway serves workloads too, and the server pod opts in.
    let yaml = t
        .yaml("")
        .replace(
            "metadata: {name: server-waypoint, namespace: demo}",
            "metadata: {name: server-waypoint, namespace: demo, labels: {istio.io/waypoint-for: all}}",
        )
        .replace(
            "metadata: {name: server, namespace: demo, labels: {app: server}}",
            "metadata: {name: server, namespace: demo, labels: {app: server, istio.io/use-waypoint: server-waypoint}}",
        );
    let res = parse(&yaml);
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let _n2 = node("node2", res, ca.clone(), |_| {}).await;
    let (seen, _) = waypoint(&t, &ca, id("server-waypoint")).await;
    echo(SocketAddr::new(t.server, 8080)).await;
    let dst = SocketAddr::new(t.server, 8080);
    n1.orig.set_outbound(t.client, None, dst);
    let mut s = TcpStream::connect((t.client, 15001)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"pod").await.unwrap(), b"pod");
    assert_eq!(seen.lock().as_slice(), &[(dst, Some(id("client-sa")))]);
}
