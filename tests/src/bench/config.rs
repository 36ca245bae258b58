//! `config`: loading a cluster-sized configuration — 5,000 services, 50,000 pods, 5,000
//! VirtualServices (routes) and their DestinationRules in 50 namespaces — through the
//! `common` crate's data model, and applying a one-file change.
//!
//! The load runs in a child process (this binary, `config-load`) so its peak RSS is the
//! config's alone, through the product's entry point: `common::load::Loader` (parallel parse
//! and validation of every file) then `Loaded::into_model`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use common::load::Loader;
use common::{BuildOptions, Resource};

use super::report::Report;
use super::{probe::self_exe, tools, Opts};

const S: &str = "config";
const NAMESPACES: usize = 50;
const SERVICES_PER_NS: usize = 100;
const PODS_PER_SERVICE: usize = 10;
/// The file the change step rewrites (one namespace's routes).
const CHANGED_FILE: &str = "ns-07-routes.yaml";

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256)
}

/// Writes the 150 files (pods, services, routes per namespace) into `dir`.
pub fn generate(dir: &Path) -> Result<()> {
    let mut pod_i = 0usize;
    for ns in 0..NAMESPACES {
        let nsn = format!("ns-{ns:02}");
        let mut pods = String::new();
        let mut svcs = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {nsn}\n  labels:\n    istio.io/dataplane-mode: ambient\n"
        );
        let mut routes = String::new();
        for s in 0..SERVICES_PER_NS {
            let svc = format!("svc-{s:03}");
            let _ = write!(
                svcs,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {nsn}\n\
                 spec:\n  clusterIP: 10.96.{ns}.{s}\n  selector:\n    app: {svc}\n  ports:\n\
                 \x20 - name: http\n    port: 8080\n    targetPort: 8080\n    appProtocol: http\n"
            );
            for k in 0..PODS_PER_SERVICE {
                let version = if k % 2 == 0 { "v1" } else { "v2" };
                let _ = write!(
                    pods,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {svc}-{k}\n  namespace: {nsn}\n\
                     \x20 labels:\n    app: {svc}\n    version: {version}\n\
                     spec:\n  nodeName: node{}\n  serviceAccountName: {svc}\n\
                     status:\n  phase: Running\n  podIP: {}\n",
                    1 + pod_i % 100,
                    pod_ip(pod_i)
                );
                pod_i += 1;
            }
            let _ = write!(
                routes,
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {svc}\n  namespace: {nsn}\n\
                 spec:\n  hosts:\n  - {svc}\n  http:\n  - route:\n    - destination:\n        host: {svc}\n        subset: v1\n      weight: 90\n\
                 \x20   - destination:\n        host: {svc}\n        subset: v2\n      weight: 10\n\
                 ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {svc}\n  namespace: {nsn}\n\
                 spec:\n  host: {svc}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n"
            );
        }
        tools::write_file(&dir.join(format!("{nsn}-pods.yaml")), &pods)?;
        tools::write_file(&dir.join(format!("{nsn}-services.yaml")), &svcs)?;
        tools::write_file(&dir.join(format!("{nsn}-routes.yaml")), &routes)?;
    }
    Ok(())
}

fn rss_mb() -> f64 {
    tools::status_mb(std::process::id(), "VmRSS").unwrap_or(f64::NAN)
}

/// The child: load `dir` with the product's loader (parse, validate, build the model), then
/// change one file and apply it as the watcher does (only that file is parsed again). Prints
/// JSON.
pub fn load_child(dir: &Path) -> Result<()> {
    let options = BuildOptions::default();
    let rss0 = rss_mb();
    let t0 = Instant::now();
    let mut loader = Loader::new();
    let loaded = loader.load_dir(dir);
    let parse_s = t0.elapsed().as_secs_f64();
    let count = |f: fn(&Resource) -> bool| loaded.resources.iter().filter(|r| f(r)).count();
    let counts = (
        count(|r| matches!(r, Resource::Pod(_))),
        count(|r| matches!(r, Resource::Service(_))),
        count(|r| matches!(r, Resource::VirtualService(_))),
    );
    let t1 = Instant::now();
    let model = loaded
        .into_model(&options)
        .map_err(|e| anyhow::anyhow!("generated config rejected: {e}"))?;
    let build_s = t1.elapsed().as_secs_f64();
    let rss_loaded = rss_mb();
    let workloads = model.workloads().len();
    let services = model.services().len();

    // A one-file change as the watcher sees it: the loader re-reads the directory, parses only
    // the changed file, and a new model is built (the old one keeps serving until the swap).
    let changed = dir.join(CHANGED_FILE);
    let text = std::fs::read_to_string(&changed)?
        .replace("weight: 90", "weight: 80")
        .replace("weight: 10", "weight: 20");
    std::fs::write(&changed, text)?;
    let t2 = Instant::now();
    let model2 = loader
        .load_dir(dir)
        .into_model(&options)
        .map_err(|e| anyhow::anyhow!("changed config rejected: {e}"))?;
    let change_s = t2.elapsed().as_secs_f64();
    let peak = tools::status_mb(std::process::id(), "VmHWM").unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "pods": counts.0, "services": counts.1, "virtual_services": counts.2,
            "workloads": workloads, "model_services": services,
            "parse_s": parse_s, "build_s": build_s, "load_s": parse_s + build_s,
            "change_s": change_s,
            "rss_before_mb": rss0, "rss_loaded_mb": rss_loaded, "peak_mb": peak,
            "model2_workloads": model2.workloads().len(),
        })
    );
    drop(model);
    Ok(())
}

pub fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let exe = self_exe()?;
    for run in 0..opts.runs {
        // A fresh copy per run: the child edits one file.
        let dir = tempfile::Builder::new()
            .prefix("mesh-bench-config-")
            .tempdir()?;
        generate(dir.path())?;
        println!(
            "  run {}: loading 50,000 pods / 5,000 services / 5,000 routes",
            run + 1
        );
        let res = (|| -> Result<serde_json::Value> {
            let out = std::process::Command::new(&exe)
                .args(["config-load", "--dir"])
                .arg(dir.path())
                .output()?;
            if !out.status.success() {
                anyhow::bail!(
                    "config-load failed: {}",
                    tools::tail(&String::from_utf8_lossy(&out.stderr), 400)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let pods = v["pods"].as_u64().unwrap_or(0);
            if pods != (NAMESPACES * SERVICES_PER_NS * PODS_PER_SERVICE) as u64 {
                anyhow::bail!("loaded {pods} pods, expected 50,000");
            }
            Ok(v)
        })();
        let get = |k: &str, scale: f64| -> Result<f64> {
            match &res {
                Ok(v) => v[k]
                    .as_f64()
                    .map(|x| x * scale)
                    .ok_or_else(|| anyhow::anyhow!("no {k}")),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            }
        };
        let p = "common (Loader → Model)";
        report.record(S, "parse 150 files", p, "ms", get("parse_s", 1000.0));
        report.record(S, "build model", p, "ms", get("build_s", 1000.0));
        report.record(S, "load total", p, "ms", get("load_s", 1000.0));
        report.record(S, "apply one-file change", p, "ms", get("change_s", 1000.0));
        report.record(
            S,
            "RSS holding the model",
            p,
            "MB",
            get("rss_loaded_mb", 1.0),
        );
        report.record(S, "peak RSS", p, "MB", get("peak_mb", 1.0));
    }
    report.target(
        S,
        "load total",
        "common (Loader → Model)",
        "ms",
        "≪ 1000 (issue 2)",
    );
    Ok(())
}
