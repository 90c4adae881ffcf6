//! Paravirtual devices: virtio 1.x over the virtio-mmio transport.
//!
//! A [`VirtioDevice`] is a device's own logic (block, entropy...). [`mmio::MmioTransport`]
//! wraps one in the virtio-mmio register file, owns its queues, and is what the bus and the
//! domain's I/O thread talk to.
//!
//! # The device contract
//!
//! What a device is told and may ask, in its life on a transport:
//!
//! - **Activation** ([`VirtioDevice::activate`]): when the driver sets `DRIVER_OK`, with the
//!   features the driver acknowledged and the queues as the driver set them up. The device may
//!   refuse; the transport then sets `DEVICE_NEEDS_RESET`, as for a broken queue. A reset by
//!   the driver ([`VirtioDevice::reset`]) undoes it.
//! - **Queues** ([`VirtioDevice::process_queue`]): served on the domain's I/O thread when the
//!   guest kicks one, when the device's host side has news, or when a held-back device's
//!   time comes; never while the domain is paused (the transport is *quiesced*).
//! - **Host descriptors** ([`VirtioDevice::host_count`] and the calls after it): any number,
//!   each watched by the I/O thread for what the device wants to hear about it now.
//! - **Wakes** ([`Wake`]): what a device asks after host input or a control action: queues to
//!   serve, and a configuration-change interrupt ([`Wake::config_changed`]: the transport
//!   bumps the configuration generation, sets the ISR's bit 1 and interrupts).
//! - **Control** ([`VirtioDevice::control`]): typed [`Action`]s from the control plane to a
//!   running device (a disk's rate limits, a VIF's backend or link), with any descriptors they
//!   carry, applied on the I/O thread.
//! - **State** ([`VirtioDevice::save_state`], [`VirtioDevice::restore_state`]): the device's own
//!   part of the saved state whose format [`state`] defines; the transport saves and restores
//!   its registers and queues around it.

pub mod balloon;
pub mod block;
pub mod counters;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
#[cfg(test)]
mod test_support;

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    /// Memory balloon.
    pub const BALLOON: u32 = 5;

    /// A device type's name in the API ("net", "block", "rng", "balloon"; "other" for types
    /// Vessel does not know).
    pub fn name(id: u32) -> &'static str {
        match id {
            NET => "net",
            BLOCK => "block",
            RNG => "rng",
            BALLOON => "balloon",
            _ => "other",
        }
    }
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
    fn discard(&self, addr: u64, len: u64) -> Result<(), vring::MemoryError> {
        self.0.discard(addr, len)
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
    /// The device stopped because the driver has made too few buffers available for what it
    /// has to deliver (a packet that spans several receive buffers); it gave back the ones it
    /// took and asks to be served again when the driver adds any.
    pub short_of_buffers: bool,
}

/// Which readiness of one of its host descriptors a device wants to hear about now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostInterest {
    /// The device has room for what the descriptor has to give.
    pub readable: bool,
    /// The device holds something the descriptor refused, to retry when it has room.
    pub writable: bool,
}

/// What a device asks of its transport after host input or a control action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// Bit `i` set: queue `i` has work, to be served as if the guest had kicked it.
    pub queues: u64,
    /// The device's configuration space changed (a link went down, a disk grew): raise the
    /// configuration-change interrupt.
    pub config_changed: bool,
}

impl Wake {
    /// Queues `mask` to serve, no configuration change.
    pub fn queues(mask: u64) -> Wake {
        Wake {
            queues: mask,
            config_changed: false,
        }
    }
}

/// A control-plane request to a running device (serialized as `{"action": "...", ...}`).
/// Descriptors an action needs travel beside it (see [`Action::descriptors`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// A disk's rate limits: bytes and requests per second (0: no limit). Requests already
    /// held back are judged again under the new limits at once.
    SetRateLimit {
        /// Bytes per second.
        bps: u64,
        /// Requests per second.
        iops: u64,
    },
    /// A VIF's backend: the one descriptor carried is the VIF's end of a new switch port's
    /// socket pair (after a daemon restart, say). The old backend is closed; a frame held for
    /// the old one is offered to the new one.
    ReplaceBackend {
        /// The port's name, for messages.
        port: String,
    },
    /// A VIF's link: down, the guest sees its carrier go (a configuration-change interrupt)
    /// and the device neither sends nor receives; up again, the same interrupt.
    SetLink {
        /// Whether the link is up.
        up: bool,
    },
    /// A balloon's target: the guest is asked to hand this many bytes of its memory back
    /// (whole 4 KiB pages; a configuration-change interrupt when it changed).
    SetBalloonTarget {
        /// Bytes the balloon should hold.
        bytes: u64,
    },
    /// A VIF tells the network where its MAC address is now (after a migration): it sends a
    /// broadcast RARP frame from that address, as Xen and QEMU do, so that switches and
    /// bridges learn the port it is behind.
    Announce,
}

