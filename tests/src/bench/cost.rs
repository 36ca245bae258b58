//! `cost` and `connect-storm`: what the proxies spend. CPU is user+system time from
//! `/proc/<pid>/stat` over a fixed-rate interval, normalised to 1,000 req/s (Istio's unit);
//! memory is the peak RSS (VmHWM, reset before the interval) and the resident growth with
//! 10,000 idle tunnelled connections.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::probe::self_exe;
use super::report::Report;
use super::setup::{Bench, Want, BENCH_VIP, PORT, WP_VIP};
use super::{tools, Opts};

const IDLE_CONNS: usize = 10_000;

/// CPU seconds of each pid, sampled together.
fn cpu_all(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter().map(|p| tools::cpu_seconds(*p)).collect()
}

pub fn cost(opts: &Opts, report: &mut Report) -> Result<()> {
    const S: &str = "cost";
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: true,
    })?;
    let secs = opts.secs(10) as u32;
    let n = (1000 * secs).to_string();
    for run in 0..opts.runs {
        for (label, vip, wp) in [
            ("ztunnels", BENCH_VIP, false),
            ("ztunnels+waypoint", WP_VIP, true),
        ] {
            println!("  run {}: 1,000 req/s for {secs}s through {label}", run + 1);
            let url = format!("http://{vip}:{PORT}/bytes?n=1024");
            let mut procs: Vec<(&str, Result<u32>)> = vec![
                ("ztunnel node1 (client)", b.ztunnel_pid("node1")),
                ("ztunnel node2 (server)", b.ztunnel_pid("node2")),
            ];
            if wp {
                procs.push(("waypoint", b.waypoint_pid()));
            }
            let res = (|| -> Result<Vec<(f64, f64)>> {
                let pids: Vec<u32> = procs
                    .iter()
                    .map(|(_, p)| p.as_ref().copied().map_err(|e| anyhow::anyhow!("{e:#}")))
                    .collect::<Result<_>>()?;
                for p in &pids {
                    tools::reset_hwm(*p);
                }
                let c0 = cpu_all(&pids)?;
                let t0 = Instant::now();
                let load = |b: &Bench| {
                    let v = b.load("cli", &url, &["-n", &n, "-c", "8", "--rate", "1000"])?;
                    tools::load_ok(&v)?;
                    Ok(v)
                };
                b.preflight("cli", &url)?;
                let v = if wp {
                    b.through_waypoint(load)?
                } else {
                    b.through_mesh(load)?
                };
                let wall = t0.elapsed().as_secs_f64();
                let c1 = cpu_all(&pids)?;
                let achieved =
                    v["total"].as_f64().unwrap_or(0.0) / v["elapsed_s"].as_f64().unwrap_or(wall);
                if achieved < 900.0 {
                    bail!("only {achieved:.0} req/s achieved of 1,000");
                }
                pids.iter()
                    .zip(c0.iter().zip(c1.iter()))
                    .map(|(p, (a, z))| {
                        let vcpu = (z - a) / wall * (1000.0 / achieved);
                        Ok((vcpu, tools::status_mb(*p, "VmHWM")?))
                    })
                    .collect()
            })();
            for (i, (name, _)) in procs.iter().enumerate() {
                let path = format!("{name} [{label}]");
                match &res {
                    Ok(v) => {
                        report.ok(S, "vCPU per 1k req/s", &path, "vCPU", v[i].0);
                        report.ok(S, "peak RSS at 1k req/s", &path, "MB", v[i].1);
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        report.fail(S, "vCPU per 1k req/s", &path, "vCPU", &e);
                        report.fail(S, "peak RSS at 1k req/s", &path, "MB", &e);
                    }
                }
            }
        }
    }
    // Memory is measured on fresh ztunnels: one that held 10,000 connections keeps its
    // allocator's high-water pages, which would inflate every later peak and hide the growth.
    drop(b);
    for run in 0..opts.runs {
        println!("  run {}: {IDLE_CONNS} idle tunnelled connections", run + 1);
        let mut fresh = Bench::new(Want {
            ztunnels: true,
            waypoint: false,
        })?;
        idle_connections(&mut fresh, report)?;
    }
    for node in ["node1 (client)", "node2 (server)"] {
        let p = format!("ztunnel {node} [ztunnels]");
        report.target(S, "vCPU per 1k req/s", &p, "vCPU", "≤ 0.06 (Istio)");
        report.target(S, "peak RSS at 1k req/s", &p, "MB", "≤ 12 (Istio)");
    }
    let p = "waypoint [ztunnels+waypoint]";
    report.target(S, "vCPU per 1k req/s", p, "vCPU", "≤ 0.25 (Istio)");
    report.target(S, "peak RSS at 1k req/s", p, "MB", "≤ 60 (Istio)");
    Ok(())
}

