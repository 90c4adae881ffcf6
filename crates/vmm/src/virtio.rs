//! The domain's paravirtual devices: where they sit (MMIO window, interrupt line), how their
//! notifications reach them (ioeventfds watched by one I/O thread per domain) and how their
//! interrupts reach the guest (irqfds).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::virtio::block::Block;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use devices::virtio::rng::Rng;
use devices::virtio::{Memory, VirtioDevice};
use hv::{ControlOperation, Epoll, EpollEvent, EventFd, EventSet, GuestMemory};

use crate::config::DiskConfig;
use crate::error::DomainError;

/// First virtio-mmio window: in the 32-bit MMIO hole, below the IOAPIC.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First interrupt line for virtio devices (4 is COM1).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The IOAPIC has 24 pins; virtio devices use 5..=23.
pub const VIRTIO_MAX_DEVICES: usize = 19;

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
}

/// Opens a disk image as its configuration asks.
pub fn open_disk(disk: &DiskConfig) -> Result<File, DomainError> {
    OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .open(&disk.path)
        .map_err(|e| {
            DomainError::Config(format!(
                "--disk {}: cannot open {}{}: {e}",
                disk.id,
                disk.path.display(),
                if disk.readonly {
                    " read-only"
                } else {
                    " read-write"
                }
            ))
        })
}

/// The devices a domain's configuration asks for, in slot order: disks first, then entropy.
pub fn build_devices(disks: &[DiskConfig]) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in disks {
        let file = open_disk(disk)?;
        let block = Block::new(file, disk.readonly, &disk.id)
            .map_err(DomainError::host("reading a disk image's size"))?;
        out.push(Box::new(block));
    }
    out.push(Box::new(
        Rng::new().map_err(DomainError::host("opening /dev/urandom"))?,
    ));
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
        let transport =
            MmioTransport::new(device, mem.clone(), Arc::new(crate::domain::IrqFd(irq)));
        placed.push(PlacedDevice {
            slot,
            transport: Arc::new(Mutex::new(transport)),
            notify,
        });
    }
    Ok(placed)
}

/// Size of each device's register window on the MMIO bus.
pub const WINDOW: u64 = MMIO_SIZE;

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
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(DomainError::host("watching an eventfd"))?;
            watched.push((fd, d.transport.clone()));
        }
        let stop_token = watched.len() as u64;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_token),
            )
            .map_err(DomainError::host("watching an eventfd"))?;
        let handle = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || io_loop(epoll, watched, stop_token))
            .map_err(DomainError::host("starting the I/O thread"))?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }
}

fn io_loop(epoll: Epoll, watched: Vec<(EventFd, Arc<Mutex<MmioTransport>>)>, stop_token: u64) {
    let mut events = vec![EpollEvent::default(); watched.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..n] {
            let token = event.data();
            if token == stop_token {
                return;
            }
            if let Some((fd, transport)) = watched.get(token as usize) {
                let _ = fd.read();
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notified();
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
