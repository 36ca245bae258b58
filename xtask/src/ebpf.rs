//! `cargo xtask build-ebpf`: set up the eBPF toolchain if needed and build the kernel programs.
//!
//! The kernel programs (`ebpf/programs`, a workspace of their own) need a compiler that can
//! build `core` for `bpfel-unknown-none` and a `bpf-linker` built against the same LLVM major
//! version. Two measured routes exist (measured on this machine kind):
//! - route 2 (tried first, faster): rustup's nightly + `rust-src`, `bpf-linker@0.10.3`, which
//!   loads the toolchain's own LLVM at run time. Depends on rustup's download server, so every
//!   download step has a short timeout.
//! - route 1 (fallback, package registries only): Debian's `rustc-web` (1.96, ships its std
//!   sources) with `RUSTC_BOOTSTRAP=1`, and `bpf-linker@0.13.0` built against `llvm-22-dev`;
//!   its Debian packages are installed by `crate::deps` when missing.
//!
//! The route that worked is remembered in `target/bpf-tools/route.json`; later runs reuse it
//! and only rebuild the programs. The object lands at a stable path, [`OBJECT_RELATIVE`],
//! which ztunnel loads at run time (`MESH_EBPF_OBJECT` overrides it).

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::deps::Need;

/// Where the built object is copied, relative to the workspace root.
pub const OBJECT_RELATIVE: &str = "target/ebpf/mesh-capture.o";
/// Forces a route (`1` or `2`) instead of trying route 2 first.
pub const ROUTE_ENV: &str = "MESH_EBPF_ROUTE";

const ROUTE2_LINKER: &str = "bpf-linker@0.10.3";
const ROUTE1_LINKER: &str = "bpf-linker@0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian's `rustc-web` compiler (route 1).
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// Downloads from rustup's server: if it is slow it is probably unreachable; fall back.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Building bpf-linker takes ~3 minutes on 2 cores; allow for a busy machine.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1200);
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The toolchain a previous run set up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Toolchain {
    route: u8,
    /// Directory holding `bpf-linker`, prepended to `PATH` for the build.
    linker_dir: PathBuf,
    /// Seconds the setup took when it was done, for the record.
    setup_secs: u64,
}

/// Build the kernel programs (setting the toolchain up first if needed) and return the path of
/// the object ztunnel loads.
pub fn build(release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let tools = root.join("target/bpf-tools");
    fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let record = tools.join("route.json");
    let forced = std::env::var(ROUTE_ENV).ok();

    let cached = fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Toolchain>(&b).ok())
        .filter(|t| t.linker_dir.join("bpf-linker").exists())
        .filter(|t| forced.as_deref().is_none_or(|f| f == t.route.to_string()));

    // The cached route first; if it stopped working, the others in order of speed.
    let candidates: Vec<u8> = match forced.as_deref() {
        Some("1") => vec![1],
        Some("2") => vec![2],
        Some(other) => bail!("{ROUTE_ENV}={other}: expected 1 or 2"),
        None => {
            let first = cached.as_ref().map(|t| t.route);
            first
                .into_iter()
                .chain([2, 1].into_iter().filter(|r| Some(*r) != first))
                .collect()
        }
    };

    let mut failures = Vec::new();
    for route in candidates {
        let started = Instant::now();
        let toolchain = match &cached {
            Some(t) if t.route == route => t.clone(),
            _ => {
                eprintln!("ebpf: setting up toolchain route {route}");
                match setup(route, &tools) {
                    Ok(dir) => Toolchain {
                        route,
                        linker_dir: dir,
                        setup_secs: started.elapsed().as_secs(),
                    },
                    Err(e) => {
                        eprintln!("ebpf: route {route} setup failed: {e:#}");
                        failures.push(format!("route {route} setup: {e:#}"));
                        continue;
                    }
                }
            }
        };
        match compile(&root, &toolchain, release) {
            Ok(object) => {
                if cached.as_ref() != Some(&toolchain) {
                    eprintln!(
                        "ebpf: route {route} works (setup {} s); recorded in {}",
                        toolchain.setup_secs,
                        record.display()
                    );
                    fs::write(&record, serde_json::to_vec_pretty(&toolchain)?)?;
                }
                let dest = root.join(OBJECT_RELATIVE);
                fs::create_dir_all(dest.parent().expect("object path has a parent"))?;
                // Copy through a temporary name so a concurrently starting ztunnel never
                // reads half an object.
                let tmp = dest.with_extension("o.tmp");
                fs::copy(&object, &tmp).with_context(|| format!("copying {}", object.display()))?;
                fs::rename(&tmp, &dest)?;
                eprintln!(
                    "ebpf: built {} in {} s",
                    dest.display(),
                    started.elapsed().as_secs()
                );
                return Ok(dest);
            }
            Err(e) => {
                eprintln!("ebpf: build with route {route} failed: {e:#}");
                failures.push(format!("route {route} build: {e:#}"));
                // A cached route that stopped working is set up again next time.
                if cached.as_ref().is_some_and(|t| t.route == route) {
                    let _ = fs::remove_file(&record);
                }
            }
        }
    }
    bail!(
        "could not build the eBPF programs:\n  {}\nsee xtask/src/ebpf.rs",
        failures.join("\n  ")
    )
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Install what `route` needs; return the directory holding `bpf-linker`.
fn setup(route: u8, tools: &Path) -> Result<PathBuf> {
    match route {
        2 => {
            let installed = output(Command::new("rustup").args(["toolchain", "list"]))
                .context("rustup is not available")?;
            if !installed.lines().any(|l| l.starts_with("nightly")) {
                run(
                    Command::new("rustup").args([
                        "toolchain",
                        "install",
                        "nightly",
                        "--profile",
                        "minimal",
                    ]),
                    DOWNLOAD_TIMEOUT,
                )?;
            }
            run(
                Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]),
                DOWNLOAD_TIMEOUT,
            )?;
            let root = tools.join("route2-bpf-linker-0.10.3");
            install_linker(
                Command::new("cargo").args(["+nightly", "install", ROUTE2_LINKER, "--locked"]),
                &root,
            )
        }
        1 => {
            crate::deps::ensure(&[Need::EbpfRoute1])?;
            let root = tools.join("route1-bpf-linker-0.13.0");
            install_linker(
                Command::new("cargo")
                    .args([
                        "install",
                        ROUTE1_LINKER,
                        "--locked",
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    // /usr/bin/llvm-config is LLVM 14; bpf-linker must match rustc's LLVM 22.
                    .env("LLVM_PREFIX", LLVM_PREFIX),
                &root,
            )
        }
        other => bail!("unknown route {other}"),
    }
}

