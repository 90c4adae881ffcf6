//! Preparing guest memory and the boot CPU for the kernel's entry: the GDT, identity page
//! tables, the Linux zero page or the PVH start info, the command line, initrd and ACPI tables.

use hv::{BootCpuState, GuestMemory, OutOfRange, Segment, SegmentKind};

use crate::kernel::LoadedKernel;
use crate::layout::*;

const CODE32: Segment = Segment {
    selector: 0x08,
    kind: SegmentKind::Code32,
};
const CODE64: Segment = Segment {
    selector: 0x10,
    kind: SegmentKind::Code64,
};
const DATA: Segment = Segment {
    selector: 0x18,
    kind: SegmentKind::Data,
};
const TSS: Segment = Segment {
    selector: 0x20,
    kind: SegmentKind::Tss,
};

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The firmware's whole reset path: Linux's `machine_real_restart` (its default reboot method
/// on some systems) jumps to the reset vector in real mode expecting the BIOS to reset the
/// machine. This does exactly that, through the keyboard controller's reset line:
/// `mov al, 0xfe; out 0x64, al; hlt; jmp $-3`.
const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug)]
pub struct Initrd {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn write_gdt(mem: &GuestMemory) -> Result<(u64, u16), OutOfRange> {
    let entries = [
        0u64,
        CODE32.descriptor(),
        CODE64.descriptor(),
        DATA.descriptor(),
        TSS.descriptor(),
    ];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &bytes)?;
    Ok((GDT_ADDR, (bytes.len() - 1) as u16))
}

fn write_identity_page_tables(mem: &GuestMemory) -> Result<(), OutOfRange> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write(PML4, &(PDPT | PRESENT_RW).to_le_bytes())?;
    mem.write(PDPT, &(PD | PRESENT_RW).to_le_bytes())?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PRESENT_RW | HUGE).to_le_bytes())
        .collect();
    mem.write(PD, &pd)
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), OutOfRange> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write(CMDLINE, &bytes)
}

/// Writes everything the kernel expects to find and returns the boot CPU's starting state.
pub fn prepare(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
    memory: u64,
    rsdp: u64,
) -> Result<BootCpuState, OutOfRange> {
    let gdt = write_gdt(mem)?;
    write_cmdline(mem, cmdline)?;
    mem.write(RESET_VECTOR, &RESET_STUB)?;
    match kernel {
        LoadedKernel::BzImage {
            setup_header,
            entry,
            ..
        } => {
            write_zero_page(mem, setup_header, initrd, memory, rsdp)?;
            write_identity_page_tables(mem)?;
            Ok(BootCpuState {
                rip: *entry,
                rsp: BOOT_STACK,
                rsi: ZERO_PAGE,
                cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_PG,
                cr3: PML4,
                cr4: X86_CR4_PAE,
                efer: EFER_LME | EFER_LMA,
                gdt,
                code: Some(CODE64),
                data: Some(DATA),
                tss: Some(TSS),
                ..Default::default()
            })
        }
        LoadedKernel::Pvh { entry, .. } => {
            write_pvh_start_info(mem, initrd, memory, rsdp)?;
            Ok(BootCpuState {
                rip: *entry,
                rbx: PVH_START_INFO,
                cr0: X86_CR0_PE | X86_CR0_ET,
                gdt,
                code: Some(CODE32),
                data: Some(DATA),
                tss: Some(TSS),
                ..Default::default()
            })
        }
    }
}

