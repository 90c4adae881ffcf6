//! Per-domain accounting: exits by reason and CPU time per vCPU. Counters are atomics the vCPU
//! threads bump; readers take a snapshot at any time. CPU time comes from each thread's CPU
//! clock, not from `/proc` (a confined domain process has none).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why a vCPU left the guest, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// A port read.
    IoIn,
    /// A port write.
    IoOut,
    /// An MMIO read.
    MmioRead,
    /// An MMIO write.
    MmioWrite,
    /// The guest halted (only with a user-space HLT; an in-kernel LAPIC keeps it in KVM).
    Hlt,
    /// A signal or `immediate_exit` (a kick from the VMM).
    Interrupted,
    /// A power-off, reset or fatal exit.
    Other,
}

impl ExitReason {
    /// Every reason, in counter order.
    pub const ALL: [ExitReason; 7] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Interrupted,
        ExitReason::Other,
    ];

    /// The reason's name in the API and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Interrupted => "interrupted",
            ExitReason::Other => "other",
        }
    }
}

/// One vCPU's counters, shared between its thread and readers.
#[derive(Default)]
pub struct VcpuCounters {
    exits: [AtomicU64; ExitReason::ALL.len()],
    /// The vCPU thread's kernel thread id (0 until it starts and once it ended).
    tid: AtomicU64,
    /// The thread's CPU time when it ended.
    final_cpu_ns: AtomicU64,
}

impl VcpuCounters {
    /// Counts one exit.
    pub fn exit(&self, reason: ExitReason) {
        self.exits[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the calling thread as this vCPU's thread.
    pub fn set_current_thread(&self) {
        self.tid
            .store(u64::from(hv::thread::current_tid()), Ordering::Relaxed);
    }

    /// Called by the vCPU thread as it ends: keeps its CPU time.
    pub fn finish(&self) {
        let tid = self.tid.swap(0, Ordering::Relaxed);
        if tid != 0 {
            self.final_cpu_ns
                .store(thread_cpu_ns(tid), Ordering::Relaxed);
        }
    }

    /// A snapshot: exits by reason, and the thread's CPU time so far.
    pub fn snapshot(&self) -> VcpuSnapshot {
        let tid = self.tid.load(Ordering::Relaxed);
        VcpuSnapshot {
            exits: ExitReason::ALL
                .iter()
                .map(|r| (r.name(), self.exits[*r as usize].load(Ordering::Relaxed)))
                .collect(),
            cpu_ns: if tid == 0 {
                self.final_cpu_ns.load(Ordering::Relaxed)
            } else {
                thread_cpu_ns(tid)
            },
        }
    }
}

/// What a vCPU did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuSnapshot {
    /// Exits by reason name.
    pub exits: Vec<(&'static str, u64)>,
    /// CPU time its thread used, in nanoseconds (guest and VMM time together).
    pub cpu_ns: u64,
}

impl VcpuSnapshot {
    /// All exits.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|(_, n)| n).sum()
    }
}

/// The counters of every vCPU of one machine.
pub type MachineCounters = Arc<Vec<VcpuCounters>>;

/// CPU time of thread `tid` of this process in nanoseconds, or 0 if the thread is gone.
fn thread_cpu_ns(tid: u64) -> u64 {
    hv::thread::thread_cpu_ns(tid as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_cpu_time_are_counted() {
        let c = VcpuCounters::default();
        assert_eq!(c.snapshot().cpu_ns, 0);
        c.set_current_thread();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        c.exit(ExitReason::IoOut);
        c.exit(ExitReason::IoOut);
        c.exit(ExitReason::MmioRead);
        let s = c.snapshot();
        assert!(s.cpu_ns > 0, "this thread used CPU time");
        assert_eq!(s.total_exits(), 3);
        assert!(s.exits.contains(&("io_out", 2)));
        c.finish();
        assert!(c.snapshot().cpu_ns >= s.cpu_ns, "kept once the thread ends");
    }
}
