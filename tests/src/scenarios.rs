//! The walkthrough the seed documents promise, as steps that both `cargo xtask demo` (which
//! prints them) and the end-to-end suite (which asserts them) run on the mesh of
//! `deploy/local/`. Each step changes the configuration the way a user would (writing Istio
//! resources into the watched directory), sends real traffic from the productpage pod, and
//! checks the numbers against what the configuration says.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::mesh::Mesh;

/// The client pod every step sends from (its identity is bookinfo-productpage).
pub const CLIENT: &str = "productpage-v1";
/// A second client with another identity, for authorization steps.
pub const OTHER_CLIENT: &str = "ratings-v1";
pub const REVIEWS_URL: &str = "http://10.96.0.12:9080/reviews";
pub const DETAILS_URL: &str = "http://10.96.0.11:9080/details";

/// One checked number: what was measured, what the config implies, whether it matches.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub measured: String,
    pub expected: String,
    pub ok: bool,
}

/// The outcome of one step.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub title: String,
    pub config: String,
    pub checks: Vec<Check>,
    /// Free-form lines (latency percentiles, identities seen).
    pub notes: Vec<String>,
}

impl StepReport {
    fn new(title: &str, config: &str) -> Self {
        StepReport {
            title: title.to_string(),
            config: config.to_string(),
            checks: Vec::new(),
            notes: Vec::new(),
        }
    }
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    fn check(&mut self, what: &str, measured: impl ToString, expected: impl ToString, ok: bool) {
        self.checks.push(Check {
            what: what.to_string(),
            measured: measured.to_string(),
            expected: expected.to_string(),
            ok,
        });
    }
}

pub type Progress<'a> = &'a mut dyn FnMut(&str);

fn count(v: &Value, section: &str, key: &str) -> u64 {
    v[section][key].as_u64().unwrap_or(0)
}

fn latency_note(v: &Value) -> String {
    let l = &v["latency_ms"];
    format!(
        "latency p50 {:.1} ms · p90 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0)
    )
}

