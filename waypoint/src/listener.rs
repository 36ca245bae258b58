//! Downstream side: the [`Acceptor`] trait (where connections come from) and the HTTP server
//! that runs the proxy on each of them.
//!
//! The plaintext TCP acceptor serves tests and a future gateway role; the HBONE acceptor (an
//! adapter over `transport::hbone::server`) yields one stream per admitted `CONNECT`, with the
//! peer's mTLS identity and the tunnel's target address in [`ConnInfo`]. A tunnel whose target
//! this waypoint does not serve is dropped unread. Both feed the same
//! server: HTTP/1.1 and HTTP/2 with prior knowledge (detected from the preface), header read
//! timeout against slow-loris clients (the connection is closed), a header size cap answered
//! with 431, and malformed requests answered 400 by hyper — none of them can affect other
//! connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::proxy::{handle, ConnInfo, ProxyInputs};
use crate::upstream::{BoxFuture, BoxIo};

/// A source of downstream connections.
pub trait Acceptor: Send + 'static {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, ConnInfo)>>;
}

/// Plain TCP.
pub struct TcpAcceptor {
    listener: TcpListener,
}

impl TcpAcceptor {
    pub fn new(listener: TcpListener) -> Self {
        TcpAcceptor { listener }
    }
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Acceptor for TcpAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, ConnInfo)>> {
        Box::pin(async move {
            let (s, peer) = self.listener.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr()?;
            Ok((
                Box::new(s) as BoxIo,
                ConnInfo {
                    peer,
                    local,
                    peer_identity: None,
                    original_dst: None,
                },
            ))
        })
    }
}

fn builder(inputs: &ProxyInputs) -> auto::Builder<TokioExecutor> {
    let cfg = &inputs.config;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(1000)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024);
    b
}

/// Serves connections from `acceptor` until it fails permanently.
pub async fn serve(mut acceptor: impl Acceptor, inputs: Arc<ProxyInputs>) {
    let builder = Arc::new(builder(&inputs));
    loop {
        let (io, info) = match acceptor.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A tunnel to a destination this waypoint does not serve is refused before any
        // request is read: nothing is forwarded for it.
        if let Some(dst) = info.original_dst {
            if inputs.tables.load().vhost_for_destination(dst).is_none() {
                tracing::warn!(%dst, peer = %info.peer, "tunnel refused: destination not served by this waypoint");
                continue;
            }
        }
        let inputs = inputs.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let info = Arc::new(info);
            let svc = service_fn(move |req| {
                let inputs = inputs.clone();
                let info = info.clone();
                async move { Ok::<_, Infallible>(handle(inputs, info, req).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
                tracing::debug!(error = %e, "downstream connection ended with error");
            }
        });
    }
}
