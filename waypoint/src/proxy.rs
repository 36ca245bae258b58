//! The L7 request path, as phases (pingora style):
//!
//! 1. **request filter** — normalise the path (`meshConfig.pathNormalization`, 400 when it
//!    cannot be), find the virtual host by tunnel destination (by authority on the plaintext
//!    test listener; 404 `NR`), enforce AuthorizationPolicy (403), select the first matching
//!    route (404 `NR`);
//! 2. **local actions** — redirect / direct response; fault injection (delay `DI`, abort `FI`);
//! 3. **upstream** — weighted cluster choice, header rules, rewrite, optional mirror, then the
//!    attempt loop: circuit breaker (503 `UO`), balancer with outlier ejection (503 `UH`),
//!    pooled connection, per-try timeout, outlier observation, retry decision and jittered
//!    backoff; the route timeout bounds the whole loop (504 `UT`);
//! 4. **response filter** — hop-by-hop stripping and response header rules;
//! 5. **logging** — the response body completes the access log and metrics when it ends.
//!
//! Config is read once per request from an `ArcSwap` (one atomic load); the request keeps that
//! generation alive to its end, so a reload never disturbs in-flight requests.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use common::authz::PathNormalization;
use common::Identity;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;
use tokio::time::Instant;

use crate::access_log::{Completion, RequestRecord, Telemetry};
use crate::authz::{AuthzInput, Decision};
use crate::balance;
use crate::body::{ReqBody, RespBody};
use crate::cluster::{ActiveGuard, Cluster};
use crate::config::WaypointConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::fault::AbortKind;
use crate::metrics::RequestLabels;
use crate::outlier::Observation;
use crate::pool;
use crate::retry::Outcome;
use crate::route::match_::{MatchInput, RequestMatch};
use crate::route::{Action, Forward, Route, RouteTable, VirtualHost, WeightedCluster};
use crate::upstream::Connector;
use crate::workload::WorkloadInfo;

/// Shared dependencies of every request.
pub struct ProxyInputs {
    pub config: Arc<WaypointConfig>,
    pub tables: ArcSwap<RouteTable>,
    pub connector: Arc<dyn Connector>,
    pub telemetry: Arc<Telemetry>,
}

/// Facts about the downstream connection (or HBONE tunnel) a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Peer identity proven by mTLS (HBONE); `None` on the plaintext listener.
    pub peer_identity: Option<Identity>,
    /// The address the client meant to reach (HBONE `:authority`), if not `local`.
    pub original_dst: Option<SocketAddr>,
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (this also drops `HTTP2-Settings` of
    // an h2c upgrade, which we decline: the request is served as HTTP/1.1, as Envoy does).
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove("http2-settings");
}

fn unknown() -> Arc<str> {
    Arc::from("unknown")
}

