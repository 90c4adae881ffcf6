//! The port-I/O and MMIO buses: which device answers which address.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the device's base address.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// An address space of devices (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

/// Registering a device over another one.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device or is empty")]
pub struct BusError {
    base: u64,
    len: u64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = |r: &Range| base < r.base + r.len && r.base < base.saturating_add(len);
        if end.is_none() || self.ranges.iter().any(overlaps) {
            return Err(BusError { base, len });
        }
        self.ranges.push(Range { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let r = self
            .ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)?;
        let offset = addr - r.base;
        // The whole access must fall inside the device.
        (offset.checked_add(size as u64)? <= r.len).then_some((r, offset))
    }

    /// Dispatches a read; returns false (and fills all ones) when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                lock(&r.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims the address (it is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                lock(&r.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another vCPU thread panicked while holding it: device state is
/// plain data and stays usable, and one guest's trouble must not cascade into a second panic.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.insert(dev.clone(), 0x3fc, 8).is_err());
        assert!(bus.insert(dev.clone(), 0x100, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        // An access straddling the end of the device is not delivered.
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w));
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
    }
}
