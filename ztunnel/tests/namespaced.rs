//! Root-only tier: real network namespaces. Two "nodes" (netns) joined by a veth pair, one pod
//! netns per node joined to it by a veth; two in-process ztunnels create the pods' listeners
//! inside the pod namespaces (the in-pod model) with `--capture none` semantics: the test
//! plays the role of the eBPF capture by filling the original-destination table.
//!
//! Never skipped: not being root is a failure. Every namespace and process is removed by Drop
//! guards, also on panic.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    fn spawn(&self, args: &[&str]) -> Proc {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns");
        Proc(c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Veth pair `a` (moved into `na`) / `b` (moved into `nb`).
fn veth(a: &str, na: &Netns, b: &str, nb: &Netns) {
    sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    sh(&["ip", "link", "set", a, "netns", &na.0]);
    sh(&["ip", "link", "set", b, "netns", &nb.0]);
    sh(&["ip", "-n", &na.0, "link", "set", a, "up"]);
    sh(&["ip", "-n", &nb.0, "link", "set", b, "up"]);
}

struct Topology {
    // Field order = drop order: pods before nodes.
    pa: Netns,
    pb: Netns,
    n1: Netns,
    _n2: Netns,
    link1: String,
}

const POD_A: &str = "10.201.1.2";
const POD_B: &str = "10.202.1.2";

fn topology() -> Topology {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the namespaced tier must run as root (it is never skipped)"
    );
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = std::process::id() % 100_000;
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let n = |s: &str| format!("zt{id}{k}{s}");
    let (n1, n2, pa, pb) = (
        Netns::new(n("n1")),
        Netns::new(n("n2")),
        Netns::new(n("pa")),
        Netns::new(n("pb")),
    );
    let link1 = n("l1");
    veth(&link1, &n1, &n("l2"), &n2);
    sh(&[
        "ip",
        "-n",
        &n1.0,
        "addr",
        "add",
        "10.200.0.1/24",
        "dev",
        &link1,
    ]);
    sh(&[
        "ip",
        "-n",
        &n2.0,
        "addr",
        "add",
        "10.200.0.2/24",
        "dev",
        &n("l2"),
    ]);
    for (pod, node, ip, gw, dev, peer_net, via) in [
        (
            &pa,
            &n1,
            POD_A,
            "10.201.1.1",
            n("a"),
            "10.202.1.0/24",
            "10.200.0.2",
        ),
        (
            &pb,
            &n2,
            POD_B,
            "10.202.1.1",
            n("b"),
            "10.201.1.0/24",
            "10.200.0.1",
        ),
    ] {
        let host_side = format!("{dev}h");
        veth(&dev, pod, &host_side, node);
        sh(&[
            "ip",
            "-n",
            &pod.0,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &dev,
        ]);
        sh(&["ip", "-n", &pod.0, "route", "add", "default", "via", gw]);
        sh(&[
            "ip",
            "-n",
            &node.0,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            &host_side,
        ]);
        sh(&["ip", "-n", &node.0, "route", "add", peer_net, "via", via]);
        let o = node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        assert!(o.status.success());
    }
    Topology {
        pa,
        pb,
        n1,
        _n2: n2,
        link1,
    }
}

fn config(t: &Topology, extra: &str) -> String {
    let pod = |name: &str, sa: &str, ip: &str, node: &str, ns: &Netns| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels: {{app: {name}}}
  annotations: {{mesh.local/netns: "{}"}}
spec: {{nodeName: {node}, serviceAccountName: {sa}}}
status: {{podIP: "{ip}"}}
---"#,
            ns.path()
        )
    };
    [
        ambient_ns("demo"),
        pod("client", "client-sa", POD_A, "node1", &t.pa),
        pod("server", "server-sa", POD_B, "node2", &t.pb),
        extra.to_string(),
    ]
    .concat()
}

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_http_over_hbone_is_tls_on_the_wire_and_strict_refuses_plaintext() {
    let t = topology();
    let ca = ca();
    let n1 = node("node1", parse(&config(&t, "")), ca.clone(), |_| {}).await;
    let n2 = node("node2", parse(&config(&t, STRICT)), ca.clone(), |_| {}).await;
    let pod_a: IpAddr = POD_A.parse().unwrap();
    let pod_b: IpAddr = POD_B.parse().unwrap();

    // The application in pod B: an HTTP server serving a file with a recognisable marker.
    let dir = tempfile::tempdir().unwrap();
    let marker = "MARKER-plaintext-must-not-cross-nodes-0123456789";
    std::fs::write(dir.path().join("m.txt"), marker.repeat(50)).unwrap();
    let _server = t.pb.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "0.0.0.0",
        "--directory",
        dir.path().to_str().unwrap(),
    ]);
    // Capture between the nodes while traffic flows.
    let pcap = dir.path().join("wire.pcap");
    let _tcpdump = t.n1.spawn(&[
        "tcpdump",
        "-i",
        &t.link1,
        "-nn",
        "-U",
        "-w",
        pcap.to_str().unwrap(),
        "tcp",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Pod A's curl goes to its outbound listener (the capture's job); ztunnel knows where it
    // was meant to go.
    n1.orig
        .set_outbound(pod_a, None, SocketAddr::new(pod_b, 8080));
    let out = t.pa.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--connect-to",
        &format!("{POD_B}:8080:127.0.0.1:15001"),
        &format!("http://{POD_B}:8080/m.txt"),
    ]);
    assert!(
        out.status.success(),
        "curl over HBONE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), marker.repeat(50));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(_tcpdump);

    // The wire between nodes: TLS records to 15008, never the marker.
    let raw = std::fs::read(&pcap).expect("pcap written");
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext leaked between nodes"
    );
    let hello = Command::new("tcpdump")
        .args(["-r", pcap.to_str().unwrap(), "-nn"])
        .arg("tcp dst port 15008 and (tcp[((tcp[12] & 0xf0) >> 2)] = 0x16)")
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&hello.stdout);
    assert!(
        lines.contains(&format!("{POD_B}.15008")),
        "a TLS handshake record to {POD_B}:15008 is on the wire: {lines}"
    );

    // Metrics on the destination: mutual TLS with the client's identity.
    let m = n2.zt.inputs().metrics.encode();
    assert!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "connection_security_policy=\"mutual_tls\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client-sa\""
            ]
        ) >= 1,
        "{m}"
    );

    // STRICT: plaintext to pod B's inbound listener is refused.
    n2.orig.set_inbound_port(pod_b, 8080);
    let plain = |t: &Topology| {
        t.pa.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{POD_B}:15006/m.txt"),
        ])
    };
    let out = plain(&t);
    assert!(!out.status.success(), "STRICT refuses plaintext");
    // PERMISSIVE (mesh default): accepted, labelled `none`.
    n2.zt.update(&parse(&config(&t, "")));
    let out = plain(&t);
    assert!(
        out.status.success(),
        "PERMISSIVE accepts plaintext: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = n2.zt.inputs().metrics.encode();
    assert!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"none\""]
        ) >= 1,
        "{m}"
    );
    n1.zt.shutdown().await;
    n2.zt.shutdown().await;
}

