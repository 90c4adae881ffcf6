//! Opening KVM, creating a VM, memory slots, the in-kernel irqchip and event channels.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::cpu::CpuidEntry;
use crate::dirty::{DirtyPages, RegionLog};
use crate::memory::GuestMemory;
use crate::vcpu::Vcpu;
use crate::HvError;

/// Which kind of KVM this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmFlavour {
    /// A hardware-assisted KVM (VMX or SVM): runs unmodified guests.
    Hardware,
    /// `kvm_pvm`, a shadow-paging KVM for nested clouds: guest ring 3 runs natively but guest
    /// ring 0 is emulated instruction by instruction, with gaps, so stock kernels do not boot.
    Pvm,
}

impl KvmFlavour {
    /// Its name where it is written down (a domain's resource manifest, the host's report):
    /// `hardware` or `pvm`.
    pub fn name(self) -> &'static str {
        match self {
            KvmFlavour::Hardware => "hardware",
            KvmFlavour::Pvm => "pvm",
        }
    }

    /// The flavour called `name` (as [`KvmFlavour::name`] writes it).
    pub fn from_name(name: &str) -> Option<KvmFlavour> {
        [KvmFlavour::Hardware, KvmFlavour::Pvm]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

/// An open `/dev/kvm`.
pub struct Hypervisor {
    kvm: Kvm,
    flavour: KvmFlavour,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and the capabilities Vessel relies on.
    pub fn open() -> Result<Self, HvError> {
        let (file, flavour) = Self::open_device()?;
        Self::from_file(file, flavour)
    }

    /// Opens `/dev/kvm` (to hand to a domain process) and tells its flavour, which a confined
    /// process cannot look up itself.
    pub fn open_device() -> Result<(std::fs::File, KvmFlavour), HvError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/kvm")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => HvError::NoKvm,
                Some(libc::EACCES | libc::EPERM) => HvError::NoPermission,
                _ => HvError::Open(e),
            })?;
        let flavour = if Path::new("/sys/module/kvm_pvm").exists() {
            KvmFlavour::Pvm
        } else {
            KvmFlavour::Hardware
        };
        Ok((file, flavour))
    }

    /// KVM on an open `/dev/kvm` of the given flavour; checks the API version and the
    /// capabilities Vessel relies on.
    pub fn from_file(file: std::fs::File, flavour: KvmFlavour) -> Result<Self, HvError> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: `file` is an open descriptor of /dev/kvm that we own; ownership moves into
        // `Kvm`, which closes it on drop.
        let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(HvError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "in-kernel irqchip (KVM_CAP_IRQCHIP)"),
            (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
            (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
            (Cap::UserMemory, "user memory (KVM_CAP_USER_MEMORY)"),
            (
                Cap::ImmediateExit,
                "immediate exit (KVM_CAP_IMMEDIATE_EXIT)",
            ),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HvError::MissingCapability(name));
            }
        }
        Ok(Hypervisor { kvm, flavour })
    }

    /// Which kind of KVM this is.
    pub fn flavour(&self) -> KvmFlavour {
        self.flavour
    }

    /// The largest number of vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The CPUID leaves KVM can offer a guest on this host.
    pub fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HvError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| HvError::ioctl("GET_SUPPORTED_CPUID", e))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from_kvm).collect())
    }

    /// The MSRs a saved vCPU keeps: those this KVM lists as worth saving
    /// (`KVM_GET_MSR_INDEX_LIST`), and the memory-type MSRs it keeps but does not list (the
    /// MTRRs and the PAT, as QEMU saves them too; without them a restored guest's memory
    /// would all be uncacheable).
    pub fn msrs_to_save(&self) -> Result<Vec<u32>, HvError> {
        let mut msrs = self
            .kvm
            .get_msr_index_list()
            .map(|list| list.as_slice().to_vec())
            .map_err(|e| HvError::ioctl("GET_MSR_INDEX_LIST", e))?;
        const MTRR_DEF_TYPE: u32 = 0x2ff;
        const MTRR_VARIABLE: std::ops::RangeInclusive<u32> = 0x200..=0x20f;
        const MTRR_FIXED: [u32; 11] = [
            0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
        ];
        const PAT: u32 = 0x277;
        let memory_types = MTRR_VARIABLE.chain(MTRR_FIXED).chain([MTRR_DEF_TYPE, PAT]);
        for msr in memory_types {
            if !msrs.contains(&msr) {
                msrs.push(msr);
            }
        }
        Ok(msrs)
    }

    /// Creates an empty VM with an in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
    pub fn create_vm(&self) -> Result<Vm, HvError> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| HvError::ioctl("CREATE_VM", e))?;
        // The TSS and identity map live in the last pages below the 4 GiB MMIO area; the guest
        // never sees RAM there (see the memory layout in docs/design.md).
        fd.set_tss_address(0xfffb_d000)
            .map_err(|e| HvError::ioctl("SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(0xfffb_c000)
            .map_err(|e| HvError::ioctl("SET_IDENTITY_MAP_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| HvError::ioctl("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| HvError::ioctl("CREATE_PIT2", e))?;
        Ok(Vm {
            fd,
            next_slot: 0,
            memory: Vec::new(),
            slots: Vec::new(),
        })
    }
}

/// A non-blocking eventfd, for irqfds and ioeventfds.
pub fn new_eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK)
}

