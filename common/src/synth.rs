//! A synthetic large configuration and the measurement of loading it, shared by the
//! `config_load` benchmark and `cargo xtask bench config`: services, pods and routes at a
//! chosen scale written as YAML, then load + validate + build timed and memory reported.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::Loader;
use crate::model::BuildOptions;

/// How big a configuration to generate.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Scale {
    pub namespaces: usize,
    pub services: usize,
    pub pods: usize,
    pub virtual_services: usize,
}

impl Scale {
    /// The scale the issue sets: 5,000 services, 50,000 pods, 5,000 routes.
    pub const LARGE: Scale = Scale {
        namespaces: 50,
        services: 5_000,
        pods: 50_000,
        virtual_services: 5_000,
    };
}

/// Writes one file per namespace: the Namespace, its Services (each with a DestinationRule
/// defining v1/v2), their pods (half v1, half v2, spread over 3 nodes) and weighted
/// VirtualServices.
pub fn write_config(dir: &Path, scale: Scale) -> io::Result<()> {
    let ns_count = scale.namespaces.max(1);
    let svc_per_ns = scale.services.div_ceil(ns_count);
    let pods_per_svc = (scale.pods / scale.services.max(1)).max(1);
    let mut svc = 0usize;
    let mut pod = 0usize;
    let mut vs = 0usize;
    for n in 0..ns_count {
        let ns = format!("ns-{n}");
        let mut y = String::with_capacity(1 << 20);
        writeln!(y, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: ambient").unwrap();
        for _ in 0..svc_per_ns {
            if svc >= scale.services {
                break;
            }
            let name = format!("svc-{svc}");
            let vip = 0x0a60_0000u32 + svc as u32;
            writeln!(y, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {}\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080", ip(vip)).unwrap();
            for p in 0..pods_per_svc {
                if pod >= scale.pods {
                    break;
                }
                let version = if p % 2 == 0 { "v1" } else { "v2" };
                writeln!(y, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{p}\n  namespace: {ns}\n  labels:\n    app: {name}\n    version: {version}\nspec:\n  nodeName: node-{}\n  serviceAccountName: {name}\nstatus:\n  phase: Running\n  podIP: {}", pod % 3, ip(0x0a00_0000 + pod as u32)).unwrap();
                pod += 1;
            }
            if vs < scale.virtual_services {
                writeln!(y, "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  host: {name}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2").unwrap();
                writeln!(y, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  hosts:\n  - {name}\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: {name}\n        subset: v2\n  - route:\n    - destination:\n        host: {name}\n        subset: v1\n      weight: 90\n    - destination:\n        host: {name}\n        subset: v2\n      weight: 10\n    timeout: 3s\n    retries:\n      attempts: 2\n      perTryTimeout: 1s").unwrap();
                vs += 1;
            }
            svc += 1;
        }
        std::fs::write(dir.join(format!("{ns}.yaml")), y)?;
    }
    Ok(())
}

fn ip(v: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(v)
}

/// Resident memory of this process, from /proc/self/status (kB): (VmRSS, VmHWM).
pub fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat. Wall time
/// on a shared 2-core machine says more about the neighbours than about the code.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // The kernel reports in USER_HZ, 100 on every Linux this runs on.
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// What one measurement found.
#[derive(Clone, Debug, Serialize)]
pub struct LoadStats {
    pub resources: usize,
    pub workloads: usize,
    pub services: usize,
    /// Cold load: read, parse, validate and build the model.
    pub full_load: Duration,
    /// CPU time of the cold load, all threads.
    pub full_load_cpu: Duration,
    /// Of which building the model.
    pub build: Duration,
    /// Reload after one file changed (cached parse of the others) and rebuild.
    pub one_file_reload: Duration,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub peak_rss_kb: u64,
}

/// Loads `dir` cold, then changes one file and reloads; reports times and memory.
///
/// # Panics
/// When the configuration has errors (the synthetic one has none).
pub fn measure(dir: &Path) -> LoadStats {
    let options = BuildOptions::default();
    let (rss_before_kb, _) = memory_kb();
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut loader = Loader::new();
    let loaded = loader.load_dir(dir);
    let resources = loaded.resources.len();
    let build_start = Instant::now();
    let model = loaded
        .into_model(&options)
        .expect("synthetic configuration is valid");
    let build = build_start.elapsed();
    let full_load = start.elapsed();
    let full_load_cpu = cpu_time().saturating_sub(cpu_start);
    let (rss_after_kb, _) = memory_kb();

    // One file changes: a pod is added to the first namespace.
    let first = dir.join("ns-0.yaml");
    let mut text = std::fs::read_to_string(&first).expect("ns-0.yaml");
    text.push_str("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n  namespace: ns-0\n  labels:\n    app: svc-0\nstatus:\n  podIP: 10.255.0.1\n");
    std::fs::write(&first, text).expect("write ns-0.yaml");
    let start = Instant::now();
    let reloaded = loader
        .load_dir(dir)
        .into_model(&options)
        .expect("still valid");
    let one_file_reload = start.elapsed();
    assert_eq!(reloaded.workloads().len(), model.workloads().len() + 1);
    let (_, peak_rss_kb) = memory_kb();
    LoadStats {
        resources,
        workloads: model.workloads().len(),
        services: model.services().len(),
        full_load,
        full_load_cpu,
        build,
        one_file_reload,
        rss_before_kb,
        rss_after_kb,
        peak_rss_kb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_synthetic_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let scale = Scale {
            namespaces: 2,
            services: 10,
            pods: 100,
            virtual_services: 10,
        };
        write_config(dir.path(), scale).unwrap();
        let report = crate::analyze::analyze_dir(dir.path());
        assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
        let stats = measure(dir.path());
        assert_eq!((stats.workloads, stats.services), (100, 10));
    }
}
