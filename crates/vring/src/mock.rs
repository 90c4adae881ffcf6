//! A driver-side mock for tests: [`MockMemory`], a `Vec<u8>`-backed [`GuestMemory`], and
//! [`MockDriver`], which lays out a queue's rings in it and plays the guest driver, well-behaved
//! or hostile.
//!
//! The mock is test support: its helpers panic on misuse (out of mock memory, out of
//! descriptors), which a test wants to hear about. The [`Queue`] under test never panics.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;

use crate::memory::{GuestMemory, MemoryError};
use crate::queue::Queue;
use crate::{
    DESCRIPTOR_SIZE, USED_ELEMENT_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

/// Guest memory of a given size at base address 0, backed by a `Vec<u8>` behind a mutex (so
/// `write(&self)` works and the memory can be shared between threads).
#[derive(Debug, Default)]
pub struct MockMemory {
    bytes: Mutex<Vec<u8>>,
}

impl MockMemory {
    /// `size` bytes of zeroed memory at guest-physical 0.
    pub fn new(size: usize) -> Self {
        Self::from_bytes(vec![0; size])
    }

    /// Memory holding `bytes` at guest-physical 0.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MockMemory {
            bytes: Mutex::new(bytes),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        u64::try_from(self.lock().len()).unwrap_or(u64::MAX)
    }

    /// A copy of `len` bytes at `addr`.
    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        let mut v = vec![0; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(
        &self,
        addr: u64,
        len: usize,
        size: usize,
    ) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError::new(addr, len);
        let start = usize::try_from(addr).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > size {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for MockMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let bytes = self.lock();
        let r = self.range(addr, buf.len(), bytes.len())?;
        let src = bytes.get(r).ok_or(MemoryError::new(addr, buf.len()))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let mut bytes = self.lock();
        let size = bytes.len();
        let r = self.range(addr, data.len(), size)?;
        let dst = bytes.get_mut(r).ok_or(MemoryError::new(addr, data.len()))?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn contains(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len).is_some_and(|end| end <= self.size())
    }
}

/// A descriptor exactly as a driver writes it, for hostile tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index (meaningful with `VIRTQ_DESC_F_NEXT`).
    pub next: u16,
}

impl RawDescriptor {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let (addr, rest) = b.split_at_mut(8);
        let (len, rest) = rest.split_at_mut(4);
        let (flags, next) = rest.split_at_mut(2);
        addr.copy_from_slice(&self.addr.to_le_bytes());
        len.copy_from_slice(&self.len.to_le_bytes());
        flags.copy_from_slice(&self.flags.to_le_bytes());
        next.copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One buffer of a chain the mock driver adds.
#[derive(Clone, Copy, Debug)]
pub enum MockBuffer<'a> {
    /// A device-readable buffer holding these bytes.
    Readable(&'a [u8]),
    /// A device-writable buffer of this many zeroed bytes.
    Writable(u32),
}

/// One entry of the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElement {
    /// The head of the chain the device returned.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Where the mock driver puts the descriptor table (the rings follow it).
pub const MOCK_DESC_TABLE: u64 = 0x1000;

/// The guest driver's side of one split virtqueue in a [`MockMemory`].
///
/// Layout: the descriptor table at [`MOCK_DESC_TABLE`], the avail ring right after it, the used
/// ring after that (4-aligned), and buffer space from the next 4 KiB boundary to the end of
/// memory, handed out by a bump allocator.
#[derive(Debug)]
pub struct MockDriver {
    mem: MockMemory,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_data: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

impl MockDriver {
    /// A driver for a queue of `size` entries in `mem_size` bytes of zeroed memory.
    ///
    /// # Panics
    ///
    /// If the rings do not fit in `mem_size`.
    pub fn new(size: u16, mem_size: usize) -> Self {
        let n = u64::from(size);
        let desc_table = MOCK_DESC_TABLE;
        let avail_ring = desc_table + DESCRIPTOR_SIZE * n;
        let used_ring = (avail_ring + 6 + 2 * n).next_multiple_of(4);
        let data = (used_ring + 6 + USED_ELEMENT_SIZE * n).next_multiple_of(0x1000);
        let mem = MockMemory::new(mem_size);
        assert!(data <= mem.size(), "mock: rings do not fit in memory");
        MockDriver {
            mem,
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_data: data,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The guest memory.
    pub fn mem(&self) -> &MockMemory {
        &self.mem
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Address of the avail ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Writes this driver's configuration into `q` and sets it ready.
    pub fn configure(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_desc_table(self.desc_table);
        q.set_avail_ring(self.avail_ring);
        q.set_used_ring(self.used_ring);
        q.set_ready(true);
    }

    /// A ready queue of max size `size` configured by this driver.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size);
        self.configure(&mut q);
        q
    }

    /// Allocates `len` bytes (16-aligned) of buffer space.
    ///
    /// # Panics
    ///
    /// When the memory is full.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_data;
        let end = addr
            .checked_add(len)
            .filter(|&e| e <= self.mem.size())
            .expect("mock: out of buffer memory");
        self.next_data = end.next_multiple_of(16);
        addr
    }

    /// Writes `data` at `addr` (any address, for hostile tests). Panics outside memory.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write(addr, data)
            .expect("mock: write outside memory");
    }

