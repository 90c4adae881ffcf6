//! A domain's machine: check its specification against this host, build a machine (memory,
//! kernel, devices, vCPUs) and run it until it stops ([`crate::Instance`] supervises the boots
//! of a domain's life). The host's side of a specification is here too: its RAM, and finding
//! the format of disks named without one.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use devices::bus::Bus;
use devices::host_file::{self, Accept, Access};
use devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use devices::power::{PowerManagement, PM_PORT_BASE, PM_PORT_LEN};
use devices::serial::{SerialConsole, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
use devices::InterruptLine;
use hv::{EventFd, GuestMemory, Hypervisor, KvmFlavour};

use crate::boot::{self, Initrd};
use crate::console::{ConsoleSink, SinkWriter};
use crate::control::{Control, MachineEvent, PowerButton, StopReason};
use crate::error::DomainError;
use crate::kernel::{self, KernelKind};
use crate::layout::{self, ACPI_START, POWER_BUTTON_GSI};
use crate::resources::Resources;
use crate::snapshot::{SavedMachine, SnapshotError};
use crate::spec::DomainSpec;
use crate::stats::{MachineCounters, VcpuCounters};
use crate::vcpu::VcpuRunner;
use crate::{acpi, cpuid, virtio};

/// How a domain ended when it ended cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PoweredOff,
    /// The guest rebooted and the policy was [`OnReboot::Exit`].
    Rebooted,
    /// It was stopped at once (destroyed).
    Destroyed,
    /// It was saved to a snapshot, and stopped there.
    Saved,
    /// It was migrated to another daemon, and runs on there.
    Migrated,
}

impl Outcome {
    /// What happened, as the control plane reports it.
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::PoweredOff => "the guest powered off",
            Outcome::Rebooted => "the guest rebooted",
            Outcome::Destroyed => "destroyed",
            Outcome::Saved => "saved",
            Outcome::Migrated => "migrated",
        }
    }
}

/// Checks a specification against this host before anything is built: first
/// [`DomainSpec::validate`] (what needs neither the host's files nor KVM), then KVM's vCPU
/// limit, the host's RAM, the kernel, the disks and the initrd.
pub fn validate(cfg: &DomainSpec, hv: &Hypervisor) -> Result<KernelKind, DomainError> {
    cfg.validate()?;
    check_vcpus(cfg, hv)?;
    check_host_memory(cfg.memory)?;
    let (_, kind) = kernel::probe(&cfg.kernel)?;
    for (index, disk) in cfg.disks.iter().enumerate() {
        virtio::open_disk(disk, &disk.id_at(index))?;
    }
    if let Some(initrd) = &cfg.initrd {
        let size = initrd_size(initrd)?;
        if size >= cfg.memory {
            return Err(DomainError::Initrd(format!(
                "initrd {} ({} MiB) does not fit in guest memory ({} MiB)",
                initrd.display(),
                size >> 20,
                cfg.memory >> 20
            )));
        }
    }
    Ok(kind)
}

/// Refuses more vCPUs than this host's KVM allows.
pub(crate) fn check_vcpus(cfg: &DomainSpec, hv: &Hypervisor) -> Result<(), DomainError> {
    let max = hv.max_vcpus();
    if cfg.vcpus as usize > max {
        return Err(DomainError::Config(format!(
            "--vcpus {} is more than this host's KVM allows ({max})",
            cfg.vcpus
        )));
    }
    Ok(())
}

/// Checks `memory` bytes of guest RAM against the host's RAM (when it can be read).
pub fn check_host_memory(memory: u64) -> Result<(), DomainError> {
    match host_memory() {
        Some(host) if memory > host => Err(DomainError::Config(format!(
            "--memory {} MiB is more than this host's {} MiB of RAM",
            memory >> 20,
            host >> 20
        ))),
        _ => Ok(()),
    }
}

