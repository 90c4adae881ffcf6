//! `vmm`: Vessel's domains.
//!
//! Owns the boot path (kernel loading, zero page / PVH start info, ACPI tables, CPUID), the
//! machine's device wiring, the vCPU threads and the lifecycle of a domain (run, stop, reboot).
//! It talks to KVM only through `hv` and to devices only through `devices`' traits; it must
//! never depend on the `vessel` binary crate.
#![forbid(unsafe_code)]

pub mod acpi;
pub mod boot;
pub mod confinement;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod domain;
pub mod domain_process;
pub mod error;
pub mod instance;
pub mod kernel;
pub mod layout;
pub mod mem_alloc;
pub mod migration;
pub mod net;
pub mod resources;
pub mod sched;
pub mod snapshot;
pub mod spec;
pub mod stats;
pub mod vcpu;
pub mod virtio;
pub mod wire;
pub mod working_set;

pub use console::{ConsoleInput, ConsoleLog, ConsoleSink};
pub use control::PowerButton;
/// Disk image formats (raw, qcow2), for `vessel image`.
pub use devices::image;
pub use domain::{check_host_memory, pin_disk_formats, validate, Outcome};
pub use error::DomainError;
pub use instance::{Instance, RunState, SaveReport, Status};
pub use mem_alloc::MemoryAlloc;
pub use sched::{SchedChange, SchedParams};
pub use spec::{
    parse_rate, parse_size, DiskSpec, DomainSpec, NetBackendSpec, NetSpec, OnReboot, SpecError,
};