fn statuses(v: &Value) -> String {
    v["by_status"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The demo's waypoint pod.
pub const WAYPOINT_POD: &str = "reviews-waypoint-0";

/// Writes a config file, waits until the waypoint has reloaded, then until traffic shows the
/// change in force (`probe` true) or 10 s.
fn apply(mesh: &Mesh, file: &str, yaml: &str, probe: impl Fn() -> bool) -> Result<()> {
    let generation = mesh.waypoint_generation(WAYPOINT_POD);
    mesh.write_config(file, yaml)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.waypoint_generation(WAYPOINT_POD) <= generation && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    while Instant::now() < deadline {
        if probe() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn reviews_vs(body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n{body}"
    )
}

fn split(v1: u32, v2: u32, v3: u32) -> String {
    let mut s = String::from("  - route:\n");
    for (subset, w) in [("v1", v1), ("v2", v2), ("v3", v3)] {
        if w > 0 {
            s.push_str(&format!(
                "    - destination:\n        host: reviews\n        subset: {subset}\n      weight: {w}\n"
            ));
        }
    }
    s
}

/// Four binomial standard deviations (at least one point): a correct split fails this check
/// about once in 16,000 runs, a wrong one (90/10 served as 80/20) does not pass it.
fn tolerance(p: f64, n: u64) -> f64 {
    (4.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt()).max(0.01)
}

/// Within `tol` (absolute fraction) of the expected share.
fn share_ok(n: u64, total: u64, expected: f64, tol: f64) -> bool {
    total > 0 && ((n as f64 / total as f64) - expected).abs() <= tol
}

/// Step 1: pods talk over mTLS with SPIFFE identities, proved by ztunnel's own metrics.
pub fn mtls_identities(mesh: &Mesh, progress: Progress) -> Result<StepReport> {
    let mut r = StepReport::new(
        "mTLS between pods, with SPIFFE identities",
        "PeerAuthentication istio-system/default: STRICT (mesh-wide)",
    );
    progress("productpage → details (L4 only, no waypoint)");
    let (code, body) = mesh.curl(CLIENT, DETAILS_URL, &[])?;
    r.check("HTTP status through two ztunnels", code, 200, code == 200);
    r.notes.push(format!("details answered: {}", body.trim()));
    let metrics = mesh.ztunnel_metrics("node2")?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("destination_workload=\"details-v1\"")
        })
        .unwrap_or("")
        .to_string();
    let mtls = line.contains("connection_security_policy=\"mutual_tls\"");
    let principal = line
        .contains("source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"");
    r.check("destination ztunnel saw mutual_tls", mtls, true, mtls);
    r.check(
        "peer identity taken from the certificate",
        principal,
        true,
        principal,
    );
    // Show the labels that matter rather than Istio's full label set.
    let labels: Vec<&str> = line
        .split([',', '{', '}'])
        .filter(|kv| {
            [
                "source_principal=",
                "destination_workload=",
                "connection_security_policy=",
            ]
            .iter()
            .any(|k| kv.starts_with(k))
        })
        .collect();
    if !labels.is_empty() {
        r.notes
            .push(format!("ztunnel on node2 counted: {}", labels.join(" ")));
    }
    Ok(r)
}

/// Step 2: the canary split, shifted 90/10 → 50/50 → 0/100.
pub fn canary(mesh: &Mesh, progress: Progress, requests: u32) -> Result<Vec<StepReport>> {
    let mut out = Vec::new();
    for (v1, v2) in [(90u32, 10u32), (50, 50), (0, 100)] {
        let mut r = StepReport::new(
            &format!("Canary: reviews v1 {v1}% / v2 {v2}%"),
            &format!("VirtualService reviews: weights v1={v1} v2={v2}"),
        );
        progress(&format!(
            "applying {v1}/{v2} and sending {requests} requests"
        ));
        apply(
            mesh,
            "40-reviews-virtual-service.yaml",
            &reviews_vs(&split(v1, v2, 0)),
            || {
                if v2 == 100 {
                    mesh.load(CLIENT, REVIEWS_URL, 20, 4, &[])
                        .map(|s| count(&s, "by_version", "v1") == 0)
                        .unwrap_or(false)
                } else {
                    true
                }
            },
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let s = mesh.load(CLIENT, REVIEWS_URL, requests, 8, &[])?;
        let total = s["total"].as_u64().unwrap_or(0);
        let ok200 = count(&s, "by_status", "200");
        let n1 = count(&s, "by_version", "v1");
        let n2 = count(&s, "by_version", "v2");
        r.check(
            "requests answered 200",
            ok200,
            total,
            ok200 == total && total > 0,
        );
        for (name, n, w) in [("share to v1", n1, v1), ("share to v2", n2, v2)] {
            let p = w as f64 / 100.0;
            let tol = tolerance(p, total);
            r.check(
                name,
                format!("{:.1}%", 100.0 * n as f64 / total.max(1) as f64),
                format!("{w}% ± {:.1}", 100.0 * tol),
                share_ok(n, total, p, tol),
            );
        }
        r.notes.push(latency_note(&s));
        out.push(r);
    }
    Ok(out)
}

/// Step 3: `end-user: jason` goes to v2, everyone else to v1.
pub fn header_routing(mesh: &Mesh, progress: Progress) -> Result<StepReport> {
    let mut r = StepReport::new(
        "Header-based routing",
        "VirtualService reviews: end-user=jason → v2, default → v1",
    );
    let body = "  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    progress("applying header rule");
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(body),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 10, 2, &["end-user: jason"])
                .map(|s| count(&s, "by_version", "v2") == 10)
                .unwrap_or(false)
        },
    )?;
    let jason = mesh.load(CLIENT, REVIEWS_URL, 100, 4, &["end-user: jason"])?;
    let other = mesh.load(CLIENT, REVIEWS_URL, 100, 4, &["end-user: alice"])?;
    let j2 = count(&jason, "by_version", "v2");
    let o1 = count(&other, "by_version", "v1");
    r.check(
        "end-user: jason → v2",
        format!("{j2}/100"),
        "100/100",
        j2 == 100,
    );
    r.check(
        "end-user: alice → v1",
        format!("{o1}/100"),
        "100/100",
        o1 == 100,
    );
    Ok(r)
}

/// Step 4: fault injection: a 2 s delay for everyone, then a 50% abort.
pub fn faults(mesh: &Mesh, progress: Progress) -> Result<Vec<StepReport>> {
    let mut out = Vec::new();
    let mut r = StepReport::new(
        "Fault injection: 2 s delay",
        "fault.delay fixedDelay 2s, 100%",
    );
    let delay = "  - fault:\n      delay:\n        fixedDelay: 2s\n        percentage:\n          value: 100\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    progress("applying a 100% 2 s delay");
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(delay),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 1, 1, &[])
                .map(|s| s["latency_ms"]["p50"].as_f64().unwrap_or(0.0) >= 1900.0)
                .unwrap_or(false)
        },
    )?;
    progress("sending 10 requests in parallel");
    let s = mesh.load(CLIENT, REVIEWS_URL, 10, 10, &[])?;
    let p50 = s["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
    let ok = count(&s, "by_status", "200");
    r.check(
        "p50 latency",
        format!("{p50:.0} ms"),
        "≥ 2000 ms, < 3000 ms",
        (2000.0..3000.0).contains(&p50),
    );
    r.check("requests still answered 200", ok, 10, ok == 10);
    r.notes.push(latency_note(&s));
    out.push(r);

    let mut r = StepReport::new(
        "Fault injection: 50% abort",
        "fault.abort httpStatus 503, 50%",
    );
    let abort = "  - fault:\n      abort:\n        httpStatus: 503\n        percentage:\n          value: 50\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    progress("applying a 50% abort (503)");
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(abort),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 20, 4, &[])
                .map(|s| count(&s, "by_status", "503") > 0)
                .unwrap_or(false)
        },
    )?;
    let s = mesh.load(CLIENT, REVIEWS_URL, 1000, 8, &[])?;
    let n503 = count(&s, "by_status", "503");
    let total = s["total"].as_u64().unwrap_or(0);
    r.check(
        "aborted with 503",
        format!("{:.1}%", 100.0 * n503 as f64 / total.max(1) as f64),
        format!("50% ± {:.1}", 100.0 * tolerance(0.5, total)),
        share_ok(n503, total, 0.5, tolerance(0.5, total)),
    );
    r.notes.push(format!("statuses: {}", statuses(&s)));
    out.push(r);
    Ok(out)
}

