//! The waypoint: the mesh's L7 proxy.
//!
//! It applies VirtualService, DestinationRule and AuthorizationPolicy semantics as Istio and
//! Envoy define them to HTTP/1.1 and HTTP/2 traffic, and forwards to endpoints through a
//! pluggable [`upstream::Connector`] (plain TCP today, HBONE in the mesh).
//!
//! Its configuration is a `common::Model`, from the same sources and reload path as ztunnel's
//! (`common::source`); Istio's resolution rules (bindings, VirtualService and DestinationRule
//! precedence, subset policies) are `common`'s, compiled here into request-path tables.
//!
//! Layout, one concern per module: `route` (compiled tables: `compile`, `destination`,
//! `match_`), `fault`, `retry`, `outlier`, `balance`, `pool_limits` (circuit breaking), `pool`
//! (connections), `authz`, `metrics`, `access_log`, `admin`, `proxy` (the request path as
//! phases), `listener` (downstream acceptors), `upstream` (connectors), `config`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use common::source::{ConfigSource, DirSource, DirSourceOptions};
//! use waypoint::{config::WaypointConfig, Waypoint};
//! let source = DirSource::start("config/", DirSourceOptions::default()).await?;
//! let wp = Waypoint::new(WaypointConfig::default(), &source.current());
//! let addr = wp.spawn_plaintext("127.0.0.1:0".parse().unwrap()).await?;
//! // On each `source.subscribe()` change: wp.update(&model) swaps tables without touching
//! // in-flight requests.
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod balance;
pub mod body;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fault;
pub mod hbone;
pub mod listener;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod pool_limits;
pub mod proxy;
pub mod retry;
pub mod route;
pub mod upstream;
pub mod workload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use common::Model;
use tokio::net::TcpListener;

use crate::access_log::Telemetry;
use crate::config::WaypointConfig;
use crate::listener::{Acceptor, TcpAcceptor};
use crate::proxy::ProxyInputs;
use crate::route::RouteTable;
use crate::upstream::{Connector, TcpConnector};

/// A waypoint instance: compiled tables plus the shared inputs of its listeners.
#[derive(Clone)]
pub struct Waypoint {
    inputs: Arc<ProxyInputs>,
    generation: Arc<AtomicU64>,
}

impl Waypoint {
    /// Compiles `model` and prepares a waypoint that connects upstream over plain TCP.
    pub fn new(config: WaypointConfig, model: &Model) -> Self {
        Self::with_connector(config, model, Arc::new(TcpConnector))
    }

    /// As [`Waypoint::new`] with another upstream connector (HBONE in the mesh).
    pub fn with_connector(
        config: WaypointConfig,
        model: &Model,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let tables = route::compile::compile(&config, model, None, 1);
        for w in &tables.warnings {
            tracing::warn!("{w}");
        }
        let access_log = config.access_log;
        Waypoint {
            inputs: Arc::new(ProxyInputs {
                config: Arc::new(config),
                tables: ArcSwap::from_pointee(tables),
                connector,
                telemetry: Arc::new(Telemetry {
                    metrics: Default::default(),
                    access_log,
                }),
            }),
            generation: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Recompiles from a new model and swaps the tables in. In-flight requests finish on the
    /// tables they started with; live cluster/endpoint state carries over.
    pub fn update(&self, model: &Model) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let prev = self.inputs.tables.load_full();
        let tables = route::compile::compile(&self.inputs.config, model, Some(&prev), generation);
        for w in &tables.warnings {
            tracing::warn!("{w}");
        }
        self.inputs.tables.store(Arc::new(tables));
    }

    /// The tables in force.
    pub fn tables(&self) -> Arc<RouteTable> {
        self.inputs.tables.load_full()
    }

    pub fn inputs(&self) -> &Arc<ProxyInputs> {
        &self.inputs
    }

    /// Serves proxy traffic from any acceptor (plaintext TCP, HBONE tunnels).
    pub async fn serve(&self, acceptor: impl Acceptor) {
        listener::serve(acceptor, self.inputs.clone()).await
    }

    /// Binds a plaintext listener and serves it on a background task; returns its address.
    /// Requests there select their virtual host by authority (`Host`), not by a tunnel
    /// destination: a test path (the mesh reaches the waypoint over HBONE only).
    pub async fn spawn_plaintext(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let acceptor = TcpAcceptor::new(TcpListener::bind(addr).await?);
        let local = acceptor.local_addr()?;
        tokio::spawn(listener::serve(acceptor, self.inputs.clone()));
        Ok(local)
    }

    /// Binds one side port (admin, metrics or readiness) on a background task.
    pub async fn spawn_side(
        &self,
        addr: SocketAddr,
        port: admin::Port,
    ) -> std::io::Result<SocketAddr> {
        let l = TcpListener::bind(addr).await?;
        let local = l.local_addr()?;
        tokio::spawn(admin::serve(l, port, self.inputs.clone()));
        Ok(local)
    }
}
