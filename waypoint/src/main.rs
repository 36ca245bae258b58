//! `waypoint` binary: serves the proxy and side ports from the model of a config directory,
//! through the same source as ztunnel (`common::source::DirSource`: watched, debounced,
//! validated; a rejected reload keeps the last good model), recompiling on every new model.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::source::{ConfigSource, DirSource, DirSourceOptions};
use common::BuildOptions;
use waypoint::admin::Port;
use waypoint::config::{self, ServeScope, WaypointConfig};
use waypoint::hbone::{HboneAcceptor, HboneConnector};
use waypoint::Waypoint;

#[derive(Parser, Debug)]
#[command(about = "L7 waypoint proxy (Istio ambient style)")]
struct Args {
    /// Directory of Kubernetes/Istio YAML (hot reloaded).
    #[arg(long, env = "WAYPOINT_CONFIG")]
    config: PathBuf,
    /// Gateway name this waypoint serves (`istio.io/use-waypoint: <name>`).
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    name: String,
    /// Namespace of the waypoint Gateway.
    #[arg(long, env = "WAYPOINT_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Serve every service in the config, not only those bound to this waypoint.
    #[arg(long)]
    all_services: bool,
    /// Plaintext HTTP listener.
    #[arg(long, default_value = "0.0.0.0:15080")]
    listen: SocketAddr,
    /// Address for the admin (15000), metrics (15020) and readiness (15021) ports.
    #[arg(long, default_value = "127.0.0.1")]
    admin_ip: IpAddr,
    /// Port offset for the side ports (tests run several waypoints on one host).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Disable the per-request access log.
    #[arg(long)]
    no_access_log: bool,
    /// Mesh CA directory (local mode). Enables HBONE: mTLS tunnels in on `--hbone` and out to
    /// every endpoint's node on 15008. Without it, upstreams are reached over plain TCP.
    #[arg(long, env = "WAYPOINT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// HBONE listener (with `--ca-dir`).
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = WaypointConfig {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        scope: if args.all_services {
            ServeScope::All
        } else {
            ServeScope::Waypoint
        },
        access_log: !args.no_access_log,
        ..Default::default()
    };
    let source = DirSource::start(
        &args.config,
        DirSourceOptions {
            build: BuildOptions {
                trust_domain: cfg.trust_domain.clone(),
                ..BuildOptions::default()
            },
            ..DirSourceOptions::default()
        },
    )
    .await
    .with_context(|| format!("loading {}", args.config.display()))?;
    // Subscribed before the first read, so no model published meanwhile is missed.
    let mut models = source.subscribe();
    let model = models.borrow_and_update().clone();
    // The waypoint's identity is its Gateway's service account (named after the Gateway).
    let identity = common::Identity::new(&cfg.trust_domain, &args.namespace, &args.name);
    let hbone = match &args.ca_dir {
        Some(dir) => {
            let ca = transport::identity::CaDir::load_or_generate(dir, &cfg.trust_domain)
                .with_context(|| format!("loading mesh CA from {}", dir.display()))?;
            Some(transport::identity::CertManager::new(
                Arc::new(ca),
                Duration::from_secs(24 * 3600),
            ))
        }
        None => None,
    };
    let wp = match &hbone {
        Some(certs) => Waypoint::with_connector(
            cfg,
            &model,
            Arc::new(HboneConnector::new(certs.clone(), identity.clone())),
        ),
        None => Waypoint::new(cfg, &model),
    };
    if let Some(certs) = &hbone {
        let l = tokio::net::TcpListener::bind(args.hbone)
            .await
            .context("binding HBONE listener")?;
        let acceptor =
            HboneAcceptor::start(l, certs.clone(), identity.clone()).context("starting HBONE")?;
        tracing::info!(hbone = %acceptor.local_addr(), %identity, "HBONE enabled");
        let server = wp.clone();
        tokio::spawn(async move { server.serve(acceptor).await });
    }
    let plain = wp
        .spawn_plaintext(args.listen)
        .await
        .context("binding plaintext listener")?;
    let side = |p: u16| SocketAddr::new(args.admin_ip, p + args.port_offset);
    let admin = wp
        .spawn_side(side(config::ADMIN_PORT), Port::Admin)
        .await
        .context("binding admin port")?;
    let metrics = wp
        .spawn_side(side(config::METRICS_PORT), Port::Metrics)
        .await
        .context("binding metrics port")?;
    let ready = wp
        .spawn_side(
            SocketAddr::new(
                [0, 0, 0, 0].into(),
                config::READINESS_PORT + args.port_offset,
            ),
            Port::Readiness,
        )
        .await
        .context("binding readiness port")?;
    tracing::info!(%plain, %admin, %metrics, %ready, name = %args.name, vhosts = wp.tables().virtual_hosts.len(), "waypoint serving");

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = models.changed() => {
                if changed.is_err() {
                    break;
                }
                let model = models.borrow_and_update().clone();
                wp.update(&model);
                tracing::info!(
                    generation = wp.tables().generation,
                    "configuration reloaded"
                );
            }
        }
    }
    Ok(())
}
