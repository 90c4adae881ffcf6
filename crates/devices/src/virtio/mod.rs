//! Paravirtual devices: virtio 1.x over the virtio-mmio transport.
//!
//! A [`VirtioDevice`] is a device's own logic (block, entropy...). [`mmio::MmioTransport`]
//! wraps one in the virtio-mmio register file, owns its queues, and is what the bus and the
//! domain's I/O thread talk to.

pub mod block;
pub mod counters;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
mod test_support;

use std::os::fd::RawFd;
use std::sync::Arc;

pub use counters::Counters;
pub use vring::{DescriptorChain, Queue, QueueError};

/// Device type IDs (virtio 1.x, section 5).
pub mod device_id {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
}

/// Feature bits common to all devices.
pub mod feature {
    /// The device complies with virtio 1.x (modern).
    pub const VERSION_1: u64 = 1 << 32;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// Guest memory as devices see it: any `vring::GuestMemory`, shared between threads.
#[derive(Clone)]
pub struct Memory(pub Arc<dyn vring::GuestMemory + Send + Sync>);

impl vring::GuestMemory for Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), vring::MemoryError> {
        self.0.read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), vring::MemoryError> {
        self.0.write(addr, data)
    }
    fn contains(&self, addr: u64, len: u64) -> bool {
        self.0.contains(addr, len)
    }
    fn read_u16(&self, addr: u64) -> Result<u16, vring::MemoryError> {
        self.0.read_u16(addr)
    }
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), vring::MemoryError> {
        self.0.write_u16(addr, value)
    }
    fn read_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        self.0.read_file(segments, file, offset)
    }
    fn write_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        self.0.write_file(segments, file, offset)
    }
}

/// What processing a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Requests completed (used entries added).
    pub completed: u32,
    /// The device stopped early because a rate limit holds it back; it asks to be served
    /// again at [`VirtioDevice::wake_at`].
    pub throttled: bool,
}

/// Which readiness of its host descriptor a device wants to hear about now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostInterest {
    /// The device has room for what the descriptor has to give.
    pub readable: bool,
    /// The device holds something the descriptor refused, to retry when it has room.
    pub writable: bool,
}

/// A virtio device's own logic, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device type.
    fn device_id(&self) -> u32;
    /// The maximum size of each of the device's queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Device feature bits (the transport adds VERSION_1 and RING_EVENT_IDX).
    fn device_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Serves the available requests of queue `index`. Errors from the queue (a hostile or
    /// broken driver) are returned; the transport then marks the device as needing a reset.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// A short name for accounting: the disk's id, the VIF's MAC, "rng". Fixed for the
    /// device's life: the control plane reads it once, when the device is placed.
    fn label(&self) -> String;
    /// The device's counters, by name (bytes and operations in each direction, drops), for
    /// accounting: the same shared atomics every call, which the device bumps as it works.
    /// The control plane takes them once, when the device is placed, and reads them without
    /// the device's lock (see [`counters`]).
    fn counters(&self) -> Arc<Counters> {
        Counters::none()
    }
    /// When a throttled device wants to be served again (see [`Processed::throttled`]).
    fn wake_at(&self) -> Option<std::time::Instant> {
        None
    }
    /// A host descriptor the I/O thread should watch for this device (a network backend),
    /// if any; when it polls as [`VirtioDevice::host_interest`] asks, the I/O thread calls
    /// [`VirtioDevice::host_ready`].
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// What the device wants to hear about its host descriptor now. The I/O thread asks after
    /// every event it hands the device, so a device that cannot take more simply stops asking
    /// for readability (and the backlog stays in the host: back-pressure, not drops).
    fn host_interest(&self) -> HostInterest {
        HostInterest::default()
    }
    /// The host descriptor is `ready` as asked: take in what it has (bounded), whatever the
    /// driver's state, or note that it has room again. Returns a bit mask of the queues that
    /// now have work, which the transport serves as if the guest had kicked them.
    fn host_ready(&mut self, _ready: HostInterest) -> u64 {
        0
    }
}
