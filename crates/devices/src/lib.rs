//! `devices`: Vessel's device models.
//!
//! Devices see small traits ([`InterruptLine`], [`PowerSink`]) and plain byte slices, never KVM:
//! each model can be unit-tested without `/dev/kvm`. This crate must not depend on `hv` or `vmm`.
//! Everything a guest writes to a device is untrusted; no guest access may panic a device.
#![forbid(unsafe_code)]

pub mod bus;
pub mod host_file;
pub mod i8042;
pub mod image;
pub mod net_backend;
pub mod net_offload;
pub mod power;
pub mod rate_limit;
pub mod serial;
pub mod virtio;

use std::io;

/// An interrupt line into the guest (an irqfd on the VMM side, a counter in tests).
pub trait InterruptLine: Send + Sync {
    /// Pulses the line (edge-triggered).
    fn trigger(&self) -> io::Result<()>;
}

/// A request from the guest to change the machine's power state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// Power off (ACPI S5).
    PowerOff,
    /// Reset (ACPI reset register or the keyboard controller's reset line).
    Reset,
}

/// Where a device reports [`PowerEvent`]s.
pub trait PowerSink: Send + Sync {
    /// The guest asked for `event`.
    fn power_event(&self, event: PowerEvent);
}
