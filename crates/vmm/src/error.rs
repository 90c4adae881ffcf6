//! Errors a domain can end with, each with a message a user can act on.

use std::io;

use crate::kernel::KernelError;
use crate::spec::SpecError;

/// Why a domain could not be built or did not run to a clean stop.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The specification is not valid, whatever the host ([`crate::DomainSpec::validate`]).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A configuration value does not suit this host, or a device cannot be had; the message
    /// names the setting.
    #[error("{0}")]
    Config(String),
    /// A disk's format cannot be found from its file.
    #[error("--disk {id}: {source}")]
    DiskFormat {
        /// The disk's id.
        id: String,
        /// Why.
        #[source]
        source: devices::image::ImageError,
    },
    /// The kernel could not be loaded.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The initrd could not be read or placed.
    #[error("{0}")]
    Initrd(String),
    /// This host's KVM cannot run the guest.
    #[error("{0}")]
    UnsupportedHost(String),
    /// Talking to KVM failed.
    #[error(transparent)]
    Hypervisor(#[from] hv::HvError),
    /// A host resource (memory, eventfd, thread) could not be had.
    #[error("{what}: {source}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing boot structures into guest memory failed (a layout bug or a tiny guest).
    #[error("guest memory too small for the boot layout: {0}")]
    Layout(#[from] hv::OutOfRange),
    /// A snapshot could not be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The guest crashed or the VMM failed while it ran.
    #[error("guest crashed: {0}")]
    Crashed(String),
}

impl DomainError {
    pub(crate) fn host(what: &'static str) -> impl FnOnce(io::Error) -> DomainError {
        move |source| DomainError::Host { what, source }
    }
}
