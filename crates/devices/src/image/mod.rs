//! Disk images behind virtual block devices: raw files or block devices, and qcow2 images.
//!
//! A [`DiskBackend`] is what a VBD reads and writes: a byte-addressed disk of fixed size.
//! [`raw::Raw`] is a plain file or a block device; [`qcow2::Qcow2`] is a qcow2 image (through
//! the `imago` crate) whose unwritten clusters read from a backing chain opened read-only.
//!
//! The format of a disk is never guessed from bytes a guest can write: [`open`] takes the
//! format from its caller, and [`probe`] exists only for files a user names once (`vessel
//! run`, `vessel create`, `vessel image`), whose format is then recorded and never probed again.
//! A qcow2 image's backing files are opened in the format the image records. Everything read
//! from an image file is hostile: it is validated with checked arithmetic before use, and an
//! invalid file is an error naming it. Vessel's own overlay format of earlier versions
//! (`VSLCOW01`, [`cow`]) is retired: only `vessel image convert` still reads it.

pub mod convert;
pub mod cow;
pub mod qcow2;
pub mod qcow2_check;
pub mod raw;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use qcow2::Qcow2;
pub use raw::Raw;

use crate::host_file::{self, Accept, Access};

/// A disk as a VBD sees it. Every access must lie inside `0..len()`; one that does not is
/// refused with `InvalidInput` and changes nothing.
pub trait DiskBackend: Send {
    /// The disk's size in bytes.
    fn len(&self) -> u64;
    /// Whether the disk has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The logical block size the guest should use: 512 but for block devices with larger
    /// logical blocks.
    fn block_size(&self) -> u32 {
        512
    }
    /// Fills `buf` with the disk's bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `data` at `offset` (refused with `PermissionDenied` on a read-only disk).
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (reaching stable storage) before returning.
    fn flush(&mut self) -> io::Result<()>;
    /// Where the disk's bytes from `offset` are stored, for at most `len` bytes (`write`: for
    /// writing them in place), so a device can move them between a file and guest memory
    /// without a copy of its own. The extent returned is 1 to `len` bytes long (for `len` > 0).
    /// The default says only the format can reach them.
    fn extent(&self, offset: u64, len: u64, write: bool) -> io::Result<Extent<'_>> {
        let _ = write;
        check_range(
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
            self.len(),
        )?;
        Ok(Extent::Format { len })
    }
}

/// A stretch of a disk as it is stored ([`DiskBackend::extent`]).
#[derive(Debug)]
pub enum Extent<'a> {
    /// The disk's `len` bytes are bytes `offset..offset + len` of `file` (for a write: and
    /// may be written there in place).
    File {
        /// The file holding them.
        file: &'a File,
        /// Where in the file.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// The `len` bytes read as zeros (never returned for a write).
    Zero {
        /// How many bytes.
        len: u64,
    },
    /// Only the format can read or write the `len` bytes: use `read_at` and `write_at`.
    Format {
        /// How many bytes.
        len: u64,
    },
}

/// An image's on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain file or block device: byte `n` of the disk is byte `n` of the file.
    Raw,
    /// qcow2 (version 2 or 3).
    Qcow2,
    /// Vessel's retired copy-on-write overlay (`VSLCOW01`): no longer a disk format; `vessel
    /// image convert` reads it.
    VesselCow,
}

impl Format {
    /// The formats a disk may be opened in, by the names `format=` takes.
    pub const DISK_FORMATS: [Format; 2] = [Format::Raw, Format::Qcow2];

    /// The format called `name` (`raw`, `qcow2`, or `vslcow` for the retired overlay).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vslcow" => Some(Format::VesselCow),
            _ => None,
        }
    }

    /// Its name, as `format=` and qcow2's backing-format extension write it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::VesselCow => "vslcow",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// The file is not a valid image (bad header, tables, backing...).
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

/// The error for a disk in the retired `VSLCOW01` format.
pub(crate) fn retired(path: &Path) -> ImageError {
    ImageError::invalid(
        path,
        "is in Vessel's retired VSLCOW01 overlay format, which disks no longer use: \
         convert it with `vessel image convert --format qcow2 FILE NEW.qcow2`",
    )
}

/// Backing chains longer than this are refused (this also ends loops). `vessel image check`
/// and domains open chains with the same code, so they agree on it.
pub const MAX_CHAIN: usize = 8;

