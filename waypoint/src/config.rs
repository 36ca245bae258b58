//! Waypoint settings and the configuration snapshot the route compiler reads.
//!
//! [`WaypointConfig`] holds the process settings (names, listen addresses, limits) with Istio's
//! defaults as consts; it is frozen in an `Arc` at start. [`MeshSnapshot`] is the set of
//! Kubernetes and Istio objects one compilation sees. Until `common`'s model and directory
//! source land, [`MeshSnapshot::load_dir`] reads a directory of YAML itself (multi-document,
//! any of the API versions Istio serves); the compiler only depends on the snapshot, so the
//! switch is local to this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::istio::networking::{DestinationRuleSpec, VirtualServiceSpec};
use common::istio::security::AuthorizationPolicySpec;
use common::k8s::{Gateway, Namespace, Pod, Service};
use common::resource::{AuthorizationPolicy, DestinationRule, IstioObject, VirtualService};
use common::Kind;
use serde::Serialize;

/// HBONE listener (Istio's port).
pub const HBONE_PORT: u16 = 15008;
/// Admin (`/config_dump`).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics.
pub const METRICS_PORT: u16 = 15020;
/// Readiness (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;
/// Default time a client has to send complete request headers (slow-loris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on request header bytes (Envoy's default is 60 KiB); beyond: 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Request bodies up to this size are buffered so retries and mirrors can replay them.
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Which services this waypoint serves.
#[derive(Clone, Debug, Serialize)]
pub enum ServeScope {
    /// Every service in the snapshot (tests, gateway role).
    All,
    /// Services (or namespaces) labelled `istio.io/use-waypoint: <name>`.
    Waypoint,
}

/// Process settings.
#[derive(Clone, Debug, Serialize)]
pub struct WaypointConfig {
    /// Gateway name (`--name`).
    pub name: String,
    pub namespace: String,
    pub trust_domain: String,
    pub scope: ServeScope,
    /// Cluster domain for FQDNs.
    pub domain: String,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_replay_body: u64,
    /// Print an access-log line per request to stdout.
    pub access_log: bool,
}

impl Default for WaypointConfig {
    fn default() -> Self {
        WaypointConfig {
            name: "waypoint".into(),
            namespace: "default".into(),
            trust_domain: common::identity::DEFAULT_TRUST_DOMAIN.into(),
            scope: ServeScope::All,
            domain: "cluster.local".into(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            access_log: true,
        }
    }
}

/// The objects one compilation reads.
#[derive(Clone, Debug, Default)]
pub struct MeshSnapshot {
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub gateways: Vec<Gateway>,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
}

/// Why a config directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {msg}")]
    Parse {
        path: PathBuf,
        doc: usize,
        msg: String,
    },
}

impl MeshSnapshot {
    /// Adds one YAML document (already parsed to a value). Unknown kinds are skipped.
    pub fn add_value(&mut self, v: serde_yaml::Value) -> Result<(), String> {
        let api = v
            .get("apiVersion")
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        let kind = v
            .get("kind")
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        let Some(k) = Kind::from_api(&api, &kind) else {
            return Ok(());
        };
        fn de<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
            serde_yaml::from_value(v).map_err(|e| e.to_string())
        }
        match k {
            Kind::Namespace => self.namespaces.push(de(v)?),
            Kind::Pod => self.pods.push(de(v)?),
            Kind::Service => self.services.push(de(v)?),
            Kind::Gateway => self.gateways.push(de(v)?),
            Kind::VirtualService => self
                .virtual_services
                .push(de::<IstioObject<VirtualServiceSpec>>(v)?),
            Kind::DestinationRule => self
                .destination_rules
                .push(de::<IstioObject<DestinationRuleSpec>>(v)?),
            Kind::AuthorizationPolicy => self
                .authorization_policies
                .push(de::<IstioObject<AuthorizationPolicySpec>>(v)?),
            Kind::PeerAuthentication | Kind::IstioGateway => {}
        }
        Ok(())
    }

    /// Parses multi-document YAML text.
    pub fn add_yaml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        use serde::Deserialize;
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml::Value::deserialize(doc).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                doc: i + 1,
                msg: e.to_string(),
            })?;
            if v.is_null() {
                continue;
            }
            self.add_value(v).map_err(|msg| ConfigError::Parse {
                path: path.to_path_buf(),
                doc: i + 1,
                msg,
            })?;
        }
        Ok(())
    }

    /// Loads every `*.yaml` / `*.yml` under `dir` (recursively, sorted for stable order).
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let mut snap = MeshSnapshot::default();
        for path in yaml_files(dir)? {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
                path: path.clone(),
                source,
            })?;
            snap.add_yaml(&text, &path)?;
        }
        Ok(snap)
    }
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        if p.is_dir() {
            out.extend(yaml_files(&p)?);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A cheap fingerprint of a config directory (names, sizes, mtimes) for change polling.
pub fn dir_fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    let files = yaml_files(dir).ok()?;
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok()?))
        })
        .collect()
}

/// Listen addresses of a running waypoint.
#[derive(Clone, Debug)]
pub struct ListenAddrs {
    pub plaintext: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub readiness: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_every_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/istio");
        let dir = if dir.exists() {
            dir
        } else {
            PathBuf::from("/work/shared/fixtures/istio")
        };
        let s = MeshSnapshot::load_dir(&dir).unwrap();
        assert!(
            s.virtual_services.len() >= 10,
            "{}",
            s.virtual_services.len()
        );
        assert!(s.destination_rules.len() >= 5);
        assert!(s.authorization_policies.len() >= 4);
    }
}
