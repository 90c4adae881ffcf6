//! What a saved domain keeps of its processors and of the VM around them: each vCPU's
//! registers, FPU and extended state, local APIC, MSRs, pending events and run state
//! ([`VcpuState`]); the in-kernel PICs, IOAPIC and PIT, and kvmclock ([`VmState`]).
//!
//! Each part is one of KVM's own structures, taken and given back with its `KVM_GET_*` and
//! `KVM_SET_*` ioctl, in the order KVM needs (the multiprocessor state first when taking, as
//! it makes KVM settle the local APIC's pending events; the local APIC before the MSRs when
//! giving, as the TSC deadline lives in both). [`VcpuState::encode`] and [`VmState::encode`]
//! write them as little-endian records: each structure as its bytes behind its length, so a
//! reader on another KVM whose structure has another size refuses it by name; the MSRs as
//! (index, value) pairs. The bytes come from `kvm-bindings`' `zerocopy` derives, not from
//! pointer casts. Decoding checks every length and never panics; KVM checks the values when
//! they are given back, and refuses what it cannot take.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::HvError;

/// The most MSRs a saved vCPU may list (KVM saves a few dozen).
pub const MAX_MSRS: usize = 1024;

/// Why saved vCPU or VM state could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateFormatError {
    /// The bytes end inside a field.
    #[error("the saved {0} is truncated")]
    Truncated(&'static str),
    /// A structure's length is not this KVM's.
    #[error("the saved {what} is {saved} bytes, but this host's KVM structure is {here}")]
    Size {
        /// Which structure.
        what: &'static str,
        /// Its length in the saved bytes.
        saved: usize,
        /// Its length here.
        here: usize,
    },
    /// More MSRs than [`MAX_MSRS`].
    #[error("the saved vCPU lists {0} MSRs, more than the {MAX_MSRS} allowed")]
    TooManyMsrs(usize),
    /// Bytes after the last field.
    #[error("{0} bytes follow the saved state")]
    Trailing(usize),
}

/// Everything KVM keeps of one vCPU that a restored guest needs.
pub struct VcpuState {
    /// The multiprocessor run state (running, halted, waiting for a startup IPI).
    mp_state: kvm_mp_state,
    /// General-purpose registers, flags and instruction pointer.
    regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, the APIC base.
    sregs: kvm_sregs,
    /// The x87, SSE and AVX state, in the XSAVE layout (the legacy 4 KiB area).
    xsave: Box<kvm_xsave>,
    /// The extended control registers (XCR0).
    xcrs: kvm_xcrs,
    /// The debug registers.
    debugregs: kvm_debugregs,
    /// The local APIC's registers.
    lapic: kvm_lapic_state,
    /// The MSRs KVM lists as worth saving that this vCPU could read, with their values.
    msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SIPIs, and interrupt shadows.
    events: kvm_vcpu_events,
    /// The TSC's frequency in kHz, if KVM tells it.
    tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

/// The in-kernel interrupt controllers, timer and clock of a VM.
#[derive(Clone, Copy)]
pub struct VmState {
    /// The primary 8259 PIC.
    pic_master: kvm_irqchip,
    /// The secondary 8259 PIC.
    pic_slave: kvm_irqchip,
    /// The IOAPIC.
    ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pit: kvm_pit_state2,
    /// kvmclock: the guest's clock in nanoseconds.
    clock: kvm_clock_data,
    /// The host's real time (`CLOCK_REALTIME`, in nanoseconds) right after the clock was
    /// read: a restore moves the clock on by the real time passed since.
    realtime_ns: u64,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .field("realtime_ns", &self.realtime_ns)
            .finish_non_exhaustive()
    }
}

