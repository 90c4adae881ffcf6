//! Fuzzes the reader of Vessel's retired `VSLCOW01` overlays (`devices::image::cow`), which
//! `vessel image convert`, `check` and `info` still run on files they are given: the header
//! decoder on arbitrary bytes, then (for the input as a whole file without a backing image)
//! `inspect` and reads of the disk. Property: no panic; reads stay inside the disk.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::image::cow;
use devices::image::DiskBackend;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vessel-fuzz-vslcow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("old.cow")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = cow::Header::decode(data, data.len() as u64);
    std::fs::write(path(), data).unwrap();
    let _ = cow::inspect(path());
    if let Ok(disk) = cow::Cow::open(path()) {
        let len = disk.len();
        let mut buf = vec![0u8; 4096];
        for offset in [0, len / 2, len.saturating_sub(4096)] {
            let r = disk.read_at(&mut buf, offset);
            assert!(offset + 4096 <= len || r.is_err());
        }
    }
});
