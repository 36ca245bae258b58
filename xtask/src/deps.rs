//! `cargo xtask deps`: the system tools the tasks drive, installed from Debian's packages when
//! missing, so `test`, `e2e`, `demo` and `bench` run on a fresh Debian 12 machine (as root).
//!
//! [`PACKAGES`] is the one list: each package with how to tell it is present (a program on
//! `PATH`, or a file for libraries and sources) and which tasks need it. A present tool is
//! never reinstalled, so a machine that has everything costs one `PATH` lookup per package and
//! no apt call; the first install of a run refreshes apt's lists once.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use Need::{Bench, Demo, EbpfRoute1, Test};
use Probe::{File, Program};

/// What needs a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Need {
    /// `cargo xtask test` and `e2e`: unit tests and the end-to-end suite.
    Test,
    /// `cargo xtask demo`.
    Demo,
    /// `cargo xtask bench`: the load generators and the baseline server.
    Bench,
    /// The eBPF toolchain's registry-only route (`xtask/src/ebpf.rs`), set up only when the
    /// rustup route fails.
    EbpfRoute1,
}

/// How to tell a package is present without asking dpkg: the tool may come from elsewhere.
enum Probe {
    /// A program on `PATH`.
    Program(&'static str),
    /// A file or directory the package installs.
    File(&'static str),
}

/// One Debian package and who needs it.
struct Package {
    name: &'static str,
    probe: Probe,
    needed_by: &'static [Need],
    /// Run after installing it (shell), e.g. to stop a service the package starts.
    after_install: Option<&'static str>,
}

const fn package(name: &'static str, probe: Probe, needed_by: &'static [Need]) -> Package {
    Package {
        name,
        probe,
        needed_by,
        after_install: None,
    }
}

/// Every package a task uses, with the program or file that shows it is there.
const PACKAGES: &[Package] = &[
    // `ip netns`, `ip link` and `ss`: every namespace the harness builds.
    package("iproute2", Program("ip"), &[Test, Demo, Bench]),
    // `sysctl` in node namespaces, `kill` for leftover processes.
    package("procps", Program("sysctl"), &[Test, Demo, Bench]),
    // The clients the tests and the demo drive.
    package("curl", Program("curl"), &[Test, Demo, Bench]),
    // Downloads while the eBPF toolchain is set up (rustup, crates.io).
    package(
        "ca-certificates",
        File("/etc/ssl/certs/ca-certificates.crt"),
        &[Test, Demo, Bench],
    ),
    // Reads the wire between nodes (TLS records only, never plaintext).
    package("tcpdump", Program("tcpdump"), &[Test]),
    // Checks which programs are attached to which cgroup.
    package("bpftool", Program("bpftool"), &[Test]),
    // Small HTTP servers and raw-socket clients inside pods.
    package("python3", Program("python3"), &[Test]),
    // A CA directory written by another tool (tests), the host's AES speed (bench).
    package("openssl", Program("openssl"), &[Test, Bench]),
    package("iperf3", Program("iperf3"), &[Bench]),
    package("nghttp2-client", Program("h2load"), &[Bench]),
    Package {
        // Debian starts nginx as a service on install; the bench runs its own in a pod.
        after_install: Some("systemctl stop nginx 2>/dev/null || nginx -s stop 2>/dev/null"),
        ..package("nginx-light", Program("nginx"), &[Bench])
    },
    // The headers, not `llvm-config`: that comes with `llvm-22`, which stays when only the
    // development package is removed, and bpf-linker needs both.
    package(
        "llvm-22-dev",
        File("/usr/include/llvm-22/llvm/Config/llvm-config.h"),
        &[EbpfRoute1],
    ),
    package("rustc-web", File(crate::ebpf::DEBIAN_RUSTC), &[EbpfRoute1]),
    package(
        "rust-web-src",
        File("/usr/lib/rustlib/src/rust/library/core"),
        &[EbpfRoute1],
    ),
];

/// Set once this process has refreshed apt's package lists.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

impl Probe {
    fn present(&self) -> bool {
        match self {
            Program(name) => on_path(name),
            File(path) => Path::new(path).exists(),
        }
    }
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

/// Installs the packages any of `needs` uses that are missing. Prints what it did.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let wanted: Vec<&Package> = PACKAGES
        .iter()
        .filter(|p| p.needed_by.iter().any(|n| needs.contains(n)))
        .collect();
    let missing: Vec<&Package> = wanted
        .iter()
        .copied()
        .filter(|p| !p.probe.present())
        .collect();
    if missing.is_empty() {
        println!("deps: all {} packages present", wanted.len());
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !is_root() {
        bail!(
            "missing packages: {list}; run as root (the tests need root anyway) or install \
             them first: apt-get install {list}",
            list = names.join(" ")
        );
    }
    println!("deps: installing {}", names.join(" "));
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt(&["update", "-q"]).context("refreshing the package lists")?;
    }
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&names);
    apt(&install).with_context(|| format!("installing {}", names.join(" ")))?;
    for p in &missing {
        if let Some(cmd) = p.after_install {
            let _ = Command::new("sh").args(["-c", cmd]).status();
        }
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|p| !p.probe.present())
        .map(|p| p.name)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {} but their programs are not on PATH ({})",
            still.join(" "),
            std::env::var("PATH").unwrap_or_default()
        );
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get (this needs Debian or Ubuntu)")?;
    if !status.success() {
        bail!("`apt-get {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The process's effective user is root: `/proc/self` belongs to it.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
