//! Guest RAM: anonymous host mappings placed at guest-physical addresses, with bounds-checked
//! access from the VMM.
//!
//! Every accessor takes a guest-physical range that may come from the guest, checks it with
//! overflow-safe arithmetic against the regions, and refuses it whole if any byte falls outside
//! guest RAM. Nothing here can read or write host memory outside the mappings.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::dirty::{DirtyPages, RegionLog, PAGE as LOG_PAGE};

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
    /// The pages the VMM wrote while the write log is on, a bit per page.
    written: Box<[AtomicU64]>,
}

/// The guest's RAM.
pub struct GuestMemory {
    regions: Vec<Region>,
    /// Whether the VMM's writes are logged (a migration is copying the memory).
    logging: AtomicBool,
    /// How many times the write log was turned on or off: odd while it is on.
    log_turns: AtomicU64,
    /// The pages a working-set sampler has taken away now, if one runs.
    sampled: crate::sampling::Sampled,
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
                written: (0..(size / LOG_PAGE).div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            });
        }
        Ok(GuestMemory {
            regions,
            logging: AtomicBool::new(false),
            log_turns: AtomicU64::new(0),
            sampled: Default::default(),
        })
    }

    /// Starts (`true`, with an empty log) or stops logging the pages the VMM writes: what
    /// KVM's dirty log cannot see, since the VMM writes guest RAM through its own mapping.
    pub fn log_writes(&self, on: bool) {
        if on {
            for r in &self.regions {
                r.written.iter().for_each(|w| w.store(0, Ordering::Relaxed));
            }
        }
        if self.logging.swap(on, Ordering::SeqCst) != on {
            self.log_turns.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many times the write log was turned on or off (odd while it is on): a working-set
    /// sampler's period during which this changed, or that began with it odd, saw a migration
    /// read every page, and tells nothing of the guest's own touches.
    pub fn write_log_turns(&self) -> u64 {
        self.log_turns.load(Ordering::SeqCst)
    }

    /// The pages the VMM wrote since the last call (or since the log began); the log is
    /// emptied.
    pub fn take_written(&self) -> DirtyPages {
        DirtyPages::new(
            self.regions
                .iter()
                .map(|r| RegionLog {
                    base: r.guest_base,
                    pages: r.size / LOG_PAGE,
                    bits: r
                        .written
                        .iter()
                        .map(|w| w.swap(0, Ordering::AcqRel))
                        .collect(),
                })
                .collect(),
        )
    }

    /// Marks `addr..addr+len` (inside one region, checked by the caller) written, if the log
    /// is on.
    fn mark_written(&self, addr: u64, len: usize) {
        // The bytes' stores before the flag's load: a log turned on meanwhile either sees the
        // bytes in its first copy or finds their pages marked (x86 may otherwise let the load
        // pass the stores).
        std::sync::atomic::fence(Ordering::SeqCst);
        if len == 0 || !self.logging.load(Ordering::Relaxed) {
            return;
        }
        let Some(r) = self
            .regions
            .iter()
            .find(|r| addr >= r.guest_base && addr < r.guest_base + r.size)
        else {
            return;
        };
        let first = (addr - r.guest_base) / LOG_PAGE;
        let last = (addr - r.guest_base + len as u64 - 1) / LOG_PAGE;
        for page in first..=last {
            if let Some(w) = r.written.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Release);
            }
        }
    }

    /// The regions as `(guest_base, size, host_address)`, for registering with KVM.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64, *mut u8)> + '_ {
        self.regions.iter().map(|r| (r.guest_base, r.size, r.host))
    }

    /// What a working-set sampler of this memory has taken away.
    pub(crate) fn sampled(&self) -> &crate::sampling::Sampled {
        &self.sampled
    }

    /// Total bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Lets the kernel's same-page merging (KSM) scan guest RAM and keep identical pages once,
    /// copied when written (`MADV_MERGEABLE` on every region). It does nothing until KSM runs
    /// (`/sys/kernel/mm/ksm/run`), which is the control plane's decision.
    pub fn share_identical_pages(&self) -> io::Result<()> {
        for r in &self.regions {
            // SAFETY: the whole of this region's live private anonymous mapping, page aligned;
            // the advice changes how the kernel may back it, never what the guest reads.
            let rc = unsafe { libc::madvise(r.host.cast(), r.size as usize, libc::MADV_MERGEABLE) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Bytes of guest RAM resident on the host now (`mincore` over every region: no `/proc`
    /// needed, so a confined process can tell).
    pub fn resident_bytes(&self) -> u64 {
        const PAGE: usize = 4096;
        const CHUNK_PAGES: usize = 1 << 16;
        let mut vec = vec![0u8; CHUNK_PAGES];
        let mut total = 0u64;
        for r in &self.regions {
            let pages = (r.size as usize) / PAGE;
            let mut done = 0;
            while done < pages {
                let n = (pages - done).min(CHUNK_PAGES);
                // SAFETY: the range lies inside this region's live mapping (page aligned), and
                // `vec` has room for one byte per page of it.
                let rc = unsafe {
                    libc::mincore(
                        r.host.add(done * PAGE).cast(),
                        n * PAGE,
                        vec.as_mut_ptr().cast(),
                    )
                };
                if rc != 0 {
                    return total;
                }
                total += vec[..n].iter().filter(|&&b| b & 1 == 1).count() as u64 * PAGE as u64;
                done += n;
            }
        }
        total
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
        self.mark_written(addr, data.len());
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
        self.mark_written(addr, 2);
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
        let read = file.read_exact_at(buf, offset).map_err(LoadError::Io);
        // After the bytes land (here and everywhere): a log taken between a mark and its
        // write would send the page as it was and forget it.
        self.mark_written(addr, len);
        read
    }

    /// Reads `len` bytes of `input` straight into guest memory at `addr` (no host buffer),
    /// then shows them to `seen` (to checksum them where they landed). For a machine being
    /// built, whose guest does not run yet.
    pub fn load_from_reader(
        &self,
        addr: u64,
        len: usize,
        input: &mut dyn std::io::Read,
        seen: &mut dyn FnMut(&[u8]),
    ) -> Result<(), LoadError> {
        let dst = self.host_range(addr, len)?;
        // SAFETY: `dst..dst+len` lies inside one live mapping (checked by host_range). The slice
        // lives only for this read and the call to `seen`; the guest of a machine being built
        // does not run, so nothing else writes those bytes meanwhile.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        let read = input.read_exact(buf).map_err(LoadError::Io);
        self.mark_written(addr, len);
        read?;
        seen(buf);
        Ok(())
    }

    /// Fills the guest memory pieces `segments` (guest-physical address, length), in order,
    /// with the bytes of `file` from `offset` on, straight from the file into guest RAM with
    /// `preadv` (no host buffer). All of them or an error: `UnexpectedEof` if the file ends
    /// first, `InvalidInput` (before anything is read) if a piece is not guest RAM.
    pub fn read_file_vectored(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        let result = self.file_io_vectored(segments, file, offset, Direction::FromFile);
        // Marked after the bytes land, and even after a failure (some may have).
        for &(addr, len) in segments {
            self.mark_written(addr, len);
        }
        result
    }

    /// Writes the guest memory pieces `segments`, in order, to `file` from `offset` on with
    /// `pwritev`; the counterpart of [`GuestMemory::read_file_vectored`].
    pub fn write_file_vectored(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        self.file_io_vectored(segments, file, offset, Direction::ToFile)
    }

    fn file_io_vectored(
        &self,
        segments: &[(u64, usize)],
        file: &std::fs::File,
        offset: u64,
        direction: Direction,
    ) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        use std::os::fd::AsRawFd;
        let mut iovecs = Vec::with_capacity(segments.len());
        for &(addr, len) in segments.iter().filter(|(_, len)| *len > 0) {
            let host = self
                .host_range(addr, len)
                .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
            iovecs.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: len,
            });
        }
        let eof = match direction {
            Direction::FromFile => ErrorKind::UnexpectedEof,
            Direction::ToFile => ErrorKind::WriteZero,
        };
        let mut at = offset;
        each_iovec_batch(&mut iovecs, eof, |batch| {
            let file_offset = libc::off_t::try_from(at)
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "file offset too large"))?;
            // SAFETY: every iovec points into a live guest RAM mapping for its whole length
            // (host_range checked each piece); the kernel reads or writes those bytes and no
            // Rust reference to them exists. `batch` outlives the call.
            let n = unsafe {
                match direction {
                    Direction::FromFile => libc::preadv(
                        file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        file_offset,
                    ),
                    Direction::ToFile => libc::pwritev(
                        file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        file_offset,
                    ),
                }
            };
            if n > 0 {
                at += n as u64;
            }
            Ok(n)
        })
    }

    /// Whether each of the `pages` 4 KiB pages from `addr` (page-aligned: any other address is
    /// refused like one outside guest RAM) holds anything but zeros, in `out` (cleared first):
    /// read where they lie, a word at a time, and a page stops being read at its first word
    /// that is not zero (as most pages that hold data do at once).
    pub fn nonzero_pages(
        &self,
        addr: u64,
        pages: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), OutOfRange> {
        const PAGE: usize = LOG_PAGE as usize;
        const WORDS: usize = PAGE / 8;
        let len = pages.checked_mul(PAGE).ok_or(OutOfRange {
            addr,
            len: u64::MAX,
        })?;
        if !addr.is_multiple_of(PAGE as u64) {
            return Err(OutOfRange {
                addr,
                len: len as u64,
            });
        }
        let base = self.host_range(addr, len)?;
        out.clear();
        for p in 0..pages {
            // SAFETY: the page lies inside a live mapping (host_range checked the whole range)
            // and is aligned for AtomicU64 (a page-aligned guest address is page-aligned in
            // the page-aligned mapping). As in `read_u16`, guest memory is
            // read with atomic loads, never through Rust references, while the guest may write it.
            let words = unsafe { base.add(p * PAGE).cast::<AtomicU64>() };
            out.push(
                // SAFETY: i < WORDS, so every word is inside the page.
                (0..WORDS).any(|i| unsafe { (*words.add(i)).load(Ordering::Relaxed) } != 0),
            );
        }
        Ok(())
    }

    /// Sends `pieces`, in order, on the stream socket `out` (`sendmsg`, as `writev` gathers):
    /// guest memory goes straight from where it lies, without a copy in the VMM. All of it or
    /// an error; `InvalidInput` (before anything is sent) if a piece is not guest RAM. A peer
    /// that went away is an error (`MSG_NOSIGNAL`), never a SIGPIPE.
    pub fn write_gathered(
        &self,
        out: std::os::fd::BorrowedFd<'_>,
        pieces: &[Piece<'_>],
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut iovecs = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (base, len) = match *piece {
                Piece::Host(bytes) => (bytes.as_ptr(), bytes.len()),
                Piece::Guest { addr, len } => (
                    self.host_range(addr, len)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                        .cast_const(),
                    len,
                ),
            };
            if len > 0 {
                iovecs.push(libc::iovec {
                    iov_base: base.cast_mut().cast(),
                    iov_len: len,
                });
            }
        }
        each_iovec_batch(&mut iovecs, io::ErrorKind::WriteZero, |batch| {
            // SAFETY: msghdr is plain data, for which all zeros (no address, no control
            // messages) is a valid value.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = batch.as_ptr().cast_mut();
            message.msg_iovlen = batch.len();
            // SAFETY: every iovec points at `len` readable bytes: host slices `pieces` borrows
            // for this call, or guest RAM inside a live mapping (host_range); the kernel only
            // reads them, and `message` and `batch` outlive the call.
            Ok(unsafe { libc::sendmsg(out.as_raw_fd(), &message, libc::MSG_NOSIGNAL) })
        })
    }

    /// Gives back the host memory behind `addr..addr+len`, which must lie in one region: the
    /// whole pages in it are dropped (`MADV_DONTNEED` on the private anonymous mapping: they
    /// read as zeros afterwards and cost nothing until written), and the bytes of partial
    /// pages at either end are zeroed. A balloon's pages and the free pages a guest reports
    /// come here.
    pub fn discard(&self, addr: u64, len: u64) -> Result<(), OutOfRange> {
        const PAGE: u64 = 4096;
        let bad = OutOfRange { addr, len };
        let host = self.host_range(addr, usize::try_from(len).map_err(|_| bad)?)?;
        let end = addr + len;
        let first = addr.next_multiple_of(PAGE).min(end);
        let last = (end / PAGE * PAGE).max(first);
        let zeros = [0u8; PAGE as usize];
        self.write(addr, &zeros[..(first - addr) as usize])?;
        self.write(last, &zeros[..(end - last) as usize])?;
        if last > first {
            // SAFETY: `first - addr` is within the range `host_range` checked, so the pointer
            // stays inside the mapping.
            let start = unsafe { host.add((first - addr) as usize) };
            let len = (last - first) as usize;
            // With a sampler held off, so that a sampled page in the range is not given its
            // old bytes back afterwards.
            let rc = self
                .sampled
                .discarding(start as usize, start as usize + len, || {
                    // SAFETY: [first, last) lies inside the region `host_range` found for
                    // [addr, end), page aligned, so the advice touches this mapping only. Dropping
                    // pages of a private anonymous mapping is what the guest sees as zeroed memory;
                    // the VMM holds no references into guest memory, and KVM's MMU notifier drops
                    // the guest's mappings of these pages with them.
                    unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) }
                });
            if rc != 0 {
                // Cannot happen for a live anonymous mapping; zero the bytes instead, so the
                // guest sees what it was promised.
                let zeros = vec![0u8; (last - first) as usize];
                self.write(first, &zeros)?;
            }
            self.mark_written(first, (last - first) as usize);
        }
        Ok(())
    }

    /// Whether `addr..addr+len` lies entirely in guest RAM.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.host_range(addr, l).is_ok())
    }
}

