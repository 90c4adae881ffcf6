//! What `vessel host-info` shows, as `xl info` does: the host (CPUs, memory, kernel), its KVM,
//! and what the control plane runs on it (domains by state, memory given to them).

use std::time::Duration;

use hv::{Hypervisor, KvmFlavour};
use vmm::RunState;

use crate::ControlPlane;

/// The host and what runs on it.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Physical memory (MemTotal), if it could be read.
    pub memory_bytes: Option<u64>,
    /// The kernel's release (`uname -r`), if it could be read.
    pub kernel: Option<String>,
    /// KVM, or why it cannot be used.
    pub kvm: Result<KvmInfo, String>,
    /// How long the control plane has run.
    pub uptime: Duration,
    /// Domains defined.
    pub domains: usize,
    /// Of them, running.
    pub running: usize,
    /// Of them, paused.
    pub paused: usize,
    /// Guest memory of the running and paused domains together (what they were configured
    /// with, not what they touched).
    pub memory_given_bytes: u64,
}

/// The host's KVM.
#[derive(Clone, Copy, Debug)]
pub struct KvmInfo {
    /// Hardware-assisted, or `kvm_pvm`.
    pub flavour: KvmFlavour,
    /// The most vCPUs one VM may have.
    pub max_vcpus: usize,
}

impl ControlPlane {
    /// The host and what runs on it.
    pub fn host_info(&self) -> HostInfo {
        // Each domain's state, read once, and its configured memory.
        let domains: Vec<(RunState, u64)> = self
            .registry
            .views()
            .iter()
            .map(|v| (v.state(), v.def.spec().memory))
            .collect();
        let count = |state: RunState| domains.iter().filter(|(s, _)| *s == state).count();
        HostInfo {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: vmm::domain::host_memory(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|r| r.trim().to_string()),
            kvm: Hypervisor::open()
                .map(|kvm| KvmInfo {
                    flavour: kvm.flavour(),
                    max_vcpus: kvm.max_vcpus(),
                })
                .map_err(|e| e.to_string()),
            uptime: self.uptime(),
            domains: domains.len(),
            running: count(RunState::Running),
            paused: count(RunState::Paused),
            memory_given_bytes: domains
                .iter()
                .filter(|(s, _)| s.is_active())
                .map(|(_, memory)| memory)
                .sum(),
        }
    }
}
