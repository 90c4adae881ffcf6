//! The domain's paravirtual devices: where they sit (MMIO window, interrupt line), how their
//! notifications reach them (ioeventfds watched by one I/O thread per domain) and how their
//! interrupts reach the guest (irqfds).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::image::DiskBackend;
use devices::virtio::block::Block;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use devices::virtio::rng::Rng;
use devices::virtio::{Counters, HostInterest, Memory, VirtioDevice};
use hv::{ControlOperation, Epoll, EpollEvent, EventFd, EventSet, GuestMemory};

use crate::error::DomainError;
use crate::resources::Resources;
use crate::spec::DiskSpec;

/// First virtio-mmio window: in the 32-bit MMIO hole, below the IOAPIC.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First interrupt line for virtio devices (3 is the power button, 4 COM1).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The IOAPIC has 24 pins; virtio devices use 5..=23.
pub const VIRTIO_MAX_DEVICES: usize = 19;
const _: () = assert!(
    VIRTIO_FIRST_GSI + VIRTIO_MAX_DEVICES as u32 <= crate::layout::IOAPIC_PINS
        && crate::layout::POWER_BUTTON_GSI < VIRTIO_FIRST_GSI
        && crate::layout::POWER_BUTTON_GSI != devices::serial::COM1_IRQ
);

/// Guest RAM as the virtqueues see it.
pub struct GuestRam(pub Arc<GuestMemory>);

impl vring::GuestMemory for GuestRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), vring::MemoryError> {
        self.0.read(addr, buf).map_err(|e| vring::MemoryError {
            addr: e.addr,
            len: e.len,
        })
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), vring::MemoryError> {
        self.0.write(addr, data).map_err(|e| vring::MemoryError {
            addr: e.addr,
            len: e.len,
        })
    }
    fn contains(&self, addr: u64, len: u64) -> bool {
        self.0.contains(addr, len)
    }
    fn read_u16(&self, addr: u64) -> Result<u16, vring::MemoryError> {
        self.0.read_u16(addr).map_err(|e| vring::MemoryError {
            addr: e.addr,
            len: e.len,
        })
    }
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), vring::MemoryError> {
        self.0
            .write_u16(addr, value)
            .map_err(|e| vring::MemoryError {
                addr: e.addr,
                len: e.len,
            })
    }
    fn read_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        self.0.read_file_vectored(segments, file, offset)
    }
    fn write_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        self.0.write_file_vectored(segments, file, offset)
    }
}

/// Where a virtio device sits, for the ACPI tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of its register window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// One placed device.
pub struct PlacedDevice {
    /// Where it is.
    pub slot: VirtioSlot,
    /// The transport, shared by the bus and the I/O thread.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Signalled by KVM when the guest writes QueueNotify.
    pub notify: EventFd,
    /// What the control plane sees of it.
    pub view: DeviceView,
}

/// What the control plane sees of a device: what it is and its counters, taken when the device
/// is placed, so that reading them never takes the transport's lock (which the I/O thread holds
/// for as long as a guest keeps the device's queue full).
#[derive(Clone)]
pub struct DeviceView {
    /// The virtio device type (`devices::virtio::device_id`).
    pub device_id: u32,
    /// Its label: the disk's id, the VIF's MAC, "rng".
    pub label: String,
    /// Its counters, shared with the device.
    pub counters: Arc<Counters>,
}

/// Opens disk `id` as its specification asks, in the format the specification records (a
/// qcow2 image's backing chain read-only, in the formats it records), and locks it. A disk
/// without a recorded format is refused: the format is never guessed at boot.
pub fn open_disk(disk: &DiskSpec, id: &str) -> Result<Box<dyn DiskBackend>, DomainError> {
    open_disk_with(&devices::image::HostFiles, disk, id)
}

/// [`open_disk`], with the disk's files coming from `files`.
pub fn open_disk_with(
    files: &dyn devices::image::Opener,
    disk: &DiskSpec,
    id: &str,
) -> Result<Box<dyn DiskBackend>, DomainError> {
    let format = disk.format.ok_or_else(|| {
        DomainError::Config(format!(
            "--disk {id}: no format recorded for {} (a definition made by an older Vessel?): \
             give format=raw or format=qcow2",
            disk.path.display()
        ))
    })?;
    devices::image::open_with(files, &disk.path, format, disk.readonly)
        .map_err(|e| DomainError::Config(format!("--disk {id}: {e}")))
}