/// A cgroup v2 directory removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let p = std::path::Path::new("/sys/fs/cgroup/unified").join(name);
        let _ = std::fs::remove_dir(&p);
        std::fs::create_dir_all(&p).expect("cgroup v2 at /sys/fs/cgroup/unified");
        Cgroup(p)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The real thing: eBPF capture loaded from `target/ebpf/mesh-capture.o` (built by
/// `cargo xtask build-ebpf`), the application's plain `curl http://<pod B>:8080/` from pod A's
/// cgroup is captured, tunnelled over HBONE and steered by sk_lookup into pod B's listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_captured_curl_goes_through_both_ztunnels() {
    use ztunnel::capture::EbpfCapture;
    let object = ztunnel::redirect::object_path();
    assert!(
        object.exists(),
        "eBPF object {} missing: run `cargo xtask build-ebpf` first",
        object.display()
    );
    let capture = Arc::new(EbpfCapture(Arc::new(
        ztunnel::redirect::Capture::load(&object).expect("eBPF capture loads"),
    )));
    let t = topology();
    let cg_a = Cgroup::new(&format!("{}-cg", t.pa.0));
    let cg_b = Cgroup::new(&format!("{}-cg", t.pb.0));
    let pod = |name: &str, sa: &str, ip: &str, node: &str, ns: &Netns, cg: &Cgroup| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels: {{app: {name}}}
  annotations: {{mesh.local/netns: "{}", mesh.local/cgroup: "{}"}}
spec: {{nodeName: {node}, serviceAccountName: {sa}}}
status: {{podIP: "{ip}"}}
---"#,
            ns.path(),
            cg.0.display()
        )
    };
    let yaml = [
        ambient_ns("demo"),
        pod("client", "client-sa", POD_A, "node1", &t.pa, &cg_a),
        pod("server", "server-sa", POD_B, "node2", &t.pb, &cg_b),
    ]
    .concat();
    let ca = ca();
    let start = |name: &'static str| {
        let capture = capture.clone();
        let yaml = yaml.clone();
        let ca = ca.clone();
        async move {
            let mut cfg = ztunnel::config::Config::new(name);
            let lo: IpAddr = "127.0.0.1".parse().unwrap();
            cfg.admin_addr = SocketAddr::new(lo, 0);
            cfg.metrics_addr = SocketAddr::new(lo, 0);
            cfg.readiness_addr = SocketAddr::new(lo, 0);
            cfg.capture = ztunnel::config::CaptureMode::Ebpf;
            ztunnel::app::Ztunnel::start(
                cfg,
                ztunnel::app::StartOptions {
                    resources: parse(&yaml),
                    model: None,
                    orig_dst: capture.clone(),
                    ca: Some(ca),
                    log_control: None,
                    capture: Some(capture),
                },
            )
            .await
            .expect("ztunnel starts")
        }
    };
    let z1 = start("node1").await;
    let z2 = start("node2").await;
    assert_eq!(z1.enrolled(), vec![POD_A.parse::<IpAddr>().unwrap()]);
    assert_eq!(z2.enrolled(), vec![POD_B.parse::<IpAddr>().unwrap()]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.txt"), "captured-hello").unwrap();
    let _server = t.pb.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "0.0.0.0",
        "--directory",
        dir.path().to_str().unwrap(),
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} curl -sS --max-time 10 http://{POD_B}:8080/m.txt",
        cg_a.0.display(),
        t.pa.0
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh").args(["-c", &script]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "captured curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "captured-hello");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m1 = z1.inputs().metrics.encode();
    let m2 = z2.inputs().metrics.encode();
    assert!(
        metric(
            &m1,
            "istio_tcp_connections_opened_total",
            &["reporter=\"source\""]
        ) >= 1,
        "{m1}"
    );
    assert!(
        metric(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"mutual_tls\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client-sa\"",
                "source_workload=\"client\""
            ]
        ) >= 1,
        "{m2}"
    );
    let body = http_get(z2.metrics_addr(), "/metrics").await;
    assert!(
        body.contains("ztunnel_ebpf_captured_total{program=\"sk_lookup\"}"),
        "{body}"
    );
    z1.shutdown().await;
    z2.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
