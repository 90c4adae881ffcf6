//! Test doubles shared by the device tests: guest memory owned by a mock driver, and an
//! interrupt line that counts.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vring::mock::MockDriver;

use crate::InterruptLine;

/// Guest memory that is the mock driver's own, shared with a transport.
pub struct DriverMemory(pub Arc<Mutex<MockDriver>>);

impl vring::GuestMemory for DriverMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), vring::MemoryError> {
        self.0.lock().unwrap().mem().read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), vring::MemoryError> {
        self.0.lock().unwrap().mem().write(addr, data)
    }
}

/// An interrupt line that counts its triggers.
#[derive(Default)]
pub struct Counter(pub AtomicUsize);

impl Counter {
    /// Triggers so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl InterruptLine for Counter {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Brings a transport up the way Linux does: status, `features`, then each queue in `queues`
/// on the mock driver's rings (every queue of a device on the same rings: tests use one
/// queue at a time), then `DRIVER_OK`.
pub fn bring_up(
    t: &mut crate::virtio::mmio::MmioTransport,
    driver: &Arc<Mutex<MockDriver>>,
    features: u64,
    queues: &[u32],
) {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::status;
    let mut w = |offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
    w(0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(0x24, 0);
    w(0x20, features as u32);
    w(0x24, 1);
    w(0x20, (features >> 32) as u32);
    w(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    let (desc, avail, used, size) = {
        let d = driver.lock().unwrap();
        (d.desc_table(), d.avail_ring(), d.used_ring(), d.size())
    };
    for &q in queues {
        w(0x30, q);
        w(0x38, u32::from(size));
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            w(reg, addr as u32);
            w(reg + 4, (addr >> 32) as u32);
        }
        w(0x44, 1);
    }
    w(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
}
