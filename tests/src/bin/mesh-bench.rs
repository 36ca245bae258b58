//! `mesh-bench [--runs N] [--quick] [--out FILE] [scenario]`: the benchmark runner behind
//! `cargo xtask bench` (which installs the load tools, builds everything and sets
//! `MESH_BIN_DIR` and `MESH_EBPF_OBJECT`). Prints a table of median and spread per measurement and writes JSON
//! (default `target/bench/results.json`) and the same table as text (`results.md`).
//!
//! It also has internal subcommands it runs inside pods by re-executing itself:
//! `hold`, `connect-probe`, `relay` and `config-load` (see `bench/probe.rs` and
//! `bench/config.rs`).

#[path = "../bench/mod.rs"]
mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

use bench::report::Report;
use bench::{tools, Opts, SCENARIOS};

#[derive(Parser)]
#[command(
    name = "mesh-bench",
    about = "Benchmarks the mesh against baselines in the same run"
)]
struct Cli {
    /// Scenario to run (all when omitted): tcp-throughput, http-latency, http-throughput,
    /// cost, connect-storm, capture, config.
    scenario: Option<String>,
    /// Repetitions of every measurement.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Short intervals (a fifth of the normal ones), to check the bench itself.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Parser)]
struct HoldArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(short = 'n', default_value_t = 10_000)]
    n: usize,
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

#[derive(Parser)]
struct RelayArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    to: SocketAddr,
}

#[derive(Parser)]
struct ProbeArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(short = 'n', default_value_t = 1000)]
    n: usize,
}

#[derive(Parser)]
struct ConfigArgs {
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Internal subcommands, run inside pods or as a child process.
    match args.get(1).map(String::as_str) {
        Some("hold") => {
            let a = HoldArgs::parse_from(&args[1..]);
            return bench::probe::hold(a.addr, a.n, a.secs);
        }
        Some("connect-probe") => {
            let a = ProbeArgs::parse_from(&args[1..]);
            return bench::probe::connect_probe(a.addr, a.n);
        }
        Some("relay") => {
            let a = RelayArgs::parse_from(&args[1..]);
            return bench::probe::relay(a.listen, a.to);
        }
        Some("config-load") => {
            let a = ConfigArgs::parse_from(&args[1..]);
            return bench::config::load_child(&a.dir);
        }
        _ => {}
    }
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("mesh-bench creates network namespaces and cgroups: run it as root");
    }
    let names: Vec<&str> = match cli.scenario.as_deref() {
        None | Some("all") => SCENARIOS.to_vec(),
        Some(s) if SCENARIOS.contains(&s) => vec![s],
        Some(s) => bail!("unknown scenario `{s}`; known: {}", SCENARIOS.join(", ")),
    };
    let nofile = tools::raise_nofile();
    let opts = Opts {
        runs: cli.runs.max(1),
        shrink: if cli.quick { 5 } else { 1 },
    };
    let machine = machine_info();
    println!("{machine}");
    let mut report = Report::default();
    if nofile < 12_000 {
        report.note(format!(
            "open-file limit is only {nofile}; 10,000 idle connections may fail"
        ));
    }
    let started = Instant::now();
    for name in &names {
        println!("== {name} ({} runs)", opts.runs);
        let t = Instant::now();
        if let Err(e) = bench::run_scenario(name, &opts, &mut report) {
            report.note(format!("{name}: scenario aborted: {e:#}"));
        }
        println!("   {name} took {:.0}s", t.elapsed().as_secs_f64());
    }
    let table = report.table();
    println!("\n{table}");
    for n in &report.notes {
        println!("note: {n}");
    }
    let out = cli
        .out
        .unwrap_or_else(|| mesh_tests::mesh::workspace_root().join("target/bench/results.json"));
    let meta = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "runs": opts.runs,
        "quick": cli.quick,
        "machine": machine,
        "commit": git_commit(),
        "duration_s": started.elapsed().as_secs_f64(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    report.write_json(&out, meta)?;
    let md = out.with_extension("md");
    let mut text = table.clone();
    for n in &report.notes {
        text.push_str(&format!("\nnote: {n}"));
    }
    tools::write_file(&md, &text)?;
    println!(
        "results: {} and {} ({:.0}s)",
        out.display(),
        md.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn machine_info() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let aes = tools::aes_gcm_gbytes()
        .map(|g| format!("{g:.2} GB/s"))
        .unwrap_or_else(|e| format!("not measured ({e:#})"));
    format!(
        "machine: {cpus} × {model}, {:.1} GiB RAM, Linux {}; AES-128-GCM (openssl speed) {aes}",
        mem_kb as f64 / 1048576.0,
        kernel.trim()
    )
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(mesh_tests::mesh::workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
