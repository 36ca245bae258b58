//! Glue between the proxy and the eBPF loader ([`crate::redirect`]): original destinations
//! come from the capture maps, and each enrolled pod gets its programs attached with the
//! in-pod listeners as `sk_lookup` targets.

use crate::app::CaptureHook;
use crate::proxy::{OrigDstSource, PodProxy};
use crate::redirect::{Capture, PodAttachment, PodCaptureSpec};
use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// eBPF capture as an original-destination source and a pod attach hook.
pub struct EbpfCapture(pub Arc<Capture>);

impl std::fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EbpfCapture")
    }
}

impl OrigDstSource for EbpfCapture {
    fn outbound(
        &self,
        _pod: IpAddr,
        sock: BorrowedFd<'_>,
        _peer: SocketAddr,
        _local: SocketAddr,
    ) -> Option<SocketAddr> {
        let dst = self.0.original_dst(sock)?;
        // Sockmap fast path (issue 8, a no-op unless MESH_FASTPATH=on): the accepted socket
        // must be registered before the proxy's first write to it.
        if let Err(e) = self.0.accelerate(sock) {
            tracing::debug!("fast path not set up for an outbound connection: {e}");
        }
        Some(dst)
    }

    fn delivery(&self, sock: BorrowedFd<'_>) {
        // The application's accepted socket is registered by the kernel (pod cgroup's
        // sock_ops); ours must be in the map before our first write to it.
        if let Err(e) = self.0.accelerate(sock) {
            tracing::debug!("fast path not set up for a delivery connection: {e}");
        }
    }

    fn flow_meter(&self, sock: BorrowedFd<'_>) -> Option<crate::redirect::FlowMeter> {
        self.0.flow_meter(sock)
    }
}

impl CaptureHook for EbpfCapture {
    fn attach(&self, pod: &PodProxy) -> Result<Box<dyn Any + Send + Sync>, String> {
        let w = &pod.ctx.workload;
        let (Some(netns), Some(cgroup)) = (&w.netns, &w.cgroup) else {
            return Err(format!(
                "pod {}/{} needs the {} and {} annotations for eBPF capture",
                w.namespace,
                w.name,
                common::k8s::NETNS_ANNOTATION,
                common::k8s::CGROUP_ANNOTATION
            ));
        };
        let spec = PodCaptureSpec {
            cgroup,
            netns,
            pod_ip: w.ip,
            hbone_listener: pod.hbone_fd(),
            plaintext_listener: pod.plaintext_fd(),
            excluded_ports: &w.excluded_outbound_ports,
            excluded_inbound_ports: &w.excluded_inbound_ports,
            health_check_src: None,
        };
        let a = self.0.attach_pod(&spec).map_err(|e| e.to_string())?;
        Ok(Box::new(a))
    }

    fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let c = self.0.counters();
        let mut out = String::new();
        for (kind, help) in [
            ("captured", "Connections captured by the eBPF programs"),
            ("passed", "Connections the eBPF programs left alone"),
            (
                "errors",
                "Connections left alone because of a capture failure",
            ),
        ] {
            let _ = writeln!(out, "# HELP ztunnel_ebpf_{kind} {help}.");
            let _ = writeln!(out, "# TYPE ztunnel_ebpf_{kind} counter");
            for (program, p) in c.by_program() {
                let v = match kind {
                    "captured" => p.captured,
                    "passed" => p.passed,
                    _ => p.errors,
                };
                let _ = writeln!(
                    out,
                    "ztunnel_ebpf_{kind}_total{{program=\"{program}\"}} {v}"
                );
            }
        }
        // Sockmap fast path (issue 8); all zero while it is off.
        for (name, kind, help, v) in self.0.fastpath_counters().metrics() {
            let sample = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let _ = writeln!(out, "# HELP {name} {help}.");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{sample} {v}");
        }
        out
    }

    fn describe(&self, attachment: &(dyn Any + Send + Sync)) -> serde_json::Value {
        attachment
            .downcast_ref::<PodAttachment>()
            .and_then(|a| serde_json::to_value(a.state()).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}
