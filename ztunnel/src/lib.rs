//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! Reusable on their own: [`identity`] (SPIFFE names, CA, certificate manager), [`tls`] (mesh
//! rustls configs) and [`hbone`] (HTTP/2 CONNECT client and server).

pub mod hbone;
pub mod identity;
pub mod tls;
pub mod state;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod config;
pub mod inpod;
