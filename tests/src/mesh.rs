//! A running local mesh: a [`Topology`] plus the processes of the product on it (one ztunnel
//! per node, waypoints, `mesh-app` workloads) and the configuration directory they watch.
//!
//! Binaries come from `MESH_BIN_DIR` (set by `cargo xtask`), else `target/release`, else
//! `target/debug`; a missing binary is a loud error telling how to build it, never a skip.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{self, PodDef};
use crate::netns::{output_in, Cgroup, Proc};
use crate::topology::Topology;

/// How ztunnel redirects pod traffic in this mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// Real eBPF programs attached to each enrolled pod (the product's mode).
    Ebpf,
    /// No capture: clients address ztunnel's listeners directly (tests of the proxy alone).
    None,
}

/// Where the product's binaries are.
pub fn bin(name: &str) -> PathBuf {
    let root = workspace_root();
    let candidates: Vec<PathBuf> = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![root.join("target/release"), root.join("target/debug")],
    };
    for dir in &candidates {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "binary `{name}` not found in {candidates:?}: run the suite with `cargo xtask test` \
         (or `cargo build --release --bins` first)"
    );
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf()
}

/// The eBPF object ztunnel loads (built by `cargo xtask build-ebpf`).
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("MESH_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/ebpf/mesh-capture.o"))
}

pub struct Mesh {
    pub topo: Topology,
    pub capture: CaptureMode,
    pub pods: BTreeMap<String, PodDef>,
    pub ztunnels: BTreeMap<String, Proc>,
    /// Each node's ztunnel runs in a cgroup of its own, as a DaemonSet pod would (the fast
    /// path attaches `sock_ops` there); kept across restarts of the process.
    pub ztunnel_cgroups: BTreeMap<String, Cgroup>,
    /// `MESH_FASTPATH` given to ztunnels started from now on (`on`/`off`); defaults to the
    /// harness's own environment.
    pub fastpath: &'static str,
    pub procs: BTreeMap<String, Proc>,
    pub config_dir: PathBuf,
    pub ca_dir: PathBuf,
    pub log_dir: PathBuf,
    // Keeps the working directory alive (config, CA, logs) until the mesh is dropped.
    _work: tempfile::TempDir,
}

impl Mesh {
    /// An empty mesh of `nodes` nodes with unique names (safe to run beside other meshes).
    pub fn new(nodes: u8, capture: CaptureMode) -> Result<Mesh> {
        Self::with_topology(Topology::new(nodes)?, capture)
    }

