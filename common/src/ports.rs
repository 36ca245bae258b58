//! The mesh's well-known ports, Istio's numbers, defined once for ztunnel, the waypoint and
//! the tools around them. Pods must not use these for their own services: traffic to them is
//! the mesh's, never an application's.
//!
//! The eBPF programs keep their own copies of the capture ports (`ebpf-common` is `no_std` and
//! built for the kernel target); ztunnel checks at compile time that they agree.

/// Outbound capture: a pod's outgoing TCP connections are redirected to ztunnel's listener on
/// this port inside the pod's network namespace, which relays them to their original
/// destination.
pub const OUTBOUND: u16 = 15001;

/// Inbound plaintext: connections to a pod that did not arrive through HBONE (from outside the
/// mesh, or from a peer without a ztunnel) land here, where PeerAuthentication decides whether
/// they may reach the application.
pub const INBOUND_PLAINTEXT: u16 = 15006;

/// HBONE: HTTP/2 `CONNECT` over mutual TLS between ztunnels and waypoints; the port peers dial
/// and the one ztunnel and the waypoint accept tunnels on.
pub const HBONE: u16 = 15008;

/// Admin: `/config_dump` and `/logging`, bound to localhost only.
pub const ADMIN: u16 = 15000;

/// Prometheus metrics: `/metrics` and `/stats/prometheus`.
pub const METRICS: u16 = 15020;

/// Readiness probe: `/healthz/ready`, answering 200 once the proxy serves.
pub const READINESS: u16 = 15021;

/// DNS proxy: where Istio's ztunnel answers captured pod DNS queries from the service
/// registry. No listener uses it yet; it is reserved so nothing else claims it.
pub const DNS: u16 = 15053;