fn write_zero_page(
    mem: &GuestMemory,
    setup_header: &[u8],
    initrd: Option<Initrd>,
    memory: u64,
    rsdp: u64,
) -> Result<(), OutOfRange> {
    let mut zp = vec![0u8; 4096];
    let mut put = |off: usize, bytes: &[u8]| zp[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, setup_header);
    put(0x070, &rsdp.to_le_bytes()); // acpi_rsdp_addr
    put(0x210, &[0xff]); // type_of_loader: undefined
    let loadflags = setup_header.get(0x211 - 0x1f1).copied().unwrap_or(0);
    put(0x211, &[loadflags | 0x80]); // CAN_USE_HEAP
    put(0x224, &0xfe00u16.to_le_bytes()); // heap_end_ptr
    put(0x228, &(CMDLINE as u32).to_le_bytes()); // cmd_line_ptr
    if let Some(rd) = initrd {
        put(0x218, &(rd.addr as u32).to_le_bytes()); // ramdisk_image
        put(0x21c, &(rd.size as u32).to_le_bytes()); // ramdisk_size
        put(0x0c0, &((rd.addr >> 32) as u32).to_le_bytes()); // ext_ramdisk_image
        put(0x0c4, &((rd.size >> 32) as u32).to_le_bytes()); // ext_ramdisk_size
    }
    let map = e820_map(memory);
    put(0x1e8, &[map.len() as u8]); // e820_entries
    for (i, (start, size, kind)) in map.iter().enumerate() {
        let off = 0x2d0 + i * 20;
        put(off, &start.to_le_bytes());
        put(off + 8, &size.to_le_bytes());
        put(off + 16, &kind.to_le_bytes());
    }
    mem.write(ZERO_PAGE, &zp)
}

fn write_pvh_start_info(
    mem: &GuestMemory,
    initrd: Option<Initrd>,
    memory: u64,
    rsdp: u64,
) -> Result<(), OutOfRange> {
    const MAGIC: u32 = 0x336e_c578;
    let map = e820_map(memory);
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version 1: has the memory map
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes()); // nr_modules
    info.extend_from_slice(&PVH_MODLIST.to_le_bytes());
    info.extend_from_slice(&CMDLINE.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write(PVH_START_INFO, &info)?;
    if let Some(rd) = initrd {
        let mut module = Vec::with_capacity(32);
        module.extend_from_slice(&rd.addr.to_le_bytes());
        module.extend_from_slice(&rd.size.to_le_bytes());
        module.extend_from_slice(&[0; 16]); // no module command line
        mem.write(PVH_MODLIST, &module)?;
    }
    let entries: Vec<u8> = map
        .iter()
        .flat_map(|(start, size, kind)| {
            [
                start.to_le_bytes().to_vec(),
                size.to_le_bytes().to_vec(),
                kind.to_le_bytes().to_vec(),
                vec![0; 4],
            ]
            .concat()
        })
        .collect();
    mem.write(PVH_MEMMAP, &entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state_points_at_tables_in_memory() {
        let mem = GuestMemory::new(&[(0, 64 << 20)]).unwrap();
        let mut hdr = vec![0u8; 0x280 - 0x1f1];
        hdr[0x211 - 0x1f1] = 1; // LOADED_HIGH
        let k = LoadedKernel::BzImage {
            setup_header: hdr,
            entry: 0x100200,
            end: 0x400000,
            initrd_max_end: 0x8000_0000,
        };
        let rd = Some(Initrd {
            addr: 0x300_0000,
            size: 0x1234,
        });
        let s = prepare(&mem, &k, "console=ttyS0", rd, 64 << 20, 0xe0000).unwrap();
        assert_eq!((s.rip, s.rsi, s.cr3), (0x100200, ZERO_PAGE, PML4));
        let mut b = [0u8; 4];
        mem.read(ZERO_PAGE + 0x218, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x300_0000);
        mem.read(ZERO_PAGE + 0x211, &mut b[..1]).unwrap();
        assert_eq!(b[0], 0x81);
        let mut pde = [0u8; 8];
        mem.read(PD + 8 * 3, &mut pde).unwrap();
        assert_eq!(u64::from_le_bytes(pde), (3 << 21) | 0x83);
        let mut cmd = [0u8; 14];
        mem.read(CMDLINE, &mut cmd).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_state_carries_start_info() {
        let mem = GuestMemory::new(&[(0, 64 << 20)]).unwrap();
        let k = LoadedKernel::Pvh {
            entry: 0x1000000,
            end: 0x2000000,
            is_linux: true,
        };
        let s = prepare(&mem, &k, "", None, 64 << 20, 0xe0000).unwrap();
        assert_eq!(
            (s.rip, s.rbx, s.cr0 & X86_CR0_PG),
            (0x1000000, PVH_START_INFO, 0)
        );
        let mut magic = [0u8; 4];
        mem.read(PVH_START_INFO, &mut magic).unwrap();
        assert_eq!(u32::from_le_bytes(magic), 0x336e_c578);
    }
}