/// The host's physical memory in bytes (MemTotal), if it can be read.
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Finds the format of every disk that has none from the file's first bytes: once, for files
/// the user just named (`vessel run` before its first boot, the daemon when it defines a
/// domain), so the specification records it and later boots never guess from bytes the guest
/// may since have written.
pub fn pin_disk_formats(spec: &mut DomainSpec) -> Result<(), DomainError> {
    for (index, disk) in spec.disks.iter_mut().enumerate() {
        if disk.format.is_none() {
            let found = devices::image::probe_disk(&disk.path).map_err(|source| {
                DomainError::DiskFormat {
                    id: disk.id_at(index),
                    source,
                }
            })?;
            disk.format = Some(found);
        }
    }
    Ok(())
}

fn initrd_size(path: &std::path::Path) -> Result<u64, DomainError> {
    let file = open_initrd(path)?;
    file.metadata()
        .map(|m| m.len())
        .map_err(initrd_read_error(path))
}

/// Opens an initrd: non-blocking and regular files only, so a FIFO or a device named as the
/// initrd is refused at once instead of hanging the caller.
pub(crate) fn open_initrd(path: &std::path::Path) -> Result<File, DomainError> {
    host_file::open(path, Access::ReadOnly, Accept::Regular).map_err(initrd_read_error(path))
}

fn initrd_read_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> DomainError + '_ {
    move |e| DomainError::Initrd(format!("cannot read initrd {}: {e}", path.display()))
}

/// An interrupt line backed by an irqfd.
pub(crate) struct IrqFd(pub(crate) EventFd);

impl InterruptLine for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What the control plane sees of a running machine, and how it acts on it.
#[derive(Clone)]
pub struct MachineView {
    /// Stops and pauses it.
    pub control: Arc<Control>,
    /// Its vCPUs' counters.
    pub counters: MachineCounters,
    /// Its virtio devices, in slot order: what they are and their counters (never their
    /// transports, whose locks the I/O thread may hold for long, and whose host resources,
    /// such as a VIF's socket file, must go with the machine).
    pub devices: Vec<virtio::DeviceView>,
    /// Its RAM.
    pub memory: Arc<GuestMemory>,
    /// Its console UART.
    pub serial: Arc<Mutex<SerialConsole>>,
    /// Its ACPI power button.
    pub power_button: PowerButton,
    /// Its I/O thread: control actions on its devices, quiescing.
    pub io: virtio::IoHandle,
    /// What saving it takes (while it is paused).
    pub parts: MachineParts,
    /// Its working-set estimate, while sampled.
    pub working_set: crate::working_set::SharedEstimate,
}

impl MachineView {
    /// Bytes of guest RAM resident on the host.
    pub fn resident_bytes(&self) -> u64 {
        self.memory.resident_bytes()
    }
}

/// One boot of a domain: a KVM VM with memory, devices and vCPUs, not yet running.
pub(crate) struct Machine {
    runners: Vec<VcpuRunner>,
    virtio: Vec<virtio::PlacedDevice>,
    parts: MachineParts,
    control: Arc<Control>,
    serial: Arc<Mutex<SerialConsole>>,
    counters: MachineCounters,
    memory: Arc<GuestMemory>,
    power_button: PowerButton,
    io: virtio::IoHandle,
    io_inbox: virtio::IoInbox,
    /// How often its working set is sampled (zero: never).
    sampling_period: Duration,
    /// What the sampling found.
    working_set: crate::working_set::SharedEstimate,
}

/// Fills a restored machine's RAM (given with its regions, as `(guest address, size)`) from
/// a snapshot or a migration stream, and gives the rest of the machine's state.
pub(crate) type StateLoader<'a> =
    dyn FnMut(&GuestMemory, &[(u64, u64)]) -> Result<SavedMachine, SnapshotError> + 'a;

/// Where a machine's state comes from.
enum Origin<'a> {
    /// A fresh boot of the domain's kernel.
    Boot,
    /// A saved or migrating domain: its memory and state.
    Saved(&'a mut StateLoader<'a>),
}

