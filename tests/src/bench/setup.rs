//! The benchmark topology: two nodes, a client and a server pod per path, built on the
//! harness's [`Mesh`] so the mesh paths use the real configuration, capture and proxies.
//!
//! ```text
//!  node1                                  node2
//!  cli-direct (dataplane-mode none) ───▶  srv-direct (none)        direct baseline
//!  cli-direct ───▶ proxy (nginx, none) ─▶ srv-direct               nginx baseline
//!  cli (ambient) ─▶ ztunnel ══HBONE══▶ ztunnel ─▶ srv (ambient)     service `bench`
//!  cli ─▶ ztunnel ══▶ wp (waypoint) ══▶ ztunnel ─▶ srv-wp           service `bench-wp`
//! ```
//! Direct and meshed paths use different pods on the same two nodes, so a pod's enrolment
//! never depends on which path is being measured. Each scenario builds a fresh [`Bench`], so
//! one scenario's memory peaks or TIME_WAIT sockets never leak into the next.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use mesh_tests::config::{self, PodDef};
use mesh_tests::mesh::{bin, CaptureMode, Mesh};
use mesh_tests::netns::Proc;

use super::tools;

/// Port every server application listens on.
pub const PORT: u16 = 8080;
/// Cluster IP of service `bench` (→ `srv`, no waypoint).
pub const BENCH_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// Cluster IP of service `bench-wp` (→ `srv-wp`, through waypoint `bench-waypoint`).
pub const WP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
pub const WAYPOINT: &str = "bench-waypoint";

/// Which parts of the topology a scenario needs.
#[derive(Clone, Copy, Default)]
pub struct Want {
    pub ztunnels: bool,
    pub waypoint: bool,
}

/// Where the harness will look for a product binary, without its panic when missing.
pub fn product_binary(name: &str) -> Result<std::path::PathBuf> {
    let dirs: Vec<std::path::PathBuf> = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => vec![d.into()],
        None => {
            let root = mesh_tests::mesh::workspace_root();
            vec![root.join("target/release"), root.join("target/debug")]
        }
    };
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("`{name}` is not built (looked in {dirs:?})"))
}

pub struct Bench {
    /// Servers and proxies the bench started (iperf3, nginx); declared before `mesh` so they
    /// stop before its namespaces go.
    pub extra: Vec<Proc>,
    pub mesh: Mesh,
    /// Why ztunnels are not running, when they are not.
    pub ztunnel_error: Option<String>,
    pub waypoint_error: Option<String>,
}

