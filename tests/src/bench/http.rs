//! `http-latency` and `http-throughput`: HTTP/1.1 1 KB responses at a fixed 1,000 req/s
//! (latency percentiles, and what the mesh adds over direct), and the most requests per second
//! h2load gets through each path at HTTP/1.1 and HTTP/2, next to nginx proxying the same
//! backend on the same two cores. The latency runs also measure two plain TCP relays on the
//! ztunnels' hops: the floor of what any two proxies add on this machine.

use std::fmt::Write as _;

use anyhow::Result;

use super::report::Report;
use super::setup::{Bench, Want, BENCH_VIP, PORT, WP_VIP};
use super::{tools, Opts};

/// The path measured, how to reach its server, and from which client pod.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    /// Two plain TCP relays on the ztunnels' hops (client pod loopback, across nodes, server
    /// pod loopback): the floor of what two proxies add.
    Relays,
    Nginx,
    Ztunnels,
    /// Through the ztunnels restarted with the sockmap fast path on.
    Fastpath,
    Waypoint,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relays => "two plain relays (floor)",
            Path::Nginx => "nginx proxy",
            Path::Ztunnels => "ztunnels",
            Path::Fastpath => "ztunnels+fastpath",
            Path::Waypoint => "ztunnels+waypoint",
        }
    }
    fn client(self) -> &'static str {
        match self {
            Path::Direct | Path::Relays | Path::Nginx => "cli-direct",
            Path::Ztunnels | Path::Fastpath | Path::Waypoint => "cli",
        }
    }
    /// Base URL (no path); nginx listens on 8081 for HTTP/1.1 and 8082 for h2c.
    fn base(self, b: &Bench, h2: bool) -> String {
        match self {
            Path::Direct => format!("http://{}:{PORT}", b.ip("srv-direct")),
            Path::Relays => format!("http://127.0.0.1:{RELAY_PORT}"),
            Path::Nginx => format!(
                "http://{}:{}",
                b.ip("proxy"),
                if h2 { NGINX_H2 } else { NGINX_H1 }
            ),
            Path::Ztunnels | Path::Fastpath => format!("http://{BENCH_VIP}:{PORT}"),
            Path::Waypoint => format!("http://{WP_VIP}:{PORT}"),
        }
    }
    /// Runs `f`, first checking that the path really goes through the proxies it names.
    fn measure<T>(
        self,
        b: &mut Bench,
        url: &str,
        f: impl FnOnce(&Bench) -> Result<T>,
    ) -> Result<T> {
        if self != Path::Direct {
            b.preflight(self.client(), url)?;
        }
        match self {
            Path::Direct | Path::Relays | Path::Nginx => f(b),
            Path::Ztunnels => b.through_mesh(f),
            Path::Fastpath => b.through_fastpath(f),
            Path::Waypoint => b.through_waypoint(f),
        }
    }
}

const NGINX_H1: u16 = 8081;
const NGINX_H2: u16 = 8082;
const LATENCY_RATE: u32 = 1000;
const RELAY_PORT: u16 = 8090;

/// Starts the two plain relays of [`Path::Relays`]: in the client pod from its loopback to the
/// server pod, and in the server pod from there to the server on its loopback.
fn start_relays(b: &mut Bench) -> Result<()> {
    let exe = super::probe::self_exe()?;
    let srv = b.ip("srv-direct");
    for (pod, listen, to) in [
        (
            "cli-direct",
            format!("127.0.0.1:{RELAY_PORT}"),
            format!("{srv}:{RELAY_PORT}"),
        ),
        (
            "srv-direct",
            format!("{srv}:{RELAY_PORT}"),
            format!("127.0.0.1:{PORT}"),
        ),
    ] {
        let argv = [exe.as_str(), "relay", "--listen", &listen, "--to", &to];
        b.spawn(&format!("relay-{pod}"), pod, &argv)?;
        b.wait_port(pod, RELAY_PORT)?;
    }
    Ok(())
}

pub fn latency(opts: &Opts, report: &mut Report) -> Result<()> {
    const S: &str = "http-latency";
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: true,
    })?;
    let relays = start_relays(&mut b);
    if let Err(e) = &relays {
        report.note(format!("plain relays (latency floor) unavailable: {e:#}"));
    }
    let secs = opts.secs(5) as u32;
    let n = (LATENCY_RATE * secs).to_string();
    let rate = LATENCY_RATE.to_string();
    // Fast path off (direct, ztunnels, waypoint), then the ztunnels restarted with it on
    // (direct again as that pass's baseline).
    for (fastpath, paths) in [
        (
            false,
            &[Path::Direct, Path::Relays, Path::Ztunnels, Path::Waypoint][..],
        ),
        (true, &[Path::Direct, Path::Fastpath][..]),
    ] {
        if fastpath {
            if let Err(e) = b.set_fastpath(true) {
                println!("  fast path pass: {e:#}");
            }
        }
        latency_pass(&mut b, opts, report, paths, &n, &rate)?;
    }
    for conns in [1, 64] {
        report.target(
            S,
            &format!("{conns} conn added p90"),
            "ztunnels",
            "ms",
            "≤ 0.17 (Istio)",
        );
        for label in ["ztunnels", "ztunnels+fastpath"] {
            report.target(S, &format!("{conns} conn added p99"), label, "ms", "≤ 0.20");
        }
    }
    Ok(())
}