/// What saving a paused machine takes from it: its VM, vCPUs, console UART and virtio
/// transports. Cheap to clone.
#[derive(Clone)]
pub struct MachineParts {
    /// The CPUID table the vCPUs were built from.
    cpuid: Vec<hv::CpuidEntry>,
    /// The frequency the vCPUs' TSCs run at, in kHz, if KVM tells it.
    tsc_khz: Option<u32>,
    vm: Arc<hv::Vm>,
    vcpus: Vec<Arc<Mutex<hv::Vcpu>>>,
    transports: Vec<Arc<Mutex<devices::virtio::mmio::MmioTransport>>>,
    serial: Arc<Mutex<SerialConsole>>,
}

impl MachineParts {
    /// Everything of the machine but its memory, for a snapshot of the domain `spec`. Its
    /// vCPUs must be parked and its devices quiesced (a paused domain), or the state is torn.
    pub fn capture(
        &self,
        spec: &DomainSpec,
        msrs_to_save: &[u32],
    ) -> Result<SavedMachine, DomainError> {
        // The VM's and the UART's first, then the vCPUs' (as Firecracker takes them).
        let vm = self.vm.save_state()?;
        let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner()).save();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            let vcpu = vcpu.lock().unwrap_or_else(|e| e.into_inner());
            vcpus.push(vcpu.save_state(msrs_to_save)?);
        }
        let devices = self
            .transports
            .iter()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).save())
            .collect();
        Ok(SavedMachine {
            spec: spec.clone(),
            cpuid: self.cpuid.clone(),
            vm,
            vcpus,
            serial,
            devices,
        })
    }
}

impl MachineParts {
    /// The CPUID table the vCPUs were built from.
    pub fn cpuid(&self) -> &[hv::CpuidEntry] {
        &self.cpuid
    }

    /// The frequency the vCPUs' TSCs run at, in kHz, if KVM tells it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }

    /// Starts (`true`) or stops logging the pages of `memory` (this machine's RAM) that the
    /// guest and the VMM write.
    pub fn log_dirty_pages(&self, memory: &GuestMemory, on: bool) -> Result<(), DomainError> {
        memory.log_writes(on);
        self.vm.log_dirty_pages(on)?;
        Ok(())
    }

    /// The pages of `memory` written since the last call or since the log began, by the
    /// guest or by the VMM (its devices).
    pub fn take_dirty_pages(
        &self,
        memory: &GuestMemory,
    ) -> Result<hv::dirty::DirtyPages, DomainError> {
        let mut dirty = self.vm.take_dirty_pages()?;
        dirty.merge(memory.take_written());
        Ok(dirty)
    }
}

impl Machine {
    /// A fresh machine for `cfg`, its kernel loaded and its boot vCPU at the kernel's entry.
    pub(crate) fn build(
        hv: &Hypervisor,
        cfg: &DomainSpec,
        res: &Resources,
        sink: &ConsoleSink,
    ) -> Result<Machine, DomainError> {
        Machine::assemble(hv, cfg, res, sink, Origin::Boot)
    }

    /// The machine `load` gives (its memory, then its state), on this host's resources `res`
    /// for its specification `cfg`.
    pub(crate) fn restore(
        hv: &Hypervisor,
        cfg: &DomainSpec,
        res: &Resources,
        sink: &ConsoleSink,
        load: &mut StateLoader<'_>,
    ) -> Result<Machine, DomainError> {
        Machine::assemble(hv, cfg, res, sink, Origin::Saved(load))
    }

