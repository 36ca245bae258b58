//! HBONE: TCP tunnelled in HTTP/2 `CONNECT` over mesh mTLS, wire-compatible with Istio.
//!
//! [`client`] opens HTTP/2 connections and tunnels over them; [`server`] accepts them and hands
//! each `CONNECT` to a caller-supplied handler that admits or refuses it; what to admit and where
//! to send the bytes is the caller's (ztunnel or the waypoint). Header helpers for `forwarded`,
//! `baggage` and `traceparent` live here.

pub mod client;
pub mod io;
pub mod server;
mod tunnel;

pub use client::{H2Client, Tunnel};
pub use server::{Admission, ConnectRequest};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// HBONE port.
pub const HBONE_PORT: u16 = common::ports::HBONE;
/// Per-stream flow-control window (client side).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Per-stream send buffer: how much of a tunnel's outgoing data h2 may hold before a write
/// waits (bounds memory per stream; flow control bounds what is in flight).
pub const SEND_BUFFER: usize = 1024 * 1024;
/// Read buffer under the TLS layer of an HBONE connection (see [`io::ReadBuffered`]): one
/// `recv` per this many bytes instead of one per TLS record.
pub const TLS_READ_BUFFER: usize = 64 * 1024;
/// rustls's limit on encrypted data queued for the socket (its default is 64 KiB). A DATA
/// frame of up to 256 KiB (the copy loop's largest read) then goes out in one `writev`
/// instead of four; memory stays bounded per connection.
pub const TLS_SEND_BUFFER: usize = 256 * 1024;
/// Streams a server allows on one connection.
pub const SERVER_MAX_STREAMS: u32 = 200;
/// Interval between keepalive pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Silence after which a connection is dropped.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the HBONE client and server.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The peer does not speak HTTP/2 (bad preface or settings).
    #[error("HTTP/2 handshake (bad preface?): {0}")]
    Handshake(h2::Error),
    #[error("peer answered CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl HboneError {
    /// Whether the peer sent something that is not HTTP/2.
    pub fn is_parse(&self) -> bool {
        match self {
            HboneError::Http(e) => e.is_parse(),
            HboneError::Handshake(_) => true,
            HboneError::H2(e) => e.reason() == Some(h2::Reason::PROTOCOL_ERROR) && !e.is_remote(),
            _ => false,
        }
    }

    /// Whether the HTTP/2 connection itself failed (as opposed to an answer from the peer).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            HboneError::Http(_) | HboneError::H2(_) | HboneError::Handshake(_)
        )
    }
}

/// `forwarded` header value: `for="<ip:port>"` plus `;host=<hostname>` for service traffic.
pub fn forwarded_header(src: SocketAddr, host: Option<&str>) -> String {
    let mut s = format!("for=\"{src}\"");
    if let Some(h) = host {
        let _ = write!(s, ";host={h}");
    }
    s
}

/// Extracts the `for=` address from a `forwarded` header.
pub fn parse_forwarded_for(v: &str) -> Option<SocketAddr> {
    v.split([';', ',']).find_map(|p| {
        let p = p.trim();
        let rest = p.strip_prefix("for=").or_else(|| p.strip_prefix("For="))?;
        rest.trim_matches('"').parse().ok()
    })
}

/// Workload metadata carried in the `baggage` header (W3C baggage, Istio's keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    /// `deployment`, `pod`, ... (becomes `k8s.<kind>.name`).
    pub workload_kind: String,
    pub workload_name: String,
    pub service_name: String,
    pub service_version: String,
}

impl Baggage {
    /// Header value with only the non-empty keys.
    pub fn to_header(&self) -> String {
        let kind_key = format!("k8s.{}.name", self.workload_kind);
        let pairs = [
            ("k8s.cluster.name", self.cluster.as_str()),
            ("k8s.namespace.name", self.namespace.as_str()),
            (kind_key.as_str(), self.workload_name.as_str()),
            ("service.name", self.service_name.as_str()),
            ("service.version", self.service_version.as_str()),
        ];
        let mut out = String::new();
        for (k, v) in pairs {
            if v.is_empty() || (k == kind_key && self.workload_kind.is_empty()) {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{k}={v}");
        }
        out
    }

    /// Parses a `baggage` header; unknown keys are ignored.
    pub fn parse(v: &str) -> Baggage {
        let mut b = Baggage::default();
        for kv in v.split(',') {
            let Some((k, val)) = kv.trim().split_once('=') else {
                continue;
            };
            let val = val.trim().to_string();
            match k.trim() {
                "k8s.cluster.name" => b.cluster = val,
                "k8s.namespace.name" => b.namespace = val,
                "service.name" => b.service_name = val,
                "service.version" => b.service_version = val,
                k => {
                    if let Some(kind) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name"))
                    {
                        b.workload_kind = kind.to_string();
                        b.workload_name = val;
                    }
                }
            }
        }
        b
    }
}

/// A fresh W3C `traceparent` (`00-<trace id>-<span id>-00`).
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let f = forwarded_header("10.0.0.1:3333".parse().unwrap(), Some("a.b.svc"));
        assert_eq!(f, "for=\"10.0.0.1:3333\";host=a.b.svc");
        assert_eq!(
            parse_forwarded_for(&f),
            Some("10.0.0.1:3333".parse().unwrap())
        );
        let b = Baggage {
            cluster: "Kubernetes".into(),
            namespace: "ns".into(),
            workload_kind: "deployment".into(),
            workload_name: "reviews-v1".into(),
            service_name: "reviews".into(),
            service_version: String::new(),
        };
        let h = b.to_header();
        assert_eq!(
            h,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=reviews-v1,service.name=reviews"
        );
        assert_eq!(Baggage::parse(&h), b);
        let t = new_traceparent();
        assert_eq!(t.len(), 55);
        assert!(t.starts_with("00-") && t.ends_with("-00"));
    }
}