/// Opens 10,000 idle connections from an enrolled pod through both ztunnels and reports the
/// resident memory each ztunnel gains.
fn idle_connections(b: &mut Bench, report: &mut Report) -> Result<()> {
    const S: &str = "cost";
    let res = (|| -> Result<Vec<(f64, f64)>> {
        b.ztunnels_up()?;
        let pids = [b.ztunnel_pid("node1")?, b.ztunnel_pid("node2")?];
        let before: Vec<f64> = pids
            .iter()
            .map(|p| tools::status_mb(*p, "VmRSS"))
            .collect::<Result<_>>()?;
        let exe = self_exe()?;
        let (addr, n) = (format!("{BENCH_VIP}:{PORT}"), IDLE_CONNS.to_string());
        let argv = [
            exe.as_str(),
            "hold",
            "--addr",
            &addr,
            "-n",
            &n,
            "--secs",
            "120",
        ];
        let opened_before = b.tunnelled_connections();
        b.spawn("hold", "cli", &argv)?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let ready = loop {
            let holder = b.extra.last_mut().expect("just spawned");
            let log = holder.log_tail(5);
            if let Some(line) = log.lines().find(|l| l.starts_with("ready ")) {
                break line.to_string();
            }
            if !holder.is_running() || Instant::now() > deadline {
                bail!("connection holder failed: {}", tools::tail(&log, 300));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let open: usize = ready
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Let allocators settle after the burst before reading resident memory.
        std::thread::sleep(Duration::from_secs(1));
        let during: Vec<f64> = pids
            .iter()
            .map(|p| tools::status_mb(*p, "VmRSS"))
            .collect::<Result<_>>()?;
        let tunnelled = b.tunnelled_connections() - opened_before;
        let mut holder = b.extra.pop().expect("holder");
        holder.stop(Duration::from_millis(500));
        if open < IDLE_CONNS * 99 / 100 {
            bail!("only {open} of {IDLE_CONNS} idle connections opened ({ready})");
        }
        if tunnelled < open as f64 * 0.99 {
            bail!("only {tunnelled} of {open} connections counted by node2's ztunnel");
        }
        Ok(before.into_iter().zip(during).collect())
    })();
    for (i, node) in ["node1 (client)", "node2 (server)"].iter().enumerate() {
        let path = format!("ztunnel {node}");
        match &res {
            Ok(v) => {
                report.ok(S, "RSS with 10k idle conns", &path, "MB", v[i].1);
                report.ok(
                    S,
                    "RSS per idle conn",
                    &path,
                    "KB",
                    (v[i].1 - v[i].0) * 1024.0 / IDLE_CONNS as f64,
                );
            }
            Err(e) => {
                let e = format!("{e:#}");
                report.fail(S, "RSS with 10k idle conns", &path, "MB", &e);
                report.fail(S, "RSS per idle conn", &path, "KB", &e);
            }
        }
    }
    Ok(())
}

pub fn connect_storm(opts: &Opts, report: &mut Report) -> Result<()> {
    const S: &str = "connect-storm";
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: false,
    })?;
    let n = (2000 * opts.secs(5)).to_string();
    for run in 0..opts.runs {
        println!(
            "  run {}: new connection per request, 32 concurrent",
            run + 1
        );
        let direct_url = format!("http://{}:{PORT}/bytes?n=1", b.ip("srv-direct"));
        let args = ["-n", n.as_str(), "-c", "32", "--new-conn"];
        let direct = b.load("cli-direct", &direct_url, &args).and_then(|v| {
            tools::load_ok(&v)?;
            Ok(v["total"].as_f64().unwrap_or(0.0) / v["elapsed_s"].as_f64().unwrap_or(1.0))
        });
        report.record(S, "new conns/s", "direct", "conn/s", direct);
        let mesh_url = format!("http://{BENCH_VIP}:{PORT}/bytes?n=1");
        let res = (|| -> Result<(f64, f64)> {
            b.ztunnels_up()?;
            b.preflight("cli", &mesh_url)?;
            let pids = [b.ztunnel_pid("node1")?, b.ztunnel_pid("node2")?];
            let c0 = cpu_all(&pids)?;
            let t0 = Instant::now();
            let v = b.through_mesh(|b| {
                let v = b.load("cli", &mesh_url, &args)?;
                tools::load_ok(&v)?;
                Ok(v)
            })?;
            let wall = t0.elapsed().as_secs_f64();
            let c1 = cpu_all(&pids)?;
            let rate = v["total"].as_f64().unwrap_or(0.0) / v["elapsed_s"].as_f64().unwrap_or(wall);
            let vcpu: f64 = c0.iter().zip(&c1).map(|(a, z)| z - a).sum::<f64>() / wall;
            Ok((rate, vcpu))
        })();
        match res {
            Ok((rate, vcpu)) => {
                report.ok(S, "new conns/s", "ztunnels", "conn/s", rate);
                report.ok(S, "ztunnel vCPU (both nodes)", "ztunnels", "vCPU", vcpu);
                report.ok(
                    S,
                    "ztunnel vCPU per 1k conn/s",
                    "ztunnels",
                    "vCPU",
                    vcpu * 1000.0 / rate,
                );
            }
            Err(e) => {
                let e = format!("{e:#}");
                for (m, u) in [
                    ("new conns/s", "conn/s"),
                    ("ztunnel vCPU (both nodes)", "vCPU"),
                    ("ztunnel vCPU per 1k conn/s", "vCPU"),
                ] {
                    report.fail(S, m, "ztunnels", u, &e);
                }
            }
        }
    }
    report.target(
        S,
        "new conns/s",
        "ztunnels",
        "conn/s",
        "≫ 1,200 without CPU spike",
    );
    Ok(())
}
