//! qcow2 interoperability with QEMU's own tools, both ways, and `vessel image check`'s reading
//! of real and damaged images: images `qemu-img` makes (plain, compressed, with internal
//! snapshots, other refcount widths, version 2, chains) read and check clean under Vessel;
//! images Vessel writes pass `qemu-img check` and `qemu-img convert` yields their data; damage
//! that `qemu-img check` calls corruption or a leak is found too.
//!
//! Needs `qemu-img` and `qemu-io` (Debian's qemu-utils, installed by scripts/setup.sh): the
//! tests fail, saying so, where they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use devices::image::{self, qcow2, qcow2_check, DiskBackend, Format};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vessel-qcow2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a QEMU tool; panics with its output unless it exits with one of `ok` codes. Returns
/// its exit code and standard output.
fn qemu(tool: &str, args: &[&str], ok: &[i32]) -> (i32, String) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): these tests need QEMU's tools (apt-get install qemu-utils; scripts/setup.sh does)")
    });
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ok.contains(&code),
        "{tool} {args:?} exited {code}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn check(path: &Path) -> qcow2_check::Report {
    let f = image::open_for_inspection(path).unwrap();
    qcow2_check::check(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_all(d: &dyn DiskBackend) -> Vec<u8> {
    let mut buf = vec![0; d.len() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn images_qemu_img_makes_read_and_check_clean() {
    let dir = Dir::new("qemu-made");
    let plain = dir.join("plain.qcow2");
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&plain), "8M"],
        &[0],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 5M 100k",
            s(&plain),
        ],
        &[0],
    );
    let r = check(&plain);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(r.refcounts_checked);
    assert_eq!((r.header.size, r.allocated, r.leaked), (8 << 20, 16 + 2, 0));
    let d = image::open(&plain, Format::Qcow2, true).unwrap();
    let data = read_all(&*d);
    assert!(data[..1 << 20].iter().all(|&b| b == 0xab));
    assert!(data[5 << 20..(5 << 20) + 100 * 1024]
        .iter()
        .all(|&b| b == 0xcd));
    assert!(data[1 << 20..5 << 20].iter().all(|&b| b == 0));
    drop(d);

    // Internal snapshots share clusters (refcount 2, COPIED clear); compressed clusters; other
    // refcount widths; version 2.
    let snap = dir.join("snap.qcow2");
    std::fs::copy(&plain, &snap).unwrap();
    qemu("qemu-img", &["snapshot", "-c", "s1", s(&snap)], &[0]);
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 64k", s(&snap)],
        &[0],
    );
    let compressed = dir.join("compressed.qcow2");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            s(&plain),
            s(&compressed),
        ],
        &[0],
    );
    let narrow = dir.join("rc1.qcow2");
    let wide = dir.join("rc64.qcow2");
    let v2 = dir.join("v2.qcow2");
    for (out, opts) in [
        (&narrow, "refcount_bits=1"),
        (&wide, "refcount_bits=64"),
        (&v2, "compat=0.10"),
    ] {
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "qcow2",
                "-o",
                opts,
                s(&plain),
                s(out),
            ],
            &[0],
        );
    }
    for img in [&snap, &compressed, &narrow, &wide, &v2] {
        let r = check(img);
        assert!(r.problems.is_empty(), "{}: {:?}", img.display(), r.problems);
        assert_eq!(r.leaked, 0, "{}", img.display());
        let d = image::open(img, Format::Qcow2, true).unwrap();
        let got = read_all(&*d);
        let want = if img == &snap {
            let mut w = data.clone();
            w[..64 * 1024].fill(0x11);
            w
        } else {
            data.clone()
        };
        assert!(got == want, "{}: data differs", img.display());
    }
    assert_eq!(check(&snap).header.snapshots, 1);
    assert_eq!(check(&v2).header.version, 2);
}

#[test]
fn a_two_deep_chain_qemu_img_made_opens_with_its_recorded_formats() {
    let dir = Dir::new("chain");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x42u8; 2 << 20]).unwrap();
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&mid),
        ],
        &[0],
    );
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 1 64k 64k", s(&mid)],
        &[0],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&mid),
            "-F",
            "qcow2",
            s(&top),
        ],
        &[0],
    );
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 2 0 512", s(&top)],
        &[0],
    );
    let mut d = image::open(&top, Format::Qcow2, false).unwrap();
    let got = read_all(&*d);
    assert_eq!(&got[..512], &[2; 512][..]);
    assert_eq!(&got[512..64 * 1024], &vec![0x42; 64 * 1024 - 512][..]);
    assert_eq!(&got[64 * 1024..128 * 1024], &vec![1; 64 * 1024][..]);
    assert_eq!(&got[128 * 1024..], &vec![0x42; (2 << 20) - 128 * 1024][..]);
    d.write_at(&[3; 4096], 1 << 20).unwrap();
    d.flush().unwrap();
    drop(d);
    qemu("qemu-img", &["check", "-q", s(&top)], &[0]);
    // Without a recorded backing format the chain is refused, never probed.
    let unrecorded = dir.join("unrecorded.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&unrecorded),
        ],
        &[0],
    );
    // Turn the backing-format extension into one no reader knows (ignored), as in images
    // made before formats were recorded.
    let mut bytes = std::fs::read(&unrecorded).unwrap();
    let at = bytes[..65536]
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("qemu-img recorded the backing format");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&unrecorded, bytes).unwrap();
    qemu("qemu-img", &["info", s(&unrecorded)], &[0]);
    let err = image::open(&unrecorded, Format::Qcow2, true).err().unwrap();
    assert!(err.to_string().contains("never guesses"), "{err}");
}

