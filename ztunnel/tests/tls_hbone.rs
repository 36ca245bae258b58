//! mTLS identity checks, HBONE CONNECT semantics, bad peers and certificate renewal, against
//! an in-process ztunnel on loopback.

mod support;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::hbone::{H2Client, HboneError};
use transport::identity::{CaDir, Identity, IdentityCert};
use transport::tls;

fn client_id() -> Identity {
    Identity::new("cluster.local", "demo", "client-sa")
}
fn server_id() -> Identity {
    Identity::new("cluster.local", "demo", "server-sa")
}

async fn tls_connect(
    addr: SocketAddr,
    cert: Arc<IdentityCert>,
    roots: Arc<rustls::RootCertStore>,
    expected: Identity,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let cfg = tls::client_config(cert, roots, vec![expected]).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::dummy_server_name(), tcp)
        .await
}

/// The server refuses after the client's Finished, so the client only notices on first read.
async fn refused_by_server(
    r: Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error>,
) -> bool {
    match r {
        Err(_) => true,
        Ok(mut s) => {
            let mut b = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await,
                Ok(Err(_)) | Ok(Ok(0))
            )
        }
    }
}

#[tokio::test]
async fn tls_refuses_wrong_identity_expired_and_foreign_root() {
    let mesh = Mesh::new();
    let ca = ca();
    let n2 = node("node2", mesh.resources(""), ca.clone(), |_| {}).await;
    let hbone = SocketAddr::new(mesh.server_ip, 15008);
    let good =
        IdentityCert::from_issued(&ca.issue(&client_id(), Duration::from_secs(600)).unwrap())
            .unwrap();

    // Good client, right identity: handshake completes.
    let ok = tls_connect(hbone, good.clone(), ca.roots(), server_id()).await;
    assert!(ok.is_ok(), "{ok:?}");

    // Client expects another identity: refused by the client with the reason.
    let e = tls_connect(hbone, good.clone(), ca.roots(), client_id())
        .await
        .expect_err("identity mismatch");
    assert!(e.to_string().contains("IdentityMismatch"), "{e}");

    // Expired client certificate: refused by the server.
    let now = SystemTime::now();
    let expired = IdentityCert::from_issued(
        &ca.issue_with_validity(
            &client_id(),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(refused_by_server(tls_connect(hbone, expired, ca.roots(), server_id()).await).await);

    // Certificate from another root: refused by the server.
    let other = CaDir::generate_in_memory("cluster.local").unwrap();
    let foreign =
        IdentityCert::from_issued(&other.issue(&client_id(), Duration::from_secs(600)).unwrap())
            .unwrap();
    assert!(refused_by_server(tls_connect(hbone, foreign, ca.roots(), server_id()).await).await);

    // Another trust domain under the same root: refused by the server.
    let td = IdentityCert::from_issued(
        &ca.issue(
            &Identity::new("evil.local", "demo", "client-sa"),
            Duration::from_secs(600),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(refused_by_server(tls_connect(hbone, td, ca.roots(), server_id()).await).await);

    // A client trusting another root refuses the server.
    let e = tls_connect(hbone, good, other.roots(), server_id())
        .await
        .expect_err("unknown issuer");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = n2.zt.inputs().metrics.encode();
    assert!(
        metric(&m, "ztunnel_refused_connections_total", &["reason=\"tls\""]) >= 3,
        "{m}"
    );
}

async fn hbone_client(mesh: &Mesh, ca: &CaDir) -> H2Client {
    let cert =
        IdentityCert::from_issued(&ca.issue(&client_id(), Duration::from_secs(600)).unwrap())
            .unwrap();
    let s = tls_connect(
        SocketAddr::new(mesh.server_ip, 15008),
        cert,
        ca.roots(),
        server_id(),
    )
    .await
    .unwrap();
    H2Client::handshake(s).await.unwrap()
}

fn status_of(r: Result<(transport::hbone::Tunnel, HeaderMap), HboneError>) -> StatusCode {
    match r {
        Ok(_) => StatusCode::OK,
        Err(HboneError::Status(s)) => s,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn hbone_connect_semantics() {
    let mesh = Mesh::new();
    let ca = ca();
    let _n2 = node("node2", mesh.resources(""), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    let c = hbone_client(&mesh, &ca).await;
    let h = HeaderMap::new();

    let (mut t, resp) = c
        .connect(SocketAddr::new(mesh.server_ip, 8080), h.clone())
        .await
        .unwrap();
    let bag = resp.get("baggage").unwrap().to_str().unwrap();
    assert!(bag.contains("k8s.namespace.name=demo"), "{bag}");
    t.write_all(b"tunnel").await.unwrap();
    let mut b = [0u8; 6];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"tunnel");

    for (addr, want) in [
        (
            SocketAddr::new(mesh.server_ip, 15008),
            StatusCode::BAD_REQUEST,
        ),
        (
            SocketAddr::new(mesh.server_ip, 15001),
            StatusCode::BAD_REQUEST,
        ),
        (
            SocketAddr::new(mesh.client_ip, 8080),
            StatusCode::BAD_REQUEST,
        ),
        ("10.255.0.1:80".parse().unwrap(), StatusCode::BAD_REQUEST),
        (
            SocketAddr::new(mesh.server_ip, 9),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        assert_eq!(status_of(c.connect(addr, h.clone()).await), want, "{addr}");
    }
    // The connection still serves after refusals.
    assert!(c
        .connect(SocketAddr::new(mesh.server_ip, 8080), h)
        .await
        .is_ok());
}

#[tokio::test]
async fn hbone_non_connect_is_400_and_policy_denial_is_401() {
    let mesh = Mesh::new();
    let ca = ca();
    let deny = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client-sa"]}}]}]
---"#;
    let _n2 = node("node2", mesh.resources(deny), ca.clone(), |_| {}).await;
    echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    let c = hbone_client(&mesh, &ca).await;
    assert_eq!(
        status_of(
            c.connect(SocketAddr::new(mesh.server_ip, 8080), HeaderMap::new())
                .await
        ),
        StatusCode::UNAUTHORIZED
    );

    let cert =
        IdentityCert::from_issued(&ca.issue(&client_id(), Duration::from_secs(600)).unwrap())
            .unwrap();
    let s = tls_connect(
        SocketAddr::new(mesh.server_ip, 15008),
        cert,
        ca.roots(),
        server_id(),
    )
    .await
    .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("https://{}:8080/", mesh.server_ip))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_peers_are_refused_while_others_keep_working() {
    let mesh = Mesh::new();
    let ca = ca();
    let res = mesh.resources("");
    let n1 = node("node1", res.clone(), ca.clone(), |_| {}).await;
    let n2 = node("node2", res, ca.clone(), |_| {}).await;
    let app = echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig.set_outbound(mesh.client_ip, None, app);
    let hbone = SocketAddr::new(mesh.server_ip, 15008);

    // A flood of half-open connections that never speak.
    let mut idle = vec![];
    for _ in 0..300 {
        idle.push(TcpStream::connect(hbone).await.unwrap());
    }
    // A plaintext HTTP/1.1 client on 15008 is closed.
    let mut p = TcpStream::connect(hbone).await.unwrap();
    p.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![];
    let r = tokio::time::timeout(Duration::from_secs(5), p.read_to_end(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(_)) | Ok(Err(_))), "closed promptly");
    assert!(!String::from_utf8_lossy(&buf).contains("200"));

    // A TLS client offering only http/1.1 fails ALPN.
    let cert =
        IdentityCert::from_issued(&ca.issue(&client_id(), Duration::from_secs(600)).unwrap())
            .unwrap();
    let mut cfg = (*tls::client_config(cert, ca.roots(), vec![server_id()]).unwrap()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(tls::dummy_server_name(), tcp)
        .await;
    assert!(r.is_err(), "ALPN mismatch refused");

    // Meanwhile real traffic flows.
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    assert_eq!(
        roundtrip(&mut s, b"still here").await.unwrap(),
        b"still here"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = n2.zt.inputs().metrics.encode();
    assert!(
        metric(&m, "ztunnel_refused_connections_total", &["reason=\"tls\""]) >= 2,
        "{m}"
    );
}

#[tokio::test]
async fn long_lived_stream_survives_certificate_renewals() {
    let mesh = Mesh::new();
    let ca = ca();
    let res = mesh.resources("");
    let short = |c: &mut ztunnel::config::Config| c.cert_lifetime = Duration::from_secs(2);
    let n1 = node("node1", res.clone(), ca.clone(), short).await;
    let n2 = node("node2", res, ca.clone(), short).await;
    let app = echo(SocketAddr::new(mesh.server_ip, 8080)).await;
    n1.orig.set_outbound(mesh.client_ip, None, app);
    let mut s = TcpStream::connect((mesh.client_ip, 15001)).await.unwrap();
    for i in 0..20u32 {
        let msg = format!("tick {i}");
        assert_eq!(
            roundtrip(&mut s, msg.as_bytes()).await.unwrap(),
            msg.as_bytes()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renewals: u64 = n2
        .zt
        .inputs()
        .certs
        .summary()
        .iter()
        .map(|c| c.renewals)
        .sum();
    assert!(
        renewals >= 3,
        "server certificate renewed several times ({renewals})"
    );
    // New handshakes use the fresh certificates.
    let cert = n1.zt.inputs().certs.fetch(&client_id()).unwrap();
    let t = tls_connect(
        SocketAddr::new(mesh.server_ip, 15008),
        cert,
        ca.roots(),
        server_id(),
    )
    .await;
    assert!(t.is_ok(), "{t:?}");
}
