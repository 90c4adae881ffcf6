//! Fuzzes the kernel loaders (`vmm::kernel`): any bytes as the kernel file, recognised as a
//! bzImage or a PVH ELF (or refused), loaded into guest RAM of some size (`hv::GuestMemory`:
//! anonymous memory, no `/dev/kvm` needed), sometimes with a second region above 4 GiB as a
//! large guest has.
//!
//! Checked: nothing panics (errors are `KernelError`s and print); a loaded bzImage enters at
//! 1 MiB + 0x200 with its footprint inside guest RAM, its setup header copied from the file and
//! its protected-mode code in guest memory byte for byte; a loaded PVH image ends inside guest
//! RAM; an initrd placed after either lies page-aligned above the kernel and below the ceiling.
//!
//! Input layout: byte 0: low RAM is 2 + (bits 0-4) MiB, bit 7 adds 2 MiB at 4 GiB; bytes 1..5:
//! an initrd size to place (u32); the rest: the kernel file.
#![no_main]

mod common;

use std::sync::OnceLock;

use common::{Input, Scratch};
use libfuzzer_sys::fuzz_target;
use vmm::kernel::{load, place_initrd, LoadedKernel};
use vmm::layout::KERNEL_START;

const MIB: u64 = 1 << 20;
const HIGH_BASE: u64 = 1 << 32;

fn file() -> &'static Scratch {
    static FILE: OnceLock<Scratch> = OnceLock::new();
    FILE.get_or_init(|| Scratch::new("kernel"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let layout = input.u8();
    let initrd = u64::from(input.u32());
    let image = input.rest();
    let low = (2 + u64::from(layout & 0x1f)) * MIB;
    let mut regions = vec![(0, low)];
    if layout & 0x80 != 0 {
        regions.push((HIGH_BASE, 2 * MIB));
    }
    let top = regions
        .iter()
        .map(|&(base, size)| base + size)
        .max()
        .unwrap();
    let mem = hv::GuestMemory::new(&regions).expect("anonymous guest RAM");
    file().fill(image);

    let kernel = match load(&file().path, &mem) {
        Ok(kernel) => kernel,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match &kernel {
        LoadedKernel::BzImage {
            setup_header,
            entry,
            end,
            ..
        } => {
            assert_eq!(*entry, KERNEL_START + 0x200);
            assert!(*end > KERNEL_START);
            assert!(mem.contains(KERNEL_START, end - KERNEL_START));
            assert!(setup_header.len() <= 0x280 - 0x1f1);
            assert!(image[0x1f1..0x1f1 + setup_header.len()] == setup_header[..]);
            let setup_sects = match image[0x1f1] {
                0 => 4,
                n => usize::from(n),
            };
            let code = &image[(setup_sects + 1) * 512..];
            let mut loaded = vec![0u8; code.len()];
            mem.read(KERNEL_START, &mut loaded)
                .expect("the kernel is in RAM");
            assert!(loaded == code, "the kernel was not loaded byte for byte");
        }
        LoadedKernel::Pvh { end, .. } => assert!(*end <= top),
    }
    if let Some(at) = place_initrd(&kernel, low, initrd) {
        assert_eq!(at % 4096, 0);
        assert!(at >= kernel.end());
        assert!(at + initrd <= low);
    }
});