/// Step 5: retries hide a flaky version.
pub fn retries(mesh: &Mesh, progress: Progress) -> Result<Vec<StepReport>> {
    let mut out = Vec::new();
    progress("making reviews-v3 fail half of its requests");
    mesh.app_admin("reviews-v3", 9080, "/admin/fail?rate=0.5&code=503")?;
    let no_retry = "  - route:\n    - destination:\n        host: reviews\n        subset: v3\n    retries:\n      attempts: 0\n";
    let mut r = StepReport::new(
        "Without retries: a flaky v3",
        "route 100% → v3, retries.attempts 0; v3 fails 50% with 503",
    );
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(no_retry),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 20, 4, &[])
                .map(|s| count(&s, "by_version", "v3") > 0 && count(&s, "by_status", "503") > 0)
                .unwrap_or(false)
        },
    )?;
    let s = mesh.load(CLIENT, REVIEWS_URL, 400, 8, &[])?;
    let n503 = count(&s, "by_status", "503");
    r.check(
        "errors seen by the client",
        format!("{n503}/400"),
        "≈ 50%",
        share_ok(n503, 400, 0.5, tolerance(0.5, 400)),
    );
    out.push(r);

    let with_retry = "  - route:\n    - destination:\n        host: reviews\n        subset: v3\n    retries:\n      attempts: 5\n      retryOn: 5xx\n";
    let mut r = StepReport::new(
        "With retries: the flakiness disappears",
        "retries.attempts 5, retryOn 5xx",
    );
    progress("applying retries");
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(with_retry),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 40, 4, &[])
                .map(|s| count(&s, "by_status", "200") == 40)
                .unwrap_or(false)
        },
    )?;
    let s = mesh.load(CLIENT, REVIEWS_URL, 400, 8, &[])?;
    let ok = count(&s, "by_status", "200");
    // 0.5^6 per request: about 1 in 64 fails even after 5 retries (≈6 of 400); 16 is 4σ out.
    r.check("answered 200", format!("{ok}/400"), "≥ 96%", ok >= 384);
    r.notes.push(latency_note(&s));
    out.push(r);
    mesh.app_admin("reviews-v3", 9080, "/admin/fail?rate=0")?;
    Ok(out)
}

