//! Descriptor chains: walking and validating them (direct and indirect), and copying into and
//! out of the buffers they name.

use crate::memory::{GuestMemory, MemoryError};
use crate::queue::QueueError;
use crate::{DESCRIPTOR_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// One buffer of a chain, validated: `[addr, addr + len)` does not wrap and lay inside guest
/// memory when the chain was popped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes (may be zero).
    pub len: u32,
    /// Whether the buffer is device-writable (otherwise device-readable).
    pub writable: bool,
}

/// A chain popped from the avail ring: all device-readable descriptors come before all
/// device-writable ones (a readable one after a writable one is an error). Descriptors from an
/// indirect table appear in place of the descriptor that referred to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    /// Index of the chain's first descriptor: what goes back in the used ring.
    pub head: u16,
    /// The chain's buffers, in order (at most the queue size of them).
    pub descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    /// The device-readable buffers, in order.
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| !d.writable)
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.writable)
    }

    /// Total length in bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        sum_len(self.readable())
    }

    /// Total length in bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        sum_len(self.writable())
    }

    /// Copies up to `buf.len()` bytes of the readable part starting at byte `offset` of it;
    /// returns bytes copied (short, possibly zero, when the readable part ends first).
    pub fn read_at(
        &self,
        mem: &(impl GuestMemory + ?Sized),
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, QueueError> {
        let total = buf.len();
        copy_segments(self.readable(), offset, total, |addr, start, n| {
            let dst = buf
                .get_mut(start..start.saturating_add(n))
                .ok_or(MemoryError::new(addr, n))?;
            mem.read(addr, dst)
        })
    }

    /// Writes `data` into the writable part at byte `offset` of it; returns bytes written (short,
    /// possibly zero, if the part is smaller).
    pub fn write_at(
        &self,
        mem: &(impl GuestMemory + ?Sized),
        offset: u64,
        data: &[u8],
    ) -> Result<usize, QueueError> {
        copy_segments(self.writable(), offset, data.len(), |addr, start, n| {
            let src = data
                .get(start..start.saturating_add(n))
                .ok_or(MemoryError::new(addr, n))?;
            mem.write(addr, src)
        })
    }

    /// Where `len` bytes of the writable part from byte `offset` of it lie in guest memory, in
    /// order, as (guest address, length) pieces: for a device that fills them in one host call
    /// ([`GuestMemory::read_file`]). Covers less than `len` if the part ends first.
    pub fn writable_segments(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<Vec<(u64, usize)>, QueueError> {
        pieces(self.writable(), offset, len)
    }

    /// Like [`writable_segments`](Self::writable_segments), for the readable part (what a
    /// device sends to a host file with [`GuestMemory::write_file`]).
    pub fn readable_segments(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<Vec<(u64, usize)>, QueueError> {
        pieces(self.readable(), offset, len)
    }
}

/// The (guest address, length) pieces of `[offset, offset + len)` of the buffers `descs`.
fn pieces<'a>(
    descs: impl Iterator<Item = &'a Descriptor>,
    offset: u64,
    len: usize,
) -> Result<Vec<(u64, usize)>, QueueError> {
    let mut pieces = Vec::new();
    copy_segments(descs, offset, len, |addr, _, n| {
        pieces.push((addr, n));
        Ok(())
    })?;
    Ok(pieces)
}

fn sum_len<'a>(descs: impl Iterator<Item = &'a Descriptor>) -> u64 {
    descs.fold(0u64, |acc, d| acc.saturating_add(u64::from(d.len)))
}

