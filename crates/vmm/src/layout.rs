//! Where things live in guest-physical memory. See docs/design.md for the picture.

/// The boot GDT (null, 32-bit code, 64-bit code, data).
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x6080;
/// The Linux boot protocol's `boot_params` ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables for the 64-bit boot protocol: PML4, PDPT, PD (first GiB, 2 MiB pages).
pub const PML4: u64 = 0x9000;
/// See [`PML4`].
pub const PDPT: u64 = 0xa000;
/// See [`PML4`].
pub const PD: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line Vessel passes (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first) live in the BIOS area, where Linux scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// End of the BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// The x86 reset vector (F000:FFF0), where a guest that resets through its "BIOS" jumps.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Where a bzImage's protected-mode kernel is loaded.
pub const KERNEL_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (1 GiB below 4 GiB): no RAM between here and 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// RAM continues here when the guest has more than [`MMIO_HOLE_START`] bytes.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// The IOAPIC's registers.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Pins of the in-kernel IOAPIC (KVM's), i.e. GSIs 0 to 23.
pub const IOAPIC_PINS: u32 = 24;
/// The interrupt line of the ACPI power button's Generic Event Device. Lines in use: 3 the power
/// button, 4 COM1, 5 to 23 the virtio devices. Line 3 is the ISA COM2 line, which Vessel does not
/// emulate; taking it keeps all of the virtio devices' lines.
pub const POWER_BUTTON_GSI: u32 = 3;
/// The local APICs' registers.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Smallest guest memory Vessel accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory a domain can have whatever the host: RAM above the MMIO hole starts at
/// [`HIGH_RAM_START`], and x86-64 guest-physical addresses have at most 52 bits (4 PiB). (A
/// host's KVM usually allows fewer, and its RAM is checked too.)
pub const MAX_MEMORY: u64 = (1 << 52) - (HIGH_RAM_START - MMIO_HOLE_START);
/// Most vCPUs a domain can have: the MADT's local APIC entries and CPUID leaf 1 carry 8-bit
/// APIC IDs (vCPU n has ID n), and 255 is the broadcast ID.
pub const MAX_VCPUS: u32 = 255;

/// The guest's RAM regions as `(start, size)` for `memory` bytes of RAM.
pub fn ram_regions(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_HOLE_START {
        vec![(0, memory)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (HIGH_RAM_START, memory - MMIO_HOLE_START),
        ]
    }
}

/// E820 memory type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 memory type: reserved.
pub const E820_RESERVED: u32 = 2;

/// The memory map the guest is told about, as `(start, size, type)`.
pub fn e820_map(memory: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
        (ACPI_START, BIOS_END - ACPI_START, E820_RESERVED),
    ];
    for (start, size) in ram_regions(memory) {
        let start = start.max(BIOS_END);
        let end = if start == BIOS_END {
            size
        } else {
            start + size
        };
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// The highest address (exclusive) of RAM below 4 GiB.
pub fn low_ram_end(memory: u64) -> u64 {
    memory.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_region_and_big_ones_skip_the_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let e = e820_map(4 << 30);
        assert_eq!(e[3], (BIOS_END, (3 << 30) - BIOS_END, E820_RAM));
        assert_eq!(e[4], (4 << 30, 1 << 30, E820_RAM));
        let usable: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        assert!(usable < 4 << 30 && usable > (4 << 30) - (1 << 20));
        // The largest domain's RAM ends exactly at the 52-bit limit.
        let (start, size) = *ram_regions(MAX_MEMORY).last().unwrap();
        assert_eq!(start + size, 1 << 52);
    }
}
