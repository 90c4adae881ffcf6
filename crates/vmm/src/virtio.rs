//! The domain's paravirtual devices: where they sit (MMIO window, interrupt line), how their
//! notifications reach them (ioeventfds watched by one I/O thread per domain), how their
//! interrupts reach the guest (irqfds), and how the control plane reaches a running device
//! ([`IoHandle`]: control actions and quiescing, carried out on the I/O thread).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::image::DiskBackend;
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use devices::virtio::rng::Rng;
use devices::virtio::{Action, Counters, HostInterest, Memory, VirtioDevice};
use hv::{ControlOperation, Epoll, EpollEvent, EventFd, EventSet, GuestMemory};

use crate::control::StopReason;
use crate::error::DomainError;
use crate::resources::Resources;
use crate::spec::DiskSpec;

/// First virtio-mmio window: in the 32-bit MMIO hole, below the IOAPIC.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First interrupt line for virtio devices (3 is the power button, 4 COM1).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The IOAPIC has 24 pins; virtio devices use 5..=23.
pub const VIRTIO_MAX_DEVICES: usize = 19;
/// Devices every domain has besides its disks and VIFs: the entropy device and the balloon.
pub const FIXED_DEVICES: usize = 2;
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
    fn discard(&self, addr: u64, len: u64) -> Result<(), vring::MemoryError> {
        self.0.discard(addr, len).map_err(|e| vring::MemoryError {
            addr: e.addr,
            len: e.len,
        })
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
    /// Its label: the disk's id, the VIF's MAC, "rng", "balloon".
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

/// The devices a domain's specification asks for, in slot order: disks first, then entropy
/// and the balloon ([`FIXED_DEVICES`], offering free page reporting if asked), on the host
/// resources in `res`.
pub fn build_devices(
    disks: &[DiskSpec],
    free_page_reporting: bool,
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
    out.push(Box::new(Balloon::new(free_page_reporting)));
    if out.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    Ok(out)
}

/// The VIF number of the device in slot `slot`, in a domain with `disks` disks: the slots
/// hold the disks, then the entropy device and the balloon, then the VIFs ([`build_devices`],
/// `crate::net::build_nets`).
pub fn vif_index(disks: usize, slot: usize) -> Option<usize> {
    slot.checked_sub(disks + FIXED_DEVICES)
}

/// The slot of the balloon in a domain with `disks` disks (see [`vif_index`]).
pub fn balloon_slot(disks: usize) -> usize {
    disks + 1
}

/// The slot of VIF number `index` in a domain with `disks` disks (see [`vif_index`]).
pub fn vif_slot(disks: usize, index: usize) -> usize {
    disks + FIXED_DEVICES + index
}

/// The slot of the `index`th device.
pub fn slot(index: usize) -> VirtioSlot {
    VirtioSlot {
        base: VIRTIO_MMIO_BASE + index as u64 * 0x1000,
        gsi: VIRTIO_FIRST_GSI + index as u32,
    }
}

/// Places `devices` on `vm`: an irqfd per device for its interrupt, an ioeventfd on its
/// QueueNotify register. With `saved` (a snapshot's device states, in slot order, one per
/// device), each transport is restored from its state, on `memory` already holding the
/// guest's RAM as it was saved.
pub fn place(
    vm: &hv::Vm,
    memory: &Arc<GuestMemory>,
    devices: Vec<Box<dyn VirtioDevice>>,
    saved: Option<&[Vec<u8>]>,
) -> Result<Vec<PlacedDevice>, DomainError> {
    if let Some(saved) = saved {
        if saved.len() != devices.len() {
            return Err(DomainError::Snapshot(format!(
                "it holds {} virtio devices, its specification makes {}",
                saved.len(),
                devices.len()
            )));
        }
    }
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
        let irq = Arc::new(crate::domain::IrqFd(irq));
        let mut transport = match saved {
            None => MmioTransport::new(device, mem.clone(), irq),
            Some(saved) => MmioTransport::restore(device, mem.clone(), irq, &saved[index], false)
                .map_err(|e| {
                DomainError::Snapshot(format!("device {index} ({}): {e}", view.label))
            })?,
        };
        let kick = notify
            .try_clone()
            .map_err(DomainError::host("duplicating an eventfd"))?;
        transport.set_activation_kick(Arc::new(crate::domain::IrqFd(kick)));
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

/// What the control plane asks of a machine's I/O thread.
enum IoRequest {
    /// Stop (`true`) or resume serving the guest's queues.
    Quiesce { on: bool, done: SyncSender<()> },
    /// Apply `action` to the device in slot `slot`, with the descriptors it carries.
    Control {
        slot: usize,
        action: Action,
        fds: Vec<OwnedFd>,
        done: SyncSender<Result<(), String>>,
    },
}

/// The control plane's way to a machine's I/O thread: requests go through a channel and an
/// eventfd wakes the thread, which carries them out between device turns (each bounded by
/// `devices::virtio::mmio::SERVE_BUDGET`), so no other thread holds a device's lock for them
/// and a guest that keeps its rings full cannot keep them waiting. Cheap to clone.
#[derive(Clone)]
pub struct IoHandle {
    requests: Sender<IoRequest>,
    wake: Arc<EventFd>,
}

/// The I/O thread's end of an [`IoHandle`].
pub(crate) struct IoInbox {
    requests: Receiver<IoRequest>,
    wake: Arc<EventFd>,
}

/// A handle and the inbox it feeds, for one machine.
pub(crate) fn io_channel() -> Result<(IoHandle, IoInbox), DomainError> {
    let wake = Arc::new(hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?);
    let (tx, rx) = mpsc::channel();
    Ok((
        IoHandle {
            requests: tx,
            wake: wake.clone(),
        },
        IoInbox { requests: rx, wake },
    ))
}

/// Longest wait for the I/O thread to carry out a request.
const IO_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl IoHandle {
    fn send<T>(&self, request: IoRequest, answer: Receiver<T>) -> Result<T, String> {
        self.requests
            .send(request)
            .map_err(|_| "the machine has stopped".to_string())?;
        let _ = self.wake.write(1);
        answer
            .recv_timeout(IO_REQUEST_TIMEOUT)
            .map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => "the I/O thread did not answer in time".into(),
                mpsc::RecvTimeoutError::Disconnected => "the machine has stopped".into(),
            })
    }

    /// Stops (`true`) or resumes the guest's queues on every device, and waits until the I/O
    /// thread has: once this returns `Ok` after a quiesce, no device makes progress the guest
    /// could see until the resume.
    pub fn quiesce(&self, on: bool) -> Result<(), String> {
        let (done, answer) = mpsc::sync_channel(1);
        self.send(IoRequest::Quiesce { on, done }, answer)
    }

    /// Applies `action` (with the descriptors it carries) to the device in slot `slot`, on the
    /// I/O thread; says why not if the device refused.
    pub fn control(&self, slot: usize, action: Action, fds: Vec<OwnedFd>) -> Result<(), String> {
        let (done, answer) = mpsc::sync_channel(1);
        self.send(
            IoRequest::Control {
                slot,
                action,
                fds,
                done,
            },
            answer,
        )?
    }
}

