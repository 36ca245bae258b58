//! ztunnel configuration: defaults and environment names as consts, validated once and frozen
//! into an `Arc<Config>` (serializable, so `/config_dump` shows it).

use common::ports;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Env: CA directory (Istio plugged-in CA file names).
pub const ENV_CA_DIR: &str = "CA_DIR";
/// Env: admin port (localhost).
pub const ENV_ADMIN_PORT: &str = "ZTUNNEL_ADMIN_PORT";
/// Env: Prometheus port.
pub const ENV_METRICS_PORT: &str = "ZTUNNEL_METRICS_PORT";
/// Env: readiness port.
pub const ENV_READINESS_PORT: &str = "ZTUNNEL_READINESS_PORT";
/// Env: outbound capture port.
pub const ENV_OUTBOUND_PORT: &str = "ZTUNNEL_OUTBOUND_PORT";
/// Env: inbound plaintext capture port.
pub const ENV_INBOUND_PLAINTEXT_PORT: &str = "ZTUNNEL_INBOUND_PLAINTEXT_PORT";
/// Env: HBONE port.
pub const ENV_HBONE_PORT: &str = "ZTUNNEL_HBONE_PORT";
/// Env: workload certificate lifetime in seconds.
pub const ENV_CERT_LIFETIME: &str = "ZTUNNEL_CERT_LIFETIME_SECS";
/// Env: eBPF object path.
pub const ENV_EBPF_OBJECT: &str = "MESH_EBPF_OBJECT";

pub const DEFAULT_ADMIN_PORT: u16 = ports::ADMIN;
pub const DEFAULT_OUTBOUND_PORT: u16 = ports::OUTBOUND;
pub const DEFAULT_INBOUND_PLAINTEXT_PORT: u16 = ports::INBOUND_PLAINTEXT;
pub const DEFAULT_HBONE_PORT: u16 = ports::HBONE;
pub const DEFAULT_METRICS_PORT: u16 = ports::METRICS;
pub const DEFAULT_READINESS_PORT: u16 = ports::READINESS;
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CA_DIR: &str = "/var/run/mesh/ca";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(300);
pub const DEFAULT_POOL_MAX_STREAMS: usize = 100;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// The kernel programs redirect to their own copies of the capture ports (they cannot use
// `common`); a mismatch would send captured traffic to a port nobody listens on.
const _: () = assert!(
    ebpf_common::OUTBOUND_PORT == ports::OUTBOUND
        && ebpf_common::INBOUND_PLAINTEXT_PORT == ports::INBOUND_PLAINTEXT
        && ebpf_common::HBONE_PORT == ports::HBONE
);

/// How pod traffic reaches ztunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CaptureMode {
    /// eBPF programs in each pod (production).
    Ebpf,
    /// No capture: listeners bind pod IPs directly; tests drive them and provide original
    /// destinations through an [`crate::proxy::OrigDstTable`].
    None,
}

/// Errors validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Frozen configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub node: String,
    pub config_dir: Option<PathBuf>,
    pub ca_dir: Option<PathBuf>,
    pub trust_domain: String,
    pub cluster: String,
    pub cert_lifetime: Duration,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub outbound_port: u16,
    pub inbound_plaintext_port: u16,
    pub hbone_port: u16,
    pub capture: CaptureMode,
    pub ebpf_object: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_streams: usize,
    pub connect_timeout: Duration,
}

impl Config {
    /// Defaults for `node` (CA in memory, capture none, standard ports).
    pub fn new(node: &str) -> Config {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Config {
            node: node.to_string(),
            config_dir: None,
            ca_dir: None,
            trust_domain: common::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            cluster: common::telemetry::DEFAULT_CLUSTER.to_string(),
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            admin_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DEFAULT_ADMIN_PORT),
            metrics_addr: SocketAddr::new(any, DEFAULT_METRICS_PORT),
            readiness_addr: SocketAddr::new(any, DEFAULT_READINESS_PORT),
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_plaintext_port: DEFAULT_INBOUND_PLAINTEXT_PORT,
            hbone_port: DEFAULT_HBONE_PORT,
            capture: CaptureMode::None,
            ebpf_object: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE,
            pool_max_streams: DEFAULT_POOL_MAX_STREAMS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The mesh's own ports, refused as tunnel targets.
    pub fn mesh_ports(&self) -> [u16; 3] {
        [
            self.outbound_port,
            self.inbound_plaintext_port,
            self.hbone_port,
        ]
    }

    /// Checks invariants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.is_empty() {
            return Err(ConfigError::Invalid("node name is empty".into()));
        }
        if self.cert_lifetime < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "certificate lifetime must be at least 2s".into(),
            ));
        }
        if self.pool_max_streams == 0 {
            return Err(ConfigError::Invalid("pool_max_streams must be > 0".into()));
        }
        Ok(())
    }
}
