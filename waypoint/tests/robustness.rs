//! Hostile or broken peers never take the proxy down: malformed requests, oversized headers,
//! slow-loris clients, upstreams that reset or refuse. After each, a normal request still works.
//! Also: gRPC-style HTTP/2 with trailers passes through unharmed.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_and_broken_upstreams() {
    let _ok = backend("127.0.30.1:8080", "ok", always(Behavior::Ok)).await;
    let _reset = backend("127.0.30.2:8080", "reset", always(Behavior::Reset)).await;
    let svc_ok = service_yaml("default", "ok", 80, 8080, &[("ok-1", "127.0.30.1", "v1")]);
    let svc_reset = service_yaml(
        "default",
        "reset",
        80,
        8080,
        &[("reset-1", "127.0.30.2", "v1")],
    );
    // Nothing listens on 127.0.30.3:8080.
    let svc_refused = service_yaml(
        "default",
        "refused",
        80,
        8080,
        &[("refused-1", "127.0.30.3", "v1")],
    );
    let svc_empty = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  selector: {app: nothing}\n  ports: [{port: 80}]\n";
    let (wp, addr) = waypoint(&model(&[&svc_ok, &svc_reset, &svc_refused, svc_empty])).await;
    let c = client();
    let healthy = || async { assert_eq!(get(&client(), addr, "ok", "/", &[]).await.status, 200) };

    // Malformed request line.
    let r = raw(addr, b"GARBAGE\x01\x02 / HTTP/9.9\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    healthy().await;

    // Oversized headers: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: ok\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw(addr, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{:?}", &r[..r.len().min(60)]);
    healthy().await;

    // Slow loris: a partial header, then silence; the connection is closed after the header
    // read timeout (500 ms in tests) while others are served.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: ok\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    healthy().await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "slow-loris connection still open after 5 s");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Upstream resets before answering: 503 UC (after Istio's default retries, which do not
    // cover resets). Connect refused: 503 UF. No endpoints: 503 UH.
    let g = get(&c, addr, "reset", "/", &[]).await;
    assert_eq!(g.status, 503, "{g:?}");
    let g = get(&c, addr, "refused", "/", &[]).await;
    assert_eq!(g.status, 503, "{g:?}");
    assert!(g.body.contains("connection failure"), "{}", g.body);
    let g = get(&c, addr, "empty", "/", &[]).await;
    assert_eq!((g.status, g.body.as_str()), (503, "no healthy upstream"));
    let m = metrics(&wp);
    for flag in ["UC", "UF", "UH", "NR"] {
        if flag == "NR" {
            let _ = get(&c, addr, "unknown-host", "/", &[]).await;
            continue;
        }
        assert!(
            m.contains(&format!("response_flags=\"{flag}")),
            "missing {flag}: {m}"
        );
    }
    healthy().await;
}

/// An HTTP/2 backend that answers like a gRPC server: body then `grpc-status` trailers.
async fn grpc_backend(addr: &str) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "echo".parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(body)),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let mut r =
                            http::Response::new(StreamBody::new(futures::stream::iter(frames)));
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_http2() {
    grpc_backend("127.0.31.1:50051").await;
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec:\n  selector: {app: echo}\n  ports: [{name: grpc, port: 50051, appProtocol: grpc}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: echo-1, namespace: default, labels: {app: echo}}\nstatus: {phase: Running, podIP: 127.0.31.1}\n";
    let (_wp, addr) = waypoint(&model(&[svc])).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::post("http://echo:50051/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(format!("hello {i}"))))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(collected.to_bytes(), Bytes::from(format!("hello {i}")));
    }
}