/// What an I/O thread's epoll event is about: one enum, matched exhaustively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// The machine stops: leave.
    Stop,
    /// The seccomp tests' hook.
    Hook,
    /// The control plane sent requests ([`IoHandle`]).
    Requests,
    /// The guest kicked device `.0` (its QueueNotify ioeventfd).
    Notify(usize),
    /// Host descriptor `source` of device `device` is ready.
    Host { device: usize, source: usize },
}

/// Where the kind of a token sits in its `u64`.
const KIND_SHIFT: u32 = 56;
/// Where a host token's device number sits; its source number is below.
const DEVICE_SHIFT: u32 = 24;
const SOURCE_MASK: u64 = (1 << DEVICE_SHIFT) - 1;

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Stop => 1 << KIND_SHIFT,
            Token::Hook => 2 << KIND_SHIFT,
            Token::Requests => 3 << KIND_SHIFT,
            Token::Notify(device) => 4 << KIND_SHIFT | device as u64,
            Token::Host { device, source } => {
                5 << KIND_SHIFT | (device as u64) << DEVICE_SHIFT | (source as u64 & SOURCE_MASK)
            }
        }
    }

    fn decode(value: u64) -> Option<Token> {
        let rest = value & ((1 << KIND_SHIFT) - 1);
        Some(match value >> KIND_SHIFT {
            1 => Token::Stop,
            2 => Token::Hook,
            3 => Token::Requests,
            4 => Token::Notify(rest as usize),
            5 => Token::Host {
                device: (rest >> DEVICE_SHIFT) as usize,
                source: (rest & SOURCE_MASK) as usize,
            },
            _ => return None,
        })
    }
}

/// The domain's I/O thread: waits on every device's notify eventfd, host descriptors and the
/// control plane's requests, and serves them.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

fn watch(epoll: &Epoll, fd: RawFd, set: EventSet, token: Token) -> Result<(), DomainError> {
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(set, token.encode()),
        )
        .map_err(DomainError::host("watching a descriptor"))
}

