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
