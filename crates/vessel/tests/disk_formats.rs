//! A disk's format is never guessed from bytes its guest can write: `vessel run` finds the
//! format of a disk given without `format=` once, before the first boot, and every reboot
//! reopens it in that format. Run with the `mini` guest directly on /dev/kvm, with the host
//! playing the guest's part: while the domain runs, it writes into sector 0 of the raw disk
//! the header of an image whose backing file is a host file (a qcow2 header and Vessel's old
//! `VSLCOW01` header, as a guest writing its own disk could). The host file is held under an
//! exclusive lock: had any reboot reopened the disk as an image with a backing file, Vessel
//! would have tried to open and lock it, and failed.
//!
//! Also here: the errors of `--disk` for files that are not disks (kinds of file, a retired or
//! damaged image). A `format=` that is not a disk format is a unit test of `vmm::DiskSpec`.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{mini_kernel, require_kvm, run_command_reacting, vessel_run, TempDir, VESSEL};
use devices::image::{self, cow, qcow2, Format};

/// The first 64 KiB of an image whose backing file is `secret`, in the given format.
fn hostile_header(dir: &Path, secret: &Path, kind: &str) -> Vec<u8> {
    let made = dir.join(format!("hostile.{kind}"));
    match kind {
        "qcow2" => {
            qcow2::create(&made, Some(1 << 20), Some((secret, Format::Raw))).unwrap();
        }
        _ => {
            let h = cow::Header::new(1 << 20, Some(secret.to_path_buf()), 11).unwrap();
            let mut bytes = h.encode().to_vec();
            bytes.resize((h.data_offset + h.virtual_size) as usize, 0);
            std::fs::write(&made, bytes).unwrap();
        }
    }
    let mut bytes = std::fs::read(&made).unwrap();
    bytes.truncate(64 * 1024);
    bytes
}

fn reboots_keep_a_raw_disk_raw(kind: &str) {
    require_kvm();
    let dir = TempDir::new(&format!("pinned-{kind}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let header = hostile_header(dir.path(), &secret, kind);
    let held = std::fs::File::open(&secret).unwrap();
    held.lock().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let kernel = mini_kernel();
    let mut cmd = Command::new(VESSEL);
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--cmdline", "reboot", "--disk"])
        .arg(format!("path={}", disk.display()));
    let boots = |out: &str| out.matches("mini: boot").count();
    let mut written = false;
    let run = run_command_reacting(cmd, Duration::from_secs(30), &mut |out, _| {
        if !written && boots(out) >= 1 {
            // What the guest could write to sector 0 of its read-write disk.
            let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            f.write_all_at(&header, 0).unwrap();
            written = true;
        }
        boots(out) >= 4
    });
    assert!(
        run.code().is_none() && boots(&run.stdout) >= 4,
        "the domain stopped rebooting (did a reboot open the disk as {kind}?):\n{}",
        run.report()
    );
    // The header is on the disk, and the file is still what it was named: raw.
    assert_ne!(
        image::probe(&disk).unwrap(),
        Format::Raw,
        "the header was not written"
    );
    drop(held);
}

#[test]
fn reboots_never_reopen_a_raw_disk_as_qcow2_whatever_its_guest_wrote() {
    reboots_keep_a_raw_disk_raw("qcow2");
}

#[test]
fn reboots_never_reopen_a_raw_disk_as_an_old_overlay_whatever_its_guest_wrote() {
    reboots_keep_a_raw_disk_raw("vslcow");
}

#[test]
fn disk_formats_and_files_that_are_no_disks_are_refused_with_one_line() {
    require_kvm();
    let dir = TempDir::new("disk-errors");
    let kernel = mini_kernel();
    let k = kernel.to_str().unwrap();
    let fifo = dir.path().join("disk.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let old = dir.path().join("old.cow");
    let h = cow::Header::new(1 << 20, None, 0).unwrap();
    let mut bytes = h.encode().to_vec();
    bytes.resize((h.data_offset + h.virtual_size) as usize, 0);
    std::fs::File::create(&old)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let damaged = dir.path().join("damaged.qcow2");
    qcow2::create(&damaged, Some(1 << 20), None).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap()
        .write_all_at(b"X", 1)
        .unwrap();
    for (disk, needles) in [
        (format!("path={}", fifo.display()), vec!["is a FIFO"]),
        (
            format!("path={}", dir.path().display()),
            vec!["is a directory"],
        ),
        ("path=/dev/zero".to_string(), vec!["character device"]),
        (
            format!("path={}", old.display()),
            vec!["retired", "vessel image convert"],
        ),
        (
            format!("path={},format=qcow2", damaged.display()),
            vec!["damaged.qcow2", "magic"],
        ),
    ] {
        let run = vessel_run(
            &["--kernel", k, "--cmdline", "hello", "--disk", &disk],
            Duration::from_secs(20),
        );
        run.assert_one_line_error(&needles);
        assert!(run.elapsed < Duration::from_secs(10), "{}", run.report());
    }
}
