//! The virtio-mmio transport (virtio 1.x, section 4.2, version 2 "modern" register layout).
//!
//! One transport owns one [`VirtioDevice`], its queues and its interrupt status. The vCPU threads
//! reach it through the bus for register accesses; the domain's I/O thread calls
//! [`MmioTransport::notified`] when the guest kicks a queue (through an ioeventfd on
//! `QueueNotify`). Every register access is validated: wrong sizes read as zero and are ignored,
//! queue configuration is frozen while a queue is ready, and a feature set the device did not
//! offer is refused at `FEATURES_OK`.
//!
//! The transport carries out the device contract (see [`super`]): it activates the device at
//! `DRIVER_OK` (a refusal sets `DEVICE_NEEDS_RESET`), raises configuration-change interrupts a
//! device asks for, passes control actions and host events to it, stops serving the guest's
//! queues while the domain is paused ([`MmioTransport::set_quiesced`]), bounds each device's
//! turn on the I/O thread ([`SERVE_BUDGET`]), and saves and restores itself, its queues and
//! its device ([`MmioTransport::save`], [`MmioTransport::restore`]).

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use super::state::{self, Reader, StateError, Writer};
use super::{feature, Action, DeviceError, HostInterest, Memory, Queue, VirtioDevice, Wake};
use crate::bus::BusDevice;
use crate::InterruptLine;

/// Bytes of register space per device.
pub const MMIO_SIZE: u64 = 0x200;
/// Offset of the QueueNotify register (where an ioeventfd goes).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c53_5356; // "VSSL"

/// Device status bits (section 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// Most chains one queue hands its device in one turn; then the queue waits (its *backlog*)
/// while the I/O thread serves everything else once, so a driver that keeps a ring full
/// cannot hold the thread from other devices and from control actions.
pub const SERVE_BUDGET: u32 = 64;

/// The status bits a driver can set.
const KNOWN_STATUS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::DRIVER_OK
    | status::FEATURES_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;
/// Longest failure message kept in a saved state.
const MAX_FAILURE: usize = 1024;

/// A virtio device on the MMIO transport.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Memory,
    irq: Arc<dyn InterruptLine>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// Why the device last needed a reset (a hostile or broken ring), for diagnostics.
    failure: Option<String>,
    /// The domain is paused: the guest's queues are not served.
    quiesced: bool,
    /// An interrupt raised while quiesced, to deliver when the domain runs again.
    irq_deferred: bool,
    /// Queues whose turn ended on [`SERVE_BUDGET`] with work left.
    backlog: u64,
    /// Wakes whoever serves the queues (the domain's I/O thread, through the device's notify
    /// eventfd) once the driver sets `DRIVER_OK`: see [`MmioTransport::set_activation_kick`].
    activation_kick: Option<Arc<dyn InterruptLine>>,
}