/// Most pieces per vectored system call (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Moves every byte of `iovecs` with `call`, which is given at most [`IOV_MAX`] pieces at a
/// time and returns what a `readv`/`writev`-like system call does (bytes moved, or -1 and
/// `errno`). Retries interrupted calls; a call that moves nothing fails with `eof`. Pieces done
/// in part start further on in the next call.
fn each_iovec_batch(
    iovecs: &mut [libc::iovec],
    eof: io::ErrorKind,
    mut call: impl FnMut(&[libc::iovec]) -> io::Result<isize>,
) -> io::Result<()> {
    let mut first = 0;
    while first < iovecs.len() {
        let n = call(&iovecs[first..iovecs.len().min(first + IOV_MAX)])?;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(eof));
        }
        let mut done = n as usize;
        while first < iovecs.len() && done >= iovecs[first].iov_len {
            done -= iovecs[first].iov_len;
            first += 1;
        }
        if done > 0 {
            let piece = &mut iovecs[first];
            // SAFETY: done < piece.iov_len, so the new base is still inside the piece.
            piece.iov_base = unsafe { piece.iov_base.cast::<u8>().add(done).cast() };
            piece.iov_len -= done;
        }
    }
    Ok(())
}

/// One piece of a gathered write ([`GuestMemory::write_gathered`]).
#[derive(Clone, Copy, Debug)]
pub enum Piece<'a> {
    /// Bytes of the VMM's own.
    Host(&'a [u8]),
    /// `len` bytes of guest memory at guest-physical `addr`.
    Guest {
        /// Where they start.
        addr: u64,
        /// How many.
        len: usize,
    },
}