/// Appends `value`'s bytes behind their length.
fn put<T: IntoBytes + zerocopy::Immutable + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let bytes = value.as_bytes();
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads little-endian fields and KVM structures, each bounded by what is left.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateFormatError> {
        if n > self.0.len() {
            return Err(StateFormatError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StateFormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, StateFormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn record(&mut self, what: &'static str) -> Result<&'a [u8], StateFormatError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn get<T: FromBytes>(&mut self, what: &'static str) -> Result<T, StateFormatError> {
        let bytes = self.record(what)?;
        T::read_from_bytes(bytes).map_err(|_| StateFormatError::Size {
            what,
            saved: bytes.len(),
            here: std::mem::size_of::<T>(),
        })
    }

    fn finish(self) -> Result<(), StateFormatError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(StateFormatError::Trailing(n)),
        }
    }
}

impl VcpuState {
    /// A state of zeros without MSRs: what the formats around it are tested and fuzzed with.
    /// KVM would refuse it.
    pub fn zeroed() -> VcpuState {
        VcpuState {
            mp_state: kvm_mp_state::new_zeroed(),
            regs: kvm_regs::new_zeroed(),
            sregs: kvm_sregs::new_zeroed(),
            xsave: Box::new(kvm_xsave::new_zeroed()),
            xcrs: kvm_xcrs::new_zeroed(),
            debugregs: kvm_debugregs::new_zeroed(),
            lapic: kvm_lapic_state::new_zeroed(),
            msrs: Vec::new(),
            events: kvm_vcpu_events::new_zeroed(),
            tsc_khz: None,
        }
    }

    /// The state as little-endian records (see the module's doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        put(&mut out, &self.mp_state);
        put(&mut out, &self.regs);
        put(&mut out, &self.sregs);
        put(&mut out, &*self.xsave);
        put(&mut out, &self.xcrs);
        put(&mut out, &self.debugregs);
        put(&mut out, &self.lapic);
        put(&mut out, &self.events);
        out.extend_from_slice(&(self.msrs.len() as u32).to_le_bytes());
        for m in &self.msrs {
            out.extend_from_slice(&m.index.to_le_bytes());
            out.extend_from_slice(&m.data.to_le_bytes());
        }
        out.extend_from_slice(&self.tsc_khz.unwrap_or(0).to_le_bytes());
        out
    }

    /// The state [`VcpuState::encode`] wrote, every length checked.
    pub fn decode(bytes: &[u8]) -> Result<VcpuState, StateFormatError> {
        let mut f = Fields(bytes);
        let mp_state = f.get("multiprocessor state")?;
        let regs = f.get("registers")?;
        let sregs = f.get("special registers")?;
        let xsave = Box::new(f.get::<kvm_xsave>("XSAVE area")?);
        let xcrs = f.get("extended control registers")?;
        let debugregs = f.get("debug registers")?;
        let lapic = f.get("local APIC")?;
        let events = f.get("pending events")?;
        let count = f.u32("MSR count")? as usize;
        if count > MAX_MSRS {
            return Err(StateFormatError::TooManyMsrs(count));
        }
        let mut msrs = Vec::with_capacity(count);
        for _ in 0..count {
            let index = f.u32("MSR index")?;
            let data = f.u64("MSR value")?;
            msrs.push(kvm_msr_entry {
                index,
                data,
                ..Default::default()
            });
        }
        let tsc_khz = Some(f.u32("TSC frequency")?).filter(|&k| k != 0);
        f.finish()?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }
}

impl VmState {
    /// A state of zeros: what the formats around it are tested and fuzzed with.
    pub fn zeroed() -> VmState {
        VmState {
            pic_master: kvm_irqchip::new_zeroed(),
            pic_slave: kvm_irqchip::new_zeroed(),
            ioapic: kvm_irqchip::new_zeroed(),
            pit: kvm_pit_state2::new_zeroed(),
            clock: kvm_clock_data::new_zeroed(),
            realtime_ns: 0,
        }
    }

    /// Nanoseconds of the host's real time since the state was taken (0 if the host's clock
    /// was set back meanwhile).
    pub fn elapsed_ns(&self) -> u64 {
        realtime_ns().saturating_sub(self.realtime_ns)
    }

