//! Capture counters read from the programs' per-CPU array, for metrics and `/config_dump`.

use ebpf_common::counter;
use serde::Serialize;

/// Outcomes of one program since the object was loaded (all pods together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgramCounters {
    /// Connections rewritten (connect), recorded (sock_ops) or steered (sk_lookup).
    pub captured: u64,
    /// Connections the program looked at and left alone (loopback, excluded, not enrolled).
    pub passed: u64,
    /// Connections left alone because of a failure (map full, listener missing).
    pub errors: u64,
}

/// Counters of every capture program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaptureCounters {
    pub connect4: ProgramCounters,
    pub connect6: ProgramCounters,
    pub sock_ops: ProgramCounters,
    pub sk_lookup: ProgramCounters,
}

impl CaptureCounters {
    /// Build from a reader of summed slots (`slot` gets an `ebpf_common::counter` index).
    pub(crate) fn read(mut slot: impl FnMut(u32) -> u64) -> Self {
        let mut program = |p: u32| ProgramCounters {
            captured: slot(counter::index(p, counter::CAPTURED)),
            passed: slot(counter::index(p, counter::PASSED)),
            errors: slot(counter::index(p, counter::ERRORS)),
        };
        Self {
            connect4: program(counter::PROG_CONNECT4),
            connect6: program(counter::PROG_CONNECT6),
            sock_ops: program(counter::PROG_SOCK_OPS),
            sk_lookup: program(counter::PROG_SK_LOOKUP),
        }
    }

    /// Per program name, for exporting as labelled metrics.
    pub fn by_program(&self) -> [(&'static str, ProgramCounters); 4] {
        [
            ("connect4", self.connect4),
            ("connect6", self.connect6),
            ("sock_ops", self.sock_ops),
            ("sk_lookup", self.sk_lookup),
        ]
    }
}
