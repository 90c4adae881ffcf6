//! A vCPU thread: runs `KVM_RUN`, dispatches port and MMIO exits to the buses, and turns fatal
//! exits into a stop reason for the whole machine.

use std::sync::Arc;

use devices::bus::Bus;
use hv::{KvmFlavour, Vcpu, VcpuExit};

use crate::control::{Control, StopReason};

/// Everything one vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU.
    pub vcpu: Vcpu,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where to report a stop.
    pub control: Arc<Control>,
    /// The host's KVM flavour, to explain emulation failures on `kvm_pvm`.
    pub flavour: KvmFlavour,
}

impl VcpuRunner {
    /// Runs until the machine stops. Never panics on anything the guest does.
    pub fn run(mut self) {
        while !self.control.stopping() {
            let id = self.vcpu.id();
            let fatal = match self.vcpu.run() {
                Ok(VcpuExit::IoIn { port, data }) => {
                    self.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut { port, data }) => {
                    self.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead { addr, data }) => {
                    self.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite { addr, data }) => {
                    self.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Interrupted) | Ok(VcpuExit::Hlt) => None,
                Ok(VcpuExit::SystemShutdown) => {
                    self.control.stop(StopReason::PowerOff);
                    None
                }
                Ok(VcpuExit::SystemReset) => {
                    self.control.stop(StopReason::Reset);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(format!(
                    "vCPU {id} triple-faulted (CPU shutdown) at rip {:#x}",
                    self.vcpu.rip().unwrap_or(0)
                )),
                Ok(VcpuExit::InternalError) => {
                    let detail = self.vcpu.internal_error();
                    let hint = if self.flavour == KvmFlavour::Pvm {
                        " (note: this host's KVM is kvm_pvm, whose ring-0 emulator also fails on instructions a hardware KVM runs)"
                    } else {
                        ""
                    };
                    Some(format!(
                        "vCPU {id}: KVM internal error at rip {:#x}: {detail}{hint}",
                        self.vcpu.rip().unwrap_or(0)
                    ))
                }
                Ok(VcpuExit::FailEntry(reason)) => Some(format!(
                    "vCPU {id}: VM entry failed (hardware reason {reason:#x})"
                )),
                Ok(VcpuExit::Other(what)) => Some(format!("vCPU {id}: unexpected exit {what}")),
                Err(e) => Some(format!("vCPU {id}: {e}")),
            };
            if let Some(msg) = fatal {
                self.control.stop(StopReason::Crash(msg));
            }
        }
    }
}