/// One pass of the latency runs over `paths` (the first must be [`Path::Direct`]).
fn latency_pass(
    b: &mut Bench,
    opts: &Opts,
    report: &mut Report,
    paths: &[Path],
    n: &str,
    rate: &str,
) -> Result<()> {
    const S: &str = "http-latency";
    for run in 0..opts.runs {
        for conns in [1u32, 64] {
            println!("  run {}: {conns} conn(s) at {LATENCY_RATE} req/s", run + 1);
            let c = conns.to_string();
            let mut direct: Option<serde_json::Value> = None;
            for &path in paths {
                let url = format!("{}/bytes?n=1024", path.base(b, false));
                let res = path.measure(b, &url, |b| {
                    let v = b.load(path.client(), &url, &["-n", n, "-c", &c, "--rate", rate])?;
                    tools::load_ok(&v)?;
                    Ok(v)
                });
                let pct = |v: &serde_json::Value, p: &str| {
                    v["latency_ms"][p].as_f64().unwrap_or(f64::NAN)
                };
                for p in ["p50", "p90", "p99"] {
                    let m = format!("{conns} conn {p}");
                    match &res {
                        Ok(v) => report.ok(S, &m, path.label(), "ms", pct(v, p)),
                        Err(e) => report.fail(S, &m, path.label(), "ms", &format!("{e:#}")),
                    }
                }
                if path == Path::Direct {
                    direct = res.as_ref().ok().cloned();
                    continue;
                }
                for p in ["p90", "p99"] {
                    let m = format!("{conns} conn added {p}");
                    let added = match (&res, &direct) {
                        (Ok(v), Some(d)) => Ok(pct(v, p) - pct(d, p)),
                        (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
                        (_, None) => Err(anyhow::anyhow!("no direct baseline this run")),
                    };
                    report.record(S, &m, path.label(), "ms", added);
                }
            }
        }
    }
    Ok(())
}

pub fn throughput(opts: &Opts, report: &mut Report) -> Result<()> {
    const S: &str = "http-throughput";
    let mut b = Bench::new(Want {
        ztunnels: true,
        waypoint: true,
    })?;
    let nginx = start_nginx(&mut b);
    if let Err(e) = &nginx {
        report.note(format!("nginx baseline unavailable: {e:#}"));
    }
    let secs = opts.secs(5).to_string();
    let paths = [Path::Direct, Path::Nginx, Path::Ztunnels, Path::Waypoint];
    for run in 0..opts.runs {
        for (proto, h2) in [("HTTP/1.1", false), ("h2c", true)] {
            println!("  run {}: {proto}", run + 1);
            for path in paths {
                let m = format!("{proto} max req/s");
                if path == Path::Nginx {
                    if let Err(e) = &nginx {
                        report.fail(S, &m, path.label(), "req/s", &format!("{e:#}"));
                        continue;
                    }
                }
                let url = format!("{}/bytes?n=1024", path.base(&b, h2));
                // One h2load thread: the load generator shares the two cores with the proxies,
                // the same for every path. HTTP/1.1: 64 connections; h2c: 16 × 16 streams.
                let mut argv = vec!["h2load", "-t", "1", "-D", &secs, "--warm-up-time", "1"];
                if h2 {
                    argv.extend(["-c", "16", "-m", "16"]);
                } else {
                    argv.extend(["--h1", "-c", "64"]);
                }
                argv.push(&url);
                let res = path.measure(&mut b, &url, |b| {
                    let out = b.mesh.exec(path.client(), &argv)?;
                    tools::h2load_rps(&String::from_utf8_lossy(&out.stdout))
                });
                report.record(S, &m, path.label(), "req/s", res);
            }
        }
    }
    for proto in ["HTTP/1.1", "h2c"] {
        report.target(
            S,
            &format!("{proto} max req/s"),
            "ztunnels+waypoint",
            "req/s",
            "> nginx proxy",
        );
    }
    Ok(())
}

/// nginx (Debian's nginx-light) in pod `proxy` on node2, proxying to `srv-direct` with
/// upstream keep-alive, two workers — the same two cores everything else shares.
fn start_nginx(b: &mut Bench) -> Result<()> {
    let dir = b.mesh.log_dir.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let backend = format!("{}:{PORT}", b.ip("srv-direct"));
    let mut conf = String::new();
    let _ = write!(
        conf,
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n  http2_max_requests 1000000;\n\
         upstream backend {{ server {backend}; keepalive 128; }}\n"
    );
    for (port, extra) in [(NGINX_H1, ""), (NGINX_H2, " http2")] {
        let _ = write!(
            conf,
            "  server {{\n    listen {port}{extra} reuseport backlog=8192;\n    location / {{\n      \
             proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n    }}\n  }}\n"
        );
    }
    conf.push_str("}\n");
    let conf_path = dir.join("nginx.conf");
    tools::write_file(&conf_path, &conf)?;
    let (prefix, error_log, conf) = (
        d.to_string(),
        format!("{d}/error.log"),
        conf_path.display().to_string(),
    );
    let argv = ["nginx", "-p", &prefix, "-e", &error_log, "-c", &conf];
    b.spawn("nginx", "proxy", &argv)?;
    b.wait_port("proxy", NGINX_H1)?;
    b.wait_port("proxy", NGINX_H2)?;
    Ok(())
}
