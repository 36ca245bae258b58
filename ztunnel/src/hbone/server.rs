//! HBONE server: serves HTTP/2 on an accepted (mTLS) connection and admits `CONNECT`s.
//!
//! Generic checks live here (method must be `CONNECT`, authority must be `ip:port`, else 400);
//! policy, destination checks and the upstream dial are the handler's job.

use super::{
    Tunnel, CONNECTION_WINDOW, MAX_FRAME_SIZE, PING_INTERVAL, PING_TIMEOUT, SERVER_MAX_STREAMS,
    STREAM_WINDOW,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// One `CONNECT` as seen by the handler.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The `:authority`, parsed.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
}

/// Runs a tunnel once the 200 is sent.
pub type TunnelTask = Box<dyn FnOnce(Tunnel) -> BoxFuture<'static, ()> + Send>;

/// The handler's answer to a `CONNECT`.
pub enum Admission {
    /// Answer 200 (with these extra headers) and run the task on the tunnel.
    Accept {
        headers: HeaderMap,
        task: TunnelTask,
    },
    /// Answer with this status and close the stream.
    Reject(StatusCode),
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Accept { .. } => f.write_str("Accept"),
            Admission::Reject(s) => write!(f, "Reject({s})"),
        }
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// Serves HBONE on `io` until the peer goes away or `shutdown` resolves (then GOAWAY is sent
/// and open tunnels may finish).
pub async fn serve<I, H, F, S>(io: I, handler: H, shutdown: S) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(ConnectRequest) -> F + Send + Sync + 'static,
    F: Future<Output = Admission> + Send + 'static,
    S: Future<Output = ()>,
{
    let handler = Arc::new(handler);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            if req.method() != Method::CONNECT {
                return Ok::<_, std::convert::Infallible>(status(StatusCode::BAD_REQUEST));
            }
            let Some(authority) = req
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
            else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let creq = ConnectRequest {
                authority,
                headers: std::mem::take(req.headers_mut()),
            };
            match handler(creq).await {
                Admission::Reject(code) => Ok(status(code)),
                Admission::Accept { headers, task } => {
                    tokio::spawn(async move {
                        match on_upgrade.await {
                            Ok(u) => task(Tunnel::from_upgraded(u)).await,
                            Err(e) => tracing::debug!(error = %e, "HBONE upgrade failed"),
                        }
                    });
                    let mut r = status(StatusCode::OK);
                    *r.headers_mut() = headers;
                    Ok(r)
                }
            }
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// A `HeaderValue` from a string, or none if it is not a valid header value.
pub fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}
