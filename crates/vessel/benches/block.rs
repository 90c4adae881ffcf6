//! Block I/O benchmark: Vessel against QEMU (`-M microvm`, virtio-blk-device) on the same guest
//! and the same kind of image, in one host box.
//!
//! Run with `cargo bench -p vessel --bench block`. Not a test: it prints what it measured.
//! `iobench` (benches/iobench.c) is compiled statically here and appended to the guest initramfs
//! as a second archive. In the guest, with O_DIRECT on /dev/vda: sequential write and read of
//! 128 MiB in 1 MiB requests (MB/s) and 4 KiB random reads for 5 s (IOPS, one request in
//! flight). The image is a fresh 256 MiB image on L1's tmpfs for every boot, so both VMMs see
//! the same storage: a sparse raw file, then (in a second box run) an empty qcow2 image made by
//! `vessel image create` (`VESSEL_BENCH_FORMATS`, default `raw,qcow2`). Boots alternate Vessel,
//! QEMU; `VESSEL_BENCH_ROUNDS` rounds (default 2); the figures are medians.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const GUEST: &str = "iobench /dev/vda seqwrite 128; iobench /dev/vda seqread 128; \
                     iobench /dev/vda randread 5";

fn build_iobench(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/iobench.c");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let status = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(root.join("bin/iobench"))
        .arg(&src)
        .status()
        .expect("gcc is needed to build iobench");
    assert!(status.success(), "building iobench failed");
    // A second initramfs archive holding /bin/iobench, appended to the guest's own.
    let archive = dir.join("extra.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && echo bin/iobench | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "packing iobench failed");
    archive
}

fn main() {
    let rounds = common::rounds(2);
    let formats = std::env::var("VESSEL_BENCH_FORMATS").unwrap_or_else(|_| "raw,qcow2".into());
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let dir = std::env::temp_dir().join(format!("vessel-blkbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra = build_iobench(&dir);
    for format in formats.split(',') {
        bench(&assets, &extra, rounds, format);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One box run: `rounds` boots of each VMM on a fresh image in `format`.
fn bench(assets: &Assets, extra: &Path, rounds: usize, format: &str) {
    let (image, make) = match format {
        "raw" => (
            "/tmp/disk.img",
            "truncate -s 0 /tmp/disk.img; truncate -s 256M /tmp/disk.img",
        ),
        "qcow2" => (
            "/tmp/disk.qcow2",
            "rm -f /tmp/disk.qcow2; vessel image create --format qcow2 --size 256M /tmp/disk.qcow2 >/dev/null",
        ),
        other => panic!("VESSEL_BENCH_FORMATS: unknown format {other}"),
    };
    let prepare =
        format!("{make}; cat /assets/initramfs.cpio.gz /bench/extra.cpio.gz > /tmp/initrd");
    let cmdline = format!("console=ttyS0 quiet vcmd=\\\"{GUEST}\\\"");
    let vessel = format!(
        "{prepare}; vessel run --kernel /assets/vmlinux --initrd /tmp/initrd --memory 256M \
         --disk path={image},format={format} --cmdline \"{cmdline}\" </dev/null"
    );
    let qemu = format!(
        "{prepare}; qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -smp 1 \
         -nographic -no-reboot -kernel /assets/vmlinux -initrd /tmp/initrd \
         -drive id=d0,file={image},format={format},if=none -device virtio-blk-device,drive=d0 \
         -append \"{cmdline}\" </dev/null"
    );
    let bx = HostBox::new(assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .file(extra, "/bench/extra.cpio.gz")
        .timeout(Duration::from_secs(1800));
    let run = common::alternate(bx, rounds, &vessel, &qemu);

    println!(
        "block benchmark, {format} image: {rounds} boots each, same guest and image kind, one box run"
    );
    println!(
        "{:<34}{:>10}{:>10}{:>8}",
        "median", "vessel", "qemu", "ratio"
    );
    for (label, mode) in [
        ("sequential write, 1 MiB (MB/s)", "seqwrite"),
        ("sequential read, 1 MiB (MB/s)", "seqread"),
        ("random read, 4 KiB, QD1 (IOPS)", "randread"),
    ] {
        let values = |vmm: &str| -> Vec<f64> {
            (0..rounds)
                .map(|i| {
                    common::figure(run.step(&format!("{vmm}-{i}")), &format!("IOBENCH {mode} "))
                })
                .collect()
        };
        let (v, q) = (values("vessel"), values("qemu"));
        let (mv, mq) = (common::median(v.clone()), common::median(q.clone()));
        println!(
            "{label:<34}{mv:>10.1}{mq:>10.1}{:>8.2}   vessel {v:?} qemu {q:?}",
            mv / mq
        );
    }
    println!("box wall time: {:.1} s", run.wall.as_secs_f64());
}
