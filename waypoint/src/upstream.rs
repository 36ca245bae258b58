//! How the waypoint reaches an endpoint: the [`Connector`] trait and its implementations.
//!
//! The request path only ever asks for "a byte stream to this endpoint". Today that is plain
//! TCP ([`TcpConnector`]); in the mesh it is an HBONE tunnel (HTTP/2 `CONNECT` over mTLS to the
//! endpoint's node on 15008), supplied by an adapter over `transport::hbone::client`. The target
//! carries everything HBONE needs (endpoint address, expected identity, service host), so the
//! adapter is the only change.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use common::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// A boxed future, `Send`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where to connect and what the far end must prove.
#[derive(Clone, Copy, Debug)]
pub struct ConnectTarget<'a> {
    /// Endpoint (pod) address and target port.
    pub addr: SocketAddr,
    /// The endpoint's workload identity (HBONE verifies the peer certificate against it).
    pub identity: &'a Identity,
    /// Service hostname, for HBONE's `forwarded: ...;host=` header.
    pub service_host: &'a str,
}

/// Opens byte streams to endpoints. Implementations must be cheap to call concurrently.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, target: ConnectTarget<'a>) -> BoxFuture<'a, io::Result<BoxIo>>;
}

/// Plain TCP with `TCP_NODELAY` (requests are small and latency-bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, target: ConnectTarget<'a>) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let s = TcpStream::connect(target.addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}
