//! Block devices are disks too: a loop device (with 4 KiB logical blocks) opened as a raw disk
//! has the device's size and block size, and reads and writes reach the device; paths that
//! are neither a regular file nor a block device (a FIFO, a directory, a character device) are
//! refused at once, never waited on.
//!
//! Needs root and `losetup` (util-linux): the test fails, saying so, without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use devices::image::{self, Format};
use devices::virtio::block::Block;
use devices::virtio::VirtioDevice;

/// A loop device over a file, detached (and the file removed) on drop.
struct Loop {
    device: PathBuf,
    backing: PathBuf,
}

impl Loop {
    fn new(size: u64, sector_size: u32) -> Loop {
        let backing =
            std::env::temp_dir().join(format!("vessel-loop-{}-{sector_size}", std::process::id()));
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(&backing)
            .output()
            .unwrap_or_else(|e| panic!("cannot run losetup ({e}): this test needs util-linux"));
        assert!(
            out.status.success(),
            "losetup failed (this test needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Loop { device, backing }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

#[test]
fn a_loop_device_is_a_raw_disk_of_its_size_and_block_size() {
    let dev = Loop::new(8 << 20, 4096);
    assert_eq!(image::probe_disk(&dev.device).unwrap(), Format::Raw);
    let mut disk = image::open(&dev.device, Format::Raw, false).unwrap();
    assert_eq!(disk.len(), 8 << 20, "the size comes from the device");
    assert_eq!(disk.block_size(), 4096, "its logical block size");
    disk.write_at(&[0x5a; 8192], 1 << 20).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0; 8192];
    disk.read_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, vec![0x5a; 8192]);
    assert!(
        disk.read_at(&mut [0; 512], 8 << 20).is_err(),
        "past the end"
    );
    // The guest is told both.
    let block = Block::with_backend(disk, false, "loop");
    let mut config = [0u8; 24];
    block.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 16384);
    assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 4096);
    assert_ne!(
        block.device_features() & (1 << 6),
        0,
        "VIRTIO_BLK_F_BLK_SIZE"
    );
    drop(block);
    // The device was locked while in use, and the data is on the device itself.
    let file_bytes = std::fs::read(&dev.backing).unwrap();
    assert_eq!(&file_bytes[1 << 20..(1 << 20) + 8192], &[0x5a; 8192][..]);
}

#[test]
fn a_block_device_in_use_read_write_is_locked() {
    let dev = Loop::new(1 << 20, 512);
    let first = image::open(&dev.device, Format::Raw, false).unwrap();
    assert_eq!(first.block_size(), 512);
    let second = image::open(&dev.device, Format::Raw, false).err().unwrap();
    assert!(second.to_string().contains("in use"), "{second}");
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn fifos_directories_and_character_devices_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("vessel-fifo-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("disk.fifo");
    mkfifo(&fifo);
    let started = Instant::now();
    for (path, kind) in [
        (fifo.as_path(), "a FIFO"),
        (dir.as_path(), "a directory"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        for readonly in [true, false] {
            for format in [Format::Raw, Format::Qcow2] {
                let err = image::open(path, format, readonly).err().unwrap();
                assert!(err.to_string().contains(kind), "{err}");
            }
        }
        let err = image::probe_disk(path).unwrap_err();
        assert!(err.to_string().contains(kind), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an open blocked"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
