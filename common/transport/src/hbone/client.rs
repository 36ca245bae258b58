//! HBONE client: one HTTP/2 connection over mTLS, many `CONNECT` tunnels on it.
//!
//! Drives `h2` directly (no hyper upgrade layer): a tunnel's writes go straight into the
//! stream's send queue, so the data path is one task per direction plus the connection task.

use super::{
    HboneError, CONNECTION_WINDOW, MAX_FRAME_SIZE, PING_INTERVAL, PING_TIMEOUT, SEND_BUFFER,
    STREAM_WINDOW,
};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::PingPong;
use http::{HeaderMap, Method, Request, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub use super::tunnel::Tunnel;

/// An established HTTP/2 connection that opens tunnels. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct H2Client {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Pings every [`PING_INTERVAL`]; returns when a pong does not come within [`PING_TIMEOUT`].
pub(crate) async fn keepalive(mut pp: PingPong) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                // Connection already failing; the connection future reports why.
                std::future::pending::<()>().await;
            }
            Err(_) => {
                tracing::debug!("HBONE peer silent for {PING_TIMEOUT:?}; closing");
                return;
            }
        }
    }
}

impl H2Client {
    /// Runs the HTTP/2 handshake over `io` (normally a TLS stream with ALPN `h2`) with HBONE's
    /// settings and spawns the connection driver.
    pub async fn handshake<I>(io: I) -> Result<H2Client, HboneError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let pp = conn.ping_pong();
        let flag = closed.clone();
        tokio::spawn(async move {
            let ka = async move {
                match pp {
                    Some(pp) => keepalive(pp).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HBONE client connection ended");
                    }
                }
                _ = ka => {}
            }
            flag.store(true, Ordering::Release);
        });
        Ok(H2Client { sender, closed })
    }

    /// Whether the connection can still carry new streams.
    pub fn is_ready(&self) -> bool {
        !self.is_closed()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `CONNECT authority` with `headers`; on 200 returns the tunnel and the response
    /// headers, otherwise [`HboneError::Status`].
    pub async fn connect(
        &self,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<(Tunnel, HeaderMap), HboneError> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string())
            .version(http::Version::HTTP_2)
            .body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))?;
        *req.headers_mut() = headers;
        let mut sender = self.sender.clone().ready().await?;
        let (resp, send) = sender.send_request(req, false)?;
        let resp = resp.await?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Status(resp.status()));
        }
        let (parts, recv) = resp.into_parts();
        Ok((Tunnel::new(send, recv), parts.headers))
    }
}