/// Opens `path` (a regular file or a block device, without blocking on anything else)
/// read-only or read-write and locks it: shared when read-only, exclusive when read-write, so
/// no process writes an image another one is using (a base under overlays included).
pub(crate) fn open_locked(path: &Path, readonly: bool) -> Result<File, ImageError> {
    let access = if readonly {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let file =
        host_file::open(path, access, Accept::RegularOrBlockDevice).map_err(ImageError::io(
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

/// Opens `path` read-only, locked shared, for `vessel image check` and `info`: an image a
/// domain is writing is refused ("in use"), as its tables may be half written back.
pub fn open_for_inspection(path: &Path) -> Result<File, ImageError> {
    open_locked(path, true)
}

/// The format of an open file, from its first bytes: qcow2 or the retired overlay by their
/// magic, anything else raw. Only for files a user names (see the module's doc).
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
    Ok(if got >= 4 && magic[..4] == qcow2::MAGIC[..] {
        Format::Qcow2
    } else if got == magic.len() && &magic == cow::MAGIC {
        Format::VesselCow
    } else {
        Format::Raw
    })
}

/// The format of the image at `path` (a regular file or a block device), from its first bytes.
pub fn probe(path: &Path) -> Result<Format, ImageError> {
    let file = host_file::open(path, Access::ReadOnly, Accept::RegularOrBlockDevice)
        .map_err(ImageError::io(path, "cannot open"))?;
    probe_file(&file, path)
}

/// The format of the disk image at `path`, from its first bytes: raw or qcow2, or an error for
/// the retired overlay format. Only for files a user names (see the module's doc).
pub fn probe_disk(path: &Path) -> Result<Format, ImageError> {
    match probe(path)? {
        Format::VesselCow => Err(retired(path)),
        format => Ok(format),
    }
}

/// Opens the image at `path` in `format`, read-only or read-write, and locks it. A qcow2
/// image's backing chain is opened read-only, in the formats it records.
pub fn open(
    path: &Path,
    format: Format,
    readonly: bool,
) -> Result<Box<dyn DiskBackend>, ImageError> {
    open_with(&HostFiles, path, format, readonly)
}

/// [`open`], with the files of the image (and of its chain) coming from `files`.
pub fn open_with(
    files: &dyn Opener,
    path: &Path,
    format: Format,
    readonly: bool,
) -> Result<Box<dyn DiskBackend>, ImageError> {
    match format {
        Format::Raw => Ok(Box::new(Raw::open_with(files, path, readonly)?)),
        Format::Qcow2 => Ok(Box::new(Qcow2::open_with(files, path, readonly)?)),
        Format::VesselCow => Err(retired(path)),
    }
}

/// Where the files of a disk come from when it is opened: the host's file system ([`HostFiles`],
/// with Vessel's checks and locks), or descriptors opened earlier by someone who did ([`Handed`]:
/// a domain process never opens a host path).
pub trait Opener {
    /// The file at `path`, open read-only or read-write and locked accordingly.
    fn open(&self, path: &Path, readonly: bool) -> Result<File, ImageError>;

    /// The logical block size of `file` (opened from `path`) if it is a block device, as the
    /// host says it (sysfs); `None` for a regular file or when it cannot be read.
    fn block_size(&self, _path: &Path, file: &File) -> Option<u32> {
        raw::block_device_block_size(file)
    }
}

/// Opens files on the host: non-blocking, regular files or block devices only, `flock`ed.
pub struct HostFiles;

impl Opener for HostFiles {
    fn open(&self, path: &Path, readonly: bool) -> Result<File, ImageError> {
        open_locked(path, readonly)
    }
}

/// One file of a disk opened on the host, to hand to a domain process.
#[derive(Debug)]
pub struct HandedFile {
    /// The path it was opened at (as the image, or the image naming it, gives it).
    pub path: PathBuf,
    /// Whether it was opened read-only.
    pub readonly: bool,
    /// The open, locked file.
    pub file: File,
    /// Its logical block size if it is a block device, found where it was opened (a domain
    /// process cannot read sysfs).
    pub block_size: Option<u32>,
}

/// Opens files on the host like [`HostFiles`] and keeps a descriptor of each, so that opening
/// a disk once records every file of its chain (to be handed over as [`Handed`]).
#[derive(Default)]
pub struct Recording {
    opened: std::sync::Mutex<Vec<HandedFile>>,
}

impl Recording {
    /// The files opened so far.
    pub fn into_files(self) -> Vec<HandedFile> {
        self.opened.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Opener for Recording {
    fn open(&self, path: &Path, readonly: bool) -> Result<File, ImageError> {
        let file = open_locked(path, readonly)?;
        let kept = file
            .try_clone()
            .map_err(ImageError::io(path, "cannot duplicate"))?;
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(HandedFile {
                path: path.to_path_buf(),
                readonly,
                block_size: raw::block_device_block_size(&file),
                file: kept,
            });
        Ok(file)
    }
}

/// Files handed over already open: opening one is taking a duplicate of its descriptor (which
/// shares its lock). A path that was not handed over, or not with that access, is refused.
#[derive(Debug, Default)]
pub struct Handed {
    files: Vec<HandedFile>,
}

impl Handed {
    /// Files to open from.
    pub fn new(files: Vec<HandedFile>) -> Handed {
        Handed { files }
    }
}

impl Opener for Handed {
    fn block_size(&self, path: &Path, _file: &File) -> Option<u32> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .and_then(|f| f.block_size)
    }

    fn open(&self, path: &Path, readonly: bool) -> Result<File, ImageError> {
        let found = self
            .files
            .iter()
            .find(|f| f.path == path && f.readonly == readonly)
            .ok_or_else(|| {
                ImageError::invalid(
                    path,
                    format!(
                        "was not handed to this domain (opened {})",
                        if readonly { "read-only" } else { "read-write" }
                    ),
                )
            })?;
        found
            .file
            .try_clone()
            .map_err(ImageError::io(path, "cannot duplicate"))
    }
}

/// Creates a raw image of `size` bytes (a sparse file), refusing to replace an existing file;
/// the file and its directory are synced before this returns.
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
    let made = file
        .set_len(size)
        .and_then(|()| file.sync_all())
        .map_err(ImageError::io(path, "cannot size"))
        .and_then(|()| sync_parent_dir(path));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Makes the directory entry of the new file `path` durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), ImageError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io(dir, "cannot sync the directory"))
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
