//! HBONE server: serves HTTP/2 on an accepted (mTLS) connection and admits `CONNECT`s.
//!
//! Generic checks live here (method must be `CONNECT`, authority must be `ip:port`, else 400);
//! policy, destination checks and the upstream dial are the handler's job.

use super::{
    HboneError, Tunnel, CONNECTION_WINDOW, MAX_FRAME_SIZE, SEND_BUFFER, SERVER_MAX_STREAMS,
    STREAM_WINDOW,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
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

fn status(code: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = code;
    r
}

/// Serves HBONE on `io` until the peer goes away or `shutdown` resolves (then GOAWAY is sent
/// and open tunnels may finish). A connection that is not HTTP/2 fails with an error whose
/// [`HboneError::is_parse`] is true.
pub async fn serve<I, H, F, S>(io: I, handler: H, shutdown: S) -> Result<(), HboneError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(ConnectRequest) -> F + Send + Sync + 'static,
    F: Future<Output = Admission> + Send + 'static,
    S: Future<Output = ()>,
{
    let handler = Arc::new(handler);
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_send_buffer_size(SEND_BUFFER)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(HboneError::Handshake)?;
    let keepalive = {
        let pp = conn.ping_pong();
        async move {
            match pp {
                Some(pp) => super::client::keepalive(pp).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::pin!(keepalive);
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        tokio::select! {
            req = conn.accept() => match req {
                Some(Ok((req, respond))) => {
                    let handler = handler.clone();
                    tokio::spawn(async move { handle(req, respond, &*handler).await });
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            _ = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            _ = &mut keepalive => return Ok(()),
        }
    }
}

async fn handle<H, F>(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, handler: &H)
where
    H: Fn(ConnectRequest) -> F,
    F: Future<Output = Admission>,
{
    let reject = |mut respond: SendResponse<Bytes>, code| {
        let _ = respond.send_response(status(code), true);
    };
    if req.method() != Method::CONNECT {
        return reject(respond, StatusCode::BAD_REQUEST);
    }
    let Some(authority) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return reject(respond, StatusCode::BAD_REQUEST);
    };
    let (parts, body) = req.into_parts();
    let creq = ConnectRequest {
        authority,
        headers: parts.headers,
    };
    match handler(creq).await {
        Admission::Reject(code) => reject(respond, code),
        Admission::Accept { headers, task } => {
            let mut r = status(StatusCode::OK);
            *r.headers_mut() = headers;
            match respond.send_response(r, false) {
                Ok(send) => task(Tunnel::new(send, body)).await,
                Err(e) => tracing::debug!(error = %e, "HBONE stream gone before 200"),
            }
        }
    }
}

/// A `HeaderValue` from a string, or none if it is not a valid header value.
pub fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}
