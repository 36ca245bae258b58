//! Helpers shared by the scenarios: reading a process's CPU time and memory from `/proc`, and
//! parsing what iperf3, h2load and `mesh-app load` print. The load tools themselves are
//! installed by `cargo xtask bench` (its list of packages lives in xtask).

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn iptables_available() -> bool {
    have("iptables")
}

/// Raises the open-file limit to the hard maximum; children (ztunnel, mesh-app, the idle
/// connection holder) inherit it, which 10,000 tunnelled connections need.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(1 << 20);
            lim.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// The pid of the real program behind a harness process: `ip netns exec` execs in place, so
/// this is usually the same pid; if a wrapper stayed, take its only child.
pub fn program_pid(pid: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if matches!(comm.trim(), "ip" | "nsenter") {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return c;
        }
    }
    pid
}

/// User + system CPU seconds a process has used (threads included).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (process gone?)"))?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`), returned in MB.
pub fn status_mb(pid: u32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (process gone?)"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .ok_or_else(|| anyhow!("no {field} in status"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad {field}"))?
        .parse()?;
    Ok(kb / 1024.0)
}

/// Resets the peak-RSS counter so VmHWM covers only the interval that follows.
pub fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Gbit/s and bytes received, from `iperf3 -J` output.
pub fn iperf3_received(json: &[u8]) -> Result<(f64, f64)> {
    let v: serde_json::Value = serde_json::from_slice(json).context("iperf3 output is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum_received"];
    let (Some(bps), Some(bytes)) = (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) else {
        bail!("iperf3 JSON has no end.sum_received");
    };
    Ok((bps / 1e9, bytes))
}

/// CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq; not idle,
/// iowait or steal), from `/proc/stat`. Machine-wide on purpose: the softirq work of the
/// loopback and veth hops is charged to whichever process was running, or to no process.
pub fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|i| f.get(*i).unwrap_or(&0.0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy / hz)
}

/// AES-128-GCM speed of this host in GB/s (`openssl speed`, 16 KiB blocks, one second): a
/// calibration recorded with every run, because the host's speed moves between runs and the
/// absolute numbers only compare between runs of similar calibration.
pub fn aes_gcm_gbytes() -> Result<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-128-gcm",
            "-bytes",
            "16384",
            "-seconds",
            "1",
        ])
        .output()
        .context("running openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("AES-128-GCM"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.trim_end_matches('k').parse().ok())
        .ok_or_else(|| anyhow!("openssl speed printed no AES-128-GCM line"))?;
    Ok(kb * 1000.0 / 1e9)
}

/// Requests/s from h2load's summary, refusing runs where requests failed.
pub fn h2load_rps(out: &str) -> Result<f64> {
    let finished = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .ok_or_else(|| anyhow!("h2load printed no summary: {}", tail(out, 300)))?;
    let rps: f64 = finished
        .split(',')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or_else(|| anyhow!("bad h2load line {finished}"))?
        .parse()?;
    let reqs = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("");
    let num = |label: &str| -> u64 {
        reqs.split(',')
            .find(|p| p.trim().ends_with(label))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (done, ok) = (num("done"), num("succeeded"));
    let status = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    if done == 0 || ok * 100 < done * 99 {
        bail!("h2load: {reqs}; {status}");
    }
    // "succeeded" counts any complete response; insist they were 2xx.
    let two = status
        .split(',')
        .find(|p| p.contains("2xx"))
        .and_then(|p| p.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .unwrap_or(0);
    if two * 100 < ok * 99 {
        bail!("h2load: non-2xx responses: {status}");
    }
    Ok(rps)
}

/// Sum of a Prometheus counter's series (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// Checks a `mesh-app load` summary: every request answered 200, else an error naming the
/// statuses seen.
pub fn load_ok(v: &serde_json::Value) -> Result<()> {
    let total = v["total"].as_u64().unwrap_or(0);
    let ok = v["by_status"]["200"].as_u64().unwrap_or(0);
    if total == 0 || ok * 1000 < total * 999 {
        bail!("{ok}/{total} answered 200: {}", v["by_status"]);
    }
    Ok(())
}

pub fn tail(s: &str, n: usize) -> String {
    let t: String = s.chars().rev().take(n).collect();
    t.chars().rev().collect()
}

pub fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load() {
        let out = "finished in 4.00s, 12345.50 req/s, 13.2MB/s\n\
                   requests: 49382 total, 49382 started, 49382 done, 49382 succeeded, 0 failed, 0 errored, 0 timeout\n\
                   status codes: 49382 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(h2load_rps(out).unwrap(), 12345.5);
        let bad = out.replace(
            "49382 2xx, 0 3xx, 0 4xx, 0 5xx",
            "0 2xx, 0 3xx, 0 4xx, 49382 5xx",
        );
        assert!(h2load_rps(&bad).is_err());
    }

    #[test]
    fn sums_metrics() {
        let t = "# HELP x\nfoo_total{a=\"1\"} 3\nfoo_total{a=\"2\"} 4\nfoo_totalx 9\n";
        assert_eq!(metric_sum(t, "foo_total"), 7.0);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(status_mb(pid, "VmRSS").unwrap() > 0.0);
        let b0 = busy_seconds().unwrap();
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(
            busy_seconds().unwrap() > b0,
            "a busy loop must show in /proc/stat"
        );
    }

    #[test]
    fn parses_iperf3() {
        let j = br#"{"end":{"sum_received":{"bits_per_second":8e9,"bytes":5e9}}}"#;
        assert_eq!(iperf3_received(j).unwrap(), (8.0, 5e9));
        let e = iperf3_received(br#"{"error":"unable to connect"}"#).unwrap_err();
        assert!(format!("{e}").contains("unable to connect"));
        assert!(iperf3_received(br#"{"end":{}}"#).is_err());
    }
}
