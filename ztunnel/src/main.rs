//! ztunnel binary: CLI, logging, signals, config reload. Everything else is in the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use common::model::BuildOptions;
use common::source::dir::{DirSource, DirSourceOptions};
use common::source::ConfigSource;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::{reload, EnvFilter};
use ztunnel::app::{CaptureHook, StartOptions, Ztunnel};
use ztunnel::config::{self, CaptureMode, Config};
use ztunnel::proxy::{OrigDstSource, OrigDstTable};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Capture {
    Ebpf,
    None,
}

#[derive(Parser, Debug)]
#[command(name = "ztunnel", about = "Per-node L4 proxy of the mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Directory of Kubernetes/Istio YAML (hot reloaded).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (pods with this `spec.nodeName` are served).
    #[arg(long)]
    node: Option<String>,
    /// Traffic capture: eBPF, or none (listeners bind pod IPs directly).
    #[arg(long, value_enum, default_value = "ebpf")]
    capture: Capture,
    /// CA directory (Istio plugged-in CA file names; generated when empty).
    #[arg(long, env = config::ENV_CA_DIR, default_value = config::DEFAULT_CA_DIR)]
    ca_dir: PathBuf,
    #[arg(long, default_value = common::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Workload certificate lifetime in seconds (renewed at half).
    #[arg(long, env = config::ENV_CERT_LIFETIME, default_value_t = 86400)]
    cert_lifetime_secs: u64,
    #[arg(long, env = config::ENV_ADMIN_PORT, default_value_t = config::DEFAULT_ADMIN_PORT)]
    admin_port: u16,
    #[arg(long, env = config::ENV_METRICS_PORT, default_value_t = config::DEFAULT_METRICS_PORT)]
    metrics_port: u16,
    #[arg(long, env = config::ENV_READINESS_PORT, default_value_t = config::DEFAULT_READINESS_PORT)]
    readiness_port: u16,
    #[arg(long, env = config::ENV_OUTBOUND_PORT, default_value_t = config::DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,
    #[arg(long, env = config::ENV_INBOUND_PLAINTEXT_PORT, default_value_t = config::DEFAULT_INBOUND_PLAINTEXT_PORT)]
    inbound_plaintext_port: u16,
    #[arg(long, env = config::ENV_HBONE_PORT, default_value_t = config::DEFAULT_HBONE_PORT)]
    hbone_port: u16,
    /// eBPF object (defaults to the one `cargo xtask build-ebpf` writes).
    #[arg(long, env = config::ENV_EBPF_OBJECT)]
    ebpf_object: Option<PathBuf>,
    /// Drain deadline on SIGTERM, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load a config directory and report problems without starting anything.
    Analyze { dir: PathBuf },
}

fn init_logging() -> ztunnel::admin::LogControl {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_target(true))
        .init();
    Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())?;
        Ok(level.to_string())
    })
}

/// Worker threads of the runtime: `ZTUNNEL_WORKER_THREADS` (Istio's variable), else one per
/// core. Every HBONE connection and its tunnels' copy tasks are plain tasks on these workers.
const ENV_WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";

fn main() -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = std::env::var(ENV_WORKER_THREADS)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        rt.worker_threads(n);
    }
    rt.build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = init_logging();
    if let Some(Cmd::Analyze { dir }) = &cli.cmd {
        let code = common::analyze::run_cli(dir, &mut std::io::stdout());
        std::process::exit(code);
    }
    let node = cli.node.clone().context("--node is required")?;
    let dir = cli.config.clone().context("--config is required")?;
    let mut cfg = Config::new(&node);
    cfg.config_dir = Some(dir.clone());
    cfg.ca_dir = Some(cli.ca_dir.clone());
    cfg.trust_domain = cli.trust_domain.clone();
    cfg.cert_lifetime = Duration::from_secs(cli.cert_lifetime_secs);
    let any: std::net::IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
    cfg.admin_addr = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), cli.admin_port);
    cfg.metrics_addr = SocketAddr::new(any, cli.metrics_port);
    cfg.readiness_addr = SocketAddr::new(any, cli.readiness_port);
    cfg.outbound_port = cli.outbound_port;
    cfg.inbound_plaintext_port = cli.inbound_plaintext_port;
    cfg.hbone_port = cli.hbone_port;
    cfg.drain_timeout = Duration::from_secs(cli.drain_secs);
    cfg.ebpf_object = cli.ebpf_object.clone();

    // Kept until exit: dropping it detaches sock_ops from ztunnel's cgroup.
    let mut proxy_cgroup_link = None;
    let (orig_dst, capture): (Arc<dyn OrigDstSource>, Option<Arc<dyn CaptureHook>>) =
        match cli.capture {
            Capture::None => {
                cfg.capture = CaptureMode::None;
                (Arc::new(OrigDstTable::default()), None)
            }
            Capture::Ebpf => {
                cfg.capture = CaptureMode::Ebpf;
                let obj = cfg
                    .ebpf_object
                    .clone()
                    .unwrap_or_else(ztunnel::redirect::object_path);
                let c = ztunnel::redirect::Capture::load(&obj)
                    .with_context(|| format!("loading eBPF capture from {}", obj.display()))?;
                // With the fast path on, the kernel registers ztunnel's in-pod sockets as soon
                // as they are established, so even a client that writes first is accelerated.
                match c.attach_own_cgroup() {
                    Ok(Some(link)) => proxy_cgroup_link = Some(link),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        "fast path: ztunnel's own sockets are registered from userspace only: {e}"
                    ),
                }
                let c = Arc::new(ztunnel::capture::EbpfCapture(Arc::new(c)));
                (c.clone(), Some(c))
            }
        };
    // The directory source validates, hot reloads and keeps the last good model serving.
    let opts = DirSourceOptions {
        build: BuildOptions {
            trust_domain: cfg.trust_domain.clone(),
            ..BuildOptions::default()
        },
        ..DirSourceOptions::default()
    };
    let source = DirSource::start(&dir, opts)
        .await
        .with_context(|| format!("loading config from {}", dir.display()))?;
    // Subscribe before reading the first model, so a change published while ztunnel starts
    // is seen by the follower below instead of lost.
    let mut models = source.subscribe();
    let initial = models.borrow_and_update().clone();
    let zt = Ztunnel::start(
        cfg,
        StartOptions {
            resources: Vec::new(),
            model: Some(initial),
            orig_dst,
            ca: None,
            log_control: Some(log),
            capture,
        },
    )
    .await?;
    let follow = zt.clone();
    tokio::spawn(async move {
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                changed = models.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let model = models.borrow_and_update().clone();
                    tracing::info!("configuration changed");
                    follow.update_model(&model);
                }
                _ = retry.tick() => {
                    // Pods whose netns appeared after their Pod object get enrolled now.
                    if let Err(e) = follow.retry_enrolment() {
                        tracing::debug!(error = %e, "enrolment retry");
                    }
                }
            }
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    zt.shutdown().await;
    drop(proxy_cgroup_link);
    Ok(())
}