    /// Reads `len` bytes at `addr`. Panics outside memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        self.mem
            .read_vec(addr, len)
            .expect("mock: read outside memory")
    }

    fn read_u16(&self, addr: u64) -> u16 {
        let b = self.read(addr, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    fn write_u16(&self, addr: u64, v: u16) {
        self.write(addr, &v.to_le_bytes());
    }

    fn buffer(&mut self, buf: &MockBuffer<'_>) -> (u64, u32, bool) {
        match *buf {
            MockBuffer::Readable(bytes) => {
                let len = u32::try_from(bytes.len()).expect("mock: buffer too long");
                let addr = self.alloc(u64::from(len));
                self.write(addr, bytes);
                (addr, len, false)
            }
            MockBuffer::Writable(len) => (self.alloc(u64::from(len)), len, true),
        }
    }

    /// Adds a chain of `bufs` (in order) to the descriptor table and makes it available.
    /// Returns its head. Panics if there are not enough free descriptors.
    pub fn add_chain(&mut self, bufs: &[MockBuffer<'_>]) -> u16 {
        assert!(!bufs.is_empty(), "mock: empty chain");
        assert!(bufs.len() <= self.free.len(), "mock: out of descriptors");
        let split = self.free.len() - bufs.len();
        let indices: Vec<u16> = self.free.split_off(split).into_iter().rev().collect();
        for (i, buf) in bufs.iter().enumerate() {
            let (addr, len, writable) = self.buffer(buf);
            let next = indices.get(i + 1).copied();
            let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if next.is_some() { VIRTQ_DESC_F_NEXT } else { 0 };
            let d = RawDescriptor {
                addr,
                len,
                flags,
                next: next.unwrap_or(0),
            };
            self.write_descriptor(indices[i], d);
        }
        let head = indices[0];
        self.chains.insert(head, indices);
        self.push_avail(head);
        head
    }

    /// Adds a chain whose buffers `bufs` sit in an indirect table, referred to by one descriptor,
    /// and makes it available. Returns its head.
    pub fn add_indirect_chain(&mut self, bufs: &[MockBuffer<'_>]) -> u16 {
        let n = u16::try_from(bufs.len()).expect("mock: indirect table too long");
        let mut entries = Vec::with_capacity(bufs.len());
        for (i, buf) in (0..n).zip(bufs) {
            let (addr, len, writable) = self.buffer(buf);
            let more = i + 1 < n;
            entries.push(RawDescriptor {
                addr,
                len,
                flags: if writable { VIRTQ_DESC_F_WRITE } else { 0 }
                    | if more { VIRTQ_DESC_F_NEXT } else { 0 },
                next: if more { i + 1 } else { 0 },
            });
        }
        let table = self.write_indirect_table(&entries);
        let head = self.free.pop().expect("mock: out of descriptors");
        let d = RawDescriptor {
            addr: table,
            len: u32::from(n) * 16,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        self.write_descriptor(head, d);
        self.chains.insert(head, vec![head]);
        self.push_avail(head);
        head
    }

    /// Writes a raw descriptor at `index` of the descriptor table (any index: hostile tests).
    pub fn write_descriptor(&self, index: u16, d: RawDescriptor) {
        let addr = self.desc_table + DESCRIPTOR_SIZE * u64::from(index);
        self.write(addr, &d.to_bytes());
    }

    /// Allocates buffer space for an indirect table holding `entries` and writes it; returns its
    /// address.
    pub fn write_indirect_table(&mut self, entries: &[RawDescriptor]) -> u64 {
        let bytes: Vec<u8> = entries.iter().flat_map(|d| d.to_bytes()).collect();
        let addr = self.alloc(bytes.len() as u64);
        self.write(addr, &bytes);
        addr
    }

    /// Puts `head` (any value) in the next avail ring slot and publishes the new `avail.idx`.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.write_u16(self.avail_ring + 4 + 2 * slot, head);
        fence(Ordering::Release);
        self.set_avail_idx(self.avail_idx.wrapping_add(1));
    }

    /// Writes `avail.idx` (any value).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write_u16(self.avail_ring + 2, idx);
    }

    /// The driver's `avail.idx`.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes `avail.flags` (e.g. `VIRTQ_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        self.write_u16(self.avail_ring, flags);
    }

    /// Writes `used_event` (the u16 after the avail ring).
    pub fn set_used_event(&self, idx: u16) {
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(self.size), idx);
    }

    /// The device's `used.flags`.
    pub fn used_flags(&self) -> u16 {
        self.read_u16(self.used_ring)
    }

    /// The device's `used.idx`.
    pub fn used_idx(&self) -> u16 {
        self.read_u16(self.used_ring + 2)
    }

    /// The device's `avail_event` (the u16 after the used ring).
    pub fn avail_event(&self) -> u16 {
        self.read_u16(self.used_ring + 4 + USED_ELEMENT_SIZE * u64::from(self.size))
    }

    /// The used entries published since the last call, in order. The descriptors of chains this
    /// driver added are freed for reuse.
    pub fn used(&mut self) -> Vec<UsedElement> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used % self.size);
            let b = self.read(self.used_ring + 4 + USED_ELEMENT_SIZE * slot, 8);
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            if let Some(indices) = u16::try_from(id).ok().and_then(|h| self.chains.remove(&h)) {
                self.free.extend(indices.into_iter().rev());
            }
            out.push(UsedElement { id, len });
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Descriptors free for new chains.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_bounds() {
        let m = MockMemory::new(16);
        assert!(m.write(12, &[1, 2, 3, 4]).is_ok());
        assert_eq!(
            m.write(13, &[1, 2, 3, 4]),
            Err(MemoryError { addr: 13, len: 4 })
        );
        assert!(m.read(u64::MAX, &mut [0; 2]).is_err());
        assert!(m.read(16, &mut []).is_ok());
        assert!(m.read(17, &mut []).is_err());
        assert_eq!(m.read_vec(12, 4).unwrap(), [1, 2, 3, 4]);
        assert!(m.contains(0, 16) && m.contains(16, 0));
        assert!(!m.contains(1, 16) && !m.contains(u64::MAX, 1));
    }

    #[test]
    fn layout_is_aligned_and_inside_memory() {
        let d = MockDriver::new(8, 0x4000);
        assert_eq!(d.desc_table() % 16, 0);
        assert_eq!(d.avail_ring() % 2, 0);
        assert_eq!(d.used_ring() % 4, 0);
        assert!(d.queue().is_valid(d.mem()));
    }

    #[test]
    fn chains_recycle_descriptors() {
        let mut d = MockDriver::new(4, 0x4000);
        let head = d.add_chain(&[MockBuffer::Readable(b"x"), MockBuffer::Writable(2)]);
        assert_eq!(d.free_descriptors(), 2);
        assert_eq!(d.avail_idx(), 1);
        let mut q = d.queue();
        let c = q.pop(d.mem()).unwrap().unwrap();
        assert_eq!(c.head, head);
        q.add_used(d.mem(), head, 2).unwrap();
        assert_eq!(
            d.used(),
            [UsedElement {
                id: head.into(),
                len: 2
            }]
        );
        assert_eq!(d.free_descriptors(), 4);
        assert!(d.used().is_empty());
    }
}
