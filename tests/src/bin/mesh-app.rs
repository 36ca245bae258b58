//! `mesh-app`: the small HTTP application the demo and the end-to-end tests deploy as
//! bookinfo-like services, and the load generator that drives them.
//!
//! `serve` answers every request with JSON naming the service, version and pod, the caller's
//! address and the identity headers the mesh added. Failure can be switched on at run time
//! (`/admin/fail?rate=0.5&code=503`) so retries and outlier ejection can be shown on a running
//! mesh. `load` sends requests (optionally at a fixed rate) and prints a JSON summary: counts by
//! status and by answering version, and latency percentiles. `tcp-serve` / `tcp-check` run the
//! byte-stream transparency cases of `mesh_tests::tcpcheck`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
    Serve {
        #[arg(long, default_value = "0.0.0.0:9080")]
        listen: SocketAddr,
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "v1")]
        version: String,
        #[arg(long, env = "POD_NAME", default_value = "")]
        pod: String,
        /// Fraction of requests answered with `fail_code` (0..=1).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        #[arg(long, default_value_t = 503)]
        fail_code: u16,
    },
    /// Send requests and print a JSON summary.
    Load {
        #[arg(long)]
        url: String,
        #[arg(short = 'n', long, default_value_t = 100)]
        requests: u32,
        #[arg(short = 'c', long, default_value_t = 1)]
        concurrency: u32,
        /// Requests per second in total (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Extra header `name: value`, repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Per-request timeout in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Open a new connection per request instead of keeping one per worker.
        #[arg(long)]
        new_conn: bool,
    },
    /// Serve the byte-stream transparency cases (`mesh_tests::tcpcheck`).
    TcpServe {
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: SocketAddr,
    },
    /// Run one transparency case against a `tcp-serve` and print a JSON verdict.
    TcpCheck {
        #[arg(long)]
        to: SocketAddr,
        /// upload, download, slow or reset.
        #[arg(long)]
        mode: String,
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        /// The server's read rate for `slow`, MiB/s.
        #[arg(long, default_value_t = 16)]
        rate_mib: u64,
    },
}

struct AppState {
    service: String,
    version: String,
    pod: String,
    /// Failure rate in parts per million, switchable at run time.
    fail_ppm: AtomicU32,
    fail_code: AtomicU32,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            service,
            version,
            pod,
            fail_rate,
            fail_code,
        } => {
            let state = Arc::new(AppState {
                service,
                version,
                pod,
                fail_ppm: AtomicU32::new((fail_rate.clamp(0.0, 1.0) * 1e6) as u32),
                fail_code: AtomicU32::new(fail_code as u32),
            });
            if let Err(e) = serve(listen, state).await {
                eprintln!("mesh-app: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Load {
            url,
            requests,
            concurrency,
            rate,
            headers,
            timeout_ms,
            new_conn,
        } => {
            let summary = load(LoadSpec {
                url,
                requests,
                concurrency: concurrency.max(1),
                rate,
                headers,
                timeout: Duration::from_millis(timeout_ms),
                new_conn,
            })
            .await;
            println!("{summary}");
        }
        Cmd::TcpServe { listen } => {
            if let Err(e) = mesh_tests::tcpcheck::serve(listen) {
                eprintln!("mesh-app: {e:#}");
                std::process::exit(1);
            }
        }
        Cmd::TcpCheck {
            to,
            mode,
            bytes,
            rate_mib,
        } => match mesh_tests::tcpcheck::check(to, &mode, bytes, rate_mib) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("mesh-app: {e:#}");
                std::process::exit(1);
            }
        },
    }
}

