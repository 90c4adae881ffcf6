//! Helpers the fuzz targets share (each target includes this file as `mod common`): a reader
//! of the input's bytes, a counting interrupt line, a scratch file that leaves nothing behind,
//! and a walk of a direct descriptor chain as the guest laid it out.
#![allow(dead_code)] // each target uses its own part

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads the fuzzer's input front to back; past the end, every read gives zeros.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next `N` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// An interrupt line that counts its triggers.
#[derive(Default)]
pub struct Counter(pub AtomicUsize);

impl devices::InterruptLine for Counter {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A regular file of this process's own, unlinked as soon as it is created (a fuzzer that
/// dies leaves nothing behind) and still reachable by path through `/proc/self/fd`.
pub struct Scratch {
    /// The file, open for reading and writing.
    pub file: File,
    /// A path that opens the same file.
    pub path: PathBuf,
}

impl Scratch {
    /// A new empty scratch file, in `/dev/shm` when there is one (no disk I/O per run).
    pub fn new(tag: &str) -> Scratch {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let named = dir.join(format!("vessel-fuzz-{tag}-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&named)
            .expect("a scratch file");
        std::fs::remove_file(&named).expect("unlink the scratch file");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Scratch { file, path }
    }

    /// Makes the file hold exactly `bytes`.
    pub fn fill(&self, bytes: &[u8]) {
        self.file.set_len(0).expect("truncate the scratch file");
        self.file
            .write_all_at(bytes, 0)
            .expect("write the scratch file");
    }

    /// The file's bytes.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read the scratch file")
    }
}

/// One buffer of a descriptor chain: guest address, length, device-writable.
pub type Buffer = (u64, u32, bool);

/// The buffers of the direct chain at `head` of the descriptor table at `desc_table` (as the
/// mock driver wrote it), following `NEXT` at most 64 times.
pub fn chain_buffers(mem: &dyn vring::GuestMemory, desc_table: u64, head: u16) -> Vec<Buffer> {
    let mut out = Vec::new();
    let mut index = head;
    for _ in 0..64 {
        let mut d = [0u8; 16];
        if mem
            .read(desc_table + 16 * u64::from(index), &mut d)
            .is_err()
        {
            break;
        }
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([d[12], d[13]]);
        out.push((addr, len, flags & vring::VIRTQ_DESC_F_WRITE != 0));
        if flags & vring::VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        index = u16::from_le_bytes([d[14], d[15]]);
    }
    out
}

/// The concatenated bytes of `buffers` that are writable (or readable), read from `mem`.
pub fn gather(mem: &dyn vring::GuestMemory, buffers: &[Buffer], writable: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len, _) in buffers.iter().filter(|b| b.2 == writable) {
        let mut b = vec![0u8; len as usize];
        mem.read(addr, &mut b)
            .expect("a chain's buffer is in memory");
        out.extend_from_slice(&b);
    }
    out
}
