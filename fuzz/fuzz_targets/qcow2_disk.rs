//! Fuzzes a qcow2 disk as a domain uses it: the image's bytes are the input's head, written to
//! a file, opened read-write (`devices::image::open` with `format=qcow2`: Vessel's header check,
//! then imago), and the rest of the input drives reads, writes, extent lookups and flushes at
//! offsets of its choosing. Properties: nothing panics, accesses outside the disk are refused,
//! and a byte written reads back.
//!
//! Input layout: two bytes (little-endian) of image length `n`, `n` image bytes, then
//! operations of 6 bytes: kind, offset (u32, scaled by 512 modulo the disk size plus one
//! sector, so some land past the end), length byte (x 512).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::image::{self, Format};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vessel-fuzz-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("disk.qcow2")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (img, ops) = data[2..].split_at(n);
    std::fs::write(path(), img).unwrap();
    let Ok(mut disk) = image::open(path(), Format::Qcow2, false) else {
        return;
    };
    let size = disk.len();
    let mut buf = Vec::new();
    for op in ops.chunks_exact(6) {
        let sectors = size / 512 + 1;
        let offset = (u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]])) % sectors) * 512;
        let len = usize::from(op[5]) * 512;
        buf.clear();
        buf.resize(len, op[0]);
        let inside = offset.checked_add(len as u64).is_some_and(|end| end <= size);
        match op[0] % 4 {
            0 => {
                let r = disk.read_at(&mut buf, offset);
                assert!(inside || r.is_err(), "a read past the end succeeded");
            }
            1 => {
                let r = disk.write_at(&buf, offset);
                assert!(inside || r.is_err(), "a write past the end succeeded");
                if r.is_ok() && len > 0 {
                    let mut back = vec![0u8; len];
                    if disk.read_at(&mut back, offset).is_ok() {
                        assert!(back == buf, "a write did not read back");
                    }
                }
            }
            2 => {
                let r = disk.extent(offset, len as u64, op[1] & 1 == 1);
                if let Ok(e) = r {
                    assert!(inside, "an extent past the end");
                    let got = match e {
                        image::Extent::File { len, .. }
                        | image::Extent::Zero { len }
                        | image::Extent::Format { len } => len,
                    };
                    assert!(got <= len as u64, "an extent longer than asked");
                }
            }
            _ => {
                let _ = disk.flush();
            }
        }
    }
});
