//! Real Linux plumbing for test hosts: network namespaces, veth pairs, bridges, cgroup v2
//! directories and processes started inside them. Everything created here is owned by a guard
//! that removes it on drop, so a failing test leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where cgroup v2 is mounted on these machines (hybrid mode).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Prefix of every network namespace and cgroup this crate creates; `sweep` removes leftovers.
pub const PREFIX: &str = "mt";

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` with the given arguments inside network namespace `ns` (root namespace if empty).
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    if ns.is_empty() {
        run("ip", args)
    } else {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

/// A short identifier unique to this process and call, used in names (interface names are
/// limited to 15 bytes, so keep it short).
pub fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", std::process::id() & 0xfff)
}

/// `nsenter` argument entering only the network namespace `ns`. Unlike `ip netns exec`, it
/// keeps the caller's mount namespace: `ip netns exec` remounts /sys, which hides the cgroup v2
/// mount (`/sys/fs/cgroup/unified`) that ztunnel needs to attach eBPF programs to pod cgroups.
pub fn nsenter_net(ns: &str) -> String {
    format!("--net=/run/netns/{ns}")
}

/// A network namespace, deleted (with every process still in it) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        run("ip", &["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace (for sysctls and checks).
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let net = nsenter_net(&self.name);
        let mut full = vec![net.as_str(), "--"];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_netns_pids(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn kill_netns_pids(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall on a pid we just listed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A cgroup v2 directory; on drop its processes are killed and the directory removed.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn create(relative: &str) -> Result<Cgroup> {
        let path = Path::new(CGROUP2_ROOT).join(relative);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            for pid in &procs {
                // SAFETY: plain syscall.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Remove now-empty parents we created (best effort; siblings keep it alive).
        if let Some(parent) = self.path.parent() {
            if parent != Path::new(CGROUP2_ROOT) {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop. Its output goes to `log`.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `argv` inside netns `ns` (root netns when `None`) and, when given, inside cgroup
    /// `cgroup` (joined before exec, so the program never runs outside it).
    pub fn spawn(
        name: &str,
        ns: Option<&str>,
        cgroup: Option<&Path>,
        argv: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let file = fs::File::create(&log)?;
        let mut cmd = command_in(ns, cgroup, argv);
        cmd.envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {argv:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Removes namespaces and cgroups left by a crashed earlier run (names start with [`PREFIX`]).
/// Only call it when no other test run is active (the xtask does, before a suite).
pub fn sweep() -> Result<usize> {
    let mut removed = 0;
    let list = run("ip", &["netns", "list"])?;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("{PREFIX}-")) {
            kill_netns_pids(name);
            let _ = run("ip", &["netns", "del", name]);
            removed += 1;
        }
    }
    if let Ok(entries) = fs::read_dir(CGROUP2_ROOT) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{PREFIX}-")) {
                if let Ok(children) = fs::read_dir(e.path()) {
                    for c in children.flatten() {
                        if c.path().is_dir() {
                            let cg = Cgroup { path: c.path() };
                            drop(cg);
                        }
                    }
                }
                let _ = fs::remove_dir(e.path());
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Runs `argv` to completion inside netns `ns` and cgroup `cgroup` (so eBPF capture attached to
/// that cgroup applies to it), returning its output whatever the exit status.
pub fn output_in(ns: &str, cgroup: Option<&Path>, argv: &[&str]) -> Result<std::process::Output> {
    command_in(Some(ns), cgroup, argv)
        .output()
        .with_context(|| format!("running {argv:?} in {ns}"))
}

/// The command running `argv` inside netns `ns` (the caller's when `None`) and, when given,
/// cgroup `cgroup`, joined before exec so the program never runs outside it.
fn command_in<S: AsRef<std::ffi::OsStr>>(
    ns: Option<&str>,
    cgroup: Option<&Path>,
    argv: &[S],
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(nsenter_net(ns)).arg("--").args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        // SAFETY: only async-signal-safe work between fork and exec: open/write/close.
        unsafe {
            cmd.pre_exec(move || {
                fs::write(&procs, b"0")?;
                Ok(())
            });
        }
    }
    cmd
}
