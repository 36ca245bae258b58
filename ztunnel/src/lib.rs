//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! Identity, mesh TLS, HBONE and the HBONE pool come from the `transport` crate (shared with
//! the waypoint). The node agent is [`app::Ztunnel`]: it enrols the node's pods ([`inpod`],
//! [`redirect`] via [`capture`]), runs their listeners ([`proxy`]) over the state adapted from
//! `common` ([`state`]), and serves [`admin`] endpoints and [`metrics`].

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod state;
