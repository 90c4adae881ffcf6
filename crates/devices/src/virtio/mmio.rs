//! The virtio-mmio transport (virtio 1.x, section 4.2, version 2 "modern" register layout).
//!
//! One transport owns one [`VirtioDevice`], its queues and its interrupt status. The vCPU threads
//! reach it through the bus for register accesses; the domain's I/O thread calls
//! [`MmioTransport::notified`] when the guest kicks a queue (through an ioeventfd on
//! `QueueNotify`). Every register access is validated: wrong sizes read as zero and are ignored,
//! queue configuration is frozen while a queue is ready, and a feature set the device did not
//! offer is refused at `FEATURES_OK`.

use std::sync::Arc;

use super::{feature, HostInterest, Memory, Queue, VirtioDevice};
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
        }
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
        if value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            let event_idx = self.driver_features & feature::RING_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
        }
        // Keep DEVICE_NEEDS_RESET once set: only a reset clears it.
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
    }

    /// The guest kicked the device: serve every ready queue and interrupt if the driver wants it.
    pub fn notified(&mut self) {
        self.serve(u64::MAX);
    }

    /// The device's host descriptor ([`VirtioDevice::host_fd`]) is `ready` as the device asked:
    /// let the device take in what it has, then serve the queues it names, as a kick would.
    pub fn host_ready(&mut self, ready: HostInterest) {
        let queues = self.device.host_ready(ready);
        if queues != 0 {
            self.serve(queues);
        }
    }

    /// The transport's state, every queue's indices and the device's counters, one line, for
    /// diagnostics.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} status={:#x} isr={:#x} interest={:?} failure={:?}",
            self.device.label(),
            self.status,
            self.interrupt_status,
            self.device.host_interest(),
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

    /// What the device wants to hear about its host descriptor now.
    pub fn host_interest(&self) -> HostInterest {
        self.device.host_interest()
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
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The device's host descriptor, if it has one for the I/O thread to watch.
    pub fn host_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.host_fd()
    }

    /// Serves the ready queues whose bit is set in `queues`, if the driver is up, and interrupts
    /// if the driver wants it.
    fn serve(&mut self, queues: u64) {
        if !self.live() {
            return;
        }
        let mut interrupt = 0;
        for index in 0..self.queues.len() {
            if index >= 64 || queues & (1 << index) == 0 {
                continue;
            }
            let queue = &mut self.queues[index];
            if !queue.ready() || queue.is_broken() {
                continue;
            }
            match serve_queue(self.device.as_mut(), index, queue, self.mem.0.as_ref()) {
                Ok(true) => interrupt |= INT_USED_BUFFER,
                Ok(false) => {}
                Err(e) => {
                    // A driver that corrupts its ring gets its device stopped, not the VMM.
                    self.failure = Some(format!("queue {index}: {e}"));
                    self.status |= status::DEVICE_NEEDS_RESET;
                    interrupt |= INT_CONFIG_CHANGE;
                }
            }
        }
        if interrupt != 0 {
            self.interrupt_status |= interrupt;
            // An interrupt that cannot be delivered is the host's problem; the guest will see
            // the used buffers on its next poll.
            let _ = self.irq.trigger();
        }
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
        // A throttled device is served again at its wake time, not by spinning here.
        if done.throttled || !queue.enable_notification(mem)? || done.completed == 0 {
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
}