impl MmioTransport {
    /// Wraps `device`, raising `irq` for used buffers and configuration changes.
    pub fn new(device: Box<dyn VirtioDevice>, mem: Memory, irq: Arc<dyn InterruptLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .map(Queue::new)
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            failure: None,
            quiesced: false,
            irq_deferred: false,
            backlog: 0,
            activation_kick: None,
        }
    }

    /// Has `kick` triggered whenever the driver sets `DRIVER_OK`, so that the queues are served
    /// then, as if kicked, on the thread that serves them: buffers a driver made available and
    /// kicked before `DRIVER_OK` (Linux's balloon driver posts its statistics buffer so) are
    /// not left waiting for a kick that already came and went.
    pub fn set_activation_kick(&mut self, kick: Arc<dyn InterruptLine>) {
        self.activation_kick = Some(kick);
    }

    fn device_features(&self) -> u64 {
        self.device.device_features() | feature::VERSION_1 | feature::RING_EVENT_IDX
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue, if its layout may change: only while it is not ready.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        self.selected_queue().filter(|q| !q.ready())
    }

    /// The device-side status register (for tests and accounting).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Why the device last needed a reset, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The device, for accounting.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.backlog = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        // FEATURES_OK only sticks if the driver accepted a subset of what we offer, with VERSION_1.
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.device_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & feature::VERSION_1 != 0;
            if !ok {
                value &= !status::FEATURES_OK;
            }
        }
        let activating = value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        // Keep DEVICE_NEEDS_RESET once set: only a reset clears it.
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
        if activating && self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.activate();
        }
    }

    /// The driver set `DRIVER_OK`: hand the device the negotiated features and its queues.
    fn activate(&mut self) {
        let event_idx = self.driver_features & feature::RING_EVENT_IDX != 0;
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        let refused = if self.status & status::FEATURES_OK == 0 {
            Err(DeviceError::Refused(
                "DRIVER_OK without FEATURES_OK: no features were negotiated".into(),
            ))
        } else {
            self.device.activate(self.driver_features, &self.queues)
        };
        match refused {
            Err(e) => self.fail(e.to_string()),
            Ok(()) => {
                if let Some(kick) = &self.activation_kick {
                    // A kick that cannot be sent is the host's problem; the next one serves.
                    let _ = kick.trigger();
                }
            }
        }
    }

    /// The device cannot go on until the driver resets it: say so (`DEVICE_NEEDS_RESET` and a
    /// configuration-change interrupt, as the spec asks).
    fn fail(&mut self, why: String) {
        self.failure = Some(why);
        self.status |= status::DEVICE_NEEDS_RESET;
        self.raise(INT_CONFIG_CHANGE);
    }

    /// Sets `bits` in the interrupt status and interrupts the guest (later, if quiesced).
    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        if self.quiesced {
            self.irq_deferred = true;
        } else {
            // An interrupt that cannot be delivered is the host's problem; the guest will see
            // the used buffers on its next poll.
            let _ = self.irq.trigger();
        }
    }

    /// The device's configuration changed: a new configuration generation, and, once the
    /// driver is up, the configuration-change interrupt.
    fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    /// Does what a device asked for.
    fn apply(&mut self, wake: Wake) {
        if wake.config_changed {
            self.config_changed();
        }
        if wake.queues != 0 {
            self.serve(wake.queues);
        }
    }

    /// The guest kicked the device: serve every ready queue and interrupt if the driver wants it.
    pub fn notified(&mut self) {
        self.serve(u64::MAX);
    }

    /// The device's host descriptor `source` is `ready` as the device asked: let the device
    /// take in what it has, then do what it asks (serve queues as a kick would, raise a
    /// configuration change).
    pub fn host_ready(&mut self, source: usize, ready: HostInterest) {
        let wake = self.device.host_ready(source, ready);
        self.apply(wake);
    }

    /// Applies a control-plane action to the device (on the I/O thread), then does what the
    /// device asks. Errors say why the device refused; the device is unchanged then.
    pub fn control(&mut self, action: Action, fds: Vec<OwnedFd>) -> Result<(), DeviceError> {
        let wake = self.device.control(action, fds)?;
        self.apply(wake);
        Ok(())
    }

    /// Stops (`true`) or resumes serving the guest's queues: a paused domain's devices make no
    /// progress the guest could see (host input is still taken in, bounded as ever). Resuming
    /// serves every queue, as a kick would, and delivers an interrupt raised meanwhile.
    pub fn set_quiesced(&mut self, on: bool) {
        self.quiesced = on;
        if !on {
            if std::mem::take(&mut self.irq_deferred) {
                let _ = self.irq.trigger();
            }
            self.serve(u64::MAX);
        }
    }

    /// Whether the guest's queues are left alone ([`MmioTransport::set_quiesced`]).
    pub fn quiesced(&self) -> bool {
        self.quiesced
    }

    /// Whether a queue's turn ended on [`SERVE_BUDGET`] with work left.
    pub fn has_backlog(&self) -> bool {
        self.backlog != 0 && self.live()
    }

    /// Gives the queues left with work another turn.
    pub fn serve_backlog(&mut self) {
        let queues = std::mem::take(&mut self.backlog);
        if queues != 0 {
            self.serve(queues);
        }
    }

    /// The transport's state, every queue's indices and the device's counters, one line, for
    /// diagnostics.
    pub fn describe(&self) -> String {
        let interest: Vec<HostInterest> = (0..self.device.host_count())
            .map(|i| self.device.host_interest(i))
            .collect();
        let mut out = format!(
            "{} status={:#x} isr={:#x} quiesced={} backlog={:#x} interest={:?} failure={:?}",
            self.device.label(),
            self.status,
            self.interrupt_status,
            self.quiesced,
            self.backlog,
            interest,
            self.failure
        );
        for (i, q) in self.queues.iter().enumerate() {
            out.push_str(&format!(" | q{i}: {}", q.describe(self.mem.0.as_ref())));
        }
        for (name, value) in self.device.counters().snapshot() {
            out.push_str(&format!(" {name}={value}"));
        }
        out
    }

    /// How many host descriptors the device has ([`VirtioDevice::host_count`]).
    pub fn host_count(&self) -> usize {
        self.device.host_count()
    }

    /// The device's host descriptor `source`.
    pub fn host_fd(&self, source: usize) -> Option<RawFd> {
        self.device.host_fd(source)
    }

    /// What the device wants to hear about its host descriptor `source` now.
    pub fn host_interest(&self, source: usize) -> HostInterest {
        self.device.host_interest(source)
    }

    /// When the device, held back (by a rate limit, or a backend with no room), wants
    /// [`MmioTransport::notified`] again. Never while the driver is down: nothing would be
    /// served, and the I/O thread would wake for nothing.
    pub fn wake_at(&self) -> Option<std::time::Instant> {
        if self.live() {
            self.device.wake_at()
        } else {
            None
        }
    }

    fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & status::DEVICE_NEEDS_RESET == 0
            && !self.quiesced
    }

    /// Serves the ready queues whose bit is set in `queues`, if the driver is up, and interrupts
    /// if the driver wants it.
    fn serve(&mut self, queues: u64) {
        if !self.live() {
            return;
        }
        let mut interrupt = false;
        for index in 0..self.queues.len() {
            if index >= 64 || queues & (1 << index) == 0 {
                continue;
            }
            let queue = &mut self.queues[index];
            if !queue.ready() || queue.is_broken() {
                continue;
            }
            queue.set_pop_budget(Some(SERVE_BUDGET));
            let served = serve_queue(self.device.as_mut(), index, queue, self.mem.0.as_ref());
            if queue.budget_spent() {
                self.backlog |= 1 << index;
            } else {
                self.backlog &= !(1 << index);
            }
            queue.set_pop_budget(None);
            match served {
                Ok(wants) => interrupt |= wants,
                Err(e) => {
                    // A driver that corrupts its ring gets its device stopped, not the VMM.
                    self.fail(format!("queue {index}: {e}"));
                    return;
                }
            }
        }
        if interrupt {
            self.raise(INT_USED_BUFFER);
        }
    }

    /// The transport, its queues and its device, saved in the format of [`state`]
    /// (`docs/formats.md`, "Device state"). Take it with the transport quiesced, so that it
    /// is also what the guest last saw.
    pub fn save(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.device.device_id())
            .u64(self.device_features())
            .u32(self.status)
            .u64(self.driver_features)
            .u32(self.device_features_sel)
            .u32(self.driver_features_sel)
            .u32(self.queue_sel)
            .u32(self.interrupt_status)
            .u32(self.config_generation);
        let failure = self.failure.as_deref().unwrap_or("").as_bytes();
        w.blob(&failure[..failure.len().min(MAX_FAILURE)]);
        w.u16(u16::try_from(self.queues.len()).unwrap_or(u16::MAX));
        for q in &self.queues {
            state::put_queue(&mut w, q);
        }
        w.blob(&self.device.save_state());
        state::seal(&w.finish())
    }

    /// A transport restored from `saved` around `device`, a fresh device built as the one that
    /// saved it was (same type, features and queues), on guest memory `mem` holding what the
    /// guest had then. Everything is checked before anything is used: the frame, the device's
    /// identity, every register and queue, the device's own section. A device whose driver
    /// had set `DRIVER_OK` is activated again with the features saved. The transport starts
    /// quiesced if `quiesced` (resume it with [`MmioTransport::set_quiesced`]).
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        irq: Arc<dyn InterruptLine>,
        saved: &[u8],
        quiesced: bool,
    ) -> Result<MmioTransport, StateError> {
        let payload = state::unseal(saved)?;
        let mut t = MmioTransport::new(device, mem, irq);
        t.quiesced = quiesced;
        let mut r = Reader::new(payload);
        let id = r.u32("the device type")?;
        if id != t.device.device_id() {
            return Err(StateError::Mismatch(format!(
                "saved from a device of type {id}, restored into one of type {}",
                t.device.device_id()
            )));
        }
        let offered = r.u64("the device features")?;
        if offered != t.device_features() {
            return Err(StateError::Mismatch(format!(
                "the saved device offered features {offered:#x}, this one offers {:#x}",
                t.device_features()
            )));
        }
        let status_reg = r.u32("the status")?;
        let driver_features = r.u64("the driver features")?;
        t.device_features_sel = r.u32("the device features selector")?;
        t.driver_features_sel = r.u32("the driver features selector")?;
        t.queue_sel = r.u32("the queue selector")?;
        let isr = r.u32("the interrupt status")?;
        t.config_generation = r.u32("the configuration generation")?;
        let failure = r.blob(MAX_FAILURE, "the failure message")?;
        let failure = std::str::from_utf8(failure)
            .map_err(|_| StateError::Transport("the failure message is not UTF-8".into()))?;
        if status_reg & !KNOWN_STATUS != 0 {
            return Err(StateError::Transport(format!(
                "status {status_reg:#x} holds unknown bits"
            )));
        }
        if driver_features & !offered != 0 {
            return Err(StateError::Transport(format!(
                "the driver features {driver_features:#x} were never offered ({offered:#x})"
            )));
        }
        if status_reg & status::FEATURES_OK != 0 && driver_features & feature::VERSION_1 == 0 {
            return Err(StateError::Transport(
                "FEATURES_OK without VERSION_1 negotiated".into(),
            ));
        }
        if isr & !(INT_USED_BUFFER | INT_CONFIG_CHANGE) != 0 {
            return Err(StateError::Transport(format!(
                "interrupt status {isr:#x} holds unknown bits"
            )));
        }
        let live =
            status_reg & status::DRIVER_OK != 0 && status_reg & status::DEVICE_NEEDS_RESET == 0;
        if live && status_reg & status::FEATURES_OK == 0 {
            return Err(StateError::Transport(
                "DRIVER_OK without FEATURES_OK".into(),
            ));
        }
        let count = r.u16("the queue count")? as usize;
        if count != t.queues.len() {
            return Err(StateError::Mismatch(format!(
                "{count} queues saved, this device has {}",
                t.queues.len()
            )));
        }
        let event_idx = driver_features & feature::RING_EVENT_IDX != 0;
        for index in 0..count {
            let (max_size, q) = state::get_queue(&mut r)?;
            let queue = &mut t.queues[index];
            if max_size != queue.max_size() {
                return Err(StateError::Mismatch(format!(
                    "queue {index} had at most {max_size} entries, this one {}",
                    queue.max_size()
                )));
            }
            if live && q.event_idx != event_idx {
                return Err(StateError::Transport(format!(
                    "queue {index} disagrees with the driver features on EVENT_IDX"
                )));
            }
            queue
                .set_state(&q, t.mem.0.as_ref())
                .map_err(|source| StateError::Queue { index, source })?;
        }
        let section = r.blob(state::MAX_STATE, "the device's section")?;
        r.finish()?;
        t.status = status_reg;
        t.driver_features = driver_features;
        t.interrupt_status = isr;
        t.failure = (!failure.is_empty()).then(|| failure.to_string());
        if live {
            t.device
                .activate(driver_features, &t.queues)
                .map_err(|e| StateError::Device(e.to_string()))?;
        }
        t.device
            .restore_state(section, &t.queues, t.mem.0.as_ref())?;
        Ok(t)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_id(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt_status,
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let set_low = |old: u64, v: u32| (old & !0xffff_ffff) | u64::from(v);
        let set_high = |old: u64, v: u32| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => match self.driver_features_sel {
                0 => self.driver_features = set_low(self.driver_features, value),
                1 => self.driver_features = set_high(self.driver_features, value),
                _ => {}
            },
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x38 => {
                if let Some(q) = self.configurable_queue() {
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x44 => {
                let mem = self.mem.clone();
                if let Some(q) = self.selected_queue() {
                    // A queue only becomes ready if its layout is valid.
                    q.set_ready(value == 1 && q.is_valid(&mem));
                }
            }
            QUEUE_NOTIFY => self.notified(),
            0x64 => self.interrupt_status &= !value,
            0x70 => self.set_status(value),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                let Some(q) = self.configurable_queue() else {
                    return;
                };
                match offset {
                    0x80 => q.set_desc_table(set_low(q.desc_table(), value)),
                    0x84 => q.set_desc_table(set_high(q.desc_table(), value)),
                    0x90 => q.set_avail_ring(set_low(q.avail_ring(), value)),
                    0x94 => q.set_avail_ring(set_high(q.avail_ring(), value)),
                    0xa0 => q.set_used_ring(set_low(q.used_ring(), value)),
                    _ => q.set_used_ring(set_high(q.used_ring(), value)),
                }
            }
            _ => {}
        }
    }
}

