//! Disk images behind virtual block devices: raw files and Vessel's copy-on-write overlays.
//!
//! A [`DiskBackend`] is what a VBD reads and writes: a byte-addressed disk of fixed size.
//! [`raw::Raw`] is a plain file; [`cow::Cow`] is an overlay in the `VSLCOW01` format
//! (`docs/formats.md`) whose unwritten clusters read from a backing image that is opened
//! read-only and never written, so many domains can boot from one base. [`open`] detects the
//! format by its magic. Everything read from an image file is hostile: header fields are
//! validated with checked arithmetic before use, and an invalid file is an error naming it.

pub mod cow;
pub mod raw;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use cow::Cow;
pub use raw::Raw;

/// A disk as a VBD sees it. Every access must lie inside `0..len()`; one that does not is
/// refused with `InvalidInput` and changes nothing.
pub trait DiskBackend: Send {
    /// The disk's size in bytes.
    fn len(&self) -> u64;
    /// Whether the disk has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the disk's bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `data` at `offset` (refused with `PermissionDenied` on a read-only disk).
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (reaching stable storage) before returning.
    fn flush(&mut self) -> io::Result<()>;
    /// The file whose byte `n` is the disk's byte `n`, if there is one (a raw image): the
    /// device then moves data between it and guest memory directly, without a copy through a
    /// buffer of its own. `None` (the default) for formats that map blocks elsewhere.
    fn direct_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// An image's on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain file: byte `n` of the disk is byte `n` of the file.
    Raw,
    /// A Vessel copy-on-write overlay (`VSLCOW01`).
    Cow,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Cow => "vessel-cow (VSLCOW01)",
        })
    }
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The host refused an operation on the file.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// What Vessel was doing.
        what: String,
        /// The host's error.
        source: io::Error,
    },
    /// The file is not a valid image (bad header, bitmap, backing...).
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another process holds a conflicting lock on the file.
    #[error("{}: in use by another process (it holds a conflicting lock)", path.display())]
    Locked {
        /// The image.
        path: PathBuf,
    },
}

impl ImageError {
    pub(crate) fn io(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        let what = what.into();
        move |source| ImageError::Io { path, what, source }
    }
    pub(crate) fn invalid(path: &Path, why: impl Into<String>) -> Self {
        ImageError::Invalid {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }
}

/// Backing chains longer than this are refused (this also ends loops).
pub const MAX_CHAIN: usize = 8;

/// Opens `path` read-only or read-write and locks it: shared when read-only, exclusive when
/// read-write, so no process writes an image another one is using (a base under overlays
/// included).
pub(crate) fn open_locked(path: &Path, readonly: bool) -> Result<File, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(ImageError::io(
            path,
            if readonly {
                "cannot open read-only"
            } else {
                "cannot open read-write"
            },
        ))?;
    let locked = if readonly {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ImageError::Locked {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(ImageError::io(path, "cannot lock")(e)),
    }
}

/// The format of an open file: COW if it starts with the `VSLCOW01` magic, else raw.
pub fn probe_file(file: &File, path: &Path) -> Result<Format, ImageError> {
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, "cannot read")(e)),
        }
    }
    Ok(if got == magic.len() && &magic == cow::MAGIC {
        Format::Cow
    } else {
        Format::Raw
    })
}

/// The format of the image at `path`.
pub fn probe(path: &Path) -> Result<Format, ImageError> {
    let file = File::open(path).map_err(ImageError::io(path, "cannot open"))?;
    probe_file(&file, path)
}

/// Opens the image at `path` in its own format (detected by magic), read-only or read-write.
/// An overlay's backing images are always opened read-only.
pub fn open(path: &Path, readonly: bool) -> Result<Box<dyn DiskBackend>, ImageError> {
    open_chain(path, readonly, 0)
}

pub(crate) fn open_chain(
    path: &Path,
    readonly: bool,
    depth: usize,
) -> Result<Box<dyn DiskBackend>, ImageError> {
    if depth > MAX_CHAIN {
        return Err(ImageError::invalid(
            path,
            format!("backing chain deeper than {MAX_CHAIN} images (a loop?)"),
        ));
    }
    let file = open_locked(path, readonly)?;
    match probe_file(&file, path)? {
        Format::Raw => Ok(Box::new(
            Raw::new(file, readonly).map_err(ImageError::io(path, "cannot read its size"))?,
        )),
        Format::Cow => Ok(Box::new(Cow::from_file(file, path, readonly, depth)?)),
    }
}

/// Creates a raw image of `size` bytes (a sparse file); refuses to replace an existing file.
pub fn create_raw(path: &Path, size: u64) -> Result<(), ImageError> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(ImageError::invalid(
            path,
            format!("size {size} is not a positive multiple of 512 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ImageError::io(path, "cannot create"))?;
    if let Err(e) = file.set_len(size).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(ImageError::io(path, "cannot size")(e));
    }
    Ok(())
}

/// Checks that `len` bytes at `offset` lie inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access of {len} bytes at {offset} is outside the disk ({size} bytes)"),
        )),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary directory removed on drop (std only).
    pub struct TempDir {
        pub path: PathBuf,
    }

    impl TempDir {
        pub fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "vessel-img-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }
        pub fn join(&self, name: &str) -> PathBuf {
            self.path.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