#[test]
fn images_vessel_writes_pass_qemu_img_check_and_convert_to_their_data() {
    let dir = Dir::new("vessel-made");
    let base = dir.join("base.raw");
    let base_bytes: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&base, &base_bytes).unwrap();
    let overlay = dir.join("overlay.qcow2");
    qcow2::create(&overlay, None, Some((&base, Format::Raw))).unwrap();
    let mut want = base_bytes.clone();
    {
        let mut d = image::open(&overlay, Format::Qcow2, false).unwrap();
        // Scattered partial-cluster writes, a write across clusters, a whole-cluster write.
        for (at, len, v) in [
            (100usize, 7usize, 1u8),
            (65_530, 20, 2),
            (1 << 20, 65_536, 3),
        ] {
            d.write_at(&vec![v; len], at as u64).unwrap();
            want[at..at + len].fill(v);
        }
        d.flush().unwrap();
    }
    qemu("qemu-img", &["check", s(&overlay)], &[0]);
    let (_, info) = qemu("qemu-img", &["info", s(&overlay)], &[0]);
    assert!(
        info.contains("file format: qcow2") && info.contains("backing file format: raw"),
        "{info}"
    );
    let flat = dir.join("flat.raw");
    qemu(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(&overlay), s(&flat)],
        &[0],
    );
    assert!(
        std::fs::read(&flat).unwrap() == want,
        "converted data differ"
    );
    let r = check(&overlay);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.allocated, 3);
}

/// Overwrites the big-endian integer of `width` bytes at `at` in the file `path`.
fn poke(path: &Path, at: u64, width: usize, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_be_bytes()[8 - width..], at)
        .unwrap();
}

fn be64_at(path: &Path, at: u64) -> u64 {
    let b = std::fs::read(path).unwrap();
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

#[test]
fn corruption_and_leaks_are_found_as_qemu_img_finds_them() {
    let dir = Dir::new("damage");
    let good = dir.join("good.qcow2");
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&good), "4M"],
        &[0],
    );
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 7 0 192k", s(&good)],
        &[0],
    );
    let reftable = be64_at(&good, 48);
    let refblock = be64_at(&good, reftable);
    let l1 = be64_at(&good, 40);
    let l2 = be64_at(&good, l1) & 0x00ff_ffff_ffff_fe00;
    let data0 = be64_at(&good, l2) & 0x00ff_ffff_ffff_fe00;

    // A data cluster whose refcount is 0: the next allocation would reuse it.
    let freed = dir.join("freed.qcow2");
    std::fs::copy(&good, &freed).unwrap();
    poke(&freed, refblock + 2 * (data0 >> 16), 2, 0);
    qemu("qemu-img", &["check", "-q", s(&freed)], &[2]);
    let r = check(&freed);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("referenced 1 times but its refcount is 0")),
        "{:?}",
        r.problems
    );

    // A cluster past the data with a refcount: a leak, not corruption.
    let leaky = dir.join("leaky.qcow2");
    std::fs::copy(&good, &leaky).unwrap();
    let end = std::fs::metadata(&leaky).unwrap().len();
    poke(&leaky, refblock + 2 * (end >> 16), 2, 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&leaky)
        .unwrap()
        .set_len(end + 65536)
        .unwrap();
    qemu("qemu-img", &["check", "-q", s(&leaky)], &[3]);
    let r = check(&leaky);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.leaked, 1);

    // An L2 entry pointing off the cluster grid, and one past the end of the file.
    for (name, value) in [("unaligned", data0 + 512), ("beyond", 1u64 << 40)] {
        let bad = dir.join(&format!("{name}.qcow2"));
        std::fs::copy(&good, &bad).unwrap();
        poke(&bad, l2 + 8, 8, (1 << 63) | value);
        assert!(!check(&bad).problems.is_empty(), "{name} passed");
    }

    // Headers that cannot be used are refused by the checker and by the disk code alike.
    for (name, at, width, value) in [
        ("magic", 0, 4, 0x5146_49fc),
        ("version", 4, 4, 4),
        ("cluster bits", 20, 4, 30),
        ("l1 offset", 40, 8, 1 << 50),
        ("l1 size", 36, 4, 0),
        ("refcount table", 48, 8, 12345),
        ("encryption", 32, 4, 1),
        ("incompatible", 72, 8, 1 << 20),
    ] {
        let bad = dir.join("header.qcow2");
        std::fs::copy(&good, &bad).unwrap();
        poke(&bad, at, width, value);
        let f = std::fs::File::open(&bad).unwrap();
        assert!(
            qcow2_check::check(&f).is_err(),
            "{name}: the checker accepted it"
        );
        assert!(
            image::open(&bad, Format::Qcow2, true).is_err(),
            "{name}: the disk opened"
        );
        std::fs::remove_file(&bad).unwrap();
    }
}

#[test]
fn a_qcow2_disk_with_a_damaged_magic_is_never_a_raw_disk() {
    let dir = Dir::new("magic");
    let img = dir.join("disk.qcow2");
    qcow2::create(&img, Some(1 << 20), None).unwrap();
    poke(&img, 3, 1, 0);
    let err = image::open(&img, Format::Qcow2, false).err().unwrap();
    assert!(err.to_string().contains("disk.qcow2"), "{err}");
}
