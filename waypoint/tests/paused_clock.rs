//! Time-based behaviour of the full request path on tokio's paused clock: in-memory downstream
//! and upstream connections (duplex pipes) through the real listener, proxy, pool and retry
//! code, so virtual time advances only when every task waits. No sleeps, deterministic.

mod support;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{fixture, model, service_yaml, test_config, Behavior, Script};
use tokio::sync::mpsc;
use tokio::time::Instant;
use waypoint::listener::Acceptor;
use waypoint::proxy::ConnInfo;
use waypoint::upstream::{BoxFuture, BoxIo, ConnectTarget, Connector};
use waypoint::Waypoint;

/// Upstream "pods" as in-memory HTTP/1 servers, keyed by address.
struct MemConnector {
    pods: HashMap<SocketAddr, (Script, Arc<AtomicU32>)>,
}

impl Connector for MemConnector {
    fn connect<'a>(&'a self, t: ConnectTarget<'a>) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let (script, hits) = self
                .pods
                .get(&t.addr)
                .cloned()
                .ok_or(io::ErrorKind::ConnectionRefused)?;
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let b = script(hits.fetch_add(1, Ordering::SeqCst));
                    async move {
                        let status = match b {
                            Behavior::Ok => 200,
                            Behavior::Status(s) => s,
                            Behavior::Delay(d) => {
                                tokio::time::sleep(d).await;
                                200
                            }
                            Behavior::Reset => return Err(io::Error::other("reset")),
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"pod")));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, io::Error>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), svc)
                    .await;
            });
            Ok(Box::new(client) as BoxIo)
        })
    }
}

struct MemAcceptor(mpsc::Receiver<tokio::io::DuplexStream>);

impl Acceptor for MemAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, ConnInfo)>> {
        Box::pin(async move {
            let s = self.0.recv().await.ok_or(io::ErrorKind::BrokenPipe)?;
            let info = ConnInfo {
                peer: "10.9.9.9:40000".parse().unwrap(),
                local: "10.9.9.1:15080".parse().unwrap(),
                peer_identity: None,
                original_dst: None,
            };
            Ok((Box::new(s) as BoxIo, info))
        })
    }
}

struct Harness {
    tx: mpsc::Sender<tokio::io::DuplexStream>,
    hits: Arc<AtomicU32>,
    _wp: Waypoint,
}

impl Harness {
    async fn new(yaml: &[&str], script: Script) -> Harness {
        let hits = Arc::new(AtomicU32::new(0));
        let svc = service_yaml("default", "app", 80, 8080, &[("app-1", "10.0.0.1", "v1")]);
        let mut docs = vec![svc.as_str()];
        docs.extend_from_slice(yaml);
        let connector = MemConnector {
            pods: [("10.0.0.1:8080".parse().unwrap(), (script, hits.clone()))].into(),
        };
        let wp = Waypoint::with_connector(test_config(), &model(&docs), Arc::new(connector));
        let (tx, rx) = mpsc::channel(16);
        let server = wp.clone();
        tokio::spawn(async move { server.serve(MemAcceptor(rx)).await });
        Harness { tx, hits, _wp: wp }
    }

    /// One request on a fresh downstream connection; returns status and virtual elapsed time.
    async fn get(&self, host: &str) -> (u16, Duration) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.tx.send(server).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let t = Instant::now();
        let req = Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        (status, t.elapsed())
    }
}

fn vs(body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: default}}\nspec:\n  hosts: [app]\n  http:\n  - route: [{{destination: {{host: app}}}}]\n{body}"
    )
}

#[tokio::test(start_paused = true)]
async fn route_timeout_is_exact() {
    let h = Harness::new(
        &[&vs("    timeout: 3s\n")],
        support::always(Behavior::Delay(Duration::from_secs(10))),
    )
    .await;
    let (status, e) = h.get("app").await;
    assert_eq!(status, 504);
    assert!(
        e >= Duration::from_secs(3) && e < Duration::from_millis(3010),
        "{e:?}"
    );
    assert_eq!(
        h.hits.load(Ordering::SeqCst),
        1,
        "Istio's default retry policy does not retry timeouts"
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeouts_and_backoff_inside_route_timeout() {
    let h = Harness::new(
        &[&vs(
            "    retries: {attempts: 2, perTryTimeout: 1s, retryOn: 5xx}\n",
        )],
        support::always(Behavior::Delay(Duration::from_secs(10))),
    )
    .await;
    let (status, e) = h.get("app").await;
    assert_eq!(status, 504);
    assert_eq!(h.hits.load(Ordering::SeqCst), 3);
    // Three 1 s tries plus two jittered backoffs (< 25 ms, < 50 ms).
    assert!(
        e >= Duration::from_secs(3) && e < Duration::from_millis(3075),
        "{e:?}"
    );

    // The route timeout covers every try: 2.5 s cuts the third one short.
    let h = Harness::new(
        &[&vs(
            "    timeout: 2500ms\n    retries: {attempts: 5, perTryTimeout: 1s, retryOn: 5xx}\n",
        )],
        support::always(Behavior::Delay(Duration::from_secs(10))),
    )
    .await;
    let (status, e) = h.get("app").await;
    assert_eq!(status, 504);
    assert!(
        e >= Duration::from_millis(2500) && e < Duration::from_millis(2510),
        "{e:?}"
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_is_jittered_and_capped() {
    let h = Harness::new(
        &[&vs("    retries: {attempts: 5, retryOn: 5xx}\n")],
        support::always(Behavior::Status(503)),
    )
    .await;
    let (status, e) = h.get("app").await;
    assert_eq!(status, 503);
    assert_eq!(h.hits.load(Ordering::SeqCst), 6);
    // Upper bound: 25 + 50 + 100 + 200 + 250 ms.
    assert!(e < Duration::from_millis(625), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn fault_delay_fixture_delays_two_seconds() {
    // fault-delay-ratings.yaml targets `ratings`; point it at our service by name.
    let f = fixture("fault-delay-ratings.yaml").replace("ratings", "app");
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: app, namespace: default}\nspec:\n  host: app\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let h = Harness::new(&[&f, dr], support::always(Behavior::Ok)).await;
    let (status, e) = h.get("app").await;
    assert_eq!(status, 200);
    assert!(
        e >= Duration::from_secs(2) && e < Duration::from_millis(2010),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn client_gone_mid_request_is_logged_with_dc() {
    let h = Harness::new(
        &[&vs("")],
        support::always(Behavior::Delay(Duration::from_secs(10))),
    )
    .await;
    assert!(tokio::time::timeout(Duration::from_secs(1), h.get("app"))
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = h._wp.inputs().telemetry.metrics.encode();
    assert!(
        m.contains("response_code=\"0\"") && m.contains("response_flags=\"DC\""),
        "{m}"
    );
}