/// Splits the byte range `[offset, offset + total)` of the concatenated buffers `descs` into
/// per-buffer pieces and calls `op(guest_addr, start_in_caller_buffer, len)` for each, in order.
/// Returns the number of bytes covered (less than `total` if the buffers end first).
fn copy_segments<'a>(
    descs: impl Iterator<Item = &'a Descriptor>,
    offset: u64,
    total: usize,
    mut op: impl FnMut(u64, usize, usize) -> Result<(), MemoryError>,
) -> Result<usize, QueueError> {
    let mut skip = offset;
    let mut done = 0usize;
    for d in descs {
        if done >= total {
            break;
        }
        let len = u64::from(d.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let avail = len - skip; // <= u32::MAX
        let want = total - done;
        let n = usize::try_from(avail).map_or(want, |a| a.min(want));
        let addr = d
            .addr
            .checked_add(skip)
            .ok_or(MemoryError::new(d.addr, n))?;
        op(addr, done, n)?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// A chain the driver built against the rules. Returned by [`crate::Queue::pop`] inside
/// [`QueueError::Chain`]; the queue is then broken.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor's `next` is not an index into the descriptor table.
    #[error("descriptor {index} names next descriptor {next}, outside the table of {size}")]
    NextOutOfRange {
        /// The descriptor holding the bad `next`.
        index: u16,
        /// The bad `next`.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// The walk visited more descriptors than its table holds: the chain loops.
    #[error("descriptor chain visits more than {limit} descriptors of its table: it loops")]
    Loop {
        /// Number of descriptors in the table being walked.
        limit: u32,
    },
    /// The chain (with its indirect table) holds more buffers than the queue size.
    #[error("descriptor chain holds more than {limit} buffers")]
    TooLong {
        /// The queue size.
        limit: u16,
    },
    /// `addr + len` of a buffer wraps around the 64-bit address space.
    #[error("buffer of {len} bytes at {addr:#x} wraps around the address space")]
    AddressOverflow {
        /// The buffer's address.
        addr: u64,
        /// The buffer's length.
        len: u32,
    },
    /// A buffer is not wholly inside guest memory.
    #[error("buffer of {len} bytes at {addr:#x} is outside guest memory")]
    OutOfMemory {
        /// The buffer's address.
        addr: u64,
        /// The buffer's length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    /// An indirect table's length is zero or not a multiple of the descriptor size (16).
    #[error("indirect table length {len} is not a non-zero multiple of 16")]
    IndirectBadLength {
        /// The table length in bytes.
        len: u32,
    },
    /// An indirect table holds more descriptors than the queue size.
    #[error("indirect table of {count} descriptors is larger than the queue size {limit}")]
    IndirectTooLarge {
        /// Descriptors in the table.
        count: u32,
        /// The queue size.
        limit: u16,
    },
    /// An indirect table wraps around the address space or is not wholly inside guest memory.
    #[error("indirect table of {len} bytes at {addr:#x} is outside guest memory")]
    IndirectOutOfMemory {
        /// The table's address.
        addr: u64,
        /// The table's length in bytes.
        len: u32,
    },
    /// A descriptor sets both `VIRTQ_DESC_F_INDIRECT` and `VIRTQ_DESC_F_NEXT`.
    #[error("a descriptor sets both INDIRECT and NEXT")]
    IndirectWithNext,
    /// A descriptor inside an indirect table sets `VIRTQ_DESC_F_INDIRECT`.
    #[error("an indirect table holds an indirect descriptor")]
    NestedIndirect,
    /// A descriptor in an indirect table names a `next` outside that table.
    #[error("indirect descriptor names next {next}, outside its table of {count}")]
    IndirectNextOutOfRange {
        /// The bad `next`.
        next: u16,
        /// Descriptors in the table.
        count: u32,
    },
    /// Reading a descriptor failed.
    #[error("reading a descriptor: {0}")]
    Memory(#[from] MemoryError),
}

/// A descriptor as the guest wrote it, copied once out of guest memory.
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_raw(
    mem: &(impl GuestMemory + ?Sized),
    table: u64,
    index: u32,
) -> Result<RawDescriptor, ChainError> {
    let at = u64::from(index)
        .checked_mul(DESCRIPTOR_SIZE)
        .and_then(|off| table.checked_add(off))
        .ok_or(MemoryError::new(table, 16))?;
    let mut b = [0u8; 16];
    mem.read(at, &mut b)?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
    Ok(RawDescriptor {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// The chain being collected, with the checks every buffer goes through.
struct Collector {
    descriptors: Vec<Descriptor>,
    limit: u16,
    seen_writable: bool,
}

impl Collector {
    fn push(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
        raw: &RawDescriptor,
    ) -> Result<(), ChainError> {
        if self.descriptors.len() >= usize::from(self.limit) {
            return Err(ChainError::TooLong { limit: self.limit });
        }
        let writable = raw.flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && self.seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        let (addr, len) = (raw.addr, raw.len);
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(ChainError::AddressOverflow { addr, len });
        }
        if !mem.contains(addr, u64::from(len)) {
            return Err(ChainError::OutOfMemory { addr, len });
        }
        self.seen_writable |= writable;
        self.descriptors.push(Descriptor {
            addr,
            len,
            writable,
        });
        Ok(())
    }
}

/// Walks and validates the chain starting at `head` (which must be `< size`) in the descriptor
/// table at `table`. Every walk is bounded: at most `size` descriptors of the main table, at most
/// the table's own count of an indirect table, at most `size` buffers in all.
pub(crate) fn walk(
    mem: &(impl GuestMemory + ?Sized),
    table: u64,
    size: u16,
    head: u16,
) -> Result<DescriptorChain, ChainError> {
    let mut out = Collector {
        descriptors: Vec::new(),
        limit: size,
        seen_writable: false,
    };
    let mut index = head;
    let mut visited = 0u32;
    loop {
        visited += 1;
        if visited > u32::from(size) {
            return Err(ChainError::Loop {
                limit: u32::from(size),
            });
        }
        let raw = read_raw(mem, table, u32::from(index))?;
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            walk_indirect(mem, &raw, size, &mut out)?;
            break;
        }
        out.push(mem, &raw)?;
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        if raw.next >= size {
            return Err(ChainError::NextOutOfRange {
                index,
                next: raw.next,
                size,
            });
        }
        index = raw.next;
    }
    Ok(DescriptorChain {
        head,
        descriptors: out.descriptors,
    })
}

/// Walks the indirect table `ind` refers to (its `VIRTQ_DESC_F_WRITE` is ignored, as the spec
/// requires), appending its buffers to `out`.
fn walk_indirect(
    mem: &(impl GuestMemory + ?Sized),
    ind: &RawDescriptor,
    size: u16,
    out: &mut Collector,
) -> Result<(), ChainError> {
    let (addr, len) = (ind.addr, ind.len);
    if len == 0 || !u64::from(len).is_multiple_of(DESCRIPTOR_SIZE) {
        return Err(ChainError::IndirectBadLength { len });
    }
    let count = len / 16;
    if count > u32::from(size) {
        return Err(ChainError::IndirectTooLarge { count, limit: size });
    }
    if addr.checked_add(u64::from(len)).is_none() || !mem.contains(addr, u64::from(len)) {
        return Err(ChainError::IndirectOutOfMemory { addr, len });
    }
    let mut index = 0u32;
    let mut visited = 0u32;
    loop {
        visited += 1;
        if visited > count {
            return Err(ChainError::Loop { limit: count });
        }
        let raw = read_raw(mem, addr, index)?;
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(ChainError::NestedIndirect);
        }
        out.push(mem, &raw)?;
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(());
        }
        if u32::from(raw.next) >= count {
            return Err(ChainError::IndirectNextOutOfRange {
                next: raw.next,
                count,
            });
        }
        index = u32::from(raw.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockMemory;

    fn chain(descs: &[(u64, u32, bool)]) -> DescriptorChain {
        DescriptorChain {
            head: 0,
            descriptors: descs
                .iter()
                .map(|&(addr, len, writable)| Descriptor {
                    addr,
                    len,
                    writable,
                })
                .collect(),
        }
    }

    #[test]
    fn lengths_split_by_direction() {
        let c = chain(&[(0, 3, false), (8, 0, false), (16, 5, false), (32, 7, true)]);
        assert_eq!(c.readable().count(), 3);
        assert_eq!(c.writable().count(), 1);
        assert_eq!(c.readable_len(), 8);
        assert_eq!(c.writable_len(), 7);
    }

    #[test]
    fn lengths_do_not_overflow() {
        let c = chain(&[(0, u32::MAX, true); 4]);
        assert_eq!(c.writable_len(), 4 * u64::from(u32::MAX));
    }

    #[test]
    fn read_at_spans_buffers_and_skips_empty_ones() {
        let m = MockMemory::new(0x100);
        m.write(0x10, b"abc").unwrap();
        m.write(0x20, b"defgh").unwrap();
        let c = chain(&[(0x10, 3, false), (0x80, 0, false), (0x20, 5, false)]);
        let mut buf = [0u8; 16];
        assert_eq!(c.read_at(&m, 0, &mut buf).unwrap(), 8);
        assert_eq!(&buf[..8], b"abcdefgh");
        let mut buf = [0u8; 4];
        assert_eq!(c.read_at(&m, 2, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"cdef");
        assert_eq!(c.read_at(&m, 8, &mut buf).unwrap(), 0);
        assert_eq!(c.read_at(&m, u64::MAX, &mut buf).unwrap(), 0);
        assert_eq!(c.read_at(&m, 0, &mut []).unwrap(), 0);
    }

    #[test]
    fn write_at_spans_buffers_and_stops_at_the_end() {
        let m = MockMemory::new(0x100);
        let c = chain(&[(0x10, 4, false), (0x40, 2, true), (0x50, 3, true)]);
        assert_eq!(c.write_at(&m, 1, b"WXYZ!!").unwrap(), 4);
        let mut buf = [0u8; 5];
        m.read(0x40, &mut buf[..2]).unwrap();
        m.read(0x50, &mut buf[2..]).unwrap();
        assert_eq!(&buf, b"\0WXYZ");
        // The readable part is not written.
        let mut r = [1u8; 4];
        m.read(0x10, &mut r).unwrap();
        assert_eq!(r, [0; 4]);
    }

    #[test]
    fn copies_report_memory_errors() {
        let m = MockMemory::new(0x100);
        let c = chain(&[(0xf0, 0x20, true)]);
        assert!(matches!(
            c.write_at(&m, 0, &[0; 0x20]),
            Err(QueueError::Memory(_))
        ));
        let c = chain(&[(u64::MAX - 1, 1, false)]);
        assert!(matches!(
            c.read_at(&m, 0, &mut [0; 1]),
            Err(QueueError::Memory(_))
        ));
    }
}
