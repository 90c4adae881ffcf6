//! Opening the host files a user names (kernels, initrds, disk images) so that no path can
//! stall the caller: the file is opened non-blocking (a FIFO with no writer, or a terminal, does
//! not hang `open`) and then refused unless it is of a kind the caller accepts, with an error
//! that names the kind found. Regular files and block devices ignore `O_NONBLOCK` for reads
//! and writes, so the descriptor is used as it comes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Which kinds of host file a caller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// A regular file only (kernels, initrds).
    Regular,
    /// A regular file or a block device (disk images).
    RegularOrBlockDevice,
    /// A character device (the host's random pool).
    CharacterDevice,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// What kind of file `file_type` is, in words.
pub fn kind_name(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Opens `path` without blocking and checks its kind: an `InvalidInput` error saying what the
/// path is when it is not one of `accept`.
pub fn open(path: &Path, access: Access, accept: Accept) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    let ok = match accept {
        Accept::Regular => file_type.is_file(),
        Accept::RegularOrBlockDevice => file_type.is_file() || file_type.is_block_device(),
        Accept::CharacterDevice => file_type.is_char_device(),
    };
    if !ok {
        let wanted = match accept {
            Accept::Regular => "a regular file",
            Accept::RegularOrBlockDevice => "a regular file or a block device",
            Accept::CharacterDevice => "a character device",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not {wanted}", kind_name(file_type)),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fifos_directories_and_devices_are_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("vessel-host-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let started = Instant::now();
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = open(&fifo, access, Accept::RegularOrBlockDevice).unwrap_err();
            assert!(err.to_string().contains("is a FIFO"), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "open blocked");
        let err = open(&dir, Access::ReadOnly, Accept::Regular).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = open(Path::new("/dev/null"), Access::ReadOnly, Accept::Regular).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(open(&file, Access::ReadWrite, Accept::Regular).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
