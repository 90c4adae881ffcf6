//! Guest RAM: anonymous host mappings placed at guest-physical addresses, with bounds-checked
//! access from the VMM.
//!
//! Every accessor takes a guest-physical range that may come from the guest, checks it with
//! overflow-safe arithmetic against the regions, and refuses it whole if any byte falls outside
//! guest RAM. Nothing here can read or write host memory outside the mappings.

use std::io;
use std::sync::atomic::Ordering;

/// A guest-physical range that is not entirely inside guest RAM.
#[derive(Debug, thiserror::Error)]
#[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
pub struct OutOfRange {
    /// Start of the bad range.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// Loading file contents into guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The destination is not guest RAM.
    #[error(transparent)]
    Range(#[from] OutOfRange),
    /// Reading the file failed (or it was shorter than expected).
    #[error("{0}")]
    Io(#[source] io::Error),
}

struct Region {
    guest_base: u64,
    size: u64,
    host: *mut u8,
}

/// The guest's RAM.
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the mappings are plain memory owned by this value; concurrent access from several
// threads is what guest RAM is (the guest's own CPUs race on it anyway), and every VMM access
// copies bytes with `ptr::copy`, never forming Rust references into guest memory.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps anonymous memory for each `(guest_base, size)`. Sizes must be page multiples and the
    /// ranges must not overlap. Pages are only backed by host memory once touched.
    pub fn new(layout: &[(u64, u64)]) -> io::Result<Self> {
        let mut regions = Vec::with_capacity(layout.len());
        for &(guest_base, size) in layout {
            if size == 0 || size % 4096 != 0 || guest_base % 4096 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "guest memory regions must be non-empty and page aligned",
                ));
            }
            let len = usize::try_from(size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
            // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if host == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            regions.push(Region {
                guest_base,
                size,
                host: host.cast(),
            });
        }
        Ok(GuestMemory { regions })
    }

    /// The regions as `(guest_base, size, host_address)`, for registering with KVM.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64, *mut u8)> + '_ {
        self.regions.iter().map(|r| (r.guest_base, r.size, r.host))
    }

    /// Total bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Finds the host pointer for `addr..addr+len`, which must lie in one region.
    fn host_range(&self, addr: u64, len: usize) -> Result<*mut u8, OutOfRange> {
        let bad = OutOfRange {
            addr,
            len: len as u64,
        };
        let end = addr.checked_add(len as u64).ok_or(OutOfRange {
            addr,
            len: len as u64,
        })?;
        let region = self
            .regions
            .iter()
            .find(|r| addr >= r.guest_base && end <= r.guest_base + r.size)
            .ok_or(bad)?;
        let offset = (addr - region.guest_base) as usize;
        // SAFETY: offset + len <= region.size, checked above, so the result is inside the mapping.
        Ok(unsafe { region.host.add(offset) })
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let dst = self.host_range(addr, data.len())?;
        // SAFETY: `dst..dst+len` is inside a live mapping (checked by host_range); `data` is a
        // host buffer that cannot overlap guest memory mappings we created.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies guest memory at `addr` into `data`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), OutOfRange> {
        let src = self.host_range(addr, data.len())?;
        // SAFETY: as in `write`, with the direction reversed.
        unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), data.len()) };
        Ok(())
    }

    /// Reads the little-endian `u16` at `addr` in one access when it is aligned, so a value a
    /// guest CPU writes meanwhile is seen whole (a byte-wise copy can see half of each). A
    /// misaligned one (which no well-formed virtqueue has) is copied like any bytes.
    pub fn read_u16(&self, addr: u64) -> Result<u16, OutOfRange> {
        let src = self.host_range(addr, 2)?;
        if src.align_offset(2) != 0 {
            let mut b = [0u8; 2];
            self.read(addr, &mut b)?;
            return Ok(u16::from_le_bytes(b));
        }
        // SAFETY: `src..src+2` is inside a live mapping (host_range) and 2-byte aligned, which
        // is all AtomicU16 needs; guest memory is only ever accessed by copies and by these
        // atomic accesses, never through Rust references, so no aliasing rule is broken.
        let value =
            unsafe { (*src.cast::<std::sync::atomic::AtomicU16>()).load(Ordering::Acquire) };
        Ok(u16::from_le(value))
    }

    /// Writes the little-endian `u16` at `addr` in one access when it is aligned (see
    /// [`GuestMemory::read_u16`]).
    pub fn write_u16(&self, addr: u64, value: u16) -> Result<(), OutOfRange> {
        let dst = self.host_range(addr, 2)?;
        if dst.align_offset(2) != 0 {
            return self.write(addr, &value.to_le_bytes());
        }
        // SAFETY: as in `read_u16`.
        unsafe {
            (*dst.cast::<std::sync::atomic::AtomicU16>()).store(value.to_le(), Ordering::Release)
        };
        Ok(())
    }

    /// Reads `len` bytes of `file` at `offset` straight into guest memory at `addr`, without an
    /// intermediate host buffer (so loading a large kernel does not grow the VMM's own memory).
    pub fn load_from_file(
        &self,
        addr: u64,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<(), LoadError> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(len).map_err(|_| LoadError::Range(OutOfRange { addr, len }))?;
        let dst = self.host_range(addr, len)?;
        // SAFETY: `dst..dst+len` lies inside one live mapping (checked by host_range). The slice
        // is used only for the duration of this read; the guest is not running yet while the VMM
        // loads images, and even if it were, a racing guest only sees partially-loaded bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        file.read_exact_at(buf, offset).map_err(LoadError::Io)
    }

    /// Whether `addr..addr+len` lies entirely in guest RAM.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.host_range(addr, l).is_ok())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: unmaps exactly a mapping this value created; KVM memslots referring to it
            // are gone by now because the VM (which holds Arc<GuestMemory>) owns and drops them
            // first or the VM fd is closed.
            unsafe { libc::munmap(r.host.cast(), r.size as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring index the guest is moving from 0x88ff to 0x8900 must never be read as 0x89ff
    /// or 0x8800 (byte-wise copies can: that looked like an index jumping by 256 and broke a
    /// transmit queue under load).
    #[test]
    fn u16_fields_are_never_seen_torn() {
        let mem = std::sync::Arc::new(GuestMemory::new(&[(0, 0x1000)]).unwrap());
        let writer = {
            let mem = mem.clone();
            std::thread::spawn(move || {
                for i in 0..2_000_000u32 {
                    mem.write_u16(0x10, if i % 2 == 0 { 0x88ff } else { 0x8900 })
                        .unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let v = mem.read_u16(0x10).unwrap();
            assert!(matches!(v, 0 | 0x88ff | 0x8900), "torn read {v:#x}");
        }
        writer.join().unwrap();
        // Little-endian in memory, bounds checked, misaligned still works.
        mem.write_u16(0x20, 0x1234).unwrap();
        let mut b = [0u8; 2];
        mem.read(0x20, &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12]);
        mem.write_u16(0x31, 0xabcd).unwrap();
        assert_eq!(mem.read_u16(0x31).unwrap(), 0xabcd);
        assert!(mem.read_u16(0xfff).is_err());
        assert!(mem.write_u16(0x1000, 1).is_err());
    }

    #[test]
    fn bounds_are_checked_across_regions() {
        let mem = GuestMemory::new(&[(0, 0x2000), (0x10000, 0x1000)]).unwrap();
        mem.write(0x1ffc, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        mem.read(0x1ffc, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(mem.write(0x1ffe, &[0; 4]).is_err());
        assert!(mem.write(0x3000, &[0]).is_err());
        assert!(mem.read(u64::MAX - 1, &mut b).is_err());
        assert!(mem.contains(0x10000, 0x1000));
        assert!(!mem.contains(0x10000, 0x1001));
        assert_eq!(mem.size(), 0x3000);
        assert!(GuestMemory::new(&[(0, 100)]).is_err());
    }
}
