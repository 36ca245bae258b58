//! `cargo xtask <task>`: the project's build, demo, test and benchmark entry points.
//!
//! - `build-ebpf`: set up the eBPF toolchain (once, cached) and build the kernel programs.
//! - `build`: the eBPF object plus release binaries of ztunnel, waypoint and mesh-app.
//! - `test`: everything CI runs: unit tests of every crate and the end-to-end suite.
//! - `e2e`: only the end-to-end suite (real namespaces, real eBPF, real clients).
//! - `demo [--keep]`: bring up the local mesh from `deploy/local/` and walk through it.
//! - `bench [scenario]`: measure the mesh against baselines in the same run.
//! - `deps [--for task]`: install the system packages the tasks use (each task above installs
//!   its own before it starts).

mod deps;
mod ebpf;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use deps::Need;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Set up the eBPF toolchain if needed and build the kernel programs.
    BuildEbpf {
        #[arg(long)]
        debug: bool,
    },
    /// Build the eBPF object and the release binaries.
    Build,
    /// Run every test: unit tests and the end-to-end suite.
    Test {
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run only the end-to-end suite.
    E2e {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bring up the local demo mesh and walk through its scenarios.
    Demo {
        /// Leave the mesh running afterwards (Ctrl-C tears it down).
        #[arg(long)]
        keep: bool,
        /// Config directory (default: deploy/local).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run benchmarks (all scenarios when none is named).
    Bench {
        scenario: Option<String>,
        /// Repetitions per measurement.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Install the missing system packages that `test`, `demo` and `bench` use (as root).
    Deps {
        /// Only those this task uses (repeatable; default: test, demo and bench).
        #[arg(long = "for", value_enum)]
        needs: Vec<Need>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::BuildEbpf { debug } => {
            let obj = ebpf::build(!debug)?;
            println!("eBPF object: {}", obj.display());
        }
        Task::Build => {
            build_all(&root)?;
        }
        Task::Test { args } => {
            deps::ensure(&[Need::Test])?;
            let bins = build_all(&root)?;
            cargo(
                &["test", "--workspace", "--exclude", "mesh-tests"],
                &[],
                &args,
                &bins,
            )?;
            e2e(&bins, &args)?;
        }
        Task::E2e { args } => {
            deps::ensure(&[Need::Test])?;
            let bins = build_all(&root)?;
            e2e(&bins, &args)?;
        }
        Task::Demo { keep, config } => {
            deps::ensure(&[Need::Demo])?;
            build_all(&root)?;
            let config = config.unwrap_or_else(|| root.join("deploy/local"));
            run_harness_bin(&root, "mesh-demo", &demo_args(&config, keep))?;
        }
        Task::Bench { scenario, runs } => {
            deps::ensure(&[Need::Bench])?;
            build_all(&root)?;
            let mut args = vec!["--runs".to_string(), runs.to_string()];
            if let Some(s) = scenario {
                args.push(s);
            }
            run_harness_bin(&root, "mesh-bench", &args)?;
        }
        Task::Deps { needs } => {
            if needs.is_empty() {
                deps::ensure(&[Need::Test, Need::Demo, Need::Bench])?;
            } else {
                deps::ensure(&needs)?;
            }
        }
    }
    Ok(())
}

fn demo_args(config: &Path, keep: bool) -> Vec<String> {
    let mut v = vec!["--config".to_string(), config.display().to_string()];
    if keep {
        v.push("--keep".into());
    }
    v
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the eBPF object and the release binaries; returns the binary directory.
fn build_all(root: &Path) -> Result<PathBuf> {
    let obj = ebpf::build(true).context("building the eBPF programs")?;
    println!("eBPF object: {}", obj.display());
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "ztunnel",
            "-p",
            "waypoint",
            "-p",
            "mesh-tests",
            "--bins",
        ])
        .status()?;
    if !status.success() {
        bail!("release build failed");
    }
    Ok(root.join("target/release"))
}

/// Environment every test and harness binary gets: where the binaries and the eBPF object are.
fn harness_env(bins: &Path) -> Vec<(String, String)> {
    let root = workspace_root();
    vec![
        ("MESH_BIN_DIR".into(), bins.display().to_string()),
        (
            "MESH_EBPF_OBJECT".into(),
            root.join(ebpf::OBJECT_RELATIVE).display().to_string(),
        ),
    ]
}

fn cargo(args: &[&str], env: &[(String, String)], extra: &[String], bins: &Path) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args)
        .envs(harness_env(bins))
        .envs(env.iter().cloned());
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

fn e2e(bins: &Path, args: &[String]) -> Result<()> {
    // One mesh at a time: each brings up three nodes and seven pods, and several steps check
    // latencies (a 2 s fault delay) that a machine running four meshes at once would blur.
    let mut args = args.to_vec();
    args.push("--test-threads=1".into());
    // The sockmap fast path is an accelerator that must be transparent: the whole suite runs
    // with it off, then on, unless MESH_FASTPATH picks one.
    let modes: Vec<String> = match std::env::var("MESH_FASTPATH") {
        Ok(m) if !m.is_empty() => vec![m],
        _ => vec!["off".into(), "on".into()],
    };
    for mode in modes {
        println!("end-to-end suite with MESH_FASTPATH={mode}");
        let env = [("MESH_FASTPATH".to_string(), mode.clone())];
        cargo(&["test", "-p", "mesh-tests"], &env, &args, bins)
            .with_context(|| format!("end-to-end suite with MESH_FASTPATH={mode}"))?;
    }
    Ok(())
}

fn run_harness_bin(root: &Path, name: &str, args: &[String]) -> Result<()> {
    let bins = root.join("target/release");
    let status = Command::new(bins.join(name))
        .args(args)
        .envs(harness_env(&bins))
        .status()
        .with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}
