//! A vCPU thread: runs `KVM_RUN`, dispatches port and MMIO exits to the buses, and turns fatal
//! exits into a stop reason for the whole machine.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use hv::{KvmFlavour, Vcpu, VcpuExit};

use crate::control::{Control, StopReason};
use crate::stats::ExitReason;

/// Everything one vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU: locked by its thread while it runs the guest, and by whoever saves it while
    /// it is parked (a paused domain).
    pub vcpu: Arc<Mutex<Vcpu>>,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where to report a stop.
    pub control: Arc<Control>,
    /// The host's KVM flavour, to explain emulation failures on `kvm_pvm`.
    pub flavour: KvmFlavour,
    /// Where this vCPU's exits are counted.
    pub counters: crate::stats::MachineCounters,
}

impl VcpuRunner {
    /// The vCPU's index.
    pub fn id(&self) -> u32 {
        self.vcpu.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Runs until the machine stops. Never panics on anything the guest does.
    pub fn run(self) {
        let counters = self.counters.clone();
        let id = self.id();
        let count = |reason| {
            if let Some(c) = counters.get(id as usize) {
                c.exit(reason);
            }
        };
        if let Some(c) = counters.get(id as usize) {
            c.set_current_thread();
        }
        // Whether, since a pause was asked for, KVM_RUN returned at once with nothing left
        // to finish (see below).
        let mut drained = false;
        while !self.control.stopping() {
            crate::confinement::fault_due(hv::seccomp::ThreadKind::Vcpu);
            // Before parking, the vCPU enters KVM_RUN with `immediate_exit` set: KVM finishes
            // the instruction of the last port or MMIO exit (an IN's value into RAX, RIP past
            // it; a string instruction may exit again, and is served as usual) and returns at
            // once. So a paused vCPU's state, which a save takes, never holds a half-done exit.
            let pausing = self.control.pause_wanted();
            if pausing && drained {
                self.control.park_if_paused();
                drained = false;
                continue;
            }
            // Only the exit of this very run (an interruption while pausing) says it is drained.
            drained = false;
            let mut vcpu = self.vcpu.lock().unwrap_or_else(|e| e.into_inner());
            vcpu.set_immediate_exit(pausing);
            let fatal = match vcpu.run() {
                Ok(VcpuExit::IoIn { port, data }) => {
                    count(ExitReason::IoIn);
                    self.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut { port, data }) => {
                    count(ExitReason::IoOut);
                    self.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead { addr, data }) => {
                    count(ExitReason::MmioRead);
                    self.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite { addr, data }) => {
                    count(ExitReason::MmioWrite);
                    self.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Hlt) => {
                    count(ExitReason::Hlt);
                    None
                }
                Ok(VcpuExit::Interrupted) => {
                    count(ExitReason::Interrupted);
                    drained = pausing;
                    None
                }
                Ok(VcpuExit::SystemShutdown) => {
                    self.control.stop(StopReason::PowerOff);
                    None
                }
                Ok(VcpuExit::SystemReset) => {
                    self.control.stop(StopReason::Reset);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(format!(
                    "vCPU {id} triple-faulted (CPU shutdown): {}",
                    vcpu.crash_state()
                )),
                Ok(VcpuExit::InternalError) => {
                    let detail = vcpu.internal_error();
                    let hint = if self.flavour == KvmFlavour::Pvm {
                        " (note: this host's KVM is kvm_pvm, whose ring-0 emulator also fails on instructions a hardware KVM runs)"
                    } else {
                        ""
                    };
                    Some(format!(
                        "vCPU {id}: KVM internal error at rip {:#x}: {detail}{hint}",
                        vcpu.rip().unwrap_or(0)
                    ))
                }
                Ok(VcpuExit::FailEntry(reason)) => Some(format!(
                    "vCPU {id}: VM entry failed (hardware reason {reason:#x})"
                )),
                Ok(VcpuExit::Other(what)) => Some(format!("vCPU {id}: unexpected exit {what}")),
                Err(e) => Some(format!("vCPU {id}: {e}")),
            };
            drop(vcpu);
            if let Some(msg) = fatal {
                count(ExitReason::Other);
                self.control.stop(StopReason::Crash(msg));
            }
        }
        if let Some(c) = counters.get(id as usize) {
            c.finish();
        }
    }
}