/// Serves queue `index` until it is empty with notifications re-armed (so a buffer made
/// available meanwhile is not left waiting for a kick the driver will not send); returns whether
/// the driver wants an interrupt for what was completed. A pass that completes nothing ends it:
/// a device may leave buffers available on purpose (a network receive queue with no frames to
/// put in them), and those must not keep it looping.
fn serve_queue(
    device: &mut dyn VirtioDevice,
    index: usize,
    queue: &mut Queue,
    mem: &dyn vring::GuestMemory,
) -> Result<bool, vring::QueueError> {
    let mut completed = 0;
    loop {
        let done = device.process_queue(index, queue, mem)?;
        completed += done.completed;
        // A device short of buffers is served again when the driver adds one (at once if it
        // already has: each try spends the turn's budget, so this ends).
        if done.short_of_buffers {
            if queue.budget_spent() || !queue.notify_on_new_buffers(mem)? {
                break;
            }
            continue;
        }
        // A throttled device is served again at its wake time, not by spinning here; one whose
        // turn is spent, after everything else had one.
        if done.throttled
            || queue.budget_spent()
            || !queue.enable_notification(mem)?
            || done.completed == 0
        {
            break;
        }
    }
    Ok(completed > 0 && queue.needs_notification(mem)?)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            self.device.write_config(offset - 0x100, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if let (Ok(word), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(word));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use crate::virtio::test_support::{Counter, DriverMemory};
    use std::sync::Mutex;
    use vring::mock::{MockBuffer, MockDriver};

    fn w(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A driver that brings an rng device up the way Linux does, with the given features.
    fn bring_up(features: u64) -> (Arc<Mutex<MockDriver>>, MmioTransport, Arc<Counter>) {
        let driver = Arc::new(Mutex::new(MockDriver::new(8, 1 << 16)));
        let irq = Arc::new(Counter::default());
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::new(
            Box::new(Rng::new(std::fs::File::open("/dev/urandom").unwrap())),
            mem,
            irq.clone(),
        );
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 8), 4);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, features as u32);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, (features >> 32) as u32);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let (desc, avail, used, size) = {
            let d = driver.lock().unwrap();
            (d.desc_table(), d.avail_ring(), d.used_ring(), d.size())
        };
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 64);
        w(&mut t, 0x38, u32::from(size));
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            w(&mut t, reg, addr as u32);
            w(&mut t, reg + 4, (addr >> 32) as u32);
        }
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        (driver, t, irq)
    }

    #[test]
    fn every_request_is_served_and_event_idx_keeps_kicks_coming() {
        let (driver, mut t, irq) = bring_up(feature::VERSION_1 | feature::RING_EVENT_IDX);
        for round in 1..=3u16 {
            driver
                .lock()
                .unwrap()
                .add_chain(&[MockBuffer::Writable(32)]);
            // The driver kicks only if the device asked for it through avail_event.
            w(&mut t, QUEUE_NOTIFY, 0);
            let mut d = driver.lock().unwrap();
            let used = d.used();
            assert_eq!(used.len(), 1, "round {round}");
            assert_eq!(used[0].len, 32);
            assert_eq!(d.avail_event(), round, "the device re-armed notifications");
        }
        assert!(irq.count() >= 1);
        assert_eq!(r(&mut t, 0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
        w(&mut t, 0x64, INT_USED_BUFFER);
        assert_eq!(r(&mut t, 0x60), 0);
    }

    #[test]
    fn driver_ok_kicks_whoever_serves_the_queues() {
        let driver = Arc::new(Mutex::new(MockDriver::new(8, 1 << 16)));
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::new(
            Box::new(Rng::new(std::fs::File::open("/dev/urandom").unwrap())),
            mem,
            Arc::new(Counter::default()),
        );
        let kick = Arc::new(Counter::default());
        t.set_activation_kick(kick.clone());
        crate::virtio::test_support::bring_up(&mut t, &driver, feature::VERSION_1, &[0]);
        assert_eq!(kick.count(), 1, "DRIVER_OK kicked once");
        // A refused activation (DRIVER_OK without FEATURES_OK) does not kick.
        w(&mut t, 0x70, 0);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(kick.count(), 1);
    }

    #[test]
    fn features_not_offered_are_refused_and_layout_freezes_when_ready() {
        let (_d, mut t, _) = bring_up(feature::VERSION_1 | (1 << 50));
        assert_eq!(r(&mut t, 0x70) & status::FEATURES_OK, 0);
        let (_d, mut t, _) = bring_up(feature::VERSION_1);
        assert_ne!(r(&mut t, 0x70) & status::FEATURES_OK, 0);
        let before = t.queues[0].desc_table();
        w(&mut t, 0x80, 0x1234_5000);
        assert_eq!(t.queues[0].desc_table(), before);
        // Reset clears everything.
        w(&mut t, 0x70, 0);
        assert_eq!((r(&mut t, 0x70), r(&mut t, 0x44)), (0, 0));
    }

    #[test]
    fn a_corrupt_ring_stops_the_device_not_the_vmm() {
        let (driver, mut t, irq) = bring_up(feature::VERSION_1);
        {
            let mut d = driver.lock().unwrap();
            let idx = d.avail_idx();
            d.set_avail_idx(idx.wrapping_add(200)); // jumps far past the queue size
        }
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG_CHANGE, 0);
        assert_eq!(irq.count(), 1);
        // Further kicks are ignored until the driver resets the device.
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (_d, mut t, _) = bring_up(feature::VERSION_1);
        let mut two = [0xffu8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
        t.read(0x2, &mut [0u8; 4]);
        t.write(0x70, &[0]);
        t.write(0x71, &[0, 0, 0, 0]);
        w(&mut t, 0x30, 99); // a queue that does not exist
        assert_eq!(r(&mut t, 0x34), 0);
        w(&mut t, 0x38, 8);
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 0);
        assert_ne!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
    }

    /// A device that records its activation, may refuse it, and changes its configuration
    /// (one byte) when told to.
    struct Probe {
        activated: Arc<Mutex<Option<u64>>>,
        refuse: bool,
        config: u8,
    }

    const PROBE_FEATURE: u64 = 1 << 3;

    impl VirtioDevice for Probe {
        fn device_id(&self) -> u32 {
            99
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![256]
        }
        fn device_features(&self) -> u64 {
            PROBE_FEATURE
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(self.config);
        }
        fn label(&self) -> String {
            "probe".into()
        }
        fn activate(&mut self, features: u64, queues: &[Queue]) -> Result<(), DeviceError> {
            assert!(queues[0].ready());
            *self.activated.lock().unwrap() = Some(features);
            if self.refuse {
                Err(DeviceError::Refused("the probe says no".into()))
            } else {
                Ok(())
            }
        }
        fn reset(&mut self) {
            *self.activated.lock().unwrap() = None;
        }
        fn process_queue(
            &mut self,
            _index: usize,
            queue: &mut Queue,
            mem: &dyn vring::GuestMemory,
        ) -> Result<crate::virtio::Processed, vring::QueueError> {
            let mut done = crate::virtio::Processed::default();
            while let Some(chain) = queue.pop(mem)? {
                queue.add_used(mem, chain.head, 0)?;
                done.completed += 1;
            }
            Ok(done)
        }
        fn control(&mut self, action: Action, _fds: Vec<OwnedFd>) -> Result<Wake, DeviceError> {
            match action {
                Action::SetLink { up } => {
                    self.config = u8::from(up);
                    Ok(Wake {
                        queues: 0,
                        config_changed: true,
                    })
                }
                other => Err(DeviceError::Unsupported {
                    device: "probe",
                    action: other.name(),
                }),
            }
        }
    }

    /// A probe brought up: its driver, transport, interrupt line and what it was activated with.
    type Probed = (
        Arc<Mutex<MockDriver>>,
        MmioTransport,
        Arc<Counter>,
        Arc<Mutex<Option<u64>>>,
    );

    fn probe(refuse: bool, features: u64) -> Probed {
        let driver = Arc::new(Mutex::new(MockDriver::new(8, 1 << 16)));
        let irq = Arc::new(Counter::default());
        let activated = Arc::new(Mutex::new(None));
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let device = Probe {
            activated: activated.clone(),
            refuse,
            config: 1,
        };
        let mut t = MmioTransport::new(Box::new(device), mem, irq.clone());
        crate::virtio::test_support::bring_up(&mut t, &driver, features, &[0]);
        (driver, t, irq, activated)
    }

    #[test]
    fn driver_ok_activates_the_device_with_the_negotiated_features() {
        let features = feature::VERSION_1 | PROBE_FEATURE;
        let (driver, mut t, irq, activated) = probe(false, features);
        assert_eq!(
            *activated.lock().unwrap(),
            Some(features),
            "exactly what was acked"
        );
        assert_eq!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(irq.count(), 0);
        driver.lock().unwrap().add_chain(&[MockBuffer::Writable(4)]);
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(driver.lock().unwrap().used().len(), 1);
        // A reset forgets the activation; the next DRIVER_OK activates again.
        w(&mut t, 0x70, 0);
        assert_eq!(*activated.lock().unwrap(), None);
        // Without the device's feature this time.
        let (_d, _t, _i, activated) = probe(false, feature::VERSION_1);
        assert_eq!(*activated.lock().unwrap(), Some(feature::VERSION_1));
    }

    #[test]
    fn a_refused_activation_needs_a_reset_and_serves_nothing() {
        let (driver, mut t, irq, activated) = probe(true, feature::VERSION_1);
        assert!(activated.lock().unwrap().is_some(), "it was asked");
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG_CHANGE, 0);
        assert_eq!(irq.count(), 1);
        assert!(t.failure().unwrap().contains("the probe says no"));
        driver.lock().unwrap().add_chain(&[MockBuffer::Writable(4)]);
        w(&mut t, QUEUE_NOTIFY, 0);
        assert!(driver.lock().unwrap().used().is_empty());
        // DRIVER_OK without FEATURES_OK is refused by the transport itself.
        let driver = Arc::new(Mutex::new(MockDriver::new(8, 1 << 16)));
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let activated = Arc::new(Mutex::new(None));
        let device = Probe {
            activated: activated.clone(),
            refuse: false,
            config: 0,
        };
        let mut t = MmioTransport::new(Box::new(device), mem, Arc::new(Counter::default()));
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(*activated.lock().unwrap(), None, "never activated");
    }

    #[test]
    fn a_device_raises_the_configuration_change_interrupt() {
        let (_driver, mut t, irq, _) = probe(false, feature::VERSION_1);
        let generation = r(&mut t, 0xfc);
        t.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        assert_eq!(
            r(&mut t, 0xfc),
            generation.wrapping_add(1),
            "a new generation"
        );
        assert_eq!(r(&mut t, 0x60), INT_CONFIG_CHANGE);
        assert_eq!(irq.count(), 1);
        let mut config = [0xffu8; 1];
        t.read(0x100, &mut config);
        assert_eq!(config, [0]);
        // An action the device does not take changes nothing.
        assert!(matches!(
            t.control(Action::SetRateLimit { bps: 1, iops: 1 }, Vec::new()),
            Err(DeviceError::Unsupported { .. })
        ));
        assert_eq!(
            (r(&mut t, 0xfc), irq.count()),
            (generation.wrapping_add(1), 1)
        );
        // Raised while quiesced: the ISR says so at once, the interrupt waits for the resume.
        w(&mut t, 0x64, INT_CONFIG_CHANGE);
        t.set_quiesced(true);
        t.control(Action::SetLink { up: true }, Vec::new()).unwrap();
        assert_eq!(r(&mut t, 0x60), INT_CONFIG_CHANGE);
        assert_eq!(irq.count(), 1);
        t.set_quiesced(false);
        assert_eq!(irq.count(), 2);
    }

    #[test]
    fn a_quiesced_transport_makes_no_progress_until_resumed() {
        let (driver, mut t, irq, _) = probe(false, feature::VERSION_1);
        t.set_quiesced(true);
        driver.lock().unwrap().add_chain(&[MockBuffer::Writable(4)]);
        w(&mut t, QUEUE_NOTIFY, 0);
        t.notified();
        assert!(
            driver.lock().unwrap().used().is_empty(),
            "no used entry while paused"
        );
        assert_eq!(irq.count(), 0);
        assert!(t.wake_at().is_none());
        t.set_quiesced(false);
        assert_eq!(driver.lock().unwrap().used().len(), 1, "served on resume");
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn a_full_ring_is_served_in_turns_of_the_budget() {
        let driver = Arc::new(Mutex::new(MockDriver::new(256, 1 << 20)));
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let device = Probe {
            activated: Arc::new(Mutex::new(None)),
            refuse: false,
            config: 0,
        };
        let mut t = MmioTransport::new(Box::new(device), mem, Arc::new(Counter::default()));
        crate::virtio::test_support::bring_up(&mut t, &driver, feature::VERSION_1, &[0]);
        let total = SERVE_BUDGET as usize * 2 + 10;
        for _ in 0..total {
            driver.lock().unwrap().add_chain(&[MockBuffer::Writable(1)]);
        }
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(driver.lock().unwrap().used().len(), SERVE_BUDGET as usize);
        assert!(t.has_backlog());
        t.serve_backlog();
        t.serve_backlog();
        assert_eq!(
            driver.lock().unwrap().used().len(),
            total - SERVE_BUDGET as usize
        );
        assert!(!t.has_backlog());
    }

    /// A live rng transport with one request served, and its saved state.
    fn saved_rng() -> (Arc<Mutex<MockDriver>>, Vec<u8>) {
        let (driver, mut t, _) = bring_up(feature::VERSION_1 | feature::RING_EVENT_IDX);
        driver.lock().unwrap().add_chain(&[MockBuffer::Writable(8)]);
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(driver.lock().unwrap().used().len(), 1);
        t.set_quiesced(true);
        (driver, t.save())
    }

    fn restore_rng(
        driver: &Arc<Mutex<MockDriver>>,
        saved: &[u8],
    ) -> Result<MmioTransport, StateError> {
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        MmioTransport::restore(
            Box::new(Rng::new(std::fs::File::open("/dev/urandom").unwrap())),
            mem,
            Arc::new(Counter::default()),
            saved,
            false,
        )
    }

    /// `saved` with its payload edited by `edit`, sealed again (a valid frame, a hostile body).
    fn reseal(saved: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut payload = state::unseal(saved).unwrap().to_vec();
        edit(&mut payload);
        state::seal(&payload)
    }

    #[test]
    fn a_restored_transport_carries_on_where_the_saved_one_stopped() {
        let (driver, saved) = saved_rng();
        let mut t = restore_rng(&driver, &saved).unwrap();
        assert_eq!(t.save(), {
            let mut again = restore_rng(&driver, &saved).unwrap();
            again.set_quiesced(true);
            again.save()
        });
        assert_ne!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
        driver.lock().unwrap().add_chain(&[MockBuffer::Writable(8)]);
        w(&mut t, QUEUE_NOTIFY, 0);
        let used = driver.lock().unwrap().used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].len, 8);
    }

    #[test]
    fn hostile_saved_states_are_refused_with_what_is_wrong() {
        let (driver, saved) = saved_rng();
        // Payload offsets: 0 device type, 4 offered features, 12 status, 16 driver features,
        // 36 ISR, 44 failure length, 48 queue count, 50 the queue (52 size, 54 flags,
        // 55 descriptor table, 79 next avail, 81 next used), 85 the device section's length.
        let put = |at: usize, bytes: &[u8]| {
            let bytes = bytes.to_vec();
            reseal(&saved, move |p| {
                p[at..at + bytes.len()].copy_from_slice(&bytes)
            })
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (saved[..saved.len() - 3].to_vec(), "payload length"),
            (
                {
                    let mut s = saved.clone();
                    s[30] ^= 0x40;
                    s
                },
                "checksum",
            ),
            (put(0, &2u32.to_le_bytes()), "type 2"),
            (put(4, &0u64.to_le_bytes()), "offered features"),
            (put(12, &0x10u32.to_le_bytes()), "unknown bits"),
            (put(16, &(1u64 << 40).to_le_bytes()), "never offered"),
            (put(36, &8u32.to_le_bytes()), "interrupt status"),
            (put(44, &5000u32.to_le_bytes()), "more than 1024"),
            (put(48, &2u16.to_le_bytes()), "2 queues saved"),
            (put(52, &3u16.to_le_bytes()), "queue 0"),
            (put(54, &0x80u8.to_le_bytes()), "unknown bits"),
            (put(55, &(u64::MAX - 7).to_le_bytes()), "queue 0"),
            (put(79, &100u16.to_le_bytes()), "queue 0"),
            (put(85, &3u32.to_le_bytes()), "truncated"),
            (
                reseal(&saved, |p| {
                    let at = p.len() - 4;
                    p[at..].copy_from_slice(&2u32.to_le_bytes());
                    p.extend_from_slice(&[1, 2]);
                }),
                "keeps no state",
            ),
            (reseal(&saved, |p| p.push(0)), "after its last field"),
        ];
        for (bytes, expected) in cases {
            let err = restore_rng(&driver, &bytes)
                .err()
                .unwrap_or_else(|| panic!("a hostile state was restored (expected {expected:?})"));
            assert!(
                err.to_string().contains(expected),
                "{err} (expected {expected:?})"
            );
        }
        // The untouched state still restores.
        assert!(restore_rng(&driver, &saved).is_ok());
    }
}
