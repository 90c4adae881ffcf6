//! Raw images: byte `n` of the disk is byte `n` of the file or block device.
//!
//! A regular file's size is its length when opened. A block device's size is found by seeking
//! to its end (file metadata says 0 for a device), and its logical block size is read from
//! sysfs (`/sys/dev/block/MAJOR:MINOR/queue/logical_block_size`) so the guest is told to use
//! the same (`VIRTIO_BLK_F_BLK_SIZE`). A confined domain process cannot read sysfs: the size is
//! read where the device is opened and handed over with its descriptor (`Opener::block_size`).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use super::{check_range, DiskBackend, Extent, HostFiles, ImageError, Opener};

/// A raw image.
pub struct Raw {
    file: File,
    len: u64,
    block_size: u32,
    readonly: bool,
}

impl Raw {
    /// Opens the raw image (regular file or block device) at `path` and locks it: shared when
    /// read-only, exclusive when read-write.
    pub fn open(path: &Path, readonly: bool) -> Result<Raw, ImageError> {
        Raw::open_with(&HostFiles, path, readonly)
    }

    /// [`Raw::open`], with the file coming from `files`.
    pub fn open_with(files: &dyn Opener, path: &Path, readonly: bool) -> Result<Raw, ImageError> {
        let file = files.open(path, readonly)?;
        let block_size = files.block_size(path, &file);
        Raw::with_block_size(file, readonly, block_size)
            .map_err(ImageError::io(path, "cannot read its size"))
    }

    /// A raw disk on `file`, opened read-only or read-write by the caller to match `readonly`.
    pub fn new(file: File, readonly: bool) -> io::Result<Raw> {
        let block_size = block_device_block_size(&file);
        Raw::with_block_size(file, readonly, block_size)
    }

    /// [`Raw::new`], with the block device's logical block size known (`None`: 512 bytes).
    fn with_block_size(mut file: File, readonly: bool, block_size: Option<u32>) -> io::Result<Raw> {
        let meta = file.metadata()?;
        let len = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Raw {
            file,
            len,
            block_size: block_size.unwrap_or(512),
            readonly,
        })
    }
}

/// The logical block size of `file` if it is a block device (from sysfs, which needs the host's
/// file system: not for a confined process).
pub(crate) fn block_device_block_size(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    logical_block_size(meta.rdev())
}

/// The logical block size of the block device `rdev`, from sysfs: a power of two from 512 to
/// 64 KiB, or `None` when it cannot be read.
fn logical_block_size(rdev: u64) -> Option<u32> {
    let (major, minor) = major_minor(rdev);
    let text = std::fs::read_to_string(format!(
        "/sys/dev/block/{major}:{minor}/queue/logical_block_size"
    ))
    .ok()?;
    let size: u32 = text.trim().parse().ok()?;
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

/// The major and minor numbers of a device number, in Linux's encoding (glibc's
/// `gnu_dev_major` and `gnu_dev_minor`).
fn major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    (major, minor)
}

impl DiskBackend for Raw {
    fn len(&self) -> u64 {
        self.len
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        check_range(offset, data.len(), self.len)?;
        self.file.write_all_at(data, offset)
    }
    fn extent(&self, offset: u64, len: u64, write: bool) -> io::Result<Extent<'_>> {
        if write && self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        check_range(offset, usize::try_from(len).unwrap_or(usize::MAX), self.len)?;
        Ok(Extent::File {
            file: &self.file,
            offset,
            len,
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_decodes_like_glibc() {
        // makedev(7, 0) and makedev(259, 65536) as glibc encodes them.
        let encode = |major: u64, minor: u64| {
            ((major & 0xfffff000) << 32)
                | ((major & 0xfff) << 8)
                | ((minor & 0xffffff00) << 12)
                | (minor & 0xff)
        };
        for (major, minor) in [(7u64, 0u64), (259, 65536), (8, 17)] {
            assert_eq!(major_minor(encode(major, minor)), (major, minor));
        }
    }
}
