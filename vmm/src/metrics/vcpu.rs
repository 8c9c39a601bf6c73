//! KVM_RUN exits by reason: each vCPU bumps its own counters (one `Relaxed` atomic add per
//! exit, no lock, its own cache line); a flush sums them over the vCPUs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why KVM_RUN returned, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Port I/O read (`KVM_EXIT_IO`, in).
    IoIn,
    /// Port I/O write (`KVM_EXIT_IO`, out).
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT outside the in-kernel irqchip.
    Hlt,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` (shutdown, reset, crash).
    SystemEvent,
    /// VM entry failed.
    FailEntry,
    /// KVM internal error (emulation failure).
    InternalError,
    /// Anything else (`KVM_EXIT_INTR` after a kick or signal included).
    Other,
}

impl ExitKind {
    /// Every kind, in the order of their counters.
    pub const ALL: [ExitKind; 10] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Other,
    ];

    /// The key in the metrics file's `vcpu_exits`.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::InternalError => "internal_error",
            ExitKind::Other => "other",
        }
    }
}

/// The exit counters of one vCPU, written only by its thread.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct VcpuExitCounters {
    counts: [AtomicU64; ExitKind::ALL.len()],
}

impl VcpuExitCounters {
    /// Counts one exit of `kind`.
    pub fn record(&self, kind: ExitKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Exits of `kind` so far.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }
}

/// Exits by kind name summed over `vcpus`; every kind is present (0 when none).
pub fn sum_exits(vcpus: &[Arc<VcpuExitCounters>]) -> BTreeMap<String, u64> {
    ExitKind::ALL
        .iter()
        .map(|&kind| {
            let total = vcpus
                .iter()
                .fold(0u64, |sum, v| sum.saturating_add(v.get(kind)));
            (kind.name().to_string(), total)
        })
        .collect()
}
