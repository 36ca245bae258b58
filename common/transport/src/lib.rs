//! transport: the mesh transport both proxies share (ztunnel and the waypoint).
//!
//! [`identity`] names workloads (SPIFFE), loads or generates the mesh CA and issues and renews
//! per-identity certificates; [`tls`] builds the mesh mTLS rustls configurations (peer
//! identity from the certificate's URI SAN, never a hostname); [`hbone`] is the HBONE client
//! and server (TCP in HTTP/2 `CONNECT` over mTLS, wire-compatible with Istio); [`pool`] pools
//! HBONE connections per (source identity, destination identity, destination address).
//! Nothing here knows about pods, capture or eBPF: those stay in ztunnel.

pub mod hbone;
pub mod identity;
pub mod pool;
pub mod tls;
