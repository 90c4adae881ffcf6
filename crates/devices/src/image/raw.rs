//! Raw images: byte `n` of the disk is byte `n` of the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{check_range, DiskBackend};

/// A raw image (its size is the file's size when opened).
pub struct Raw {
    file: File,
    len: u64,
    readonly: bool,
}

impl Raw {
    /// A raw disk on `file`, opened read-only or read-write by the caller to match `readonly`.
    pub fn new(file: File, readonly: bool) -> io::Result<Raw> {
        let len = file.metadata()?.len();
        Ok(Raw {
            file,
            len,
            readonly,
        })
    }
}

impl DiskBackend for Raw {
    fn len(&self) -> u64 {
        self.len
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
    fn direct_file(&self) -> Option<&File> {
        Some(&self.file)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }
}
