//! Forwards the programs' aya-log records into ztunnel's `tracing` output.
//!
//! The records arrive through a ring buffer that must be drained, so a small thread polls it;
//! a thread rather than a tokio task because `Capture` is created before (and independent of)
//! any runtime.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya_log::EbpfLogger;

/// Emits eBPF log records as `tracing` events under the `ebpf` target.
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The draining thread; stops when dropped.
pub(crate) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    /// Start draining the object's log buffer. `None` if the object has no log map (all log
    /// statements compiled out), which is not an error.
    pub(crate) fn start(ebpf: &mut aya::Ebpf) -> Option<Self> {
        let mut logger = match EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("eBPF logs unavailable: {e}");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the short timeout bounds shutdown latency.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
                    if ready > 0 {
                        logger.flush();
                    }
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
