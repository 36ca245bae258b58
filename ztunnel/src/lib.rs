//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! Reusable on their own: [`identity`] (SPIFFE names, CA, certificate manager), [`tls`] (mesh
//! rustls configs) and [`hbone`] (HTTP/2 CONNECT client and server). The node agent is
//! [`app::Ztunnel`]: it enrols the node's pods ([`inpod`], [`redirect`] via [`capture`]), runs
//! their listeners ([`proxy`]) over the state adapted from `common` ([`state`]), and serves
//! [`admin`] endpoints and [`metrics`].

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod state;
pub mod tls;