impl IoThread {
    /// Starts the thread for `devices`, taking requests from `inbox`; if it panics, `control`
    /// stops the machine as crashed.
    pub(crate) fn start(
        devices: &[PlacedDevice],
        inbox: IoInbox,
        control: Arc<crate::control::Control>,
    ) -> Result<IoThread, DomainError> {
        let epoll = Epoll::new().map_err(DomainError::host("creating an epoll instance"))?;
        let stop = hv::new_eventfd().map_err(DomainError::host("creating an eventfd"))?;
        let mut watched = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let fd = d
                .notify
                .try_clone()
                .map_err(DomainError::host("duplicating an eventfd"))?;
            watch(&epoll, fd.as_raw_fd(), EventSet::IN, Token::Notify(i))?;
            let mut w = Watched {
                notify: fd,
                transport: d.transport.clone(),
                hosts: Vec::new(),
            };
            w.watch_hosts(&epoll, i);
            watched.push(w);
        }
        watch(&epoll, stop.as_raw_fd(), EventSet::IN, Token::Stop)?;
        watch(
            &epoll,
            inbox.wake.as_raw_fd(),
            EventSet::IN,
            Token::Requests,
        )?;
        if let Some(hook) = crate::confinement::hook_fd() {
            watch(&epoll, hook, EventSet::IN, Token::Hook)?;
        }
        let handle = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || {
                // A thread that cannot serve the devices stops the domain: its guest would
                // otherwise run on deaf.
                if let Err(e) = crate::confinement::on_thread_start(hv::seccomp::ThreadKind::Io) {
                    control.stop(StopReason::Crash(e.to_string()));
                    return;
                }
                control.run_or_crash("the I/O thread", || {
                    if let Err(e) = io_loop(epoll, watched, inbox) {
                        control.stop(StopReason::Crash(e));
                    }
                })
            })
            .map_err(DomainError::host("starting the I/O thread"))?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }
}

/// One host descriptor of a device as the I/O thread watches it.
#[derive(Debug)]
struct HostWatch {
    /// The descriptor, while watched.
    fd: Option<RawFd>,
    /// What it is registered for.
    interest: HostInterest,
    /// Consecutive error or hang-up reports.
    errors: u32,
}

/// One device as the I/O thread sees it.
struct Watched {
    notify: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    /// Its host descriptors, by source number.
    hosts: Vec<HostWatch>,
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

    /// Registers every host descriptor the device has now, each for what it wants.
    fn watch_hosts(&mut self, epoll: &Epoll, index: usize) {
        let sources: Vec<(Option<RawFd>, HostInterest)> = {
            let t = self.transport();
            (0..t.host_count())
                .map(|s| (t.host_fd(s), t.host_interest(s)))
                .collect()
        };
        self.hosts = sources
            .into_iter()
            .enumerate()
            .map(|(source, (fd, interest))| {
                let token = Token::Host {
                    device: index,
                    source,
                };
                let fd = fd.filter(|&fd| watch(epoll, fd, event_set(interest), token).is_ok());
                HostWatch {
                    fd,
                    interest,
                    errors: 0,
                }
            })
            .collect();
    }