impl Bench {
    pub fn new(want: Want) -> Result<Bench> {
        let mut mesh = Mesh::new(2, CaptureMode::Ebpf)?;
        let none = || vec![("istio.io/dataplane-mode".to_string(), "none".to_string())];
        let mut pods: Vec<PodDef> = Vec::new();
        for (name, node, app, labels) in [
            ("cli", "node1", "", vec![]),
            ("cli-direct", "node1", "", none()),
            ("srv", "node2", "bench", vec![]),
            ("srv-direct", "node2", "bench-direct", none()),
            ("srv-wp", "node2", "bench-wp", vec![]),
            // Same-node pair (ztunnel's same-node short path, no TLS over loopback).
            ("srv-near", "node1", "", vec![]),
            ("srv-near-direct", "node1", "", none()),
            ("proxy", "node2", "", none()),
            ("wp", "node2", "", {
                let mut l = none();
                l.push((
                    "gateway.networking.k8s.io/gateway-name".into(),
                    WAYPOINT.into(),
                ));
                l
            }),
        ] {
            let sa = if name == "wp" { WAYPOINT } else { name };
            let mut def = mesh.add_pod(name, node, app, "v1", sa)?;
            def.labels = labels;
            mesh.pods.insert(name.to_string(), def.clone());
            pods.push(def);
        }
        // Many short connections per run (connect storms, h2load) must not run out of ports.
        for p in &mesh.topo.pods {
            p.ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            p.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            p.ns.sysctl("net.core.somaxconn", "8192")?;
        }
        let mut docs = vec![config::namespace("default", true)];
        docs.extend(pods.iter().map(config::pod));
        mesh.write_config("10-pods.yaml", &config::docs(&docs))?;
        mesh.write_config(
            "20-services.yaml",
            &config::docs(&[
                config::service("bench", "default", BENCH_VIP, PORT, None),
                config::service(
                    "bench-direct",
                    "default",
                    Ipv4Addr::new(10, 96, 0, 52),
                    PORT,
                    None,
                ),
                config::service("bench-wp", "default", WP_VIP, PORT, Some(WAYPOINT)),
                config::waypoint_gateway(WAYPOINT, "default"),
            ]),
        )?;
        for (pod, app) in [
            ("srv", "bench"),
            ("srv-direct", "bench-direct"),
            ("srv-wp", "bench-wp"),
        ] {
            mesh.start_app(pod, app, "v1", PORT)?;
        }
        let mut b = Bench {
            extra: Vec::new(),
            mesh,
            ztunnel_error: None,
            waypoint_error: None,
        };
        if want.ztunnels || want.waypoint {
            // The harness panics on a missing binary; the bench reports it and runs baselines.
            if let Err(e) = product_binary("ztunnel") {
                b.ztunnel_error = Some(format!("{e:#}"));
            } else if let Err(e) = b.mesh.start_all_ztunnels() {
                b.ztunnel_error = Some(format!("ztunnel did not start: {e:#}"));
            }
        }
        if want.waypoint {
            b.waypoint_error = match &b.ztunnel_error {
                Some(e) => Some(e.clone()),
                None if product_binary("waypoint").is_err() => {
                    Some(format!("{:#}", product_binary("waypoint").unwrap_err()))
                }
                None => b
                    .mesh
                    .start_waypoint("wp", WAYPOINT)
                    .err()
                    .map(|e| format!("waypoint did not start: {e:#}")),
            };
        }
        // Let ztunnel attach capture to every enrolled pod before anything is measured.
        if b.ztunnel_error.is_none() {
            b.wait_mesh_path()?;
        }
        // `ip netns exec` (the harness's launcher) remounts /sys, hiding the cgroup2 mount
        // ztunnel attaches capture programs to; start ztunnel with `nsenter --net` instead,
        // which enters only the network namespace, and say so.
        let cgroup_hidden =
            b.ztunnel_error.is_some() && b.mesh.logs(200).contains("is not a cgroup v2 directory");
        if cgroup_hidden {
            b.restart_ztunnels_nsenter()?;
        }
        Ok(b)
    }

