//! `vring`: the virtio 1.x split virtqueue, device side, over guest memory.
//!
//! This crate owns the ring protocol and nothing else: reading the available ring, walking and
//! validating descriptor chains (direct and indirect), copying into and out of the buffers a chain
//! names, publishing used entries, and notification suppression (`VIRTQ_AVAIL_F_NO_INTERRUPT`,
//! `VIRTQ_USED_F_NO_NOTIFY`, and `VIRTIO_F_EVENT_IDX`'s `used_event` / `avail_event`). It also
//! ships a driver-side [`mock`] so device models can be unit-tested without a guest.
//!
//! It must never depend on other Vessel crates, and never use threads, file descriptors or KVM:
//! guest memory is reached only through the [`GuestMemory`] trait, which the VMM implements over
//! its guest RAM. That keeps the crate small, free of `unsafe`, and fuzzable on its own
//! (`fuzz/fuzz_targets/virtqueue.rs`).
//!
//! # Trust
//!
//! Everything the guest writes is hostile: descriptor addresses, lengths, flags and next indices,
//! the available ring's index and entries, `used_event`. Every guest address range is checked with
//! overflow-safe arithmetic and against [`GuestMemory::contains`], every walk is bounded by the
//! queue size, and no guest value can make this crate panic. A guest value is copied out of
//! guest memory once for each use, and that copy is what gets validated and used, so a guest
//! changing memory underneath cannot slip a value past a check.
//!
//! # Broken queues
//!
//! When [`Queue::pop`] finds the driver has violated the ring protocol (the available index jumps
//! by more than the queue size, a head or next index is out of range, a chain loops or is too long,
//! a buffer lies outside guest memory, a bad indirect table, a readable buffer after a writable
//! one), it returns the specific error once and marks the queue *broken*: every later call on it
//! returns [`QueueError::Broken`] until [`Queue::reset`]. A device seeing either error should stop
//! using the queue and tell the driver (`DEVICE_NEEDS_RESET`); a guest can break its own queue,
//! never the VMM.
//!
//! # A device's queue handler
//!
//! ```
//! use vring::mock::{MockBuffer, MockDriver};
//!
//! // The guest's side: a queue of 8 in 64 KiB of memory, one request posted.
//! let mut driver = MockDriver::new(8, 0x10000);
//! driver.add_chain(&[MockBuffer::Readable(b"ping"), MockBuffer::Writable(4)]);
//! let mut queue = driver.queue();
//! let mem = driver.mem();
//!
//! // The device's side, woken by a notification.
//! loop {
//!     queue.disable_notification(mem)?;
//!     while let Some(chain) = queue.pop(mem)? {
//!         let mut req = [0u8; 4];
//!         chain.read_at(mem, 0, &mut req)?;
//!         let written = chain.write_at(mem, 0, b"pong")?;
//!         queue.add_used(mem, chain.head, written as u32)?;
//!     }
//!     if queue.needs_notification(mem)? {
//!         // interrupt the guest
//!     }
//!     if !queue.enable_notification(mem)? {
//!         break; // nothing raced in: sleep until the next notification
//!     }
//! }
//! assert_eq!(driver.used().len(), 1);
//! # Ok::<(), vring::QueueError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chain;
pub mod memory;
pub mod mock;
pub mod queue;

pub use chain::{ChainError, Descriptor, DescriptorChain};
pub use memory::{GuestMemory, MemoryError};
pub use queue::{Queue, QueueError, QueueState, QueueStats};

/// Descriptor flag: the buffer continues in the descriptor named by `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks the device not to interrupt it (without `EVENT_IDX`).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks the driver not to notify it (without `EVENT_IDX`).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// The largest queue size the split ring allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size in bytes of one descriptor (`le64 addr, le32 len, le16 flags, le16 next`).
pub const DESCRIPTOR_SIZE: u64 = 16;
/// Size in bytes of one used ring element (`le32 id, le32 len`).
pub const USED_ELEMENT_SIZE: u64 = 8;
