//! `tcp-throughput`: iperf3 pod to pod across nodes, one stream and eight, direct versus
//! through two ztunnels (HBONE mTLS), with the sockmap fast path off and then on; and one
//! stream between two pods of one node (ztunnel's same-node short path: policy and telemetry,
//! no TLS over loopback). The ratio is taken per run, so a noisy neighbour slows
//! both sides of it alike. Every path also reports what the machine spent per GB moved, and
//! the first pass measures the cost of the path's unavoidable parts (see [`record_floor`]).

use anyhow::Result;

use super::report::Report;
use super::setup::{Bench, Want};
use super::{tools, Opts};

const SCENARIO: &str = "tcp-throughput";
const IPERF_PORT: u16 = 5201;
const LOOPBACK_PORT: u16 = 5202;

pub fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: false,
    })?;
    for srv in ["srv-direct", "srv", "srv-near-direct", "srv-near"] {
        let port = IPERF_PORT.to_string();
        b.spawn(
            &format!("iperf3-{srv}"),
            srv,
            &["iperf3", "-s", "-p", &port],
        )?;
        b.wait_port(srv, IPERF_PORT)?;
    }
    // An iperf3 server on the client pod's loopback: the cost of one in-pod hop carried by
    // the kernel's TCP (see `record_floor`).
    let port = LOOPBACK_PORT.to_string();
    b.spawn(
        "iperf3-loopback",
        "cli-direct",
        &["iperf3", "-s", "-p", &port],
    )?;
    b.wait_port("cli-direct", LOOPBACK_PORT)?;
    let secs = opts.secs(5).to_string();
    // Two passes: ztunnels with the sockmap fast path off, then restarted with it on; each
    // run measures direct in the same breath, so every ratio compares like with like.
    for fastpath in [false, true] {
        let mesh_label = if fastpath {
            "ztunnels+fastpath"
        } else {
            "ztunnels"
        };
        if fastpath {
            if let Err(e) = b.set_fastpath(true) {
                println!("  fast path pass skipped: {e:#}");
            }
        }
        for run in 0..opts.runs {
            for (streams, label, near) in [
                (1u32, "1 stream", false),
                (8, "8 streams", false),
                (1, "1 stream same node", true),
            ] {
                println!("  run {}: {label}, {mesh_label}", run + 1);
                let p = streams.to_string();
                let iperf = |b: &Bench, client: &str, server: &str| -> Result<(f64, f64)> {
                    let ip = b.ip(server).to_string();
                    let port = IPERF_PORT.to_string();
                    iperf3_costed(b, client, &ip, &port, &secs, &p)
                };
                let (srv_direct, srv) = if near {
                    ("srv-near-direct", "srv-near")
                } else {
                    ("srv-direct", "srv")
                };
                let direct = iperf(&b, "cli-direct", srv_direct);
                let mesh = if fastpath {
                    b.through_fastpath(|b| iperf(b, "cli", srv))
                } else {
                    b.through_mesh(|b| iperf(b, "cli", srv))
                };
                let ratio = match (&direct, &mesh) {
                    (Ok(d), Ok(m)) => Ok(m.0 / d.0),
                    (_, Err(e)) | (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
                };
                if streams == 1 && !near && !fastpath {
                    record_floor(report, &b, &secs, direct.as_ref().ok());
                }
                let cost_label = format!("{label} CPU per GB");
                for (path, r) in [("direct", direct), (mesh_label, mesh)] {
                    let (gbits, cost) = match r {
                        Ok((g, c)) => (Ok(g), Ok(c)),
                        Err(e) => (Err(anyhow::anyhow!("{e:#}")), Err(e)),
                    };
                    report.record(SCENARIO, label, path, "Gbit/s", gbits);
                    report.record(SCENARIO, &cost_label, path, "CPU-s/GB", cost);
                }
                report.record(
                    SCENARIO,
                    &format!("{label} ratio"),
                    &format!("{mesh_label}/direct"),
                    "×",
                    ratio,
                );
            }
        }
    }
    for mesh_label in ["ztunnels", "ztunnels+fastpath"] {
        report.target(SCENARIO, "1 stream", mesh_label, "Gbit/s", "≥ 10 (issue 8)");
    }
    // 10 Gbit/s is 1.25 GB/s: on two cores the whole path may cost at most 1.6 CPU-s per GB.
    for mesh_label in ["ztunnels", "ztunnels+fastpath"] {
        report.target(
            SCENARIO,
            "1 stream CPU per GB",
            mesh_label,
            "CPU-s/GB",
            "≤ 1.6 (10 Gbit/s on 2 cores)",
        );
    }
    for label in ["1 stream", "8 streams"] {
        report.target(
            SCENARIO,
            &format!("{label} ratio"),
            "ztunnels/direct",
            "×",
            "≥ 0.70",
        );
    }
    Ok(())
}

/// One iperf3 client run from `client` to `ip:port` with `streams` streams: Gbit/s, and the
/// machine's CPU-seconds per GB moved (both iperf3 ends, the proxies and the kernel's softirq
/// work together): the cost that bounds throughput on two cores, comparable across runs on a
/// faster or slower host.
fn iperf3_costed(
    b: &Bench,
    client: &str,
    ip: &str,
    port: &str,
    secs: &str,
    streams: &str,
) -> Result<(f64, f64)> {
    let busy0 = tools::busy_seconds()?;
    let out = b.mesh.exec(
        client,
        &[
            "iperf3", "-c", ip, "-p", port, "-t", secs, "-P", streams, "-J",
        ],
    )?;
    let busy = tools::busy_seconds()? - busy0;
    let (gbits, bytes) = tools::iperf3_received(&out.stdout)?;
    Ok((gbits, busy / (bytes / 1e9)))
}

/// The cost of the cross-node path's unavoidable parts, measured in the same run: one
/// cross-node TCP hop (what direct costs), two in-pod hops on loopback TCP (application to
/// ztunnel, ztunnel to application), and AES-GCM once each way at `openssl speed`'s rate.
/// A mesh row close to this sum means the proxies add little beyond those parts; if the sum
/// is above 1.6 CPU-s/GB, 10 Gbit/s is out of reach on two cores for any proxy that carries
/// the in-pod hops on loopback TCP and encrypts in user space. (Not a strict floor: the cost
/// per GB of each part moves a little with its rate.)
fn record_floor(report: &mut Report, b: &Bench, secs: &str, direct: Option<&(f64, f64)>) {
    let aes = tools::aes_gcm_gbytes();
    const M: &str = "1 stream CPU per GB";
    let port = LOOPBACK_PORT.to_string();
    let loopback =
        iperf3_costed(b, "cli-direct", "127.0.0.1", &port, secs, "1").map(|(_, cost)| cost);
    let floor = match (&loopback, direct, &aes) {
        (Ok(l), Some((_, d)), Ok(a)) => Ok(d + 2.0 * l + 2.0 / a),
        (Err(e), _, _) | (_, _, Err(e)) => Err(anyhow::anyhow!("{e:#}")),
        (_, None, _) => Err(anyhow::anyhow!("direct path not measured")),
    };
    let aes_cost = aes
        .as_ref()
        .map(|a| 2.0 / a)
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    report.record(
        SCENARIO,
        M,
        "loopback (one in-pod hop)",
        "CPU-s/GB",
        loopback,
    );
    report.record(
        SCENARIO,
        M,
        "AES-GCM both ends (openssl)",
        "CPU-s/GB",
        aes_cost,
    );
    report.record(
        SCENARIO,
        M,
        "sum: direct + 2 loopback + AES",
        "CPU-s/GB",
        floor,
    );
}
