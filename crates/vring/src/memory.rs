//! Guest memory as the queue sees it, and little-endian accessors over it.

/// Guest memory as the queue sees it. Implemented by the VMM over its guest RAM, and by the mock
/// ([`crate::mock::MockMemory`]).
///
/// Implementations must check the whole range of every access (with overflow-safe arithmetic)
/// and refuse it whole, touching nothing, when any byte of it is not guest memory. The queue
/// never reaches guest memory any other way.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes of guest memory starting at guest-physical `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Copies `data` into guest memory starting at guest-physical `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Reads the little-endian `u16` at `addr` (a ring index or a notification field). The
    /// driver writes these while the device reads them, so implementations over memory a guest
    /// CPU shares must read an aligned one in a single access: a value seen half old and half
    /// new (as a byte-wise copy can) looks like an index that jumped. The default goes through
    /// [`read`](Self::read), which is enough for memory nobody writes concurrently (the mock).
    fn read_u16(&self, addr: u64) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes the little-endian `u16` at `addr` (the used index, `avail_event`), in a single
    /// access when aligned, for the same reason as [`read_u16`](Self::read_u16).
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), MemoryError> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Fills the guest memory pieces `segments` (guest-physical address, length), in order,
    /// with the bytes of `file` from `offset` on: all of them, or an error (`UnexpectedEof` if
    /// the file ends first, `InvalidInput`, before anything is read, if a piece is not guest
    /// memory). A disk read: implementations over host mappings read straight into guest memory
    /// in one vectored call; the default reads each piece into a buffer and
    /// [`write`](Self::write)s it.
    fn read_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        in_chunks(self, segments, offset, |addr, at, buf| {
            file.read_exact_at(buf, at)?;
            self.write(addr, buf).map_err(invalid)
        })
    }

    /// Writes the guest memory pieces `segments`, in order, to `file` from `offset` on (a disk
    /// write); the counterpart of [`read_file`](Self::read_file), with the same errors.
    fn write_file(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        in_chunks(self, segments, offset, |addr, at, buf| {
            self.read(addr, buf).map_err(invalid)?;
            file.write_all_at(buf, at)
        })
    }

    /// Gives back the host memory behind `[addr, addr + len)` (pages a balloon took, free pages
    /// the guest reported): from then on the guest reads zeros there, and the host holds no
    /// memory for it until the guest writes it again. All or nothing: a range not wholly inside
    /// guest memory is refused before anything changes. The default writes zeros, which is what
    /// the guest sees afterwards, without giving memory back: enough for memory with nothing
    /// to give back (the mock).
    fn discard(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        if !self.contains(addr, len) {
            return Err(MemoryError { addr, len });
        }
        let zeros = vec![0u8; CHUNK];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(CHUNK as u64);
            self.write(addr + at, &zeros[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// Whether `[addr, addr + len)` lies wholly inside guest memory (an empty range: always).
    ///
    /// The queue uses this to refuse rings and buffers outside guest memory when it first sees
    /// them, rather than failing half-way through a copy. The default probes the first and the
    /// last byte with [`read`](Self::read), which is exact only for memory without holes:
    /// implementations over memory with holes (such as RAM split around the 32-bit MMIO hole)
    /// should override it. Even a wrong answer here is safe: every access still goes through
    /// `read` / `write`, which check for themselves.
    fn contains(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(last) = addr.checked_add(len - 1) else {
            return false;
        };
        let mut byte = [0u8; 1];
        self.read(addr, &mut byte).is_ok() && self.read(last, &mut byte).is_ok()
    }
}

/// The buffer size of the default [`GuestMemory::read_file`] and [`GuestMemory::write_file`].
const CHUNK: usize = 64 * 1024;

/// The defaults of [`GuestMemory::read_file`] and [`GuestMemory::write_file`]: after checking
/// every piece, calls `op(guest address, file offset, buffer)` for each chunk of at most
/// [`CHUNK`] bytes of the pieces, in order, the file offset running on from `offset`.
fn in_chunks(
    mem: &(impl GuestMemory + ?Sized),
    segments: &[(u64, usize)],
    offset: u64,
    mut op: impl FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    check_segments(mem, segments)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    for &(addr, len) in segments {
        for start in (0..len).step_by(CHUNK) {
            let n = CHUNK.min(len - start);
            op(addr + start as u64, at, &mut buf[..n])?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Refuses, as `InvalidInput`, a list of pieces one of which is not guest memory.
fn check_segments(
    mem: &(impl GuestMemory + ?Sized),
    segments: &[(u64, usize)],
) -> std::io::Result<()> {
    match segments
        .iter()
        .find(|&&(addr, len)| !mem.contains(addr, len as u64))
    {
        Some(&(addr, len)) => Err(invalid(MemoryError::new(addr, len))),
        None => Ok(()),
    }
}

fn invalid(e: MemoryError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

/// A guest memory access outside guest memory.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("guest memory access of {len} bytes at {addr:#x} is outside guest memory")]
pub struct MemoryError {
    /// Guest-physical address of the access.
    pub addr: u64,
    /// Length of the access in bytes.
    pub len: u64,
}

impl MemoryError {
    /// The error for an access of `len` bytes at `addr`.
    pub fn new(addr: u64, len: usize) -> Self {
        MemoryError {
            addr,
            len: u64::try_from(len).unwrap_or(u64::MAX),
        }
    }
}

/// Reads a little-endian `u16` at `addr`, whole (see [`GuestMemory::read_u16`]).
pub(crate) fn read_u16(mem: &(impl GuestMemory + ?Sized), addr: u64) -> Result<u16, MemoryError> {
    mem.read_u16(addr)
}

/// Writes a little-endian `u16` at `addr`, whole (see [`GuestMemory::write_u16`]).
pub(crate) fn write_u16(
    mem: &(impl GuestMemory + ?Sized),
    addr: u64,
    v: u16,
) -> Result<(), MemoryError> {
    mem.write_u16(addr, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockMemory;

    /// Memory that implements only `read` and `write`, to exercise the default `contains`.
    struct Plain(MockMemory);

    impl GuestMemory for Plain {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            self.0.read(addr, buf)
        }
        fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            self.0.write(addr, data)
        }
    }

    #[test]
    fn default_contains_probes_both_ends() {
        let m = Plain(MockMemory::new(0x1000));
        assert!(m.contains(0, 0x1000));
        assert!(m.contains(0xfff, 1));
        assert!(m.contains(u64::MAX, 0));
        assert!(!m.contains(0xfff, 2));
        assert!(!m.contains(0x1000, 1));
        assert!(!m.contains(u64::MAX, 2));
        assert!(!m.contains(1, u64::MAX));
    }

    #[test]
    fn le_accessors() {
        let m = MockMemory::new(0x10);
        write_u16(&m, 4, 0xbeef).unwrap();
        let mut raw = [0u8; 2];
        m.read(4, &mut raw).unwrap();
        assert_eq!(raw, [0xef, 0xbe]);
        assert_eq!(read_u16(&m, 4), Ok(0xbeef));
        assert_eq!(read_u16(&m, 0xf), Err(MemoryError { addr: 0xf, len: 2 }));
        assert!(write_u16(&m, u64::MAX, 1).is_err());
    }
}