/// One KVM virtual machine.
pub struct Vm {
    // Declared before `memory` so the VM is closed before the memory it maps is unmapped.
    fd: VmFd,
    next_slot: u32,
    memory: Vec<Arc<GuestMemory>>,
    /// The memory slots as registered, for turning KVM's dirty log on and off.
    slots: Vec<kvm_userspace_memory_region>,
}

impl Vm {
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Maps every region of `memory` into the guest. The VM keeps `memory` alive, so KVM never
    /// refers to unmapped host memory.
    pub fn map_memory(&mut self, memory: &Arc<GuestMemory>) -> Result<(), HvError> {
        for (guest_phys_addr, memory_size, host) in memory.regions() {
            let region = kvm_userspace_memory_region {
                slot: self.next_slot,
                flags: 0,
                guest_phys_addr,
                memory_size,
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `memory`, which this VM holds
            // (below) until after its file descriptor is closed.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| HvError::ioctl("SET_USER_MEMORY_REGION", e))?;
            self.slots.push(region);
            self.next_slot += 1;
        }
        self.memory.push(memory.clone());
        Ok(())
    }

    /// Turns KVM's log of the pages the guest writes on (empty) or off, for every slot. If a
    /// slot refuses, the slots changed before it are changed back.
    pub fn log_dirty_pages(&self, on: bool) -> Result<(), HvError> {
        let set = |region: &kvm_userspace_memory_region, on: bool| {
            let region = kvm_userspace_memory_region {
                flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                ..*region
            };
            // SAFETY: the same slot over the same live mapping `map_memory` registered (held by
            // this VM); only its logging flag changes.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| HvError::ioctl("SET_USER_MEMORY_REGION", e))
        };
        for (i, region) in self.slots.iter().enumerate() {
            if let Err(e) = set(region, on) {
                for earlier in &self.slots[..i] {
                    let _ = set(earlier, !on);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The pages the guest wrote since the last call (or since the log was turned on); KVM
    /// empties its log as it hands it over.
    pub fn take_dirty_pages(&self) -> Result<DirtyPages, HvError> {
        let mut logs = Vec::with_capacity(self.slots.len());
        for region in &self.slots {
            let bits = self
                .fd
                .get_dirty_log(region.slot, region.memory_size as usize)
                .map_err(|e| HvError::ioctl("GET_DIRTY_LOG", e))?;
            logs.push(RegionLog {
                base: region.guest_phys_addr,
                pages: region.memory_size / crate::dirty::PAGE,
                bits,
            });
        }
        Ok(DirtyPages::new(logs))
    }

    /// Routes writes to `event` into interrupt line `gsi` (an irqfd).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), HvError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|e| HvError::ioctl("IRQFD", e))
    }

    /// Makes guest writes to the MMIO address `addr` signal `event` without leaving the kernel
    /// for the vCPU thread (an ioeventfd).
    pub fn register_mmio_ioeventfd(&self, event: &EventFd, addr: u64) -> Result<(), HvError> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| HvError::ioctl("IOEVENTFD", e))
    }

    /// Raises (`true`) or lowers (`false`) interrupt line `gsi` of the in-kernel irqchip.
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), HvError> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(|e| HvError::ioctl("IRQ_LINE", e))
    }

    /// Creates vCPU number `id` (its APIC ID is `id`).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu, HvError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| HvError::ioctl("CREATE_VCPU", e))?;
        Ok(Vcpu::new(fd, id))
    }
}
