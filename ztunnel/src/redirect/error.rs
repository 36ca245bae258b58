//! Errors of the capture loader, worded for the operator who has to fix the node: each names
//! the capability, kernel feature or file that is missing, and verifier rejections carry the
//! verifier's log verbatim.

use std::{io, path::PathBuf};

/// Why eBPF capture could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// The compiled kernel programs are not where the loader looked.
    #[error(
        "eBPF object {path} cannot be read ({source}); build it with `cargo xtask build-ebpf` \
         or point {env} at it",
        env = super::OBJECT_ENV
    )]
    ObjectMissing { path: PathBuf, source: io::Error },

    /// The kernel refused for lack of privilege.
    #[error(
        "{operation} was refused ({source}): ztunnel needs CAP_BPF and CAP_NET_ADMIN \
         (or root) to load and attach its capture programs"
    )]
    MissingCapability {
        operation: String,
        source: io::Error,
    },

    /// The verifier rejected a program; `log` is its output, unedited.
    #[error("the kernel verifier rejected {program} ({source}); verifier log:\n{log}")]
    Verifier {
        program: &'static str,
        source: io::Error,
        log: String,
    },

    /// The pod's cgroup path is not on a cgroup v2 mount.
    #[error(
        "{path} is not a cgroup v2 directory: cgroup v2 must be mounted (e.g. at \
         /sys/fs/cgroup or /sys/fs/cgroup/unified) and the path must exist"
    )]
    NoCgroupV2 { path: PathBuf },

    /// The pod's network namespace path cannot be used.
    #[error("{path} is not a network namespace: {reason}")]
    BadNetns { path: PathBuf, reason: String },

    /// A listener socket handed in cannot be used for this pod.
    #[error("{listener} listener: {reason}")]
    BadListener {
        listener: &'static str,
        reason: String,
    },

    /// This process already captures that cgroup or network namespace.
    #[error("{what} is already attached by this ztunnel")]
    AlreadyAttached { what: String },

    /// The object does not contain what this loader expects (built from another revision).
    #[error("eBPF object has no {kind} named {name}; rebuild it with `cargo xtask build-ebpf`")]
    ObjectMismatch {
        kind: &'static str,
        name: &'static str,
    },

    /// Any other failure of the kernel or aya, with the step that failed.
    #[error("{operation}: {source}")]
    Kernel {
        operation: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RedirectError {
    /// Wrap `source` as the failure of `operation`, recognising refusals for lack of privilege
    /// anywhere in its chain so they name the capability instead of a bare EPERM.
    pub(crate) fn kernel(
        operation: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let operation = operation.into();
        if let Some(errno) = permission_errno(&source) {
            return Self::MissingCapability {
                operation,
                source: io::Error::from_raw_os_error(errno),
            };
        }
        Self::Kernel {
            operation,
            source: Box::new(source),
        }
    }

    /// True when the failure is a missing privilege (the process should not retry).
    pub fn is_missing_capability(&self) -> bool {
        matches!(self, Self::MissingCapability { .. })
    }
}

/// EPERM found in the error chain, if any. (EACCES is not included: the verifier uses it for
/// rejected programs, which are not a privilege problem.)
fn permission_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(code @ libc::EPERM) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = e.source();
    }
    None
}