    fn with_topology(topo: Topology, capture: CaptureMode) -> Result<Mesh> {
        let work = tempfile::Builder::new().prefix("mesh-").tempdir()?;
        let config_dir = work.path().join("config");
        let ca_dir = work.path().join("ca");
        let log_dir = std::env::var_os("MESH_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| work.path().join("logs"));
        for d in [&config_dir, &ca_dir, &log_dir] {
            fs::create_dir_all(d)?;
        }
        Ok(Mesh {
            topo,
            capture,
            pods: BTreeMap::new(),
            ztunnels: BTreeMap::new(),
            ztunnel_cgroups: BTreeMap::new(),
            fastpath: fastpath_switch(),
            procs: BTreeMap::new(),
            config_dir,
            ca_dir,
            log_dir,
            _work: work,
        })
    }

    /// Builds the mesh a config directory describes: nodes from the pods' `spec.nodeName`,
    /// pods at their `status.podIP`. The topology id must match the names in the pods'
    /// `mesh.local/netns` annotations (`/run/netns/mt-<id>-<pod>`), as in `deploy/local/`.
    pub fn from_dir(id: &str, dir: &Path, capture: CaptureMode) -> Result<Mesh> {
        let mut pods = Vec::new();
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for f in &files {
            let text = fs::read_to_string(f)?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("parsing {}", f.display()))?;
                if v["kind"].as_str() == Some("Pod") {
                    pods.push(pod_def_from_yaml(&v)?);
                }
            }
        }
        let max_node = pods
            .iter()
            .filter_map(|p| p.node.strip_prefix("node")?.parse::<u8>().ok())
            .max()
            .ok_or_else(|| anyhow!("no pods on nodes named nodeN in {}", dir.display()))?;
        let topo = Topology::with_id(id, max_node)?;
        let mut mesh = Self::with_topology(topo, capture)?;
        // The config names namespaces and cgroups after the demo's id; a mesh with another id
        // (tests running beside a demo) gets the same files with its own names.
        let rename = |t: &str| {
            t.replace("/mt-demo-", &format!("/mt-{id}-"))
                .replace("/mt-demo/", &format!("/mt-{id}/"))
        };
        for f in &files {
            let text = fs::read_to_string(f)?;
            fs::write(
                mesh.config_dir.join(f.file_name().expect("file")),
                rename(&text),
            )?;
        }
        for mut p in pods {
            p.netns = rename(&p.netns);
            p.cgroup = rename(&p.cgroup);
            mesh.topo.add_pod_with_ip(&p.name, &p.node, p.ip)?;
            mesh.pods.insert(p.name.clone(), p);
        }
        Ok(mesh)
    }

    /// Adds a pod to the topology and returns its definition (to be written to the config with
    /// [`config::pod`]). Name, node, app/version and service account as given.
    pub fn add_pod(
        &mut self,
        name: &str,
        node: &str,
        app: &str,
        version: &str,
        sa: &str,
    ) -> Result<PodDef> {
        let p = self.topo.add_pod(name, node)?;
        let def = PodDef {
            name: name.to_string(),
            namespace: "default".to_string(),
            app: app.to_string(),
            version: version.to_string(),
            service_account: sa.to_string(),
            node: node.to_string(),
            ip: p.ip,
            netns: p.ns.path().display().to_string(),
            cgroup: p.cgroup.path.display().to_string(),
            labels: Vec::new(),
        };
        self.pods.insert(name.to_string(), def.clone());
        Ok(def)
    }

    pub fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        self.topo.pod(pod).ip
    }

    /// Writes (atomically: temp file + rename) one config file; the proxies hot-reload it.
    pub fn write_config(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.config_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.config_dir.join(file))?;
        Ok(())
    }

    pub fn remove_config(&self, file: &str) -> Result<()> {
        let p = self.config_dir.join(file);
        if p.exists() {
            fs::remove_file(p)?;
        }
        Ok(())
    }

    fn common_env(&self) -> Vec<(String, String)> {
        vec![
            ("CA_DIR".into(), self.ca_dir.display().to_string()),
            (
                "RUST_LOG".into(),
                std::env::var("MESH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
            (
                "MESH_EBPF_OBJECT".into(),
                ebpf_object().display().to_string(),
            ),
            // The sockmap fast path follows the harness's environment (`cargo xtask e2e` runs
            // the suite with it off, then on).
            ("MESH_FASTPATH".into(), self.fastpath.into()),
        ]
    }

    /// Starts ztunnel on `node` and waits until it reports ready.
    pub fn start_ztunnel(&mut self, node: &str) -> Result<()> {
        let n = self.topo.node(node);
        let mut argv = vec![
            bin("ztunnel").display().to_string(),
            "--config".into(),
            self.config_dir.display().to_string(),
            "--node".into(),
            node.to_string(),
        ];
        if self.capture == CaptureMode::None {
            argv.extend(["--capture".into(), "none".into()]);
        }
        let name = format!("ztunnel-{node}");
        if !self.ztunnel_cgroups.contains_key(node) {
            let parent = self.topo.cgroup_parent();
            let rel = parent
                .strip_prefix(crate::netns::CGROUP2_ROOT)
                .unwrap_or(&parent);
            let cg = Cgroup::create(&format!("{}/{name}", rel.display()))?;
            self.ztunnel_cgroups.insert(node.to_string(), cg);
        }
        let cgroup = self.ztunnel_cgroups[node].path.clone();
        let proc = Proc::spawn(
            &name,
            Some(&n.ns.name),
            Some(&cgroup),
            &argv,
            &self.common_env(),
            &self.log_dir,
        )?;
        self.ztunnels.insert(node.to_string(), proc);
        self.wait_ready_in(
            &n.ns.name.clone(),
            "127.0.0.1:15021",
            &format!("ztunnel on {node}"),
        )
    }

    /// Stops every running ztunnel (SIGTERM, SIGKILL after 3 s) and starts it again, e.g. after
    /// changing [`Mesh::fastpath`]; pods are enrolled again by the new process.
    pub fn restart_ztunnels(&mut self) -> Result<()> {
        let nodes: Vec<String> = self.ztunnels.keys().cloned().collect();
        for n in nodes {
            if let Some(mut p) = self.ztunnels.remove(&n) {
                p.stop(Duration::from_secs(3));
            }
            self.start_ztunnel(&n)?;
        }
        Ok(())
    }

    pub fn start_all_ztunnels(&mut self) -> Result<()> {
        let nodes: Vec<String> = self.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in nodes {
            self.start_ztunnel(&n)?;
        }
        Ok(())
    }

    /// Starts the waypoint for gateway `gateway` in pod `pod` (its own network namespace; the
    /// waypoint terminates and originates HBONE itself, so its pod is not captured). The
    /// Gateway lives in the pod's namespace.
    pub fn start_waypoint(&mut self, pod: &str, gateway: &str) -> Result<()> {
        let p = self.topo.pod(pod);
        let namespace = self
            .pods
            .get(pod)
            .map_or("default", |d| d.namespace.as_str())
            .to_string();
        let argv = vec![
            bin("waypoint").display().to_string(),
            "--config".into(),
            self.config_dir.display().to_string(),
            "--name".into(),
            gateway.to_string(),
            "--namespace".into(),
            namespace,
            "--ca-dir".into(),
            self.ca_dir.display().to_string(),
        ];
        let mut env = self.common_env();
        env.push(("POD_NAME".into(), pod.to_string()));
        env.push(("POD_IP".into(), p.ip.to_string()));
        let ns = p.ns.name.clone();
        let proc = Proc::spawn(
            pod,
            Some(&ns),
            Some(&p.cgroup.path),
            &argv,
            &env,
            &self.log_dir,
        )?;
        self.procs.insert(pod.to_string(), proc);
        self.wait_ready_in(&ns, "127.0.0.1:15021", &format!("waypoint {gateway}"))
    }

    /// Starts `mesh-app serve` in a pod (inside its cgroup, as an application would run).
    pub fn start_app(&mut self, pod: &str, service: &str, version: &str, port: u16) -> Result<()> {
        let listen = format!("0.0.0.0:{port}");
        let args = [
            "serve",
            "--listen",
            &listen,
            "--service",
            service,
            "--version",
            version,
            "--pod",
            pod,
        ];
        self.start_in_pod(pod, pod, &args, port)
    }

    /// Starts `mesh-app <args>` in a pod (its netns and cgroup) as process `name`, and waits
    /// until something listens on `port` there.
    pub fn start_in_pod(&mut self, pod: &str, name: &str, args: &[&str], port: u16) -> Result<()> {
        let p = self.topo.pod(pod);
        let mut argv = vec![bin("mesh-app").display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let ns = p.ns.name.clone();
        let proc = Proc::spawn(
            name,
            Some(&ns),
            Some(&p.cgroup.path),
            &argv,
            &[],
            &self.log_dir,
        )?;
        self.procs.insert(name.to_string(), proc);
        self.wait_listening(&ns, port)
    }

    /// Runs a command in a pod (its netns and cgroup, so capture applies) and returns output.
    pub fn exec(&self, pod: &str, argv: &[&str]) -> Result<std::process::Output> {
        let p = self.topo.pod(pod);
        output_in(&p.ns.name, Some(&p.cgroup.path), argv)
    }

    /// `curl -s` from a pod; returns (http status or 0, body).
    pub fn curl(&self, pod: &str, url: &str, extra: &[&str]) -> Result<(u16, String)> {
        let mut argv = vec!["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}"];
        argv.extend_from_slice(extra);
        argv.push(url);
        let out = self.exec(pod, &argv)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    /// Calls an application's own admin endpoint (e.g. `/admin/fail?rate=1`) over the pod's
    /// loopback, which capture leaves alone: the mesh would rightly refuse a client going around
    /// a waypoint to reach a single pod.
    pub fn app_admin(&self, pod: &str, port: u16, path_and_query: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{port}{path_and_query}");
        self.topo
            .pod(pod)
            .ns
            .exec(&["curl", "-sf", "--max-time", "5", &url])
    }

    /// How many times the waypoint in `pod` has applied a configuration (it logs each reload).
    pub fn waypoint_generation(&self, pod: &str) -> usize {
        self.procs
            .get(pod)
            .and_then(|p| fs::read_to_string(&p.log).ok())
            .map(|t| t.matches("configuration reloaded").count())
            .unwrap_or(0)
    }

    /// Runs `mesh-app load` from a pod and returns its JSON summary.
    pub fn load(
        &self,
        pod: &str,
        url: &str,
        requests: u32,
        concurrency: u32,
        headers: &[&str],
    ) -> Result<serde_json::Value> {
        let app = bin("mesh-app").display().to_string();
        let n = requests.to_string();
        let c = concurrency.to_string();
        let mut argv = vec![app.as_str(), "load", "--url", url, "-n", &n, "-c", &c];
        for h in headers {
            argv.extend(["-H", h]);
        }
        let out = self.exec(pod, &argv)?;
        if !out.status.success() {
            bail!(
                "load from {pod} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Prometheus text from a node's ztunnel.
    pub fn ztunnel_metrics(&self, node: &str) -> Result<String> {
        let n = self.topo.node(node);
        let out = n.ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])?;
        Ok(out)
    }

    /// Prometheus text from the process (waypoint) running in `pod`.
    pub fn pod_metrics(&self, pod: &str) -> Result<String> {
        let p = self.topo.pod(pod);
        p.ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])
    }

    fn wait_ready_in(&mut self, ns: &str, addr: &str, what: &str) -> Result<()> {
        let url = format!("http://{addr}/healthz/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = std::process::Command::new("nsenter")
                .args([
                    &crate::netns::nsenter_net(ns),
                    "--",
                    "curl",
                    "-sf",
                    "--max-time",
                    "1",
                    &url,
                ])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(dead) = self.dead_process() {
                bail!("{what} exited before becoming ready:\n{dead}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{what} not ready after 30s; logs in {}",
            self.log_dir.display()
        )
    }

    fn wait_listening(&mut self, ns: &str, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let needle = format!(":{port} ");
        while Instant::now() < deadline {
            let out = std::process::Command::new("nsenter")
                .args([&crate::netns::nsenter_net(ns), "--", "ss", "-Hltn"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return Ok(());
            }
            if let Some(dead) = self.dead_process() {
                bail!("a process exited:\n{dead}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listening on port {port} in {ns}")
    }

    /// The log tail of the first product process that has exited, if any.
    pub fn dead_process(&mut self) -> Option<String> {
        for p in self.ztunnels.values_mut().chain(self.procs.values_mut()) {
            if !p.is_running() {
                return Some(format!("--- {} ---\n{}", p.name, p.log_tail(40)));
            }
        }
        None
    }

    /// Log tails of every product process, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for p in self.ztunnels.values().chain(self.procs.values()) {
            s.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_tail(lines)));
        }
        s
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("mesh logs at failure:\n{}", self.logs(60));
        }
        // Processes before namespaces: a ztunnel holds sockets inside pod namespaces.
        self.procs.clear();
        self.ztunnels.clear();
    }
}

fn pod_def_from_yaml(v: &serde_yaml::Value) -> Result<PodDef> {
    let s = |x: &serde_yaml::Value| x.as_str().unwrap_or("").to_string();
    let meta = &v["metadata"];
    let ip: Ipv4Addr = s(&v["status"]["podIP"])
        .parse()
        .with_context(|| format!("pod {} has no IPv4 status.podIP", s(&meta["name"])))?;
    let mut labels = Vec::new();
    if let Some(m) = meta["labels"].as_mapping() {
        for (k, val) in m {
            let (k, val) = (s(k), s(val));
            if k != "app" && k != "version" {
                labels.push((k, val));
            }
        }
    }
    Ok(PodDef {
        name: s(&meta["name"]),
        namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
        app: s(&meta["labels"]["app"]),
        version: s(&meta["labels"]["version"]),
        service_account: s(&v["spec"]["serviceAccountName"]),
        node: s(&v["spec"]["nodeName"]),
        ip,
        netns: s(&meta["annotations"]["mesh.local/netns"]),
        cgroup: s(&meta["annotations"]["mesh.local/cgroup"]),
        labels,
    })
}

/// Convenience for tests: write a standard set of namespace/pod/service docs.
pub fn pods_yaml(pods: &[&PodDef]) -> String {
    config::docs(&pods.iter().map(|p| config::pod(p)).collect::<Vec<_>>())
}

/// `MESH_FASTPATH` as the harness was started with: `on` or `off` (the default).
pub fn fastpath_switch() -> &'static str {
    match std::env::var("MESH_FASTPATH").as_deref() {
        Ok(v)
            if matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "on" | "1" | "true" | "yes"
            ) =>
        {
            "on"
        }
        _ => "off",
    }
}

/// Sum of the samples of metric `name` (Prometheus text) whose line contains every
/// `must_contain` fragment (label matchers written as `key="value"`).
pub fn metric_sum(text: &str, name: &str, must_contain: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
