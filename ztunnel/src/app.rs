//! Wiring: builds the proxy inputs, enrols this node's pods, serves admin/metrics/readiness,
//! follows configuration changes and drains on shutdown.
//!
//! Start a node's ztunnel in-process with [`Ztunnel::start`]; the binary does the same from
//! the command line.

use crate::admin::{self, text, LogControl};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{OrigDstSource, PodProxy, ProxyInputs};
use crate::state::{ProxyState, StateHandle, Workload};
use common::resource::Resource;
use http::StatusCode;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transport::identity::{CaDir, CertManager};
use transport::pool::Pool;

/// Errors starting ztunnel.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] transport::identity::IdentityError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("capture: {0}")]
    Capture(String),
}

/// Attaches traffic capture to an enrolled pod (eBPF in production). The returned value keeps
/// the capture attached until dropped.
pub trait CaptureHook: Send + Sync {
    fn attach(&self, pod: &PodProxy) -> Result<Box<dyn Any + Send + Sync>, String>;
    /// Extra Prometheus text appended to `/metrics` (capture counters).
    fn metrics_text(&self) -> String {
        String::new()
    }
    /// What `/config_dump` shows for an attachment.
    fn describe(&self, _attachment: &(dyn Any + Send + Sync)) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Everything [`Ztunnel::start`] needs besides the config.
pub struct StartOptions {
    /// Initial configuration as objects (tests)...
    pub resources: Vec<Resource>,
    /// ...or as a `common` model snapshot (the binary's directory source); wins if set.
    pub model: Option<Arc<common::model::Model>>,
    pub orig_dst: Arc<dyn OrigDstSource>,
    /// Use this CA instead of `cfg.ca_dir` (tests share one CA between nodes in memory).
    pub ca: Option<Arc<CaDir>>,
    pub log_control: Option<LogControl>,
    pub capture: Option<Arc<dyn CaptureHook>>,
}

struct EnrolledPod {
    proxy: PodProxy,
    capture: Option<Box<dyn Any + Send + Sync>>,
}

/// A running ztunnel.
pub struct Ztunnel {
    inputs: ProxyInputs,
    pods: Mutex<HashMap<IpAddr, EnrolledPod>>,
    capture: Option<Arc<dyn CaptureHook>>,
    ready: Arc<AtomicBool>,
    admin_stop: CancellationToken,
    /// Last enrolment error per pod, so retries log a failure once, not every second.
    failed: Mutex<HashMap<IpAddr, String>>,
    /// Bound (admin, metrics, readiness) addresses, set once the servers are up.
    addrs: std::sync::OnceLock<(SocketAddr, SocketAddr, SocketAddr)>,
}

impl Ztunnel {
    /// Starts a ztunnel for `cfg.node`: CA, state, pods' listeners, admin endpoints.
    pub async fn start(cfg: Config, opts: StartOptions) -> Result<Arc<Ztunnel>, AppError> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let ca = match (opts.ca, &cfg.ca_dir) {
            (Some(ca), _) => ca,
            (None, Some(dir)) => Arc::new(CaDir::load_or_generate(dir, &cfg.trust_domain)?),
            (None, None) => Arc::new(CaDir::generate_in_memory(&cfg.trust_domain)?),
        };
        let certs = CertManager::new(ca, cfg.cert_lifetime);
        let state = StateHandle::new(match &opts.model {
            Some(m) => ProxyState::from_model(m, &cfg.cluster),
            None => ProxyState::build(&opts.resources, &cfg.trust_domain, &cfg.cluster),
        });
        let inputs = ProxyInputs {
            pool: Pool::new(cfg.pool_max_streams, cfg.pool_idle_timeout),
            cfg: cfg.clone(),
            state,
            certs,
            metrics: Arc::new(Metrics::new()),
            orig_dst: opts.orig_dst,
            drain: CancellationToken::new(),
            tracker: TaskTracker::new(),
            local_pods: Default::default(),
        };
        let ready = Arc::new(AtomicBool::new(false));
        let admin_stop = CancellationToken::new();
        let zt = Arc::new(Ztunnel {
            inputs: inputs.clone(),
            pods: Mutex::new(HashMap::new()),
            capture: opts.capture,
            ready: ready.clone(),
            admin_stop: admin_stop.clone(),
            failed: Mutex::new(HashMap::new()),
            addrs: std::sync::OnceLock::new(),
        });
        if let Err(e) = zt.reconcile() {
            // Keep serving the pods that did enrol; [`Ztunnel::retry_enrolment`] tries again.
            tracing::error!(error = %e, "initial enrolment incomplete");
        }
        let metrics = inputs.metrics.clone();
        let capture = zt.capture.clone();
        let metrics_addr = admin::serve(cfg.metrics_addr, admin_stop.clone(), move |req| {
            let metrics = metrics.clone();
            let capture = capture.clone();
            async move {
                match req.uri().path() {
                    "/metrics" | "/stats/prometheus" => {
                        let mut body = metrics.encode();
                        if let Some(c) = capture {
                            // Keep `# EOF` (OpenMetrics) last.
                            let extra = c.metrics_text();
                            if let Some(pos) = body.rfind("# EOF") {
                                body.insert_str(pos, &extra);
                            } else {
                                body.push_str(&extra);
                            }
                        }
                        text(StatusCode::OK, body)
                    }
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        })
        .await?;
        let r = ready.clone();
        let readiness_addr = admin::serve(cfg.readiness_addr, admin_stop.clone(), move |req| {
            let ready = r.load(Ordering::Acquire);
            async move {
                match (req.uri().path(), ready) {
                    ("/healthz/ready", true) => text(StatusCode::OK, "ready\n"),
                    ("/healthz/ready", false) => {
                        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        })
        .await?;
        let weak = Arc::downgrade(&zt);
        let log = opts.log_control;
        let admin_addr = admin::serve(cfg.admin_addr, admin_stop.clone(), move |req| {
            let zt = weak.upgrade();
            let log = log.clone();
            async move {
                let Some(zt) = zt else {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
                };
                match req.uri().path() {
                    "/config_dump" => text(StatusCode::OK, zt.config_dump().to_string()),
                    "/logging" => match (admin::query_level(&req), log) {
                        (Some(level), Some(log)) => match log(&level) {
                            Ok(now) => text(StatusCode::OK, format!("log level: {now}\n")),
                            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                        },
                        (None, _) => {
                            text(StatusCode::BAD_REQUEST, "usage: /logging?level=<filter>\n")
                        }
                        (_, None) => text(StatusCode::NOT_IMPLEMENTED, "no log control\n"),
                    },
                    _ => text(
                        StatusCode::NOT_FOUND,
                        "endpoints: /config_dump /logging?level=\n",
                    ),
                }
            }
        })
        .await?;
        let _ = zt.addrs.set((admin_addr, metrics_addr, readiness_addr));
        ready.store(true, Ordering::Release);
        tracing::info!(node = %cfg.node, %admin_addr, %metrics_addr, %readiness_addr, "ztunnel ready");
        Ok(zt)
    }

    /// Bound admin address (localhost).
    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs
            .get()
            .map(|a| a.0)
            .unwrap_or(self.inputs.cfg.admin_addr)
    }

    /// Bound Prometheus address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.addrs
            .get()
            .map(|a| a.1)
            .unwrap_or(self.inputs.cfg.metrics_addr)
    }

    /// Bound readiness address.
    pub fn readiness_addr(&self) -> SocketAddr {
        self.addrs
            .get()
            .map(|a| a.2)
            .unwrap_or(self.inputs.cfg.readiness_addr)
    }

    /// The shared proxy inputs (state, metrics, certificates, pool).
    pub fn inputs(&self) -> &ProxyInputs {
        &self.inputs
    }

    /// Replaces the configuration and (un)enrols pods accordingly. The last good state keeps
    /// serving if a pod fails to enrol; the error is logged.
    pub fn update(&self, resources: &[Resource]) {
        let cfg = &self.inputs.cfg;
        self.inputs.state.store(ProxyState::build(
            resources,
            &cfg.trust_domain,
            &cfg.cluster,
        ));
        if let Err(e) = self.reconcile() {
            tracing::error!(error = %e, "enrolment after config change failed");
        }
    }

    /// Tries again to enrol pods whose enrolment failed (netns not there yet, ...).
    pub fn retry_enrolment(&self) -> Result<(), AppError> {
        self.reconcile()
    }

    /// Replaces the configuration with a `common` model snapshot (the directory source's).
    pub fn update_model(&self, model: &common::model::Model) {
        self.inputs
            .state
            .store(ProxyState::from_model(model, &self.inputs.cfg.cluster));
        if let Err(e) = self.reconcile() {
            tracing::error!(error = %e, "enrolment after config change failed");
        }
    }

    fn reconcile(&self) -> Result<(), AppError> {
        let st = self.inputs.state.load();
        let wanted: HashMap<IpAddr, Arc<Workload>> = st
            .node_workloads(&self.inputs.cfg.node)
            .map(|w| (w.ip, w.clone()))
            .collect();
        let mut pods = self.pods.lock();
        pods.retain(|ip, p| {
            let keep = wanted.get(ip).is_some_and(|w| {
                w.identity == p.proxy.ctx.workload.identity && w.netns == p.proxy.ctx.workload.netns
            });
            if !keep {
                self.inputs.local_pods.write().remove(ip);
                tracing::info!(pod = %p.proxy.ctx.workload.name, "pod unenrolled: listeners closed");
            }
            keep
        });
        let mut first_err = None;
        for (ip, w) in wanted {
            if pods.contains_key(&ip) {
                continue;
            }
            let r = PodProxy::start(&self.inputs, w.clone())
                .map_err(AppError::from)
                .and_then(|proxy| {
                    let capture = match &self.capture {
                        Some(c) => Some(c.attach(&proxy).map_err(AppError::Capture)?),
                        None => None,
                    };
                    Ok(EnrolledPod { proxy, capture })
                });
            match r {
                Ok(p) => {
                    if self.failed.lock().remove(&ip).is_some() {
                        tracing::info!(pod = %w.name, "pod enrolled after earlier failures");
                    }
                    pods.insert(ip, p);
                }
                Err(e) => {
                    self.inputs.local_pods.write().remove(&ip);
                    let msg = e.to_string();
                    if self.failed.lock().insert(ip, msg.clone()).as_deref() != Some(&msg) {
                        tracing::error!(pod = %w.name, error = %msg, "pod enrolment failed (retrying)");
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Enrolled pod IPs.
    pub fn enrolled(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.pods.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// The `/config_dump` document.
    pub fn config_dump(&self) -> serde_json::Value {
        let st = self.inputs.state.load();
        let pods: Vec<serde_json::Value> = self
            .pods
            .lock()
            .values()
            .map(|p| {
                serde_json::json!({
                    "name": p.proxy.ctx.workload.name,
                    "namespace": p.proxy.ctx.workload.namespace,
                    "ip": p.proxy.ctx.workload.ip,
                    "identity": p.proxy.ctx.workload.identity.to_string(),
                    "listeners": {
                        "outbound": p.proxy.outbound.local_addr().ok(),
                        "hbone": p.proxy.hbone.local_addr().ok(),
                        "plaintext": p.proxy.plaintext.local_addr().ok(),
                    },
                    "capture": match (&self.capture, &p.capture) {
                        (Some(c), Some(a)) => c.describe(a.as_ref()),
                        _ => serde_json::Value::Null,
                    },
                })
            })
            .collect();
        serde_json::json!({
            "config": &*self.inputs.cfg,
            "certificates": self.inputs.certs.summary(),
            "enrolled_pods": pods,
            "pool_connections": self.inputs.pool.connections(),
            "state": &*st,
        })
    }

    /// Graceful drain: not ready, stop accepting, GOAWAY on HBONE connections, wait for open
    /// connections up to the drain timeout, then close everything.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.inputs.drain.cancel();
        self.inputs.tracker.close();
        let open = self.inputs.tracker.len();
        tracing::info!(open, timeout = ?self.inputs.cfg.drain_timeout, "draining");
        if tokio::time::timeout(self.inputs.cfg.drain_timeout, self.inputs.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.inputs.tracker.len(),
                "drain deadline reached, closing"
            );
        }
        self.pods.lock().clear();
        self.inputs.local_pods.write().clear();
        self.admin_stop.cancel();
    }
}
