//! Shared helpers for ztunnel's integration tests: a mesh config builder, in-process nodes
//! on loopback addresses, an echo server.

#![allow(dead_code)]

use common::resource::Resource;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use transport::identity::CaDir;
use ztunnel::app::{StartOptions, Ztunnel};
use ztunnel::config::Config;
use ztunnel::proxy::OrigDstTable;

/// A distinct 127.N.0.0/16 block per test so tests in one process never collide.
pub fn block() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let pid = (std::process::id() % 100) as u8;
    20 + pid + NEXT.fetch_add(1, Ordering::SeqCst)
}

pub fn parse(yaml: &str) -> Vec<Resource> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let mut v = serde_yaml::Value::deserialize(d).unwrap();
            v.as_mapping_mut()?.remove("apiVersion");
            Some(Resource::deserialize(v).unwrap())
        })
        .collect()
}

pub fn pod(name: &str, ns: &str, sa: &str, ip: IpAddr, node: &str, app: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec: {{nodeName: {node}, serviceAccountName: {sa}}}
status: {{podIP: "{ip}"}}
---"#
    )
}

pub fn ambient_ns(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}
---"#
    )
}

/// Two pods (client on node1, server on node2) in an ambient namespace.
pub struct Mesh {
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub base_yaml: String,
}

impl Mesh {
    pub fn new() -> Mesh {
        let b = block();
        let client_ip: IpAddr = format!("127.{b}.0.1").parse().unwrap();
        let server_ip: IpAddr = format!("127.{b}.0.2").parse().unwrap();
        let base_yaml = [
            ambient_ns("demo"),
            pod("client", "demo", "client-sa", client_ip, "node1", "client"),
            pod("server", "demo", "server-sa", server_ip, "node2", "server"),
        ]
        .concat();
        Mesh {
            client_ip,
            server_ip,
            base_yaml,
        }
    }

    pub fn resources(&self, extra: &str) -> Vec<Resource> {
        parse(&format!("{}{}", self.base_yaml, extra))
    }
}

/// An in-process ztunnel for one node.
pub struct Node {
    pub zt: Arc<Ztunnel>,
    pub orig: Arc<OrigDstTable>,
}

pub async fn node(
    name: &str,
    resources: Vec<Resource>,
    ca: Arc<CaDir>,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let mut cfg = Config::new(name);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    cfg.admin_addr = SocketAddr::new(lo, 0);
    cfg.metrics_addr = SocketAddr::new(lo, 0);
    cfg.readiness_addr = SocketAddr::new(lo, 0);
    cfg.drain_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    let orig = Arc::new(OrigDstTable::default());
    let zt = Ztunnel::start(
        cfg,
        StartOptions {
            resources,
            model: None,
            orig_dst: orig.clone(),
            ca: Some(ca),
            log_control: None,
            capture: None,
        },
    )
    .await
    .expect("ztunnel starts");
    Node { zt, orig }
}

/// Echo server; returns its address.
pub async fn echo(addr: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(addr).await.expect("bind echo");
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    a
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn roundtrip(s: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(buf)
}

pub fn ca() -> Arc<CaDir> {
    Arc::new(CaDir::generate_in_memory("cluster.local").unwrap())
}

/// Sum of a metric's samples whose line contains all `needles`.
pub fn metric(text: &str, name: &str, needles: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