    /// The state as little-endian records (see the module's doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2048);
        put(&mut out, &self.pic_master);
        put(&mut out, &self.pic_slave);
        put(&mut out, &self.ioapic);
        put(&mut out, &self.pit);
        put(&mut out, &self.clock);
        out.extend_from_slice(&self.realtime_ns.to_le_bytes());
        out
    }

    /// The state [`VmState::encode`] wrote, every length checked.
    pub fn decode(bytes: &[u8]) -> Result<VmState, StateFormatError> {
        let mut f = Fields(bytes);
        let state = VmState {
            pic_master: f.get("primary PIC")?,
            pic_slave: f.get("secondary PIC")?,
            ioapic: f.get("IOAPIC")?,
            pit: f.get("PIT")?,
            clock: f.get("kvmclock")?,
            realtime_ns: f.u64("the host's real time")?,
        };
        f.finish()?;
        Ok(state)
    }
}

impl crate::Vcpu {
    /// Takes this vCPU's state. It must not be running (its thread parked), or the state is
    /// already stale. `msr_indices` are the MSRs to save ([`crate::Hypervisor::msrs_to_save`]);
    /// those this vCPU cannot read are left out.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, HvError> {
        let fd = self.fd();
        // First: KVM settles the local APIC's pending INIT and SIPI into the run state.
        let mp_state = fd
            .get_mp_state()
            .map_err(|e| HvError::ioctl("GET_MP_STATE", e))?;
        let regs = fd.get_regs().map_err(|e| HvError::ioctl("GET_REGS", e))?;
        let sregs = fd.get_sregs().map_err(|e| HvError::ioctl("GET_SREGS", e))?;
        let xsave = Box::new(fd.get_xsave().map_err(|e| HvError::ioctl("GET_XSAVE", e))?);
        let xcrs = fd.get_xcrs().map_err(|e| HvError::ioctl("GET_XCRS", e))?;
        let debugregs = fd
            .get_debug_regs()
            .map_err(|e| HvError::ioctl("GET_DEBUGREGS", e))?;
        let lapic = fd.get_lapic().map_err(|e| HvError::ioctl("GET_LAPIC", e))?;
        let msrs = self.read_msrs(msr_indices)?;
        let events = fd
            .get_vcpu_events()
            .map_err(|e| HvError::ioctl("GET_VCPU_EVENTS", e))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Reads the MSRs in `indices` that this vCPU can read. `KVM_GET_MSRS` stops at the first
    /// it cannot; that one is skipped and the reading goes on after it.
    fn read_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, HvError> {
        let mut out = Vec::with_capacity(indices.len());
        let mut next = 0;
        while next < indices.len() {
            let chunk = &indices[next..indices.len().min(next + KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| HvError::Ioctl {
                op: "GET_MSRS",
                source: std::io::Error::other("too many MSRs"),
            })?;
            let read = self
                .fd()
                .get_msrs(&mut msrs)
                .map_err(|e| HvError::ioctl("GET_MSRS", e))?;
            out.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
            next += read;
            if read < chunk.len() {
                next += 1;
            }
        }
        Ok(out)
    }

    /// The frequency this vCPU's TSC runs at, in kHz, if KVM tells it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd().get_tsc_khz().ok()
    }

    /// Makes this vCPU's TSC run at `khz` (`KVM_SET_TSC_KHZ`: the CPU scales the TSC, or KVM
    /// catches a slower one up), or says, with both frequencies, that this host's KVM cannot.
    /// Nothing to do where it runs at `khz` already, or where KVM does not tell its frequency.
    pub fn run_tsc_at(&self, khz: u32) -> Result<(), HvError> {
        let fd = self.fd();
        let Ok(here) = fd.get_tsc_khz() else {
            return Ok(());
        };
        if khz == here {
            return Ok(());
        }
        let refused = |why: String| HvError::Ioctl {
            op: "SET_TSC_KHZ",
            source: std::io::Error::other(format!(
                "the saved vCPU's TSC ran at {khz} kHz, this host's at {here} kHz, and this \
                 host's KVM cannot run it at {khz} kHz ({why})"
            )),
        };
        fd.set_tsc_khz(khz).map_err(|e| refused(e.to_string()))?;
        // Taken, and told back (a KVM has been seen to take a frequency it then cannot tell).
        match fd.get_tsc_khz() {
            Ok(now) if now == khz => Ok(()),
            Ok(now) => Err(refused(format!("it took it, then said {now} kHz"))),
            Err(e) => Err(refused(format!("it took it, then could not tell it: {e}"))),
        }
    }

