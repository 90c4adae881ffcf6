//! One virtual CPU: its initial state and its run loop's exits.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::cpu::{BootCpuState, CpuidEntry};
use crate::HvError;

/// Why `KVM_RUN` returned, in Vessel's own terms.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `in` from a port: fill `data`.
    IoIn {
        /// The port.
        port: u16,
        /// The bytes to fill (size × count for string I/O).
        data: &'a mut [u8],
    },
    /// `out` to a port.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: &'a [u8],
    },
    /// A read of unmapped guest-physical memory: fill `data`.
    MmioRead {
        /// The guest-physical address.
        addr: u64,
        /// The bytes to fill.
        data: &'a mut [u8],
    },
    /// A write to unmapped guest-physical memory.
    MmioWrite {
        /// The guest-physical address.
        addr: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// The guest halted with interrupts the in-kernel irqchip will never deliver.
    Hlt,
    /// Triple fault or similar: the CPU shut down.
    Shutdown,
    /// KVM asked for a system reset.
    SystemReset,
    /// KVM asked for a system power-off.
    SystemShutdown,
    /// `KVM_RUN` was interrupted by a signal (a kick) or by `immediate_exit`.
    Interrupted,
    /// KVM could not emulate an instruction or hit another internal error; see
    /// [`Vcpu::internal_error`].
    InternalError,
    /// VM entry failed with the given hardware reason.
    FailEntry(u64),
    /// Any other exit reason, named.
    Other(String),
}

/// One vCPU file descriptor and its APIC ID.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, id: u32) -> Self {
        Vcpu { fd, id }
    }

    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// This vCPU's index, which is also its APIC ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the CPUID table the guest sees.
    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), HvError> {
        let kvm: Vec<_> = entries.iter().map(|e| e.to_kvm()).collect();
        let cpuid = CpuId::from_entries(&kvm).map_err(|_| HvError::Ioctl {
            op: "SET_CPUID2",
            source: std::io::Error::other("too many CPUID entries"),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| HvError::ioctl("SET_CPUID2", e))
    }

    /// Writes model-specific registers; every one must be accepted.
    pub fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<(), HvError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| HvError::Ioctl {
            op: "SET_MSRS",
            source: std::io::Error::other("too many MSRs"),
        })?;
        let set = self
            .fd
            .set_msrs(&list)
            .map_err(|e| HvError::ioctl("SET_MSRS", e))?;
        if set != entries.len() {
            let rejected = entries[set].index;
            return Err(HvError::Ioctl {
                op: "SET_MSRS",
                source: std::io::Error::other(format!("MSR {rejected:#x} rejected")),
            });
        }
        Ok(())
    }

    /// Loads the registers a boot protocol starts the CPU with.
    pub fn set_boot_state(&self, state: &BootCpuState) -> Result<(), HvError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| HvError::ioctl("GET_SREGS", e))?;
        let mut regs = Default::default();
        state.apply(&mut sregs, &mut regs);
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| HvError::ioctl("SET_SREGS", e))?;
        self.fd
            .set_regs(&regs)
            .map_err(|e| HvError::ioctl("SET_REGS", e))
    }

    /// Sets the x87/SSE control words to their power-on values.
    pub fn reset_fpu(&self) -> Result<(), HvError> {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(|e| HvError::ioctl("SET_FPU", e))
    }

    /// Wires the local APIC's LINT0 to ExtINT and LINT1 to NMI, as a PC's firmware does.
    pub fn set_lapic_lint(&self) -> Result<(), HvError> {
        const LVT_LINT0: usize = 0x350;
        const LVT_LINT1: usize = 0x360;
        const DELIVERY_EXTINT: u32 = 7;
        const DELIVERY_NMI: u32 = 4;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(|e| HvError::ioctl("GET_LAPIC", e))?;
        for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| HvError::ioctl("SET_LAPIC", e))
    }

    /// Asks the next `KVM_RUN` to return at once (`true`), or clears that request.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Runs the vCPU until the next exit that needs the VMM.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, HvError> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(HvError::ioctl("RUN", e)),
        };
        Ok(match exit {
            KvmExit::IoIn(port, data) => VcpuExit::IoIn { port, data },
            KvmExit::IoOut(port, data) => VcpuExit::IoOut { port, data },
            KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::InternalError => VcpuExit::InternalError,
            KvmExit::FailEntry(reason, _) => VcpuExit::FailEntry(reason),
            KvmExit::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExit::SystemReset,
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::SystemShutdown,
                other => VcpuExit::Other(format!("system event {other}")),
            },
            other => VcpuExit::Other(format!("{other:?}")),
        })
    }

    /// Details of the last [`VcpuExit::InternalError`]: the suberror and, for emulation
    /// failures, the guest instruction pointer when KVM reports it.
    pub fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let kind = match internal.suberror {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event",
            4 => "unexpected exit reason",
            _ => "internal error",
        };
        format!(
            "{kind} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        )
    }

    /// The guest's instruction pointer now (for crash reports).
    pub fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    /// What a crash report needs of this vCPU's state: where it ran (rip, rsp, cs), its
    /// paging (cr0, cr2, cr3, cr4, efer) and its descriptor tables (idt, gdt, tr), one line;
    /// or, where KVM reset it at a triple fault (AMD), that it did.
    pub fn crash_state(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "(its registers cannot be read)".into();
        };
        if r.rip == 0xfff0 && s.cs.selector == 0xf000 {
            // AMD's KVM reinitialises a vCPU at its shutdown exit (the VMCB is undefined then).
            return "its state was reset by KVM at the shutdown (as on AMD hosts)".into();
        }
        format!(
            "rip {:#x} rsp {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} \
             idt {:#x}/{:#x} gdt {:#x}/{:#x} tr {:#x}",
            r.rip,
            r.rsp,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit,
            s.tr.base
        )
    }
}