    fn assemble(
        hv: &Hypervisor,
        cfg: &DomainSpec,
        res: &Resources,
        sink: &ConsoleSink,
        origin: Origin<'_>,
    ) -> Result<Machine, DomainError> {
        let mut vm = hv.create_vm()?;
        let ram = layout::ram_regions(cfg.memory);
        let memory =
            Arc::new(GuestMemory::new(&ram).map_err(DomainError::host("allocating guest memory"))?);
        if res.page_sharing {
            memory
                .share_identical_pages()
                .map_err(DomainError::host("offering guest memory for page sharing"))?;
        }
        vm.map_memory(&memory)?;

        let mut devices = virtio::build_devices(&cfg.disks, cfg.free_page_reporting, res)?;
        devices.extend(crate::net::build_nets(cfg, devices.len(), res)?);
        let boot_state = match &origin {
            Origin::Boot => Some(load_for_boot(hv, cfg, res, &memory, devices.len())?),
            Origin::Saved(_) => None,
        };
        let saved = match origin {
            Origin::Boot => None,
            Origin::Saved(load) => {
                let saved =
                    load(&memory, &ram).map_err(|e| DomainError::Snapshot(e.to_string()))?;
                if saved.vcpus.len() != cfg.vcpus as usize {
                    return Err(DomainError::Snapshot(format!(
                        "it holds {} vCPUs, its specification {}",
                        saved.vcpus.len(),
                        cfg.vcpus
                    )));
                }
                // Before the devices that raise interrupts (the UART raises a pending one
                // again as it is restored).
                vm.restore_interrupt_controllers(&saved.vm)?;
                Some(saved)
            }
        };
        let saved = saved.as_ref();

        let control = Arc::new(Control::default());
        let com1_irq = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        vm.register_irqfd(&com1_irq, COM1_IRQ)?;
        let com1_irq: Arc<dyn devices::InterruptLine> = Arc::new(IrqFd(com1_irq));
        // A restored UART gets its saved registers once the vCPUs exist (below): an interrupt
        // it raises again must find a local APIC to land in.
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            com1_irq.clone(),
            Box::new(SinkWriter(sink.clone())),
        )));
        let button_irq = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        vm.register_irqfd(&button_irq, POWER_BUTTON_GSI)?;
        let power_button = PowerButton::new(Arc::new(IrqFd(button_irq)));
        let mut pio = Bus::new();
        let bus_err = |e: devices::bus::BusError| DomainError::Config(e.to_string());
        pio.insert(serial.clone(), COM1_PORT_BASE.into(), COM1_PORT_LEN.into())
            .map_err(bus_err)?;
        pio.insert(
            Arc::new(Mutex::new(PowerManagement::new(control.clone()))),
            PM_PORT_BASE.into(),
            PM_PORT_LEN.into(),
        )
        .map_err(bus_err)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(control.clone()))),
            I8042_PORT_BASE.into(),
            I8042_PORT_LEN.into(),
        )
        .map_err(bus_err)?;
        let virtio_devices =
            virtio::place(&vm, &memory, devices, saved.map(|s| s.devices.as_slice()))?;
        let mut mmio = Bus::new();
        for d in &virtio_devices {
            mmio.insert(d.transport.clone(), d.slot.base, virtio::WINDOW)
                .map_err(bus_err)?;
        }
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

        // A restored guest keeps the CPU it was given, if this host offers all of it.
        let supported = hv.supported_cpuid()?;
        let base = match saved {
            None => cpuid::offered(&supported),
            Some(s) => {
                let missing = cpuid::missing_features(&s.cpuid, &supported);
                if !missing.is_empty() {
                    return Err(DomainError::Snapshot(format!(
                        "the guest was given CPU features this host's KVM does not offer ({})",
                        missing.join("; ")
                    )));
                }
                s.cpuid.clone()
            }
        };
        let counters: MachineCounters =
            Arc::new((0..cfg.vcpus).map(|_| VcpuCounters::default()).collect());
        let mut runners = Vec::with_capacity(cfg.vcpus as usize);
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        // The time the guest spent saved, once for every vCPU's TSC.
        let saved_for_ns = saved.map_or(0, |s| s.vm.elapsed_ns());
        let mut tsc_khz = None;
        for id in 0..cfg.vcpus {
            let vcpu = vm.create_vcpu(id)?;
            vcpu.set_cpuid(&cpuid::for_vcpu(&base, id, cfg.vcpus))?;
            match saved {
                None => {
                    vcpu.set_msrs(&boot_msrs())?;
                    vcpu.set_lapic_lint()?;
                    vcpu.reset_fpu()?;
                    if let (0, Some(state)) = (id, &boot_state) {
                        vcpu.set_boot_state(state)?;
                    }
                }
                Some(s) => vcpu.restore_state(&s.vcpus[id as usize], saved_for_ns)?,
            }
            if id == 0 {
                tsc_khz = vcpu.tsc_khz();
            }
            let vcpu = Arc::new(Mutex::new(vcpu));
            vcpus.push(vcpu.clone());
            runners.push(VcpuRunner {
                vcpu,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
                flavour: hv.flavour(),
                counters: counters.clone(),
            });
        }
        if let Some(s) = saved {
            *serial.lock().unwrap_or_else(|e| e.into_inner()) =
                SerialConsole::restore(&s.serial, com1_irq, Box::new(SinkWriter(sink.clone())))
                    .map_err(|e| DomainError::Snapshot(e.to_string()))?;
            // Last, so that kvmclock is set as close as can be to the guest's first run.
            vm.restore_clock(&s.vm)?;
            // A restored device may have requests the guest made before the save and that
            // were not served yet: the I/O thread looks at every queue once.
            for d in &virtio_devices {
                let _ = d.notify.write(1);
            }
        }
        let (io, io_inbox) = virtio::io_channel()?;
        let parts = MachineParts {
            cpuid: base,
            tsc_khz,
            vm: Arc::new(vm),
            vcpus,
            transports: virtio_devices.iter().map(|d| d.transport.clone()).collect(),
            serial: serial.clone(),
        };
        Ok(Machine {
            runners,
            virtio: virtio_devices,
            parts,
            control,
            serial,
            counters,
            memory,
            power_button,
            io,
            io_inbox,
            sampling_period: res.working_set_period,
            working_set: Default::default(),
        })
    }

    /// The control plane's view of this machine.
    pub(crate) fn view(&self) -> MachineView {
        MachineView {
            control: self.control.clone(),
            counters: self.counters.clone(),
            devices: self.virtio.iter().map(|d| d.view.clone()).collect(),
            memory: self.memory.clone(),
            serial: self.serial.clone(),
            power_button: self.power_button.clone(),
            io: self.io.clone(),
            parts: self.parts.clone(),
            working_set: self.working_set.clone(),
        }
    }

    /// Runs the vCPUs until the machine stops; returns why. Pause requests (through
    /// [`Control::want_pause`]) park every vCPU and then quiesce the devices (the I/O thread
    /// serves no guest queue until the unpause); `paused` hears when both are done, and when
    /// they run again.
    pub(crate) fn run(mut self, paused: &dyn Fn(bool)) -> Result<StopReason, DomainError> {
        hv::install_kick_handler()?;
        // Stopped (dropped) when this function returns, after the vCPUs.
        let _io = virtio::IoThread::start(&self.virtio, self.io_inbox, self.control.clone())?;
        // Stopped before the I/O thread, every sampled page given back.
        let _sampler = crate::working_set::SamplerThread::start(
            self.memory.clone(),
            self.control.clone(),
            self.sampling_period,
            self.working_set.clone(),
        );
        let io = self.io.clone();
        let control = self.control.clone();
        let mut threads = Vec::new();
        for runner in self.runners.drain(..) {
            let id = runner.id();
            let (tx, rx) = std::sync::mpsc::channel();
            let handle = thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Err(e) =
                        crate::confinement::on_thread_start(hv::seccomp::ThreadKind::Vcpu)
                    {
                        runner.control.stop(StopReason::Crash(e.to_string()));
                    }
                    let _ = tx.send(hv::current_thread_handle());
                    let control = runner.control.clone();
                    control.run_or_crash(&format!("vCPU {id}"), || runner.run())
                })
                .map_err(DomainError::host("starting a vCPU thread"))?;
            let kick = rx
                .recv()
                .map_err(|_| DomainError::Crashed("a vCPU thread died at start".into()))?;
            threads.push((handle, kick));
        }
        let count = threads.len() as u32;
        let mut is_paused = false;
        let reason = loop {
            match control.wait_event(is_paused) {
                MachineEvent::Stopped(reason) => break reason,
                MachineEvent::PauseWanted(true) => {
                    let kick_all = || threads.iter().for_each(|(_, kick)| kick.kick());
                    if control.wait_parked(count, Duration::from_secs(10), kick_all) {
                        if let Err(e) = io.quiesce(true) {
                            // The pause fails (its caller times out); the domain runs on, its
                            // devices resumed behind the quiesce if that is still queued.
                            eprintln!("vessel: the devices could not be quiesced for a pause: {e}");
                            let _ = io.quiesce(false);
                            control.want_pause(false);
                            continue;
                        }
                        is_paused = true;
                        paused(true);
                    } else if !control.stopping() {
                        control.stop(StopReason::Crash(
                            "a vCPU did not leave the guest within 10 s of a pause".into(),
                        ));
                    }
                }
                MachineEvent::PauseWanted(false) => {
                    if let Err(e) = io.quiesce(false) {
                        // Still queued: the I/O thread resumes them when it gets to it.
                        eprintln!("vessel: the devices did not confirm their resume: {e}");
                    }
                    is_paused = false;
                    paused(false);
                }
            }
        };
        // Kick every vCPU out of KVM_RUN until its thread has left its loop.
        for (handle, kick) in threads {
            while !handle.is_finished() {
                kick.kick();
                thread::sleep(Duration::from_millis(1));
            }
            if handle.join().is_err() {
                return Err(DomainError::Crashed("a vCPU thread panicked".into()));
            }
        }
        Ok(reason)
    }
}

