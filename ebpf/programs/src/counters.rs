//! Per-CPU outcome counters: no atomics needed, ztunnel sums the CPUs when it reads them.

use ebpf_common::counter;

use crate::maps::COUNTERS;

/// What a program did with one connection.
#[derive(Clone, Copy)]
pub enum Outcome {
    Captured,
    Passed,
}

/// Count `outcome` (or an error) for `program` (an `ebpf_common::counter::PROG_*`).
#[inline(always)]
pub fn count<E>(program: u32, result: &Result<Outcome, E>) {
    let outcome = match result {
        Ok(Outcome::Captured) => counter::CAPTURED,
        Ok(Outcome::Passed) => counter::PASSED,
        Err(_) => counter::ERRORS,
    };
    if let Some(slot) = COUNTERS.get_ptr_mut(counter::index(program, outcome)) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on their CPU mid-update.
        unsafe { *slot += 1 };
    }
}