/// Which way [`GuestMemory::file_io_vectored`] moves bytes.
#[derive(Clone, Copy)]
enum Direction {
    FromFile,
    ToFile,
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

    #[test]
    fn the_write_log_sees_every_vmm_write_while_it_is_on() {
        let m = GuestMemory::new(&[(0, 1 << 20)]).unwrap();
        m.write(0x1000, b"x").unwrap();
        m.log_writes(true);
        assert_eq!(m.take_written().count(), 0, "a write before the log began");
        m.write(0x2ffe, &[1; 4]).unwrap();
        m.write_u16(0x5000, 7).unwrap();
        m.discard(0x8000, 0x2000).unwrap();
        m.read(0x9000, &mut [0u8; 64]).unwrap();
        assert_eq!(
            m.take_written().runs(512),
            vec![(0x2000, 2), (0x5000, 1), (0x8000, 2)]
        );
        assert_eq!(m.take_written().count(), 0, "taking the log empties it");
        m.log_writes(false);
        m.write(0x1000, b"y").unwrap();
        assert_eq!(m.take_written().count(), 0, "a write after the log ended");
    }

    #[test]
    fn the_write_log_counts_its_turns_and_is_odd_while_on() {
        let m = GuestMemory::new(&[(0, 1 << 20)]).unwrap();
        assert_eq!(m.write_log_turns(), 0);
        m.log_writes(false);
        assert_eq!(
            m.write_log_turns(),
            0,
            "turning off a log that is off is no turn"
        );
        m.log_writes(true);
        m.log_writes(true);
        assert_eq!(m.write_log_turns(), 1, "on once, however often asked");
        m.log_writes(false);
        m.log_writes(false);
        assert_eq!(m.write_log_turns(), 2);
    }