/// `cargo install` into `root` unless a linker is already there.
fn install_linker(cmd: &mut Command, root: &Path) -> Result<PathBuf> {
    let bin = root.join("bin");
    if bin.join("bpf-linker").exists() {
        return Ok(bin);
    }
    // Own target dir: a CARGO_TARGET_DIR from the caller must not mix host builds with this.
    let build_dir = root.join("build");
    run(
        cmd.arg("--root")
            .arg(root)
            .arg("--target-dir")
            .arg(&build_dir),
        INSTALL_TIMEOUT,
    )?;
    let _ = fs::remove_dir_all(&build_dir);
    Ok(bin)
}

/// Build `ebpf/programs` with `toolchain`; return the object cargo produced.
fn compile(root: &Path, toolchain: &Toolchain, release: bool) -> Result<PathBuf> {
    let programs = root.join("ebpf/programs");
    let target_dir = root.join("target/ebpf-build");
    let path = prepend_path(&toolchain.linker_dir)?;
    let mut cmd = match toolchain.route {
        2 => {
            let mut c = Command::new("cargo");
            c.arg("+nightly");
            c
        }
        _ => {
            let mut c = Command::new(DEBIAN_CARGO);
            // Debian's rustc is stable; build-std needs unstable flags.
            c.env("RUSTC_BOOTSTRAP", "1").env("RUSTC", DEBIAN_RUSTC);
            c
        }
    };
    cmd.current_dir(&programs)
        .arg("build")
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd, BUILD_TIMEOUT)?;
    let object = target_dir
        .join("bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("mesh-capture");
    if !object.exists() {
        bail!("cargo succeeded but {} is missing", object.display());
    }
    Ok(object)
}

fn prepend_path(dir: &Path) -> Result<OsString> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&current));
    Ok(std::env::join_paths(dirs)?)
}

/// Environment an outer `cargo xtask` sets that would leak host settings into the inner builds
/// (toolchain pinning, flags, the host target dir).
const LEAKY_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO",
];

/// Run `cmd` with inherited output, killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Result<()> {
    for var in LEAKY_ENV {
        // Keep what the route set explicitly (RUSTC for route 1).
        if !cmd.get_envs().any(|(k, _)| k == *var) {
            cmd.env_remove(var);
        }
    }
    let shown = format!("{cmd:?}");
    eprintln!("ebpf: running {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{shown} failed: {status}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} timed out after {} s", timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