fn request_id() -> String {
    let v: u128 = rand::thread_rng().gen();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn local(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

/// `uri` with its path normalised per `mode`; `None` when unchanged. `*` (as in `OPTIONS *`)
/// and authority-form targets have no path to normalise.
fn normalize_uri(uri: &Uri, mode: PathNormalization) -> Result<Option<Uri>, String> {
    let Some(pq) = uri.path_and_query().filter(|pq| pq.path() != "*") else {
        return Ok(None);
    };
    match mode.apply(pq.as_str()).map_err(|e| e.to_string())? {
        Cow::Borrowed(_) => Ok(None),
        Cow::Owned(normalised) => {
            let mut p = uri.clone().into_parts();
            p.path_and_query = Some(normalised.parse().map_err(|e| format!("{e}"))?);
            Uri::from_parts(p).map(Some).map_err(|e| e.to_string())
        }
    }
}

/// Handles one request end to end. Never fails: errors become local replies.
pub async fn handle(
    inputs: Arc<ProxyInputs>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let tables = inputs.tables.load_full();
    let (mut parts, body) = req.into_parts();
    // The normalised path is what authorization and routing see and what goes upstream.
    let bad_path = match normalize_uri(&parts.uri, inputs.config.path_normalization) {
        Ok(Some(uri)) => {
            parts.uri = uri;
            false
        }
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(uri = %parts.uri, error = %e, "path normalization failed");
            true
        }
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let source = tables.workload_by_ip(conn.peer.ip()).cloned();
    let principal: Option<Arc<str>> = match &conn.peer_identity {
        Some(id) => Some(Arc::from(id.principal().as_str())),
        None => source.as_ref().map(|s| s.principal.clone()),
    };
    let src = |f: fn(&WorkloadInfo) -> Arc<str>| source.as_deref().map_or_else(unknown, f);
    let mut inflight = InFlight(Some(Box::new(Completion {
        telemetry: inputs.telemetry.clone(),
        record: RequestRecord {
            start: Instant::now(),
            start_wall: SystemTime::now(),
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            protocol: match parts.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            authority: authority.clone(),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
                .unwrap_or_else(request_id),
            forwarded_for: parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            downstream_local: conn.local,
            downstream_remote: conn.peer,
            status: 0,
            flags: Vec::new(),
            details: "-",
            upstream_host: None,
            upstream_cluster: None,
            upstream_time_ms: None,
            route_name: None,
            attempts: 0,
            request_bytes: 0,
            request_bytes_counter: None,
            labels: RequestLabels {
                source_workload: src(|w| w.name.clone()),
                source_workload_namespace: src(|w| w.namespace.clone()),
                source_principal: principal.clone().unwrap_or_else(unknown),
                source_app: src(|w| w.app.clone()),
                source_version: src(|w| w.version.clone()),
                destination_workload: unknown(),
                destination_workload_namespace: unknown(),
                destination_principal: unknown(),
                destination_app: unknown(),
                destination_version: unknown(),
                destination_service: unknown(),
                destination_service_name: unknown(),
                destination_service_namespace: unknown(),
                request_protocol: if parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
                {
                    "grpc"
                } else {
                    "http"
                },
                response_code: 0,
                grpc_response_status: Arc::from(""),
                response_flags: Arc::from("-"),
            },
        },
    })));
    let rec = &mut inflight.0.as_mut().expect("set above").record;
    // A tunnel selects by its destination, never by `Host`; only the plaintext test listener
    // selects by authority.
    let vhost = match conn.original_dst {
        Some(dst) => tables.vhost_for_destination(dst),
        None => tables
            .find_vhost(&authority, Some(conn.local.port()))
            .cloned(),
    };
    let mut resp = match vhost {
        _ if bad_path => {
            rec.details = "path_normalization_failed";
            local(StatusCode::BAD_REQUEST, "bad request")
        }
        None => {
            rec.flags.push("NR");
            rec.details = "route_not_found";
            local(StatusCode::NOT_FOUND, "")
        }
        Some(vh) => {
            rec.labels.destination_service = vh.service.fqdn.clone();
            rec.labels.destination_service_name = vh.service.name.clone();
            rec.labels.destination_service_namespace = vh.service.namespace.clone();
            if let Some(w) = &vh.workload {
                label_destination(rec, w);
            }
            virtual_host(&inputs, &conn, &vh, source.as_deref(), parts, body, rec).await
        }
    };
    rec.status = resp.status().as_u16();
    if let Some(g) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        rec.labels.grpc_response_status = Arc::from(g);
    }
    if let Some(c) = inflight.0.take() {
        resp.body_mut().set_completion(c);
    }
    resp
}

/// The destination workload's labels of the request's telemetry.
fn label_destination(rec: &mut RequestRecord, w: &WorkloadInfo) {
    rec.labels.destination_workload = w.name.clone();
    rec.labels.destination_workload_namespace = w.namespace.clone();
    rec.labels.destination_principal = w.principal.clone();
    rec.labels.destination_app = w.app.clone();
    rec.labels.destination_version = w.version.clone();
}

/// Completes the telemetry of a request whose handler is dropped before it produced a
/// response (the client went away): logged with status 0 and `DC`, as Envoy does.
struct InFlight(Option<Box<Completion>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.complete(0, false);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn virtual_host(
    inputs: &Arc<ProxyInputs>,
    conn: &Arc<ConnInfo>,
    vh: &Arc<VirtualHost>,
    source: Option<&WorkloadInfo>,
    parts: Parts,
    body: Incoming,
    rec: &mut RequestRecord,
) -> Response<RespBody> {
    // === phase 1: request filter ===
    let path = parts.uri.path();
    if !vh.authz.is_empty() {
        let input = AuthzInput {
            method: &parts.method,
            path,
            host: &rec.authority,
            port: vh.port,
            headers: &parts.headers,
            source_ip: conn.peer.ip(),
            remote_ip: conn.peer.ip(),
            source: conn.peer_identity.as_ref(),
            destination_ip: conn.original_dst.map_or(conn.local.ip(), |a| a.ip()),
        };
        if let Decision::Deny(reason) = vh.authz.evaluate(&input) {
            tracing::debug!(vhost = %vh.name, %reason, "request denied");
            rec.details = "rbac_access_denied_matched_policy";
            return local(StatusCode::FORBIDDEN, "RBAC: access denied");
        }
    }
    let input = MatchInput {
        method: &parts.method,
        path,
        query: parts.uri.query(),
        authority: &rec.authority,
        headers: &parts.headers,
        port: vh.port,
        source,
        source_ip: Some(conn.peer.ip()),
    };
    let Some((route, matched)) = vh.select(&input) else {
        rec.flags.push("NR");
        rec.details = "route_not_found";
        return local(StatusCode::NOT_FOUND, "");
    };
    rec.route_name = Some(route.name.clone());

    // === phase 2: local actions ===
    match &route.action {
        Action::Redirect(r) => {
            let loc = r.location("http", &rec.authority, path, parts.uri.query());
            let mut resp = local(r.code, "");
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            route.headers.response.apply(resp.headers_mut());
            rec.details = "direct_response";
            return resp;
        }
        Action::Direct(code) => {
            rec.details = "direct_response";
            return local(*code, "");
        }
        Action::Forward(_) => {}
    }
    if let Some(f) = &route.fault {
        let d = f.decide(&mut rand::thread_rng());
        if let Some(delay) = d.delay {
            rec.flags.push("DI");
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = d.abort {
            rec.flags.push("FI");
            rec.details = "fault_filter_abort";
            return match abort {
                AbortKind::Http(code) => local(code, "fault filter abort"),
                AbortKind::Grpc(code) => {
                    let mut r = local(StatusCode::OK, "");
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    h.insert("grpc-status", HeaderValue::from(code));
                    h.insert(
                        "grpc-message",
                        HeaderValue::from_static("fault filter abort"),
                    );
                    r
                }
            };
        }
    }
    let Action::Forward(fwd) = &route.action else {
        unreachable!("handled above")
    };
    forward(inputs, conn, route, fwd, matched, parts, body, rec).await
}

/// The request parts every attempt re-sends.
struct Prepared {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    replay: Option<Bytes>,
}

impl Prepared {
    fn request(&self, stream: &mut Option<(Incoming, Arc<AtomicU64>)>) -> Request<ReqBody> {
        let body = match (&self.replay, stream.take()) {
            (Some(b), _) if b.is_empty() => ReqBody::Empty,
            (Some(b), _) => ReqBody::Full(Some(b.clone())),
            (None, Some((s, n))) => ReqBody::Stream(s, n),
            (None, None) => ReqBody::Empty,
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    inputs: &Arc<ProxyInputs>,
    conn: &Arc<ConnInfo>,
    route: &Route,
    fwd: &Forward,
    matched: Option<&RequestMatch>,
    parts: Parts,
    body: Incoming,
    rec: &mut RequestRecord,
) -> Response<RespBody> {
    // === phase 3: upstream ===
    let wc: &WeightedCluster = fwd.pick(&mut rand::thread_rng());
    let cluster = wc.cluster.clone();
    rec.upstream_cluster = Some(cluster.name.clone());
    rec.labels.destination_service = cluster.service.fqdn.clone();
    rec.labels.destination_service_name = cluster.service.name.clone();
    rec.labels.destination_service_namespace = cluster.service.namespace.clone();

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    route.headers.request.apply(&mut headers);
    wc.headers.request.apply(&mut headers);
    let authority = fwd
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .unwrap_or_else(|| rec.authority.clone());
    if let Ok(v) = HeaderValue::from_str(&authority) {
        headers.insert(header::HOST, v);
    }
    if !headers.contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&rec.request_id) {
            headers.insert("x-request-id", v);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let pq = fwd
        .rewrite
        .as_ref()
        .and_then(|r| r.apply_uri(parts.uri.path(), parts.uri.query(), matched))
        .unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string()
        });
    let uri: http::Uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return local(StatusCode::BAD_REQUEST, "bad request"),
    };

    // Buffer small bodies so retries and mirrors can replay them; stream the rest.
    let wants_replay = fwd.retry.num_retries > 0 || fwd.mirror.is_some();
    let limit = inputs.config.max_replay_body;
    let mut stream = None;
    let replay = if body.is_end_stream() {
        Some(Bytes::new())
    } else if wants_replay && body.size_hint().upper().is_some_and(|u| u <= limit) {
        match body.collect().await {
            Ok(c) => Some(c.to_bytes()),
            Err(_) => {
                rec.flags.push("DC");
                rec.details = "downstream_remote_disconnect";
                return local(StatusCode::BAD_REQUEST, "bad request");
            }
        }
    } else {
        let n = Arc::new(AtomicU64::new(0));
        rec.request_bytes_counter = Some(n.clone());
        stream = Some((body, n));
        None
    };
    if let Some(b) = &replay {
        rec.request_bytes = b.len() as u64;
    }
    let prepared = Prepared {
        method: parts.method,
        uri,
        headers,
        replay,
    };

    if let (Some(m), Some(_)) = (&fwd.mirror, &prepared.replay) {
        if m.ppm >= 1_000_000 || rand::thread_rng().gen_range(0..1_000_000) < m.ppm {
            mirror(inputs, m.cluster.clone(), &prepared);
        }
    }

    let attempt_loop = attempts(inputs, conn, &cluster, fwd, &prepared, &mut stream, rec);
    let started = Instant::now();
    let result = match fwd.timeout {
        Some(t) => match tokio::time::timeout(t, attempt_loop).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::new(ErrorKind::RouteTimeout)),
        },
        None => attempt_loop.await,
    };
    rec.upstream_time_ms = Some(started.elapsed().as_millis() as u64);

    // === phase 4: response filter ===
    match result {
        Ok((resp, lease, held)) => {
            let (mut rp, rb) = resp.into_parts();
            strip_hop_by_hop(&mut rp.headers);
            route.headers.response.apply(&mut rp.headers);
            wc.headers.response.apply(&mut rp.headers);
            rp.version = Version::HTTP_11;
            rec.details = "via_upstream";
            let mut body = RespBody::upstream(rb, lease);
            body.hold(Box::new(held));
            Response::from_parts(rp, body)
        }
        Err(e) => {
            let flag = e.response_flag();
            if flag != "-" {
                rec.flags.push(flag);
            }
            rec.details = match e.kind() {
                ErrorKind::RouteTimeout | ErrorKind::PerTryTimeout => "upstream_response_timeout",
                ErrorKind::Overflow => "upstream_reset_before_response_started{overflow}",
                ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
                _ => "upstream_reset_before_response_started",
            };
            tracing::debug!(error = %e, cluster = %cluster.name, "request failed");
            local(e.status(), e.body())
        }
    }
}

