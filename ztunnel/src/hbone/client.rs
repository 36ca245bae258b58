//! HBONE client: one HTTP/2 connection over mTLS, many `CONNECT` tunnels on it.

use super::STREAM_WINDOW;
use super::{HboneError, CONNECTION_WINDOW, MAX_FRAME_SIZE, PING_INTERVAL, PING_TIMEOUT};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An established HTTP/2 connection that opens tunnels. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct H2Client {
    sender: SendRequest<Empty<Bytes>>,
}

impl H2Client {
    /// Runs the HTTP/2 handshake over `io` (normally a TLS stream with ALPN `h2`) with HBONE's
    /// settings and spawns the connection driver.
    pub async fn handshake<I>(io: I) -> Result<H2Client, HboneError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buf_size(1024 * 1024)
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HBONE client connection ended");
            }
        });
        Ok(H2Client { sender })
    }

    /// Whether the connection can still carry new streams.
    pub fn is_ready(&self) -> bool {
        self.sender.is_ready() && !self.sender.is_closed()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
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
            .body(Empty::<Bytes>::new())
            .map_err(|e| HboneError::BadRequest(e.to_string()))?;
        *req.headers_mut() = headers;
        let mut sender = self.sender.clone();
        let resp = sender.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Status(resp.status()));
        }
        let headers = resp.headers().clone();
        let upgraded = hyper::upgrade::on(resp).await?;
        Ok((
            Tunnel {
                io: TokioIo::new(upgraded),
            },
            headers,
        ))
    }
}

/// A byte stream carried in one HTTP/2 `CONNECT` stream. Shutting down the write side sends
/// END_STREAM (TCP half-close); dropping it resets the stream.
#[derive(Debug)]
pub struct Tunnel {
    io: TokioIo<hyper::upgrade::Upgraded>,
}

impl Tunnel {
    pub(crate) fn from_upgraded(u: hyper::upgrade::Upgraded) -> Self {
        Tunnel {
            io: TokioIo::new(u),
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
