//! The one error type of the `hv` crate.

use std::io;

/// What can go wrong while talking to KVM.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// `/dev/kvm` does not exist on this host.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm-intel or kvm-amd, or run on a host with virtualization enabled)")]
    NoKvm,
    /// `/dev/kvm` exists but this user may not open it.
    #[error("permission denied opening /dev/kvm: add this user to the 'kvm' group or run as root")]
    NoPermission,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] io::Error),
    /// The KVM API version is not the stable one (12).
    #[error("unsupported KVM API version {0} (need 12)")]
    ApiVersion(i32),
    /// A required KVM capability is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// An ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// Which operation failed.
        op: &'static str,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
}

impl HvError {
    pub(crate) fn ioctl(op: &'static str, e: kvm_ioctls::Error) -> Self {
        HvError::Ioctl {
            op,
            source: io::Error::from_raw_os_error(e.errno()),
        }
    }
}
