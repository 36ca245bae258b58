//! `capture`: what eBPF redirection costs a new connection. The same probe (re-executed
//! inside the client pod) times `connect()` and connect + one request, from a pod outside the
//! mesh and from an enrolled pod whose `connect()` the cgroup program rewrites to ztunnel.

use anyhow::{Context, Result};

use super::probe::self_exe;
use super::report::Report;
use super::setup::{Bench, Want, PORT};
use super::{tools, Opts};

const S: &str = "capture";

pub fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if !tools::iptables_available() {
        report.note(
            "capture: iptables is not installed; the iptables REDIRECT comparison is skipped",
        );
    }
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: false,
    })?;
    let exe = self_exe()?;
    let n = (200 * opts.secs(5)).to_string();
    for run in 0..opts.runs {
        println!("  run {}: {n} sequential connections per path", run + 1);
        for (label, client, server) in [
            ("no capture (direct)", "cli-direct", "srv-direct"),
            ("eBPF capture → ztunnels", "cli", "srv"),
        ] {
            let addr = format!("{}:{PORT}", b.ip(server));
            let probe = |b: &Bench| -> Result<serde_json::Value> {
                let out = b.run(client, &[&exe, "connect-probe", "--addr", &addr, "-n", &n])?;
                serde_json::from_str(&out).context("probe output")
            };
            let res = if client == "cli" {
                b.preflight(client, &format!("http://{addr}/"))
                    .and_then(|_| b.through_mesh(probe))
            } else {
                probe(&b)
            };
            for (m, key) in [
                ("connect()", "connect_us"),
                ("connect + 1 request", "request_us"),
            ] {
                for p in ["p50", "p99"] {
                    let v = res
                        .as_ref()
                        .map_err(|e| anyhow::anyhow!("{e:#}"))
                        .map(|v| v[key][p].as_f64().unwrap_or(f64::NAN) / 1000.0);
                    report.record(S, &format!("{m} {p}"), label, "ms", v);
                }
            }
        }
    }
    Ok(())
}