/// Step 6: outlier detection ejects a broken pod.
pub fn outlier(mesh: &Mesh, progress: Progress) -> Result<StepReport> {
    let mut r = StepReport::new(
        "Outlier detection ejects a broken pod",
        "DestinationRule reviews: consecutive5xxErrors 3, interval 1s, baseEjectionTime 30s; reviews-v1 returns 500",
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 3\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n";
    let all =
        "  - route:\n    - destination:\n        host: reviews\n    retries:\n      attempts: 0\n";
    progress("applying outlier detection and routing across all reviews pods");
    mesh.write_config("30-reviews-destination-rule.yaml", dr)?;
    apply(
        mesh,
        "40-reviews-virtual-service.yaml",
        &reviews_vs(all),
        || {
            mesh.load(CLIENT, REVIEWS_URL, 30, 3, &[])
                .map(|s| count(&s, "by_version", "v3") > 0 && count(&s, "by_version", "v2") > 0)
                .unwrap_or(false)
        },
    )?;
    progress("breaking reviews-v1 (every request → 500)");
    mesh.app_admin("reviews-v1", 9080, "/admin/fail?rate=1&code=500")?;
    let before = mesh.load(CLIENT, REVIEWS_URL, 60, 1, &[])?;
    let err_before = count(&before, "by_status", "500");
    std::thread::sleep(Duration::from_millis(1500));
    let after = mesh.load(CLIENT, REVIEWS_URL, 300, 4, &[])?;
    let err_after = count(&after, "by_status", "500");
    r.check(
        "500s while v1 is being detected",
        err_before,
        "≥ 3",
        err_before >= 3,
    );
    r.check(
        "500s after ejection (300 requests)",
        err_after,
        0,
        err_after == 0,
    );
    r.notes
        .push(format!("after ejection: {}", statuses(&after)));
    mesh.app_admin("reviews-v1", 9080, "/admin/fail?rate=0")?;
    Ok(r)
}

/// Step 7: deny-all, then allow one principal (L4 policy at the destination ztunnel).
pub fn authorization(mesh: &Mesh, progress: Progress) -> Result<Vec<StepReport>> {
    let mut out = Vec::new();
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: details-deny-all\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: details\n";
    let mut r = StepReport::new(
        "Authorization: deny-all on details",
        "AuthorizationPolicy details-deny-all: ALLOW with no rules",
    );
    progress("applying deny-all");
    apply(mesh, "60-authz.yaml", deny, || {
        mesh.curl(CLIENT, DETAILS_URL, &[])
            .map(|(c, _)| c != 200)
            .unwrap_or(false)
    })?;
    let (c1, _) = mesh.curl(CLIENT, DETAILS_URL, &[])?;
    let (c2, _) = mesh.curl(OTHER_CLIENT, DETAILS_URL, &[])?;
    r.check("productpage → details", c1, "refused (000)", c1 != 200);
    r.check("ratings → details", c2, "refused (000)", c2 != 200);
    out.push(r);

    let allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: details-deny-all\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: details\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/bookinfo-productpage\"]\n";
    let mut r = StepReport::new(
        "Authorization: allow by principal",
        "ALLOW from principal cluster.local/ns/default/sa/bookinfo-productpage",
    );
    progress("allowing productpage's identity");
    apply(mesh, "60-authz.yaml", allow, || {
        mesh.curl(CLIENT, DETAILS_URL, &[])
            .map(|(c, _)| c == 200)
            .unwrap_or(false)
    })?;
    let (c1, _) = mesh.curl(CLIENT, DETAILS_URL, &[])?;
    let (c2, _) = mesh.curl(OTHER_CLIENT, DETAILS_URL, &[])?;
    r.check("productpage → details", c1, 200, c1 == 200);
    r.check("ratings → details", c2, "refused (000)", c2 != 200);
    out.push(r);
    mesh.remove_config("60-authz.yaml")?;
    Ok(out)
}

/// Restores the demo's starting configuration (90/10 canary, plain subsets).
pub fn reset(mesh: &Mesh) -> Result<()> {
    let src = crate::mesh::workspace_root().join("deploy/local");
    for f in [
        "30-reviews-destination-rule.yaml",
        "40-reviews-virtual-service.yaml",
    ] {
        mesh.write_config(f, &std::fs::read_to_string(src.join(f))?)?;
    }
    mesh.remove_config("60-authz.yaml")
}

/// Brings up the whole demo mesh from a config directory: nodes, pods, ztunnels, the reviews
/// waypoint and every application.
pub fn bring_up(id: &str, config: &std::path::Path, progress: Progress) -> Result<Mesh> {
    progress("creating nodes and pods (network namespaces, veths, cgroups)");
    let mut mesh = Mesh::from_dir(id, config, crate::mesh::CaptureMode::Ebpf)?;
    let apps: Vec<(String, String, String)> = mesh
        .pods
        .values()
        .filter(|p| !p.app.is_empty())
        .map(|p| (p.name.clone(), p.app.clone(), p.version.clone()))
        .collect();
    for (pod, app, version) in &apps {
        progress(&format!("starting {app} {version} in pod {pod}"));
        mesh.start_app(pod, app, version, 9080)?;
    }
    let nodes: Vec<String> = mesh.topo.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &nodes {
        progress(&format!("starting ztunnel on {n}"));
        mesh.start_ztunnel(n)?;
    }
    let waypoints: Vec<(String, String)> = mesh
        .pods
        .values()
        .filter_map(|p| {
            p.labels
                .iter()
                .find(|(k, _)| k == "gateway.networking.k8s.io/gateway-name")
                .map(|(_, gw)| (p.name.clone(), gw.clone()))
        })
        .collect();
    for (pod, gw) in &waypoints {
        progress(&format!("starting waypoint {gw} in pod {pod}"));
        mesh.start_waypoint(pod, gw)?;
    }
    Ok(mesh)
}

/// Runs every step in order.
pub fn all(mesh: &Mesh, progress: Progress, requests: u32) -> Result<Vec<StepReport>> {
    let mut out = vec![mtls_identities(mesh, progress)?];
    out.extend(canary(mesh, progress, requests)?);
    out.push(header_routing(mesh, progress)?);
    out.extend(faults(mesh, progress)?);
    out.extend(retries(mesh, progress)?);
    out.push(outlier(mesh, progress)?);
    out.extend(authorization(mesh, progress)?);
    reset(mesh)?;
    Ok(out)
}
