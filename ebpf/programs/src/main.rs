//! Kernel programs that capture an enrolled pod's TCP traffic for the node's ztunnel.
//!
//! Four programs share the maps in [`maps`]; ztunnel's loader (`ztunnel/src/redirect`) loads
//! them once per process and attaches them per pod:
//! - [`outbound`]: `cgroup/connect4` + `cgroup/connect6` on the pod's cgroup rewrite TCP
//!   connects to 127.0.0.1:15001 and remember the original destination by socket cookie;
//!   `sock_ops` on the same cgroup re-keys it by the client's local address once the
//!   connection is established, which is what ztunnel sees as the accepted socket's peer.
//! - [`inbound`]: `sk_lookup` on the pod's network namespace hands new TCP connections for the
//!   pod IP to ztunnel's in-pod listeners (15008 HBONE, everything else plaintext 15006).
//!
//! Every program fails open (lets the connection continue unmodified) and counts an error:
//! breaking an application's networking is worse than one uncaptured connection, and a STRICT
//! peer still refuses the plaintext.
#![no_std]
#![no_main]

mod counters;
mod fastpath;
mod inbound;
mod maps;
mod outbound;

/// The kernel only checks this for GPL-only helpers; none is used, so the project's license.
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 11] = *b"Apache-2.0\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code paths that could panic
    // only if they are reachable, and BPF has no way to unwind.
    loop {}
}
