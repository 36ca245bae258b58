//! Test support for the waypoint's integration tests: scriptable hyper backends on loopback
//! addresses (127.0.0.0/8 is all local on Linux, so every "pod" gets its own IP), YAML config
//! builders (models built by `common`'s loader, as the binary's source builds them), a
//! waypoint on an ephemeral plaintext port and a hyper client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Model;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use waypoint::config::WaypointConfig;
use waypoint::Waypoint;

/// What a backend does with its n-th request (0-based).
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    Ok,
    Status(u16),
    Delay(Duration),
    /// Close the connection without answering.
    Reset,
}

pub type Script = Arc<dyn Fn(u32) -> Behavior + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU32>,
}

impl Backend {
    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Starts a backend that answers with its `name` (body and `x-backend`), echoes the path in
/// `x-path` and the Host in `x-host`, after applying `script`.
pub async fn backend(addr: &str, name: &'static str, script: Script) -> Backend {
    let listener = TcpListener::bind(addr).await.expect("bind backend");
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let (h, script) = (h.clone(), script.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let b = script(n);
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = req.into_body().collect().await;
                        let status = match b {
                            Behavior::Ok => 200,
                            Behavior::Status(s) => s,
                            Behavior::Delay(d) => {
                                tokio::time::sleep(d).await;
                                200
                            }
                            Behavior::Reset => {
                                return Err::<Response<Full<Bytes>>, std::io::Error>(
                                    std::io::Error::other("reset"),
                                )
                            }
                        };
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        r.headers_mut().insert("x-backend", name.parse().unwrap());
                        r.headers_mut().insert("x-path", path.parse().unwrap());
                        r.headers_mut().insert("x-host", host.parse().unwrap());
                        Ok(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Backend { addr, hits }
}

pub fn always(b: Behavior) -> Script {
    Arc::new(move |_| b)
}

/// YAML for a Service and its pods (`(pod name, ip, version)`), all in `ns`.
pub fn service_yaml(
    ns: &str,
    svc: &str,
    port: u16,
    target: u16,
    pods: &[(&str, &str, &str)],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  selector: {{app: {svc}}}\n  ports:\n  - {{name: http, port: {port}, targetPort: {target}}}\n"
    );
    for (name, ip, version) in pods {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {svc}, version: {version}}}\nspec: {{serviceAccountName: {svc}}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
        ));
    }
    y.push_str("---\n");
    y
}

/// A model of the YAML documents, loaded and validated by `common` as one file (a resource
/// defined twice, or any error, fails the test).
pub fn model(yaml: &[&str]) -> Model {
    let text = yaml
        .iter()
        .map(|y| y.trim_end().trim_end_matches("---").trim_end())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let loaded = common::load::load_str(std::path::Path::new("test.yaml"), &text);
    for w in loaded.warnings() {
        eprintln!("config warning: {w}");
    }
    loaded
        .into_model(&common::BuildOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

pub fn test_config() -> WaypointConfig {
    WaypointConfig {
        access_log: false,
        header_read_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Starts a waypoint; returns it and its plaintext address.
pub async fn waypoint(model: &Model) -> (Waypoint, SocketAddr) {
    waypoint_with(test_config(), model).await
}

pub async fn waypoint_with(cfg: WaypointConfig, model: &Model) -> (Waypoint, SocketAddr) {
    let wp = Waypoint::new(cfg, model);
    for w in &wp.tables().warnings {
        eprintln!("config warning: {w}");
    }
    let addr = wp
        .spawn_plaintext("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (wp, addr)
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response reduced to what tests check.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, n: &str) -> &str {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// GET `path` through the waypoint at `wp` with `Host: host` and extra headers.
pub async fn get(
    c: &HttpClient,
    wp: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = Request::builder()
        .uri(format!("http://{wp}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Empty::new()).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The waypoint's Prometheus text.
pub fn metrics(wp: &Waypoint) -> String {
    wp.inputs().telemetry.metrics.encode()
}
