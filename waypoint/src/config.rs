//! Waypoint settings and the configuration snapshot the route compiler reads.
//!
//! [`WaypointConfig`] holds the process settings (names, listen addresses, limits) with Istio's
//! defaults as consts; it is frozen in an `Arc` at start. [`MeshSnapshot`] is the set of
//! Kubernetes and Istio objects one compilation sees, filled by `common`'s loader (which
//! names file, line, resource and field in every diagnostic and rejects invalid input). The
//! route compiler reads only the snapshot, so moving it onto `common::model::Model` views
//! later is local to `MeshSnapshot`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::k8s::{Gateway, Namespace, Pod, Service};
use common::resource::{AuthorizationPolicy, DestinationRule, VirtualService};
use common::Resource;
use serde::Serialize;

/// HBONE listener (Istio's port).
pub const HBONE_PORT: u16 = common::ports::HBONE;
/// Admin (`/config_dump`).
pub const ADMIN_PORT: u16 = common::ports::ADMIN;
/// Prometheus metrics.
pub const METRICS_PORT: u16 = common::ports::METRICS;
/// Readiness (`/healthz/ready`).
pub const READINESS_PORT: u16 = common::ports::READINESS;
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

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The loader found errors (each names file, line, resource and field).
    #[error("configuration rejected:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl MeshSnapshot {
    /// Sorts resources into the snapshot. Kinds the waypoint does not read are skipped.
    pub fn from_resources(resources: Vec<Resource>) -> Self {
        let mut s = MeshSnapshot::default();
        for r in resources {
            match r {
                Resource::Namespace(o) => s.namespaces.push(o),
                Resource::Pod(o) => s.pods.push(o),
                Resource::Service(o) => s.services.push(o),
                Resource::Gateway(o) => s.gateways.push(o),
                Resource::VirtualService(o) => s.virtual_services.push(o),
                Resource::DestinationRule(o) => s.destination_rules.push(o),
                Resource::AuthorizationPolicy(o) => s.authorization_policies.push(o),
                Resource::PeerAuthentication(_) | Resource::IstioGateway(_) => {}
            }
        }
        s
    }

    /// Adds the resources of multi-document YAML `text` (tests and in-memory configs), parsed by
    /// `common`'s loader like a file named `path`.
    pub fn add_yaml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let loaded = common::load::load_str(path, text);
        let more = accept(loaded)?;
        let MeshSnapshot {
            namespaces,
            services,
            pods,
            gateways,
            virtual_services,
            destination_rules,
            authorization_policies,
        } = more;
        self.namespaces.extend(namespaces);
        self.services.extend(services);
        self.pods.extend(pods);
        self.gateways.extend(gateways);
        self.virtual_services.extend(virtual_services);
        self.destination_rules.extend(destination_rules);
        self.authorization_policies.extend(authorization_policies);
        Ok(())
    }

    /// Loads a directory with `common`'s loader (which caches unchanged files across calls).
    /// Errors reject the whole snapshot, so the caller keeps serving the last good one.
    pub fn load_dir_with(
        loader: &mut common::load::Loader,
        dir: &Path,
    ) -> Result<Self, ConfigError> {
        accept(loader.load_dir(dir))
    }

    /// Loads a directory once.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        accept(common::load::load_dir(dir))
    }
}

fn accept(loaded: common::load::Loaded) -> Result<MeshSnapshot, ConfigError> {
    if loaded.has_errors() {
        return Err(ConfigError::Invalid(
            loaded.errors().map(|d| d.to_string()).collect(),
        ));
    }
    for w in loaded.warnings() {
        tracing::warn!("{w}");
    }
    Ok(MeshSnapshot::from_resources(loaded.resources))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(yaml_files(&p));
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A cheap fingerprint of a config directory (names, sizes, mtimes) for change polling.
pub fn dir_fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    yaml_files(dir)
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
    fn loads_every_fixture_file() {
        // Each file loads on its own (together they define some resources twice, which the
        // loader rightly rejects).
        let (mut vs, mut dr, mut ap) = (0, 0, 0);
        for path in
            yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio"))
        {
            let mut s = MeshSnapshot::default();
            s.add_yaml(&std::fs::read_to_string(&path).unwrap(), &path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            vs += s.virtual_services.len();
            dr += s.destination_rules.len();
            ap += s.authorization_policies.len();
        }
        assert!(vs >= 10 && dr >= 5 && ap >= 4, "{vs} {dr} {ap}");
    }
}