/// The devices a domain's specification asks for, in slot order: disks first, then entropy,
/// on the host resources in `res`.
pub fn build_devices(
    disks: &[DiskSpec],
    res: &Resources,
) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        let id = disk.id_at(index);
        let backend = open_disk_with(&res.disk_files(index)?, disk, &id)?;
        let mut block = Block::with_backend(backend, disk.readonly, &id);
        block.set_rate_limit(disk.bytes_per_sec, disk.ops_per_sec);
        out.push(Box::new(block));
    }
    let entropy = res
        .entropy
        .try_clone()
        .map_err(DomainError::host("duplicating the entropy source"))?;
    out.push(Box::new(Rng::new(entropy)));
    if out.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    Ok(out)
}

/// The slot of the `index`th device.
pub fn slot(index: usize) -> VirtioSlot {
    VirtioSlot {
        base: VIRTIO_MMIO_BASE + index as u64 * 0x1000,
        gsi: VIRTIO_FIRST_GSI + index as u32,
    }
}

/// Places `devices` on `vm`: an irqfd per device for its interrupt, an ioeventfd on its
/// QueueNotify register.
pub fn place(
    vm: &hv::Vm,
    memory: &Arc<GuestMemory>,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<PlacedDevice>, DomainError> {
    let mem = Memory(Arc::new(GuestRam(memory.clone())));
    let mut placed = Vec::with_capacity(devices.len());
    for (index, device) in devices.into_iter().enumerate() {
        let slot = slot(index);
        let irq = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        vm.register_irqfd(&irq, slot.gsi)?;
        let notify = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        vm.register_mmio_ioeventfd(&notify, slot.base + QUEUE_NOTIFY)?;
        let view = DeviceView {
            device_id: device.device_id(),
            label: device.label(),
            counters: device.counters(),
        };
        let transport =
            MmioTransport::new(device, mem.clone(), Arc::new(crate::domain::IrqFd(irq)));
        placed.push(PlacedDevice {
            slot,
            transport: Arc::new(Mutex::new(transport)),
            notify,
            view,
        });
    }
    Ok(placed)
}

/// Size of each device's register window on the MMIO bus.
pub const WINDOW: u64 = MMIO_SIZE;

/// The token of the seccomp tests' hook in the I/O thread's epoll set.
const HOOK_TOKEN: u64 = u64::MAX - 1;

/// The domain's I/O thread: waits on every device's notify eventfd and serves the kicked device.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts the thread for `devices`.
    pub fn start(devices: &[PlacedDevice]) -> Result<IoThread, DomainError> {
        let epoll = Epoll::new().map_err(DomainError::host("creating an epoll instance"))?;
        let stop = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        let mut watched = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let fd = d
                .notify
                .try_clone()
                .map_err(DomainError::host("duplicating an eventfd"))?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, (i as u64) << 1),
                )
                .map_err(DomainError::host("watching an eventfd"))?;
            // A device's host side (a network backend): token with the low bit set, watched
            // for what the device asks.
            let (host_fd, interest) = {
                let t = d.transport.lock().unwrap_or_else(|e| e.into_inner());
                (t.host_fd(), t.host_interest())
            };
            if let Some(host_fd) = host_fd {
                epoll
                    .ctl(
                        ControlOperation::Add,
                        host_fd,
                        EpollEvent::new(event_set(interest), host_token(i)),
                    )
                    .map_err(DomainError::host("watching a device's host descriptor"))?;
            }
            watched.push(Watched {
                notify: fd,
                transport: d.transport.clone(),
                host: host_fd.map(|fd| (fd, interest)),
                host_errors: 0,
            });
        }
        let stop_token = u64::MAX;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_token),
            )
            .map_err(DomainError::host("watching an eventfd"))?;
        if let Some(hook) = crate::confinement::hook_fd() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    hook,
                    EpollEvent::new(EventSet::IN, HOOK_TOKEN),
                )
                .map_err(DomainError::host("watching an eventfd"))?;
        }
        let handle = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || {
                if crate::confinement::on_thread_start(hv::seccomp::ThreadKind::Io).is_err() {
                    return;
                }
                io_loop(epoll, watched, stop_token)
            })
            .map_err(DomainError::host("starting the I/O thread"))?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }
}