/// What a successful attempt keeps alive until the response body ends: the circuit-breaker
/// request slot and the endpoint's in-flight count (so `http2MaxRequests` and LEAST_REQUEST see
/// streaming responses as active).
struct Held {
    _request: crate::pool_limits::Permit,
    _active: ActiveGuard,
}

type AttemptResult = Result<(Response<Incoming>, Option<pool::Lease>, Held), ProxyError>;

async fn attempts(
    inputs: &Arc<ProxyInputs>,
    conn: &Arc<ConnInfo>,
    cluster: &Arc<Cluster>,
    fwd: &Forward,
    prepared: &Prepared,
    stream: &mut Option<(Incoming, Arc<AtomicU64>)>,
    rec: &mut RequestRecord,
) -> AttemptResult {
    let policy = &fwd.retry;
    let breaker = &cluster.state.breaker;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let request_permit = breaker
            .try_request(&cluster.limits)
            .ok_or_else(|| ProxyError::new(ErrorKind::Overflow))?;
        let Some(ep) = balance::pick(cluster, &tried, conn.original_dst, Instant::now()) else {
            return Err(ProxyError::new(ErrorKind::NoHealthyUpstream));
        };
        tried.push(ep.addr);
        rec.attempts = attempt + 1;
        rec.upstream_host = Some(ep.addr);
        label_destination(rec, &ep.workload);

        let req = prepared.request(stream);
        let active = ActiveGuard::new(&ep.state);
        let send = pool::send(cluster, ep, &*inputs.connector, req);
        let res = match policy.per_try_timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .unwrap_or_else(|_| Err(ProxyError::new(ErrorKind::PerTryTimeout))),
            None => send.await,
        };
        let held = Held {
            _request: request_permit,
            _active: active,
        };

        if let Some(oc) = &cluster.outlier {
            let obs = match &res {
                Ok((r, _)) => Some(Observation::Status(r.status().as_u16())),
                Err(e) if e.counts_for_outlier() => Some(Observation::LocalFailure),
                Err(_) => None,
            };
            if let Some(obs) = obs {
                ep.state
                    .outlier
                    .observe(oc, obs, Instant::now(), &*cluster.state);
            }
        }
        let outcome = match &res {
            Ok((r, _)) => Outcome::Response {
                status: r.status().as_u16(),
                grpc_status: r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(e) => Outcome::Error(e),
        };
        if !policy.should_retry(&outcome) {
            return res.map(|(r, l)| (r, l, held));
        }
        // A streamed body was consumed by this attempt: it cannot be sent again.
        let replayable = prepared.replay.is_some();
        let retry_permit = if attempt < policy.num_retries && replayable {
            breaker.try_retry(&cluster.limits)
        } else {
            None
        };
        if retry_permit.is_none() {
            rec.flags.push("URX");
            return res.map(|(r, l)| (r, l, held));
        }
        drop(res);
        drop(held);
        attempt += 1;
        let backoff = policy.backoff(attempt, &mut rand::thread_rng());
        tokio::time::sleep(backoff).await;
        drop(retry_permit);
    }
}

/// Fire-and-forget copy of the request to the mirror cluster (host suffixed `-shadow`, as
/// Envoy does). Its result is ignored and never delays the real request.
fn mirror(inputs: &Arc<ProxyInputs>, cluster: Arc<Cluster>, p: &Prepared) {
    let mut req = p.request(&mut None);
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let (host, port) = crate::route::split_authority(h);
        let shadow = match port {
            Some(port) => format!("{host}-shadow:{port}"),
            None => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let inputs = inputs.clone();
    tokio::spawn(async move {
        let Some(ep) = balance::pick(&cluster, &[], None, Instant::now()) else {
            return;
        };
        let send = pool::send(&cluster, ep, &*inputs.connector, req);
        if let Ok(Ok((resp, lease))) = tokio::time::timeout(Duration::from_secs(30), send).await {
            // Drain so the connection can be reused.
            let _ = RespBody::upstream(resp.into_body(), lease).collect().await;
        }
    });
}
