//! Admin (localhost 15000: `/config_dump`, `/logging`), Prometheus (15020: `/metrics`,
//! `/stats/prometheus`) and readiness (15021: `/healthz/ready`) HTTP endpoints.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors starting the admin servers.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Changes the log filter at run time (`/logging?level=debug`); returns the new filter.
pub type LogControl = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// A response with a text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `handler` over HTTP/1 on `addr` until `stop`; returns the bound address.
pub async fn serve<H, F>(
    addr: SocketAddr,
    stop: CancellationToken,
    handler: H,
) -> Result<SocketAddr, AdminError>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// Parses `level=` from a query string.
pub fn query_level(req: &Request<Incoming>) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "level").then(|| v.to_string())
    })
}

/// Whether the request is a POST (the admin mutations accept GET too, like Envoy's `/logging`).
pub fn is_post(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST
}