async fn serve(listen: SocketAddr, state: Arc<AppState>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "mesh-app {} {} listening on {listen}",
        state.service, state.version
    );
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, peer, state.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<AppState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/admin/fail" {
        let rate: f64 = query_param(&query, "rate")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0);
        let code: u32 = query_param(&query, "code")
            .and_then(|v| v.parse().ok())
            .unwrap_or(503);
        state
            .fail_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
        state.fail_code.store(code, Ordering::Relaxed);
        return Ok(text(
            StatusCode::OK,
            format!("fail rate {rate} code {code}\n"),
        ));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(text(status, format!("{status}\n")));
    }
    if let Some(ms) = query_param(&query, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/bytes" {
        let n: usize = query_param(&query, "n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    let ppm = state.fail_ppm.load(Ordering::Relaxed);
    let failing = ppm > 0 && rand::random::<u32>() % 1_000_000 < ppm;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut echoed = BTreeMap::new();
    for name in [
        "host",
        "end-user",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-request-id",
    ] {
        if let Some(v) = header(name) {
            echoed.insert(name, v);
        }
    }
    let method = req.method().to_string();
    // Drain the body so HTTP/1 keep-alive works for POSTs.
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let status = if failing {
        StatusCode::from_u16(state.fail_code.load(Ordering::Relaxed) as u16)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "service": state.service,
        "version": state.version,
        "pod": state.pod,
        "method": method,
        "path": path,
        "client": peer.to_string(),
        "headers": echoed,
        "body_bytes": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-app-version",
        hyper::header::HeaderValue::from_str(&state.version)
            .unwrap_or(hyper::header::HeaderValue::from_static("unknown")),
    );
    Ok(resp)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

struct LoadSpec {
    url: String,
    requests: u32,
    concurrency: u32,
    rate: u32,
    headers: Vec<String>,
    timeout: Duration,
    new_conn: bool,
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u32>,
    by_version: BTreeMap<String, u32>,
    latencies_us: Vec<u64>,
}

async fn load(spec: LoadSpec) -> serde_json::Value {
    let uri: hyper::Uri = spec.url.parse().expect("--url must be a valid URL");
    let spec = Arc::new(spec);
    let issued = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.concurrency {
        let spec = spec.clone();
        let uri = uri.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= spec.requests {
                    break;
                }
                if spec.rate > 0 {
                    // Open-loop pacing: request i is due at i / rate seconds.
                    let due = start + Duration::from_secs_f64(i as f64 / spec.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t0 = Instant::now();
                let result =
                    tokio::time::timeout(spec.timeout, one_request(&spec, &uri, &mut sender)).await;
                let key = match result {
                    Ok(Ok((status, version))) => {
                        if let Some(v) = version {
                            *tally.by_version.entry(v).or_default() += 1;
                        }
                        status.to_string()
                    }
                    Ok(Err(e)) => {
                        sender = None;
                        format!("error: {e}")
                    }
                    Err(_) => {
                        sender = None;
                        "timeout".to_string()
                    }
                };
                if spec.new_conn {
                    sender = None;
                }
                tally.latencies_us.push(t0.elapsed().as_micros() as u64);
                *tally.by_status.entry(key).or_default() += 1;
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("load worker panicked");
        for (k, v) in t.by_status {
            *all.by_status.entry(k).or_default() += v;
        }
        for (k, v) in t.by_version {
            *all.by_version.entry(k).or_default() += v;
        }
        all.latencies_us.extend(t.latencies_us);
    }
    let elapsed = start.elapsed();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[idx] as f64 / 1000.0
    };
    serde_json::json!({
        "total": all.latencies_us.len(),
        "by_status": all.by_status,
        "by_version": all.by_version,
        "elapsed_s": elapsed.as_secs_f64(),
        "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
    })
}

async fn one_request(
    spec: &LoadSpec,
    uri: &hyper::Uri,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
) -> Result<(u16, Option<String>), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let host = uri.host().ok_or("url has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("set above");
    s.ready().await.map_err(|e| format!("conn: {e}"))?;
    let mut builder = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut has_host = false;
    for h in &spec.headers {
        if let Some((k, v)) = h.split_once(':') {
            has_host |= k.trim().eq_ignore_ascii_case("host");
            builder = builder.header(k.trim(), v.trim());
        }
    }
    if !has_host {
        builder = builder.header("host", uri.authority().map(|a| a.as_str()).unwrap_or(""));
    }
    let req = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-app-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, version))
}