/// One device as the I/O thread sees it.
struct Watched {
    notify: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    /// The device's host descriptor and what it is registered for.
    host: Option<(std::os::fd::RawFd, HostInterest)>,
    /// Consecutive error or hang-up reports on the host descriptor.
    host_errors: u32,
}

fn host_token(index: usize) -> u64 {
    ((index as u64) << 1) | 1
}

fn event_set(interest: HostInterest) -> EventSet {
    let mut set = EventSet::empty();
    if interest.readable {
        set |= EventSet::IN;
    }
    if interest.writable {
        set |= EventSet::OUT;
    }
    set
}

impl Watched {
    fn transport(&self) -> std::sync::MutexGuard<'_, MmioTransport> {
        self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-registers the host descriptor if what the device wants to hear about changed.
    fn update_interest(&mut self, epoll: &Epoll, index: usize) {
        let Some((fd, registered)) = self.host else {
            return;
        };
        let wanted = self.transport().host_interest();
        if wanted != registered {
            let event = EpollEvent::new(event_set(wanted), host_token(index));
            if epoll.ctl(ControlOperation::Modify, fd, event).is_ok() {
                self.host = Some((fd, wanted));
            }
        }
    }
}

fn io_loop(epoll: Epoll, mut watched: Vec<Watched>, stop_token: u64) {
    /// Consecutive error reports after which a host descriptor is no longer watched.
    const HOST_ERRORS_MAX: u32 = 64;
    let mut events = vec![EpollEvent::default(); 2 * watched.len() + 1];
    // VESSEL_DEBUG_IO=SECONDS: every device's state on stderr that often (diagnostics).
    let dump_every = std::env::var("VESSEL_DEBUG_IO")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(std::time::Duration::from_secs);
    let mut next_dump = dump_every.map(|every| std::time::Instant::now() + every);
    loop {
        if let (Some(at), Some(every)) = (next_dump, dump_every) {
            if std::time::Instant::now() >= at {
                for (i, w) in watched.iter().enumerate() {
                    eprintln!(
                        "vessel: io: dev{i}: {} host={:?}",
                        w.transport().describe(),
                        w.host
                    );
                }
                next_dump = Some(at + every);
            }
        }
        // Sleep until an event, or until the earliest held-back device may go again.
        let wake = match (next_wake(&watched), next_dump) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = wake.map_or(-1, |at| {
            let ms = at
                .saturating_duration_since(std::time::Instant::now())
                .as_millis();
            i32::try_from(ms + 1).unwrap_or(i32::MAX)
        });
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..n] {
            let token = event.data();
            if token == stop_token {
                return;
            }
            if token == HOOK_TOKEN {
                crate::confinement::forbidden_call_due(hv::seccomp::ThreadKind::Io);
                continue;
            }
            let index = (token >> 1) as usize;
            let Some(w) = watched.get_mut(index) else {
                continue;
            };
            if token & 1 == 0 {
                let _ = w.notify.read();
                w.transport().notified();
                w.update_interest(&epoll, index);
                continue;
            }
            let set = event.event_set();
            w.transport().host_ready(HostInterest {
                readable: set.contains(EventSet::IN),
                writable: set.contains(EventSet::OUT),
            });
            w.update_interest(&epoll, index);
            // A host descriptor that stays in error or hung up (a deleted TAP) would report
            // forever: after a run of such reports, stop watching it; the device's link is dead
            // from then on. A one-off error (a socket's pending ECONNRESET, cleared by the read
            // above) only starts the count.
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                w.host_errors += 1;
                if w.host_errors >= HOST_ERRORS_MAX {
                    if let Some((fd, _)) = w.host.take() {
                        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                }
            } else {
                w.host_errors = 0;
            }
        }
        // Devices whose hold-back time has come (checked after events too: a busy descriptor
        // must not postpone another device's deadline forever).
        let now = std::time::Instant::now();
        for (index, w) in watched.iter_mut().enumerate() {
            let due = {
                let mut transport = w.transport();
                let due = transport.wake_at().is_some_and(|at| at <= now);
                if due {
                    transport.notified();
                }
                due
            };
            if due {
                w.update_interest(&epoll, index);
            }
        }
    }
}

/// The earliest time a held-back device asked to be served again.
fn next_wake(watched: &[Watched]) -> Option<std::time::Instant> {
    watched.iter().filter_map(|w| w.transport().wake_at()).min()
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
