//! `hv`: Vessel's only door to KVM and to host system calls.
//!
//! This crate owns every `ioctl` on `/dev/kvm`, every raw pointer handed to the kernel and every
//! signal handler. It exposes its own small types ([`VcpuExit`], [`CpuidEntry`], [`BootCpuState`])
//! so that no `kvm-bindings` type leaks into the rest of Vessel. It must never depend on any other
//! Vessel crate: device models and policy live above it.

pub mod channel;
mod cpu;
pub mod dirty;
mod error;
mod kick;
mod kvm;
mod memory;
pub mod paging;
pub mod process;
pub mod sampling;
pub mod sandbox;
pub mod seccomp;
mod signals;
pub mod state;
pub mod tap;
pub mod thread;
mod tty;
mod vcpu;

pub use cpu::{BootCpuState, CpuidEntry, Segment, SegmentKind};
pub use error::HvError;
pub use kick::{current_thread_handle, install_kick_handler, ThreadHandle};
pub use kvm::{new_eventfd, Hypervisor, KvmFlavour, Vm};
pub use memory::{GuestMemory, LoadError, OutOfRange, Piece};
pub use signals::{default_sigpipe, Received, TerminationSignal, TerminationSignals};
pub use tty::RawTerminal;
pub use vcpu::{Vcpu, VcpuExit};
pub use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
pub use vmm_sys_util::eventfd::EventFd;
