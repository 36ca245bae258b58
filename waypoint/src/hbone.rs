//! HBONE on both sides of the waypoint, as adapters over `transport::hbone`:
//!
//! - [`HboneAcceptor`]: listens on 15008, terminates mesh mTLS (client certificate required,
//!   identity taken from it — never from a header), admits each HTTP/2 `CONNECT` and yields the
//!   tunnel as one downstream connection. [`ConnInfo`] carries the peer's identity, the original
//!   client from `forwarded: for=`, and the `CONNECT` authority (service VIP:port) as the
//!   original destination, so routing and L7 policy see what Istio's waypoint sees.
//! - [`HboneConnector`]: opens a tunnel to the chosen endpoint: mTLS to `<pod IP>:15008`
//!   verifying the endpoint's SPIFFE identity, `CONNECT <pod IP>:<target port>`, pooled per
//!   (waypoint identity, endpoint identity, node address) by the shared HBONE pool
//!   (`transport::pool`).
//!
//! The request path is unchanged: these implement the same `Acceptor` / `Connector` traits as
//! plain TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::Identity;
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use transport::hbone::server::{Admission, ConnectRequest};
use transport::hbone::{self as zhbone, H2Client, HboneError};
use transport::identity::CertManager;
use transport::pool::{Pool, PoolKey, PooledTunnel};

use crate::listener::Acceptor;
use crate::proxy::ConnInfo;
use crate::upstream::{BoxFuture, BoxIo, ConnectTarget, Connector};

/// HBONE's well-known port.
pub const HBONE_PORT: u16 = common::ports::HBONE;
/// Streams per pooled HTTP/2 connection (Istio's limit).
const MAX_STREAMS: usize = 100;
/// Idle pooled connections close after this long.
const POOL_IDLE: Duration = Duration::from_secs(300);
/// TLS handshakes that take longer are abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string())
}

/// Opens HBONE tunnels to endpoints.
pub struct HboneConnector {
    certs: Arc<CertManager>,
    identity: Identity,
    pool: Pool,
    /// Where endpoints' nodes listen for HBONE (15008; tests use another port).
    port: u16,
}

impl HboneConnector {
    /// A connector presenting `identity` (the waypoint's). Needs a tokio runtime.
    pub fn new(certs: Arc<CertManager>, identity: Identity) -> Self {
        Self::with_port(certs, identity, HBONE_PORT)
    }

    pub fn with_port(certs: Arc<CertManager>, identity: Identity, port: u16) -> Self {
        HboneConnector {
            certs,
            identity,
            pool: Pool::new(MAX_STREAMS, POOL_IDLE),
            port,
        }
    }
}

/// A pooled tunnel as a plain byte stream (holds its stream slot while alive).
struct TunnelIo(PooledTunnel);

impl AsyncRead for TunnelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.tunnel).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.tunnel).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.tunnel).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.tunnel).poll_shutdown(cx)
    }
}

impl Connector for HboneConnector {
    fn connect<'a>(&'a self, t: ConnectTarget<'a>) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let node = SocketAddr::new(t.addr.ip(), self.port);
            let key = PoolKey {
                src: self.identity.clone(),
                dst: t.identity.clone(),
                dst_addr: node,
            };
            let dial = || async {
                let cert = self
                    .certs
                    .fetch(&self.identity)
                    .map_err(|e| HboneError::BadRequest(e.to_string()))?;
                let cfg = transport::tls::client_config(
                    cert,
                    self.certs.roots(),
                    vec![t.identity.clone()],
                )
                .map_err(|e| HboneError::BadRequest(e.to_string()))?;
                let tcp = tokio::net::TcpStream::connect(node).await?;
                let _ = tcp.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(transport::tls::dummy_server_name(), tcp)
                    .await?;
                H2Client::handshake(tls).await
            };
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("host={}", t.service_host)) {
                headers.insert("forwarded", v);
            }
            if let Ok(v) = HeaderValue::from_str(&zhbone::new_traceparent()) {
                headers.insert("traceparent", v);
            }
            let tunnel = self
                .pool
                .connect(key, dial, t.addr, headers)
                .await
                .map_err(io_err)?;
            Ok(Box::new(TunnelIo(tunnel)) as BoxIo)
        })
    }
}

/// Accepts HBONE connections and yields each admitted tunnel as a downstream connection.
pub struct HboneAcceptor {
    rx: mpsc::Receiver<(BoxIo, ConnInfo)>,
    local: SocketAddr,
}

impl HboneAcceptor {
    /// Starts accepting on `listener` with the certificate of `identity` (the waypoint's).
    pub fn start(
        listener: TcpListener,
        certs: Arc<CertManager>,
        identity: Identity,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let cert = certs.fetch(&identity).map_err(io_err)?;
        let cfg = transport::tls::server_config(cert, certs.roots(), certs.trust_domain())
            .map_err(io_err)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Small HTTP/2 frames both ways: Nagle plus the peer's delayed ACK would stall
                // each response ~40 ms.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(t)) => t,
                            _ => return,
                        };
                    let peer_identity = transport::tls::peer_identity(tls.get_ref().1);
                    let handler = move |req: ConnectRequest| {
                        let tx = tx.clone();
                        let peer_identity = peer_identity.clone();
                        async move {
                            let client = req
                                .headers
                                .get("forwarded")
                                .and_then(|v| v.to_str().ok())
                                .and_then(zhbone::parse_forwarded_for)
                                .unwrap_or(peer);
                            let info = ConnInfo {
                                peer: client,
                                local,
                                peer_identity,
                                original_dst: Some(req.authority),
                            };
                            Admission::Accept {
                                headers: HeaderMap::new(),
                                task: Box::new(move |tunnel| {
                                    Box::pin(async move {
                                        let _ = tx.send((Box::new(tunnel) as BoxIo, info)).await;
                                    })
                                }),
                            }
                        }
                    };
                    let _ = zhbone::server::serve(tls, handler, std::future::pending()).await;
                });
            }
        });
        Ok(HboneAcceptor { rx, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Acceptor for HboneAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, ConnInfo)>> {
        Box::pin(async move {
            self.rx
                .recv()
                .await
                .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
        })
    }
}