    fn restart_ztunnels_nsenter(&mut self) -> Result<()> {
        self.mesh.ztunnels.clear();
        let nodes: Vec<(String, String)> = self
            .mesh
            .topo
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.ns.name.clone()))
            .collect();
        for (node, ns) in &nodes {
            let argv: Vec<String> = vec![
                "nsenter".into(),
                format!("--net=/run/netns/{ns}"),
                bin("ztunnel").display().to_string(),
                "--config".into(),
                self.mesh.config_dir.display().to_string(),
                "--node".into(),
                node.clone(),
            ];
            let env = vec![
                ("CA_DIR".to_string(), self.mesh.ca_dir.display().to_string()),
                (
                    "RUST_LOG".to_string(),
                    std::env::var("MESH_RUST_LOG").unwrap_or_else(|_| "info".into()),
                ),
                (
                    "MESH_EBPF_OBJECT".to_string(),
                    mesh_tests::mesh::ebpf_object().display().to_string(),
                ),
            ];
            let proc = Proc::spawn(
                &format!("ztunnel-{node}"),
                None,
                None,
                &argv,
                &env,
                &self.mesh.log_dir,
            )?;
            self.mesh.ztunnels.insert(node.clone(), proc);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ok = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "1"])
                    .arg("http://127.0.0.1:15021/healthz/ready")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "ztunnel on {node} (nsenter) not ready: {}",
                        self.mesh.logs(20)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        println!(
            "  note: ztunnels restarted with nsenter --net (ip netns exec hides the cgroup2 mount)"
        );
        self.ztunnel_error = None;
        self.wait_mesh_path()
    }

    /// Waits (up to 15 s) until an enrolled client reaches the `bench` service; records the
    /// failure as the ztunnel error rather than aborting, so baselines still run.
    fn wait_mesh_path(&mut self) -> Result<()> {
        let url = format!("http://{BENCH_VIP}:{PORT}/");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.mesh.curl("cli", &url, &["--max-time", "2"]) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code} {}", tools::tail(&body, 200)),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs = self.mesh.logs(50);
        let err = logs
            .lines()
            .rfind(|l| l.contains("ERROR"))
            .map(|l| tools::tail(l, 240))
            .unwrap_or_default();
        self.ztunnel_error = Some(format!(
            "enrolled pod cannot reach service bench through ztunnel ({last}) {err}"
        ));
        Ok(())
    }

    pub fn ztunnels_up(&mut self) -> Result<()> {
        if let Some(e) = &self.ztunnel_error {
            bail!("{e}");
        }
        if let Some(dead) = self.mesh.dead_process() {
            bail!("a mesh process died: {}", tools::tail(&dead, 400));
        }
        Ok(())
    }

    pub fn waypoint_up(&mut self) -> Result<()> {
        self.ztunnels_up()?;
        match &self.waypoint_error {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    pub fn ip(&self, pod: &str) -> Ipv4Addr {
        self.mesh.pod_ip(pod)
    }

    /// Starts a long-running program in a pod (netns and cgroup), killed with the bench.
    pub fn spawn(&mut self, name: &str, pod: &str, argv: &[&str]) -> Result<()> {
        let p = self.mesh.topo.pod(pod);
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let proc = Proc::spawn(
            name,
            Some(&p.ns.name),
            Some(&p.cgroup.path),
            &argv,
            &[],
            &self.mesh.log_dir,
        )?;
        self.extra.push(proc);
        Ok(())
    }

    /// Waits until something listens on `port` in `pod`.
    pub fn wait_port(&mut self, pod: &str, port: u16) -> Result<()> {
        let needle = format!(":{port} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self.mesh.exec(pod, &["ss", "-Hltn"])?;
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return Ok(());
            }
            if let Some(p) = self
                .extra
                .iter_mut()
                .find_map(|p| (!p.is_running()).then_some(p))
            {
                bail!("{} exited: {}", p.name, p.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listening on {port} in pod {pod}")
    }

    /// Runs a command in a pod to completion; fails with its stderr when it fails.
    pub fn run(&self, pod: &str, argv: &[&str]) -> Result<String> {
        let out = self.mesh.exec(pod, argv)?;
        if !out.status.success() {
            bail!(
                "`{}` in {pod} failed: {} {}",
                argv.join(" "),
                tools::tail(&String::from_utf8_lossy(&out.stderr), 300),
                tools::tail(&String::from_utf8_lossy(&out.stdout), 300)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `mesh-app load` from a pod with the given extra arguments; its JSON summary.
    pub fn load(&self, pod: &str, url: &str, args: &[&str]) -> Result<serde_json::Value> {
        let app = bin("mesh-app").display().to_string();
        let mut argv = vec![app.as_str(), "load", "--url", url, "--timeout-ms", "5000"];
        argv.extend_from_slice(args);
        let out = self.run(pod, &argv)?;
        Ok(serde_json::from_str(&out)?)
    }

    /// pid of ztunnel on a node.
    pub fn ztunnel_pid(&self, node: &str) -> Result<u32> {
        self.mesh
            .ztunnels
            .get(node)
            .map(|p| tools::program_pid(p.pid()))
            .ok_or_else(|| anyhow!("no ztunnel on {node}"))
    }

    pub fn waypoint_pid(&self) -> Result<u32> {
        self.mesh
            .procs
            .get("wp")
            .map(|p| tools::program_pid(p.pid()))
            .ok_or_else(|| anyhow!("no waypoint"))
    }

    /// Connections the client's ztunnel has opened so far (to prove traffic was captured). The
    /// source side is the one to count: through a waypoint, the destination ztunnel sees only
    /// the waypoint's pooled upstream connections, which open once and stay.
    pub fn tunnelled_connections(&self) -> f64 {
        self.mesh
            .ztunnel_metrics("node1")
            .map(|m| tools::metric_sum(&m, "istio_tcp_connections_opened_total"))
            .unwrap_or(0.0)
    }

    /// Runs `f` and fails unless the client's ztunnel counted new connections meanwhile:
    /// with ztunnel down, an enrolled pod's traffic would flow directly and a "mesh" number
    /// would really be a direct one.
    pub fn through_mesh<T>(&mut self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.ztunnels_up()?;
        let before = self.tunnelled_connections();
        let v = f(self)?;
        let after = self.tunnelled_connections();
        if after <= before {
            bail!(
                "traffic did not go through ztunnel (node1 istio_tcp_connections_opened_total \
                 {before} → {after})"
            );
        }
        self.ztunnels_up()?;
        Ok(v)
    }

    /// One request with curl before a long measurement, so a broken path fails in seconds
    /// instead of timing out request by request.
    pub fn preflight(&self, pod: &str, url: &str) -> Result<()> {
        match self.mesh.curl(pod, url, &["--max-time", "3"])? {
            (200, _) => Ok(()),
            (code, body) => bail!(
                "preflight {url} from {pod}: HTTP {code} {}",
                tools::tail(&body, 200)
            ),
        }
    }

    /// Restarts the ztunnels with the sockmap fast path on or off (pods are enrolled again).
    pub fn set_fastpath(&mut self, on: bool) -> Result<()> {
        self.ztunnels_up()?;
        self.mesh.fastpath = if on { "on" } else { "off" };
        if let Err(e) = self.mesh.restart_ztunnels() {
            self.ztunnel_error = Some(format!("ztunnel did not restart: {e:#}"));
            bail!("ztunnel did not restart: {e:#}");
        }
        Ok(())
    }

    /// Bytes the client node's ztunnel has moved on the sockmap fast path so far.
    pub fn fastpath_bytes(&self) -> f64 {
        self.mesh
            .ztunnel_metrics("node1")
            .map(|m| tools::metric_sum(&m, "ztunnel_fastpath_bytes_redirected_total"))
            .unwrap_or(0.0)
    }

    /// Like [`Bench::through_mesh`], also requiring bytes to have taken the fast path.
    pub fn through_fastpath<T>(&mut self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let before = self.fastpath_bytes();
        let v = self.through_mesh(f)?;
        let after = self.fastpath_bytes();
        if after <= before {
            bail!(
                "no bytes took the fast path (node1 ztunnel_fastpath_bytes_redirected_total \
                 {before} → {after}); is MESH_FASTPATH=on honoured?"
            );
        }
        Ok(v)
    }

    /// Requests the waypoint has served so far.
    pub fn waypoint_requests(&self) -> f64 {
        self.mesh
            .pod_metrics("wp")
            .map(|m| tools::metric_sum(&m, "istio_requests_total"))
            .unwrap_or(0.0)
    }

    /// Like [`Bench::through_mesh`], also requiring the waypoint to have served requests.
    pub fn through_waypoint<T>(&mut self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.waypoint_up()?;
        let before = self.waypoint_requests();
        let v = self.through_mesh(f)?;
        let after = self.waypoint_requests();
        if after <= before {
            bail!("requests did not go through the waypoint (istio_requests_total {before} → {after})");
        }
        Ok(v)
    }
}