    /// Stops watching every host descriptor of the device (before it may close them).
    fn unwatch_hosts(&mut self, epoll: &Epoll) {
        for h in self.hosts.drain(..) {
            if let Some(fd) = h.fd {
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    /// Re-registers the host descriptors whose wanted readiness changed.
    fn update_interest(&mut self, epoll: &Epoll, index: usize) {
        if self.hosts.is_empty() {
            return;
        }
        let wanted: Vec<HostInterest> = {
            let t = self.transport();
            (0..self.hosts.len()).map(|s| t.host_interest(s)).collect()
        };
        for (source, (h, wanted)) in self.hosts.iter_mut().zip(wanted).enumerate() {
            let Some(fd) = h.fd else { continue };
            if wanted != h.interest {
                let token = Token::Host {
                    device: index,
                    source,
                };
                let event = EpollEvent::new(event_set(wanted), token.encode());
                if epoll.ctl(ControlOperation::Modify, fd, event).is_ok() {
                    h.interest = wanted;
                }
            }
        }
    }
}

/// Carries out one request from the control plane.
fn serve_request(request: IoRequest, epoll: &Epoll, watched: &mut [Watched]) {
    match request {
        IoRequest::Quiesce { on, done } => {
            for (index, w) in watched.iter_mut().enumerate() {
                w.transport().set_quiesced(on);
                w.update_interest(epoll, index);
            }
            let _ = done.send(());
        }
        IoRequest::Control {
            slot,
            action,
            fds,
            done,
        } => {
            let Some(w) = watched.get_mut(slot) else {
                let _ = done.send(Err(format!("no device in slot {slot}")));
                return;
            };
            // The device may close a descriptor it holds: stop watching them first, and watch
            // whatever it has afterwards.
            w.unwatch_hosts(epoll);
            let result = w.transport().control(action, fds);
            w.watch_hosts(epoll, slot);
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
    }
}

fn io_loop(epoll: Epoll, mut watched: Vec<Watched>, inbox: IoInbox) -> Result<(), String> {
    /// Consecutive error reports after which a host descriptor is no longer watched.
    const HOST_ERRORS_MAX: u32 = 64;
    let mut events = vec![EpollEvent::default(); 64];
    // VESSEL_DEBUG_IO=SECONDS: every device's state on stderr that often (diagnostics).
    let dump_every = std::env::var("VESSEL_DEBUG_IO")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs);
    let mut next_dump = dump_every.map(|every| Instant::now() + every);
    loop {
        if let (Some(at), Some(every)) = (next_dump, dump_every) {
            if Instant::now() >= at {
                for (i, w) in watched.iter().enumerate() {
                    eprintln!(
                        "vessel: io: dev{i}: {} host={:?}",
                        w.transport().describe(),
                        w.hosts
                    );
                }
                next_dump = Some(at + every);
            }
        }
        // Sleep until an event, or until the earliest held-back device may go again; not at
        // all while a device has a backlog (its turn ended with work left).
        let (wake, backlog) = next_wake(&watched);
        let wake = match (wake, next_dump) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = if backlog {
            0
        } else {
            wake.map_or(-1, |at| {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                i32::try_from(ms + 1).unwrap_or(i32::MAX)
            })
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("the I/O thread cannot wait for its devices: {e}")),
        };
        for event in &events[..n] {
            let Some(token) = Token::decode(event.data()) else {
                continue;
            };
            match token {
                Token::Stop => return Ok(()),
                Token::Hook => {
                    crate::confinement::fault_due(hv::seccomp::ThreadKind::Io);
                }
                Token::Requests => {
                    let _ = inbox.wake.read();
                    while let Ok(request) = inbox.requests.try_recv() {
                        serve_request(request, &epoll, &mut watched);
                    }
                }
                Token::Notify(index) => {
                    let Some(w) = watched.get_mut(index) else {
                        continue;
                    };
                    let _ = w.notify.read();
                    w.transport().notified();
                    w.update_interest(&epoll, index);
                }
                Token::Host {
                    device: index,
                    source,
                } => {
                    let Some(w) = watched.get_mut(index) else {
                        continue;
                    };
                    if w.hosts.get(source).is_none_or(|h| h.fd.is_none()) {
                        continue;
                    }
                    let set = event.event_set();
                    w.transport().host_ready(
                        source,
                        HostInterest {
                            readable: set.contains(EventSet::IN),
                            writable: set.contains(EventSet::OUT),
                        },
                    );
                    w.update_interest(&epoll, index);
                    // A host descriptor that stays in error or hung up (a deleted TAP) would
                    // report forever: after a run of such reports, stop watching it; that
                    // source is dead from then on. A one-off error (a socket's pending
                    // ECONNRESET, cleared by the read above) only starts the count.
                    let Some(h) = w.hosts.get_mut(source) else {
                        continue;
                    };
                    if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                        h.errors += 1;
                        if h.errors >= HOST_ERRORS_MAX {
                            if let Some(fd) = h.fd.take() {
                                let _ =
                                    epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                            }
                        }
                    } else {
                        h.errors = 0;
                    }
                }
            }
        }
        // Devices whose hold-back time has come, and those with a backlog (checked after
        // events too: a busy descriptor must not postpone another device's turn forever).
        let now = Instant::now();
        for (index, w) in watched.iter_mut().enumerate() {
            let served = {
                let mut transport = w.transport();
                let due = transport.wake_at().is_some_and(|at| at <= now);
                if due {
                    transport.notified();
                }
                let backlog = transport.has_backlog();
                if backlog {
                    transport.serve_backlog();
                }
                due || backlog
            };
            if served {
                w.update_interest(&epoll, index);
            }
        }
    }
}

/// The earliest time a held-back device asked to be served again, and whether a device has a
/// backlog.
fn next_wake(watched: &[Watched]) -> (Option<Instant>, bool) {
    let mut wake: Option<Instant> = None;
    let mut backlog = false;
    for w in watched {
        let t = w.transport();
        if let Some(at) = t.wake_at() {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        backlog |= t.has_backlog();
    }
    (wake, backlog)
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_survives_its_encoding_and_strangers_decode_to_nothing() {
        for token in [
            Token::Stop,
            Token::Hook,
            Token::Requests,
            Token::Notify(0),
            Token::Notify(VIRTIO_MAX_DEVICES - 1),
            Token::Host {
                device: 0,
                source: 0,
            },
            Token::Host {
                device: 18,
                source: 7,
            },
        ] {
            assert_eq!(Token::decode(token.encode()), Some(token), "{token:?}");
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(u64::MAX), None);
    }
}