    /// A ring index the guest is moving from 0x88ff to 0x8900 must never be read as 0x89ff
    /// or 0x8800 (byte-wise copies can: that looked like an index jumping by 256 and broke a
    /// transmit queue under load).
    #[test]
    fn resident_bytes_counts_the_pages_touched() {
        let mem = GuestMemory::new(&[(0, 8 << 20), (1 << 32, 4 << 20)]).unwrap();
        let before = mem.resident_bytes();
        mem.write(0, &vec![1u8; 4 << 20]).unwrap();
        mem.write(1 << 32, &[1u8; 8192]).unwrap();
        let after = mem.resident_bytes();
        assert!(after >= before + (4 << 20) + 8192, "{before} -> {after}");
        assert!(after <= 12 << 20);
    }

    #[test]
    fn shared_memory_is_marked_mergeable_for_ksm() {
        let mem = GuestMemory::new(&[(0, 4 << 20)]).unwrap();
        let (_, _, host) = mem.regions().next().unwrap();
        let flags = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let start = format!("{:x}-", host as usize);
            let mapping = smaps
                .split_inclusive('\n')
                .skip_while(|l| !l.starts_with(&start))
                .find(|l| l.starts_with("VmFlags:"))
                .expect("the guest RAM mapping is in smaps")
                .to_string();
            mapping
        };
        assert!(!flags().contains(" mg"), "{}", flags());
        mem.share_identical_pages()
            .expect("MADV_MERGEABLE (a kernel without KSM refuses it)");
        assert!(flags().contains(" mg"), "{}", flags());
    }

    #[test]
    fn discarded_pages_read_as_zeros_and_leave_the_host() {
        let mem = GuestMemory::new(&[(0, 8 << 20), (1 << 32, 4 << 20)]).unwrap();
        mem.write(0, &vec![0xaa; 8 << 20]).unwrap();
        let full = mem.resident_bytes();
        // 4 MiB of whole pages, and a range with a partial page at either end.
        mem.discard(1 << 20, 4 << 20).unwrap();
        mem.discard(0x100, 0x2000).unwrap();
        let after = mem.resident_bytes();
        assert!(after + (4 << 20) <= full, "{full} -> {after}");
        let mut b = vec![0u8; 8 << 20];
        mem.read(0, &mut b).unwrap();
        let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&x| x == 0);
        let kept = |r: std::ops::Range<usize>| b[r].iter().all(|&x| x == 0xaa);
        assert!(kept(0..0x100) && zero(0x100..0x2100) && kept(0x2100..1 << 20));
        assert!(zero(1 << 20..5 << 20) && kept(5 << 20..8 << 20));
        // Refused whole: past a region's end, across the gap, or wrapping.
        assert!(mem.discard((8 << 20) - 4096, 8192).is_err());
        assert!(mem.discard(u64::MAX - 4095, 4096).is_err());
        mem.read(7 << 20, &mut b[..16]).unwrap();
        assert_eq!(b[..16], [0xaa; 16]);
    }

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

    /// A file with `len` bytes of a pattern, removed on drop.
    struct PatternFile(std::path::PathBuf, std::fs::File);

    impl PatternFile {
        fn new(tag: &str, len: usize) -> Self {
            let path = std::env::temp_dir().join(format!("hv-{tag}-{}", std::process::id()));
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            PatternFile(path, file)
        }
        fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for PatternFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn vectored_file_io_moves_bytes_between_files_and_guest_pieces() {
        let mem = GuestMemory::new(&[(0, 0x4000)]).unwrap();
        let src = PatternFile::new("src", 8192);
        let want = src.bytes();
        // Pieces out of order, one empty, more than one system call's worth of them.
        let mut pieces = vec![(0x10u64, 100usize), (0x800, 3000), (0x200, 0)];
        pieces.extend((0..1500u64).map(|i| (0x3000 + i, 1usize)));
        mem.read_file_vectored(&pieces, &src.1, 50).unwrap();
        let mut got = Vec::new();
        for &(addr, len) in &pieces {
            let mut b = vec![0u8; len];
            mem.read(addr, &mut b).unwrap();
            got.extend(b);
        }
        assert_eq!(got, want[50..50 + got.len()]);

        let dst = PatternFile::new("dst", 0);
        mem.write_file_vectored(&pieces, &dst.1, 10).unwrap();
        assert_eq!(dst.bytes()[10..], want[50..50 + got.len()]);

        // A piece outside guest RAM: refused before anything is read.
        let before = {
            let mut b = vec![0u8; 100];
            mem.read(0x10, &mut b).unwrap();
            b
        };
        let err = mem
            .read_file_vectored(&[(0x10, 100), (0x3ff0, 0x20)], &src.1, 0)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let mut after = vec![0u8; 100];
        mem.read(0x10, &mut after).unwrap();
        assert_eq!(before, after);
        // The file ends first.
        let err = mem
            .read_file_vectored(&[(0, 200)], &src.1, 8100)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn zero_pages_are_told_from_pages_with_data() {
        let mem = GuestMemory::new(&[(0, 0x8000)]).unwrap();
        mem.write(0x1000, &[1]).unwrap(); // the first byte of page 1
        mem.write(0x3fff, &[7]).unwrap(); // the last byte of page 3
        let mut out = vec![true; 3];
        mem.nonzero_pages(0, 8, &mut out).unwrap();
        assert_eq!(out, [false, true, false, true, false, false, false, false]);
        mem.nonzero_pages(0x3000, 2, &mut out).unwrap();
        assert_eq!(out, [true, false]);
        assert!(mem.nonzero_pages(0x7000, 2, &mut out).is_err());
        assert!(mem.nonzero_pages(0x1008, 1, &mut out).is_err());
        assert!(mem.nonzero_pages(0, usize::MAX, &mut out).is_err());
    }

    #[test]
    fn a_gathered_write_sends_host_and_guest_pieces_in_order() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let mem = GuestMemory::new(&[(0, 0x40000)]).unwrap();
        let pattern: Vec<u8> = (0..0x40000u32).map(|i| (i * 7 % 251) as u8).collect();
        mem.write(0, &pattern).unwrap();
        // More pieces than one system call takes, and more bytes than the socket holds (the
        // kernel takes them in parts while the reader drains them).
        let head = b"head".to_vec();
        let mut pieces = vec![
            Piece::Host(&head),
            Piece::Guest {
                addr: 0,
                len: 0x40000,
            },
        ];
        for i in 0..1500u64 {
            pieces.push(Piece::Guest {
                addr: i * 3,
                len: 2,
            });
            pieces.push(Piece::Host(b"-"));
        }
        pieces.push(Piece::Host(&[]));
        let mut want = head.clone();
        want.extend(&pattern);
        for i in 0..1500usize {
            want.extend(&pattern[i * 3..i * 3 + 2]);
            want.push(b'-');
        }
        let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        mem.write_gathered(tx.as_fd(), &pieces).unwrap();
        // A piece outside guest RAM: refused before anything is written.
        let err = mem
            .write_gathered(
                tx.as_fd(),
                &[
                    Piece::Host(b"x"),
                    Piece::Guest {
                        addr: 0x3fff0,
                        len: 0x20,
                    },
                ],
            )
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        drop(tx);
        assert!(reader.join().unwrap() == want);
        // A peer that went away: an error, not a signal.
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(rx);
        let err = mem
            .write_gathered(tx.as_fd(), &[Piece::Guest { addr: 0, len: 4096 }])
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