/// Loads what a fresh boot needs into `memory`: the kernel (refused on `kvm_pvm` if it is
/// Linux), the initrd, the ACPI tables for `device_count` virtio devices; returns the boot
/// vCPU's starting state.
fn load_for_boot(
    hv: &Hypervisor,
    cfg: &DomainSpec,
    res: &Resources,
    memory: &GuestMemory,
    device_count: usize,
) -> Result<hv::BootCpuState, DomainError> {
    let kernel = kernel::load_file(&cfg.kernel, &res.kernel, memory)?;
    if kernel.is_linux() && hv.flavour() == KvmFlavour::Pvm {
        return Err(DomainError::UnsupportedHost(
            "this host's /dev/kvm is kvm_pvm, a nested shadow-paging KVM that emulates guest \
             ring-0 code with gaps: it cannot boot an unmodified Linux kernel. Run Vessel on a \
             host with hardware KVM (VMX/SVM), e.g. inside the host box (see README)"
                .into(),
        ));
    }
    let initrd = match (&cfg.initrd, &res.initrd) {
        (Some(path), Some(file)) => Some(load_initrd(path, file, &kernel, cfg.memory, memory)?),
        _ => None,
    };
    let slots: Vec<_> = (0..device_count).map(virtio::slot).collect();
    let tables = acpi::build(ACPI_START, cfg.vcpus, &slots);
    memory.write(tables.base, &tables.bytes)?;
    Ok(boot::prepare(
        memory,
        &kernel,
        &cfg.cmdline,
        initrd,
        cfg.memory,
        tables.base,
    )?)
}

/// MSRs every vCPU starts with: MTRRs on with write-back default, fast strings.
fn boot_msrs() -> Vec<(u32, u64)> {
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WRBACK: u64 = 6;
    vec![
        (MSR_IA32_MISC_ENABLE, 1),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

fn load_initrd(
    path: &std::path::Path,
    file: &File,
    kernel: &kernel::LoadedKernel,
    memory_size: u64,
    memory: &GuestMemory,
) -> Result<Initrd, DomainError> {
    let err = initrd_read_error(path);
    let size = file.metadata().map_err(&err)?.len();
    let addr = kernel::place_initrd(kernel, layout::low_ram_end(memory_size), size).ok_or_else(|| {
        DomainError::Initrd(format!(
            "initrd {} ({} MiB) does not fit in guest memory ({} MiB) next to the kernel; give the guest more --memory",
            path.display(),
            size.div_ceil(1 << 20),
            memory_size >> 20
        ))
    })?;
    memory
        .load_from_file(addr, file, 0, size)
        .map_err(|e| match e {
            hv::LoadError::Io(e) => err(e),
            hv::LoadError::Range(r) => DomainError::Initrd(r.to_string()),
        })?;
    Ok(Initrd { addr, size })
}
