//! HBONE on both sides: a client tunnels to the waypoint over mesh mTLS (its identity taken
//! from the certificate), the waypoint routes and authorizes, then tunnels to the endpoint
//! through a stand-in for the destination ztunnel (an HBONE server that verifies the
//! waypoint's certificate and dials the pod).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Identity;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use transport::hbone::server::{Admission, ConnectRequest};
use transport::hbone::H2Client;
use transport::identity::{CaDir, CertManager};
use waypoint::hbone::{HboneAcceptor, HboneConnector};
use waypoint::Waypoint;

const NODE_PORT: u16 = 15998;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

/// A destination "ztunnel": accepts HBONE from the waypoint only, then splices to the pod.
async fn fake_ztunnel(
    addr: SocketAddr,
    certs: Arc<CertManager>,
    pod: Identity,
    waypoint: Identity,
) {
    let l = TcpListener::bind(addr).await.unwrap();
    let cert = certs.fetch(&pod).unwrap();
    let cfg = transport::tls::server_config(cert, certs.roots(), "cluster.local").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let waypoint = waypoint.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let peer = transport::tls::peer_identity(tls.get_ref().1);
                assert_eq!(
                    peer.as_ref(),
                    Some(&waypoint),
                    "only the waypoint may reach the pod"
                );
                let handler = |req: ConnectRequest| async move {
                    Admission::Accept {
                        headers: HeaderMap::new(),
                        task: Box::new(move |mut tunnel| {
                            Box::pin(async move {
                                let mut up = TcpStream::connect(req.authority).await.unwrap();
                                let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut up).await;
                            })
                        }),
                    }
                };
                let _ = transport::hbone::server::serve(tls, handler, std::future::pending()).await;
            });
        }
    });
}

async fn tunnel_get(
    wp: SocketAddr,
    certs: &Arc<CertManager>,
    client: &Identity,
    waypoint: &Identity,
) -> (u16, String) {
    let cert = certs.fetch(client).unwrap();
    let cfg = transport::tls::client_config(cert, certs.roots(), vec![waypoint.clone()]).unwrap();
    let tcp = TcpStream::connect(wp).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(transport::tls::dummy_server_name(), tcp)
        .await
        .unwrap();
    let h2 = H2Client::handshake(tls).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "forwarded",
        HeaderValue::from_static("for=\"127.0.0.1:5555\";host=reviews.default.svc.cluster.local"),
    );
    let (tunnel, _) = h2
        .connect("10.96.0.10:9080".parse().unwrap(), headers)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/reviews/1")
        .header("host", "reviews:9080")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_in_and_out_with_identity_based_policy() {
    let ca = Arc::new(CaDir::generate_in_memory("cluster.local").unwrap());
    let certs = CertManager::new(ca, Duration::from_secs(3600));
    let wp_id = id("default", "waypoint");
    let pod_id = id("default", "reviews");
    let _b = backend("127.0.40.1:8080", "reviews-v1", always(Behavior::Ok)).await;
    fake_ztunnel(
        SocketAddr::new([127, 0, 40, 1].into(), NODE_PORT),
        certs.clone(),
        pod_id,
        wp_id.clone(),
    )
    .await;

    let mut svc = service_yaml(
        "default",
        "reviews",
        9080,
        8080,
        &[("reviews-v1-x", "127.0.40.1", "v1")],
    );
    svc = svc.replacen(
        "spec:\n  selector",
        "spec:\n  clusterIP: 10.96.0.10\n  selector",
        1,
    );
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
"#;
    let connector = HboneConnector::with_port(certs.clone(), wp_id.clone(), NODE_PORT);
    let wp = Waypoint::with_connector(test_config(), &model(&[&svc, policy]), Arc::new(connector));
    let acceptor = HboneAcceptor::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        certs.clone(),
        wp_id.clone(),
    )
    .unwrap();
    let addr = acceptor.local_addr();
    let server = wp.clone();
    tokio::spawn(async move { server.serve(acceptor).await });

    for _ in 0..3 {
        let (status, body) = tunnel_get(addr, &certs, &id("default", "productpage"), &wp_id).await;
        assert_eq!((status, body.as_str()), (200, "reviews-v1"));
    }
    let (status, body) = tunnel_get(addr, &certs, &id("default", "ratings"), &wp_id).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert!(metrics(&wp).contains("source_principal=\"cluster.local/ns/default/sa/productpage\""));
}
