//! Side ports: admin (15000: `/config_dump` of the routes in force), Prometheus metrics
//! (15020: `/metrics`, `/stats/prometheus`) and readiness (15021: `/healthz/ready`, ready once a
//! configuration has been compiled). Each is a tiny HTTP/1.1 server on its own listener so a
//! flood of proxy traffic cannot starve health checks of accept slots.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::ProxyInputs;

/// Which side port a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    Admin,
    Metrics,
    Readiness,
}

fn respond(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn route(port: Port, inputs: &ProxyInputs, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (port, req.uri().path()) {
        (Port::Admin, "/config_dump") => {
            let tables = inputs.tables.load_full();
            let dump = serde_json::json!({
                "waypoint": &*inputs.config,
                "routes": &*tables,
            });
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&dump).unwrap_or_default(),
            )
        }
        (Port::Admin, "/ready") | (Port::Readiness, "/healthz/ready") => {
            if inputs.tables.load().generation > 0 {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration yet\n",
                )
            }
        }
        (Port::Metrics | Port::Admin, "/metrics" | "/stats/prometheus") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            inputs.telemetry.metrics.encode(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves one side port forever.
pub async fn serve(listener: TcpListener, port: Port, inputs: Arc<ProxyInputs>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = route(port, &inputs, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