impl Action {
    /// The action's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Action::SetRateLimit { .. } => "set_rate_limit",
            Action::ReplaceBackend { .. } => "replace_backend",
            Action::SetLink { .. } => "set_link",
            Action::SetBalloonTarget { .. } => "set_balloon_target",
            Action::Announce => "announce",
        }
    }

    /// How many descriptors the action carries.
    pub fn descriptors(&self) -> usize {
        match self {
            Action::ReplaceBackend { .. } => 1,
            Action::SetRateLimit { .. }
            | Action::SetLink { .. }
            | Action::SetBalloonTarget { .. }
            | Action::Announce => 0,
        }
    }
}

/// Why a device refused an activation or a control action.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The driver set the device up in a way it cannot work with.
    #[error("the device refuses activation: {0}")]
    Refused(String),
    /// The action is not one this kind of device takes.
    #[error("a {device} device does not take {action}")]
    Unsupported {
        /// The device's kind.
        device: &'static str,
        /// The action's name.
        action: &'static str,
    },
    /// The action carried the wrong number of descriptors.
    #[error("{action} carries {expected} descriptor(s), not {got}")]
    Descriptors {
        /// The action's name.
        action: &'static str,
        /// What it needs.
        expected: usize,
        /// What came.
        got: usize,
    },
    /// The host refused what the action needs (a descriptor that cannot be used).
    #[error("{0}")]
    Host(String),
}

/// Copies `data.len()` bytes of a device's configuration space `config` from `offset` into
/// `data` (a driver's read); a read that does not fit inside it reads zeros.
pub fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    let bytes = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..start.checked_add(data.len())?));
    match bytes {
        Some(bytes) => data.copy_from_slice(bytes),
        None => data.fill(0),
    }
}

/// Checks that `action` came with as many descriptors as it carries.
pub fn check_descriptors(action: &Action, fds: &[OwnedFd]) -> Result<(), DeviceError> {
    if fds.len() == action.descriptors() {
        Ok(())
    } else {
        Err(DeviceError::Descriptors {
            action: action.name(),
            expected: action.descriptors(),
            got: fds.len(),
        })
    }
}

/// A virtio device's own logic, independent of the transport (see the module's contract).
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
    /// The driver set `DRIVER_OK`: work with the `features` it acknowledged (a subset of what
    /// was offered, with `VERSION_1`) on `queues` as it set them up. An error refuses: the
    /// transport marks the device as needing a reset and serves nothing.
    fn activate(&mut self, _features: u64, _queues: &[Queue]) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Serves the available requests of queue `index`. Errors from the queue (a hostile or
    /// broken driver) are returned; the transport then marks the device as needing a reset.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError>;
    /// The driver reset the device: forget the activation and whatever requests are held.
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
    /// How many host descriptors the device has for the I/O thread to watch (a network
    /// backend's socket...). Sources are numbered `0..host_count()`; the count and the
    /// descriptors may change only through [`VirtioDevice::control`], after which the I/O
    /// thread asks again.
    fn host_count(&self) -> usize {
        0
    }
    /// Host descriptor number `source`, if there is one.
    fn host_fd(&self, _source: usize) -> Option<RawFd> {
        None
    }
    /// What the device wants to hear about host descriptor `source` now. The I/O thread asks
    /// after every event it hands the device, so a device that cannot take more simply stops
    /// asking for readability (and the backlog stays in the host: back-pressure, not drops).
    fn host_interest(&self, _source: usize) -> HostInterest {
        HostInterest::default()
    }
    /// Host descriptor `source` is `ready` as asked: take in what it has (bounded), whatever
    /// the driver's state, or note that it has room again. Returns what the device wants
    /// done about it.
    fn host_ready(&mut self, _source: usize, _ready: HostInterest) -> Wake {
        Wake::default()
    }
    /// Applies a control-plane `action`, with the descriptors it carries (see
    /// [`Action::descriptors`]). Called on the I/O thread, whatever the driver's state.
    fn control(&mut self, action: Action, _fds: Vec<OwnedFd>) -> Result<Wake, DeviceError> {
        Err(DeviceError::Unsupported {
            device: device_id::name(self.device_id()),
            action: action.name(),
        })
    }
    /// The device's own state, as the [`state`] format's device section for its type
    /// (empty for a device that keeps none). Called with the transport quiesced or locked,
    /// so that nothing moves meanwhile.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Takes back what [`VirtioDevice::save_state`] wrote, on a fresh device built like the
    /// one that saved it, after the transport restored its queues (`queues`, on `mem`) and, if
    /// the driver had set `DRIVER_OK`, activated it. Validates everything: the bytes may be
    /// hostile.
    fn restore_state(
        &mut self,
        bytes: &[u8],
        _queues: &[Queue],
        _mem: &dyn vring::GuestMemory,
    ) -> Result<(), state::StateError> {
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(state::StateError::Device(format!(
                "a {} device keeps no state, yet {} bytes were saved for it",
                device_id::name(self.device_id()),
                bytes.len()
            )))
        }
    }
}
