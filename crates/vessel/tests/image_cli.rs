//! `vessel image` on the host: creating raw and qcow2 images and overlays, describing and
//! checking them, converting the retired `VSLCOW01` overlays, and the errors. No guest runs
//! here (the box tests boot Linux on these images); these are the command's own promises.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_command, Finished, TempDir, VESSEL};
use devices::image::cow;

fn image(args: &[&str]) -> Finished {
    let mut cmd = Command::new(VESSEL);
    cmd.arg("image").args(args);
    run_command(cmd, Duration::from_secs(60), None)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn images_are_created_described_and_checked() {
    let dir = TempDir::new("image-cli");
    let raw = dir.path().join("base.img");
    let made = image(&["create", "--size", "4M", p(&raw)]);
    made.assert_code(0);
    assert!(
        made.stdout.contains("created raw image"),
        "{}",
        made.report()
    );
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 << 20);

    let overlay = dir.path().join("over.qcow2");
    let made = image(&["create", "--backing", p(&raw), p(&overlay)]);
    made.assert_code(0);
    assert!(
        made.stdout.contains("created qcow2 image")
            && made.stdout.contains("(format raw)")
            && made.stdout.contains("4194304 bytes (4 MiB)"),
        "{}",
        made.report()
    );
    let info = image(&["info", p(&overlay)]);
    info.assert_code(0);
    for want in [
        "qcow2 image (version 3)",
        "virtual size: 4194304 bytes",
        "cluster size: 65536",
        "clusters allocated: 0 of 64",
        "(format raw,",
    ] {
        assert!(info.stdout.contains(want), "{want}:\n{}", info.report());
    }
    image(&["check", p(&overlay)]).assert_code(0);
    image(&["check", p(&raw)]).assert_code(0);

    let big = dir.path().join("big.qcow2");
    image(&[
        "create",
        "--backing",
        p(&overlay),
        "--backing-format",
        "qcow2",
        "--size",
        "1G",
        p(&big),
    ])
    .assert_code(0);
    let info = image(&["info", p(&big)]);
    assert!(
        info.stdout.contains("1073741824 bytes (1 GiB)"),
        "{}",
        info.report()
    );

    // Errors: existing files, a raw image with a backing file, formats that are not disks.
    for (args, needle) in [
        (vec!["create", "--size", "1M", p(&raw)], "cannot create"),
        (
            vec!["create", "--format", "raw", "--backing", p(&raw), "x"],
            "no backing file",
        ),
        (
            vec!["create", "--format", "vmdk", "--size", "1M", "x"],
            "not raw or qcow2",
        ),
        (vec!["create", "x.img"], "--size is needed"),
    ] {
        let run = image(&args);
        assert_ne!(run.code(), Some(0), "{}", run.report());
        assert!(run.stderr.contains(needle), "{needle}:\n{}", run.report());
    }
}

#[test]
fn check_and_domains_agree_on_the_deepest_chain() {
    common::require_kvm();
    let dir = TempDir::new("image-deep");
    let base = dir.path().join("l0.img");
    image(&["create", "--size", "1M", p(&base)]).assert_code(0);
    let mut below = base;
    for level in 1..=9 {
        let next = dir.path().join(format!("l{level}.qcow2"));
        let made = image(&["create", "--backing", p(&below), p(&next)]);
        if level <= 8 {
            made.assert_code(0);
        } else {
            // Vessel will not make a chain deeper than it opens; QEMU's tool will.
            assert_eq!(made.code(), Some(1), "{}", made.report());
            assert!(made.stderr.contains("deeper than 8"), "{}", made.report());
            let out = Command::new("qemu-img")
                .args([
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    p(&below),
                    p(&next),
                ])
                .output()
                .expect("qemu-img (qemu-utils) is needed");
            assert!(out.status.success(), "{out:?}");
        }
        below = next;
    }
    let kernel = common::mini_kernel();
    for (level, ok) in [(8, true), (9, false)] {
        let top = dir.path().join(format!("l{level}.qcow2"));
        let check = image(&["check", p(&top)]);
        let run = common::vessel_run(
            &[
                "--kernel",
                p(&kernel),
                "--cmdline",
                "hello",
                "--disk",
                &format!("path={}", p(&top)),
            ],
            Duration::from_secs(30),
        );
        if ok {
            check.assert_code(0);
            run.assert_code(0);
        } else {
            assert_eq!(check.code(), Some(1), "{}", check.report());
            assert!(check.stderr.contains("deeper than 8"), "{}", check.report());
            run.assert_one_line_error(&["deeper than 8"]);
        }
    }
}

/// A retired overlay of 16 TiB whose backing is itself: `check` holds one bitmap (32 MiB) at a
/// time, so it finishes within an address-space limit that a bitmap per level of the loop
/// (9 x 32 MiB) would exceed, and reports the loop.
fn write_looping_overlay(path: &Path) {
    let h = cow::Header::new(cow::MAX_VIRTUAL_SIZE, Some(path.to_path_buf()), 512).unwrap();
    let f = std::fs::File::create(path).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&h.encode(), 0).unwrap();
    f.set_len(h.data_offset + 65536).unwrap();
}

#[test]
fn retired_overlays_are_described_bounded_and_converted() {
    let dir = TempDir::new("image-retired");
    let looped = dir.path().join("loop.cow");
    write_looping_overlay(&looped);
    let mut cmd = Command::new("prlimit");
    cmd.arg("--as=200000000")
        .arg(VESSEL)
        .args(["image", "check", p(&looped)]);
    let run = run_command(cmd, Duration::from_secs(120), None);
    assert_eq!(run.code(), Some(1), "{}", run.report());
    assert!(
        run.stderr.contains("loop") && !run.stderr.contains("memory allocation"),
        "{}",
        run.report()
    );

    // A small chain of the old format: base <- old.cow, converted to qcow2 and to raw.
    let base = dir.path().join("base.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..4].copy_from_slice(b"base");
    std::fs::write(&base, &bytes).unwrap();
    let old = dir.path().join("old.cow");
    let h = cow::Header::new(1 << 20, Some(base.clone()), 1 << 20).unwrap();
    let mut file = h.encode().to_vec();
    file.resize((h.data_offset + h.virtual_size) as usize, 0);
    file[h.bitmap_offset as usize] = 1 << 1; // cluster 1 is in the overlay
    file[(h.data_offset + 65536) as usize..(h.data_offset + 65540) as usize]
        .copy_from_slice(b"over");
    std::fs::write(&old, &file).unwrap();
    bytes[65536..65540].copy_from_slice(b"over");
    let info = image(&["info", p(&old)]);
    info.assert_code(0);
    assert!(
        info.stdout.contains("retired") && info.stdout.contains("clusters allocated: 1 of 16"),
        "{}",
        info.report()
    );
    let new = dir.path().join("new.qcow2");
    let conv = image(&["convert", p(&old), p(&new)]);
    conv.assert_code(0);
    assert!(
        conv.stdout.contains("(vslcow) to") && conv.stdout.contains("(qcow2)"),
        "{}",
        conv.report()
    );
    image(&["check", p(&new)]).assert_code(0);
    let flat = dir.path().join("flat.raw");
    image(&[
        "convert",
        "--format",
        "raw",
        "--source-format",
        "qcow2",
        p(&new),
        p(&flat),
    ])
    .assert_code(0);
    assert!(
        std::fs::read(&flat).unwrap() == bytes,
        "converted bytes differ"
    );
    let again = image(&["convert", p(&old), p(&flat)]);
    assert_eq!(again.code(), Some(1), "{}", again.report());
}