    /// Gives this vCPU the state `state` (its CPUID must already be set, as when it was
    /// saved), its TSC moved on by `elapsed_ns` of real time (the time the guest spent saved,
    /// as its kvmclock is: a guest that keeps time with the TSC keeps the right time too).
    /// A state whose TSC ran at another frequency than this vCPU's gets its frequency
    /// (`KVM_SET_TSC_KHZ`: the CPU scales the TSC, or KVM catches a slower one up), or is
    /// refused with both frequencies where KVM cannot; an MSR this KVM does not take is refused
    /// by name.
    pub fn restore_state(&self, state: &VcpuState, elapsed_ns: u64) -> Result<(), HvError> {
        let fd = self.fd();
        if let Some(saved) = state.tsc_khz {
            self.run_tsc_at(saved)?;
        }
        fd.set_mp_state(state.mp_state)
            .map_err(|e| HvError::ioctl("SET_MP_STATE", e))?;
        fd.set_regs(&state.regs)
            .map_err(|e| HvError::ioctl("SET_REGS", e))?;
        fd.set_sregs(&state.sregs)
            .map_err(|e| HvError::ioctl("SET_SREGS", e))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` (the legacy 4 KiB area), which is all that
        // KVM_SET_XSAVE reads; Vessel never gives a guest the extended (AMX) features that need
        // the larger KVM_SET_XSAVE2 area.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(|e| HvError::ioctl("SET_XSAVE", e))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(|e| HvError::ioctl("SET_XCRS", e))?;
        fd.set_debug_regs(&state.debugregs)
            .map_err(|e| HvError::ioctl("SET_DEBUGREGS", e))?;
        fd.set_lapic(&state.lapic)
            .map_err(|e| HvError::ioctl("SET_LAPIC", e))?;
        let pairs: Vec<(u32, u64)> = state
            .msrs
            .iter()
            .map(|m| match (m.index, state.tsc_khz) {
                (MSR_IA32_TSC, Some(khz)) => (m.index, tsc_moved_on(m.data, khz, elapsed_ns)),
                _ => (m.index, m.data),
            })
            .collect();
        for chunk in pairs.chunks(KVM_MAX_MSR_ENTRIES) {
            self.set_msrs(chunk)?;
        }
        fd.set_vcpu_events(&state.events)
            .map_err(|e| HvError::ioctl("SET_VCPU_EVENTS", e))?;
        // Tells a guest using kvmclock that its vCPU was stopped by the host, so that its
        // watchdogs take the time it spent saved for what it is, not a lockup. A guest
        // without kvmclock has nothing to tell (KVM refuses: ignored).
        let _ = fd.kvmclock_ctrl();
        Ok(())
    }
}

impl crate::Vm {
    /// Takes the VM's interrupt controllers, PIT and clock. Its vCPUs must be parked.
    pub fn save_state(&self) -> Result<VmState, HvError> {
        let chip = |id: u32| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd()
                .get_irqchip(&mut c)
                .map(|()| c)
                .map_err(|e| HvError::ioctl("GET_IRQCHIP", e))
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd()
                .get_pit2()
                .map_err(|e| HvError::ioctl("GET_PIT2", e))?,
            clock: self
                .fd()
                .get_clock()
                .map_err(|e| HvError::ioctl("GET_CLOCK", e))?,
            realtime_ns: realtime_ns(),
        })
    }

    /// Gives the VM the interrupt controllers and PIT of `state`: first, before the devices
    /// that raise interrupts are restored.
    pub fn restore_interrupt_controllers(&self, state: &VmState) -> Result<(), HvError> {
        let fd = self.fd();
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            fd.set_irqchip(chip)
                .map_err(|e| HvError::ioctl("SET_IRQCHIP", e))?;
        }
        fd.set_pit2(&state.pit)
            .map_err(|e| HvError::ioctl("SET_PIT2", e))
    }

    /// Gives the VM the clock of `state`: last, just before its vCPUs run. kvmclock goes back
    /// to the saved reading moved on by the real time that passed since it was taken
    /// ([`VmState::elapsed_ns`]; measured by Vessel, as KVM's own `KVM_CLOCK_REALTIME` is
    /// offered only on hosts whose clock source is the TSC), so the guest's monotonic clock
    /// never goes back and its wall clock stays right.
    pub fn restore_clock(&self, state: &VmState) -> Result<(), HvError> {
        let fd = self.fd();
        let clock = kvm_clock_data {
            clock: moved_on(state.clock.clock, state.realtime_ns, realtime_ns()),
            ..Default::default()
        };
        fd.set_clock(&clock)
            .map_err(|e| HvError::ioctl("SET_CLOCK", e))
    }
}

/// The time-stamp counter's MSR.
const MSR_IA32_TSC: u32 = 0x10;

/// A TSC of `khz` that read `tsc`, `elapsed_ns` later.
fn tsc_moved_on(tsc: u64, khz: u32, elapsed_ns: u64) -> u64 {
    let ticks = u128::from(elapsed_ns) * u128::from(khz) / 1_000_000;
    tsc.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
}

/// The host's real time in nanoseconds since the epoch.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A clock that read `clock` at real time `then`, at real time `now`: moved on by the time
/// between, never back (a host clock set back meanwhile moves it by nothing).
fn moved_on(clock: u64, then: u64, now: u64) -> u64 {
    clock.saturating_add(now.saturating_sub(then))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu_state() -> VcpuState {
        let mut xsave = Box::new(kvm_xsave::new_zeroed());
        xsave.region[0] = 0x37f;
        xsave.region[1023] = 0xdead_beef;
        let mut lapic = kvm_lapic_state::new_zeroed();
        lapic.regs[0x20] = 1;
        VcpuState {
            mp_state: kvm_mp_state { mp_state: 3 },
            regs: kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                rax: 42,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr0: 0x8005_0033,
                efer: 0xd01,
                ..Default::default()
            },
            xsave,
            xcrs: kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            },
            debugregs: kvm_debugregs {
                dr7: 0x400,
                ..Default::default()
            },
            lapic,
            msrs: vec![
                kvm_msr_entry {
                    index: 0x10,
                    data: 123_456_789,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: 0xc000_0080,
                    data: 0xd01,
                    ..Default::default()
                },
            ],
            events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn a_vcpu_state_decodes_to_what_was_encoded() {
        let s = vcpu_state();
        let bytes = s.encode();
        let back = VcpuState::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(back.xsave.region[1023], 0xdead_beef);
        assert_eq!(back.msrs.len(), 2);
        assert_eq!(back.msrs[1].index, 0xc000_0080);
        assert_eq!(back.tsc_khz, Some(2_000_000));
    }

    #[test]
    fn damaged_vcpu_states_are_refused_by_name() {
        let bytes = vcpu_state().encode();
        for cut in [0, 3, 4, 100, bytes.len() - 1] {
            assert!(
                matches!(
                    VcpuState::decode(&bytes[..cut]),
                    Err(StateFormatError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            VcpuState::decode(&longer).unwrap_err(),
            StateFormatError::Trailing(1)
        );
        // The registers' record claims one byte less than kvm_regs has.
        let mut other_size = bytes.clone();
        let regs_at = 4 + std::mem::size_of::<kvm_mp_state>();
        let n = std::mem::size_of::<kvm_regs>() as u32 - 1;
        other_size[regs_at..regs_at + 4].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(
            VcpuState::decode(&other_size),
            Err(StateFormatError::Size {
                what: "registers",
                ..
            })
        ));
        // A count of MSRs beyond the bound is refused before anything is allocated for it.
        let msr_count_at = bytes.len() - 4 - 2 * 12 - 4;
        let mut many = bytes.clone();
        many[msr_count_at..msr_count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            VcpuState::decode(&many).unwrap_err(),
            StateFormatError::TooManyMsrs(u32::MAX as usize)
        );
    }

    #[test]
    fn a_vm_state_decodes_to_what_was_encoded() {
        let mut s = VmState {
            pic_master: kvm_irqchip::default(),
            pic_slave: kvm_irqchip::default(),
            ioapic: kvm_irqchip::default(),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 5_000_000_000,
                ..Default::default()
            },
            realtime_ns: 0,
        };
        s.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
        s.realtime_ns = 1_796_000_000_000_000_000;
        s.pit.channels[0].count = 0x1234;
        let bytes = s.encode();
        let back = VmState::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.clock.clock, 5_000_000_000);
        assert_eq!(back.ioapic.chip_id, KVM_IRQCHIP_IOAPIC);
        assert_eq!(back.realtime_ns, 1_796_000_000_000_000_000);
        assert!(VmState::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn the_tsc_moves_on_by_its_frequency() {
        // 2 GHz, 1.5 s: 3e9 ticks.
        assert_eq!(tsc_moved_on(1_000, 2_000_000, 1_500_000_000), 3_000_001_000);
        assert_eq!(tsc_moved_on(7, 2_000_000, 0), 7);
        assert_eq!(tsc_moved_on(u64::MAX - 5, 4_000_000, 10), u64::MAX);
    }

    #[test]
    fn the_clock_moves_on_by_the_real_time_passed_and_never_back() {
        assert_eq!(moved_on(5_000, 1_000_000, 1_000_700), 5_700);
        assert_eq!(moved_on(5_000, 1_000_000, 999_000), 5_000);
        assert_eq!(moved_on(u64::MAX - 1, 0, 10), u64::MAX);
    }

    /// A vCPU saved where the TSC ran at another frequency runs at the saved one here. A
    /// faster one always can (the CPU scales the TSC, or KVM catches it up); a slower one is
    /// scaled or refused, naming both frequencies. On `/dev/kvm`.
    #[test]
    fn a_vcpu_from_a_host_of_another_tsc_frequency_gets_it_or_is_refused() {
        let hv = crate::Hypervisor::open().expect("this test needs /dev/kvm");
        let vm = hv.create_vm().unwrap();
        let here = vm
            .create_vcpu(0)
            .unwrap()
            .fd()
            .get_tsc_khz()
            .expect("KVM_GET_TSC_KHZ");
        // 1% apart: beyond KVM's tolerance (250 ppm).
        for (id, saved) in [(1, here + here / 100), (2, here - here / 100)] {
            let vcpu = vm.create_vcpu(id).unwrap();
            let mut state = vcpu.save_state(&[]).unwrap();
            state.tsc_khz = Some(saved);
            match vcpu.restore_state(&state, 0) {
                Ok(()) => {
                    let now = vcpu.fd().get_tsc_khz().unwrap();
                    assert_eq!(now, saved, "the TSC runs at {now} kHz");
                }
                // KVM may keep the asked frequency in its books even when it refuses it: a
                // refused vCPU is thrown away.
                Err(e) if saved < here => {
                    let e = e.to_string();
                    assert!(
                        e.contains(&format!("{saved} kHz")) && e.contains(&format!("{here} kHz")),
                        "{e}"
                    );
                }
                Err(e) => panic!("a vCPU whose TSC ran 1% faster: {e}"),
            }
        }
    }
}
