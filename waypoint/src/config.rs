//! Waypoint settings.
//!
//! [`WaypointConfig`] holds the process settings (names, listen addresses, limits) with Istio's
//! defaults as consts; it is frozen in an `Arc` at start. The mesh configuration itself is a
//! `common::Model`, delivered by `common`'s sources (the YAML directory in local mode) exactly
//! as ztunnel receives it; the route compiler reads nothing else.

use std::net::SocketAddr;
use std::time::Duration;

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
    /// Every service in the model (tests, gateway role). Workloads addressed directly are
    /// still served only when bound to this waypoint.
    All,
    /// The services and workloads the model binds to this waypoint (`name` in `namespace`),
    /// in any namespace: `istio.io/use-waypoint` on the service, pod or namespace, with
    /// `istio.io/use-waypoint-namespace` for a waypoint elsewhere.
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
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_replay_body: u64,
    /// Print an access-log line per request to stdout.
    pub access_log: bool,
    /// Istio's `meshConfig.pathNormalization` (default `BASE`).
    pub path_normalization: common::authz::PathNormalization,
}

impl Default for WaypointConfig {
    fn default() -> Self {
        WaypointConfig {
            name: "waypoint".into(),
            namespace: "default".into(),
            trust_domain: common::identity::DEFAULT_TRUST_DOMAIN.into(),
            scope: ServeScope::All,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            access_log: true,
            path_normalization: Default::default(),
        }
    }
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
pub(crate) mod tests {
    use std::path::Path;

    /// A model from YAML text, loaded and validated by `common` as a file named `path`.
    pub fn model(text: &str, path: &Path) -> Result<common::Model, String> {
        common::load::load_str(path, text)
            .into_model(&common::BuildOptions::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn loads_every_fixture_file() {
        // Each file loads on its own (together they define some resources twice, which the
        // loader rightly rejects).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio");
        let (mut vs, mut dr, mut ap) = (0, 0, 0);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let m = model(&std::fs::read_to_string(&path).unwrap(), &path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            vs += m.virtual_services().len();
            dr += m.destination_rules().len();
            ap += m.authorization_policies().len();
        }
        assert!(vs >= 10 && dr >= 5 && ap >= 4, "{vs} {dr} {ap}");
    }
}
