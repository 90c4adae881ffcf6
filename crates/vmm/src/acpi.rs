//! ACPI tables for a hardware-reduced PC: RSDP, XSDT, FADT, MADT and a DSDT.
//!
//! Why ACPI: it is how an unmodified kernel learns about several CPUs (MADT), how it powers off
//! (the FADT's sleep registers plus `\_S5`) and reboots (the FADT reset register), and how it
//! finds devices it cannot probe (the DSDT). Hardware-reduced mode means no legacy PM blocks,
//! SCI or PM timer: the guest gets just the registers Vessel emulates in `devices::power`, and
//! its power button is a control-method one behind a Generic Event Device (see [`power_button`]).

use devices::power::{
    PM_PORT_BASE, RESET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL, SLEEP_STATUS,
};
use devices::serial::{COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, POWER_BUTTON_GSI};
use crate::virtio::{VirtioSlot, WINDOW};

const OEM_ID: &[u8; 6] = b"VESSEL";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"VSSL";

/// The tables, laid out from `base`, ready to copy into guest memory. The RSDP is at `base`.
pub struct AcpiTables {
    /// Guest-physical address of the first byte (and of the RSDP).
    pub base: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table: header plus body, with length and checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(table_id);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure naming a byte-wide I/O port.
fn io_port_gas(port: u64) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // register bit width
    g[3] = 1; // byte access
    g[4..].copy_from_slice(&port.to_le_bytes());
    g
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    const HW_REDUCED_ACPI: u32 = 1 << 20;
    const RESET_REG_SUP: u32 = 1 << 10;
    const PWR_BUTTON: u32 = 1 << 4; // no fixed power button (the DSDT has a PNP0C0C device)
    const SLP_BUTTON: u32 = 1 << 5; // no fixed sleep button
    const VGA_NOT_PRESENT: u16 = 1 << 2;
    const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    let pm = u64::from(PM_PORT_BASE);
    // Body offsets below are relative to the end of the 36-byte header.
    let mut b = vec![0u8; 276 - 36];
    let mut put =
        |off: usize, bytes: &[u8]| b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    put(40, &(dsdt_addr as u32).to_le_bytes());
    put(
        109,
        &(VGA_NOT_PRESENT | MSI_NOT_SUPPORTED | PCIE_ASPM_CONTROLS | CMOS_RTC_NOT_PRESENT)
            .to_le_bytes(),
    );
    put(
        112,
        &(HW_REDUCED_ACPI | RESET_REG_SUP | PWR_BUTTON | SLP_BUTTON).to_le_bytes(),
    );
    put(116, &io_port_gas(pm + RESET));
    put(128, &[RESET_VALUE]);
    put(131, &[0]); // FADT minor version: ACPI 6.0
    put(140, &dsdt_addr.to_le_bytes());
    put(244, &io_port_gas(pm + SLEEP_CONTROL));
    put(256, &io_port_gas(pm + SLEEP_STATUS));
    put(268, b"VESSELHV");
    sdt(b"FACP", 6, b"VSSLFACP", &b)
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // no dual 8259 setup to advertise
    for id in 0..vcpus {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        b.extend_from_slice(&[0, 8, id as u8, id as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, ID 0, reserved, address, GSI base 0.
    b.extend_from_slice(&[1, 12, 0, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    sdt(b"APIC", 5, b"VSSLMADT", &b)
}

fn dsdt(virtio: &[VirtioSlot]) -> Vec<u8> {
    let mut body = Vec::new();
    // Name (_S5, Package () { 5, 0, 0, 0 }): the soft-off sleep type for the sleep control register.
    body.extend(aml::name(
        b"_S5_",
        &aml::package(&[
            aml::integer(S5_SLEEP_TYPE.into()),
            aml::zero(),
            aml::zero(),
            aml::zero(),
        ]),
    ));
    // The serial console, so the guest's 8250 driver binds it with its interrupt through ACPI.
    let com1 = aml::device(
        b"COM1",
        &[
            aml::name(b"_HID", &aml::eisa_id(b"PNP0501")),
            aml::name(b"_UID", &aml::zero()),
            aml::name(
                b"_CRS",
                &aml::resource_template(&[
                    aml::io_port(COM1_PORT_BASE, COM1_PORT_LEN as u8),
                    aml::irq(COM1_IRQ as u8),
                ]),
            ),
        ]
        .concat(),
    );
    let mut devices = com1;
    devices.extend(power_button(POWER_BUTTON_GSI));
    // virtio-mmio devices: Linux's virtio_mmio driver binds ACPI ID LNRO0005.
    for (i, slot) in virtio.iter().enumerate() {
        let name = [b'V', b'R', b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        devices.extend(aml::device(
            &name,
            &[
                aml::name(b"_HID", &aml::string("LNRO0005")),
                aml::name(b"_UID", &aml::integer(i as u64)),
                aml::name(
                    b"_CRS",
                    &aml::resource_template(&[
                        aml::memory32_fixed(slot.base as u32, WINDOW as u32),
                        aml::extended_irq(slot.gsi),
                    ]),
                ),
            ]
            .concat(),
        ));
    }
    body.extend(aml::scope(b"\\_SB_", &devices));
    sdt(b"DSDT", 6, b"VSSLDSDT", &body)
}

/// The power button of a hardware-reduced machine: a Generic Event Device (`ACPI0013`) whose
/// interrupt is the button's line, and whose `_EVT` method, run by the guest's GED driver when
/// that interrupt fires, notifies the power button device (`PNP0C0C`) with 0x80 ("the button was
/// pressed"). The guest's button driver turns that into a KEY_POWER press.
///
/// ```text
/// Device (GED0) {
///     Name (_HID, "ACPI0013")
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () {
///         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }
///     })
///     Method (_EVT, 1, NotSerialized) {
///         If (LEqual (Arg0, gsi)) { Notify (\_SB.PWRB, 0x80) }
///     }
/// }
/// Device (PWRB) {
///     Name (_HID, EisaId ("PNP0C0C"))
///     Name (_UID, Zero)
/// }
/// ```
fn power_button(gsi: u32) -> Vec<u8> {
    /// Notify value for a button: "the button was pressed" (ACPI 6.5, 5.6.6).
    const BUTTON_PRESSED: u64 = 0x80;
    let ged = aml::device(
        b"GED0",
        &[
            aml::name(b"_HID", &aml::string("ACPI0013")),
            aml::name(b"_UID", &aml::zero()),
            aml::name(b"_CRS", &aml::resource_template(&[aml::extended_irq(gsi)])),
            aml::method(
                b"_EVT",
                1,
                &aml::if_then(
                    &aml::lequal(&aml::arg(0), &aml::integer(gsi.into())),
                    &aml::notify(&aml::path("\\_SB_.PWRB"), &aml::integer(BUTTON_PRESSED)),
                ),
            ),
        ]
        .concat(),
    );
    let button = aml::device(
        b"PWRB",
        &[
            aml::name(b"_HID", &aml::eisa_id(b"PNP0C0C")),
            aml::name(b"_UID", &aml::zero()),
        ]
        .concat(),
    );
    [ged, button].concat()
}

/// Builds the tables for `vcpus` CPUs and the given virtio devices, to be placed at `base`
/// (which must be 16-byte aligned).
pub fn build(base: u64, vcpus: u32, virtio: &[VirtioSlot]) -> AcpiTables {
    // RSDP (36 bytes) then XSDT, FADT, MADT, DSDT, each 8-byte aligned.
    let align = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(8), 0);
    let mut bytes = vec![0u8; 40];
    let dsdt = dsdt(virtio);
    let madt = madt(vcpus);
    let xsdt_off = bytes.len();
    let xsdt_len = 36 + 16;
    let fadt_off = (xsdt_off + xsdt_len).next_multiple_of(8);
    let fadt_len = 276;
    let madt_off = (fadt_off + fadt_len).next_multiple_of(8);
    let dsdt_off = (madt_off + madt.len()).next_multiple_of(8);
    let addr = |off: usize| base + off as u64;

    let mut xsdt_body = Vec::new();
    xsdt_body.extend_from_slice(&addr(fadt_off).to_le_bytes());
    xsdt_body.extend_from_slice(&addr(madt_off).to_le_bytes());
    bytes.extend(sdt(b"XSDT", 1, b"VSSLXSDT", &xsdt_body));
    align(&mut bytes);
    bytes.extend(fadt(addr(dsdt_off)));
    align(&mut bytes);
    bytes.extend(madt);
    align(&mut bytes);
    bytes.extend(dsdt);
    debug_assert_eq!(
        bytes.len(),
        dsdt_off + bytes[dsdt_off + 4] as usize + ((bytes[dsdt_off + 5] as usize) << 8)
    );

    // RSDP, revision 2: signature, checksum (first 20 bytes), OEM, revision, RSDT (none),
    // length, XSDT address, extended checksum.
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2);
    rsdp.extend_from_slice(&0u32.to_le_bytes());
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&addr(xsdt_off).to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    bytes[..36].copy_from_slice(&rsdp);
    AcpiTables { base, bytes }
}

/// Just enough of the ACPI Machine Language to describe simple devices.
mod aml {
    /// A PkgLength followed by `body`.
    fn with_pkg_length(body: &[u8]) -> Vec<u8> {
        // The length counts its own encoding: find the smallest encoding that fits.
        let n = body.len();
        let mut out = Vec::with_capacity(n + 4);
        if n + 1 < 64 {
            out.push((n + 1) as u8);
        } else {
            let (extra, total) = (1..=3)
                .map(|k| (k, n + 1 + k))
                .find(|&(k, t)| t < 1 << (4 + 8 * k))
                .expect("AML package too large");
            out.push(((extra as u8) << 6) | (total & 0xf) as u8);
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
        }
        out.extend_from_slice(body);
        out
    }

    pub fn zero() -> Vec<u8> {
        vec![0x00]
    }

    pub fn integer(v: u64) -> Vec<u8> {
        match v {
            0 => vec![0x00],
            1 => vec![0x01],
            v if v <= 0xff => vec![0x0a, v as u8],
            v if v <= 0xffff => [&[0x0b][..], &(v as u16).to_le_bytes()].concat(),
            v if v <= 0xffff_ffff => [&[0x0c][..], &(v as u32).to_le_bytes()].concat(),
            v => [&[0x0e][..], &v.to_le_bytes()].concat(),
        }
    }

    pub fn name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
        [&[0x08][..], name, value].concat()
    }

    pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![elements.len() as u8];
        for e in elements {
            body.extend_from_slice(e);
        }
        [vec![0x12], with_pkg_length(&body)].concat()
    }

    pub fn scope(path: &[u8], body: &[u8]) -> Vec<u8> {
        [vec![0x10], with_pkg_length(&[path, body].concat())].concat()
    }

    pub fn device(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        [
            vec![0x5b, 0x82],
            with_pkg_length(&[&name[..], body].concat()),
        ]
        .concat()
    }

    /// A compressed EISA ID such as `PNP0501`, as a DWord.
    pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
        let letter = |c: u8| u16::from(c - 0x40) & 0x1f;
        let vendor = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
        let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let product = [
            (hex(id[3]) << 4) | hex(id[4]),
            (hex(id[5]) << 4) | hex(id[6]),
        ];
        let bytes = [(vendor >> 8) as u8, vendor as u8, product[0], product[1]];
        [&[0x0c][..], &bytes].concat()
    }

    /// An I/O port range descriptor (fixed base, 16-bit decode).
    pub fn io_port(base: u16, len: u8) -> Vec<u8> {
        let b = base.to_le_bytes();
        vec![0x47, 0x01, b[0], b[1], b[0], b[1], 0x01, len]
    }

    /// A string constant.
    pub fn string(s: &str) -> Vec<u8> {
        [&[0x0d][..], s.as_bytes(), &[0]].concat()
    }

    /// A fixed 32-bit memory range descriptor (read/write).
    pub fn memory32_fixed(base: u32, len: u32) -> Vec<u8> {
        [
            &[0x86, 0x09, 0x00, 0x01][..],
            &base.to_le_bytes(),
            &len.to_le_bytes(),
        ]
        .concat()
    }

    /// An Extended Interrupt descriptor (large item 0x09, 6 data bytes) for one GSI: flags 0x03
    /// = resource consumer, edge-triggered, active high, exclusive, not wake capable; then the
    /// table length (1) and the GSI.
    pub fn extended_irq(gsi: u32) -> Vec<u8> {
        [&[0x89, 0x06, 0x00, 0x03, 0x01][..], &gsi.to_le_bytes()].concat()
    }

    /// An ISA IRQ descriptor (edge, active high).
    pub fn irq(irq: u8) -> Vec<u8> {
        let mask = (1u16 << irq).to_le_bytes();
        vec![0x22, mask[0], mask[1]]
    }

    /// `ResourceTemplate () { ... }`: a buffer of descriptors and an end tag.
    pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut data: Vec<u8> = descriptors.concat();
        data.extend_from_slice(&end_tag());
        let body = [super::aml::integer(data.len() as u64), data].concat();
        [vec![0x11], with_pkg_length(&body)].concat()
    }

    /// The End Tag small resource descriptor (type 0xF, length 1) that closes a resource
    /// template; a zero checksum means "treat as correct".
    pub fn end_tag() -> [u8; 2] {
        [0x79, 0x00]
    }

    /// A name path: an optional `\` (the root) and dot-separated 4-character segments, e.g.
    /// `\_SB_.PWRB`. One segment is a bare NameSeg, two take the DualNamePrefix, more the
    /// MultiNamePrefix and a count.
    pub fn path(p: &str) -> Vec<u8> {
        let (mut out, rest) = match p.strip_prefix('\\') {
            Some(rest) => (vec![b'\\'], rest),
            None => (Vec::new(), p),
        };
        let segs: Vec<&str> = rest.split('.').filter(|s| !s.is_empty()).collect();
        assert!(
            segs.iter().all(|s| s.len() == 4 && s.is_ascii()),
            "AML name segments are 4 characters: {p}"
        );
        match segs.len() {
            0 => out.push(0x00), // NullName
            1 => {}
            2 => out.push(0x2e),                          // DualNamePrefix
            n => out.extend_from_slice(&[0x2f, n as u8]), // MultiNamePrefix, SegCount
        }
        for s in segs {
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// `Method (NAME, args, NotSerialized) { body }`: MethodOp, PkgLength, NameString and
    /// MethodFlags (argument count in bits 0-2, not serialized, sync level 0).
    pub fn method(name: &[u8; 4], args: u8, body: &[u8]) -> Vec<u8> {
        assert!(args <= 7, "an AML method takes at most 7 arguments");
        [
            vec![0x14],
            with_pkg_length(&[&name[..], &[args], body].concat()),
        ]
        .concat()
    }

    /// `If (predicate) { body }`: IfOp, PkgLength, the predicate and the body.
    pub fn if_then(predicate: &[u8], body: &[u8]) -> Vec<u8> {
        [vec![0xa0], with_pkg_length(&[predicate, body].concat())].concat()
    }

    /// `LEqual (a, b)`.
    pub fn lequal(a: &[u8], b: &[u8]) -> Vec<u8> {
        [&[0x93][..], a, b].concat()
    }

    /// `Notify (object, value)`: object is a name path (see [`path`]).
    pub fn notify(object: &[u8], value: &[u8]) -> Vec<u8> {
        [&[0x86][..], object, value].concat()
    }

    /// `ArgN`, the method's Nth argument (0 to 6).
    pub fn arg(n: u8) -> Vec<u8> {
        assert!(n <= 6, "AML has Arg0 to Arg6");
        vec![0x68 + n]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn encodings_match_the_spec() {
            assert_eq!(eisa_id(b"PNP0501"), vec![0x0c, 0x41, 0xd0, 0x05, 0x01]);
            assert_eq!(with_pkg_length(&[0; 10])[0], 11);
            // 100 body bytes need a two-byte PkgLength: total 102 = 0x66.
            let p = with_pkg_length(&[0; 100]);
            assert_eq!(&p[..2], &[0x46, 0x06]);
            assert_eq!(
                package(&[integer(5), zero()]),
                vec![0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]
            );
        }

        #[test]
        fn names_and_control_flow_match_the_spec() {
            // NameString (ACPI 6.5, 20.2.2): RootChar `\`, then a NameSeg, DualNamePrefix (0x2e)
            // and two NameSegs, or MultiNamePrefix (0x2f), a count and the NameSegs; `\` alone
            // ends in NullName.
            assert_eq!(path("PWRB"), b"PWRB");
            assert_eq!(path("\\_SB_.PWRB"), b"\\\x2e_SB_PWRB");
            assert_eq!(path("\\"), [0x5c, 0x00]);
            assert_eq!(path("\\_SB_.PCI0.S08_"), b"\\\x2f\x03_SB_PCI0S08_");
            // ArgObj: Arg0Op 0x68 to Arg6Op 0x6e.
            assert_eq!(arg(0), [0x68]);
            assert_eq!(arg(6), [0x6e]);
            // LEqual (Arg0, 3): LEqualOp 0x93, then both operands (3 as BytePrefix 0x0a, 0x03).
            assert_eq!(lequal(&arg(0), &integer(3)), [0x93, 0x68, 0x0a, 0x03]);
            // Notify (PWRB, 0x80): NotifyOp 0x86, the object, the value.
            let notify_pwrb = notify(&path("PWRB"), &integer(0x80));
            assert_eq!(notify_pwrb, [0x86, b'P', b'W', b'R', b'B', 0x0a, 0x80]);
            // If (LEqual (Arg0, 3)) { Notify (PWRB, 0x80) }: IfOp 0xa0, PkgLength (1 + 4 + 7),
            // predicate, body.
            let if_ = if_then(&lequal(&arg(0), &integer(3)), &notify_pwrb);
            assert_eq!(
                if_,
                [0xa0, 0x0c, 0x93, 0x68, 0x0a, 0x03, 0x86, b'P', b'W', b'R', b'B', 0x0a, 0x80]
            );
            // Method (_EVT, 1, NotSerialized) {}: MethodOp 0x14, PkgLength (1 + 4 + 1), NameSeg,
            // MethodFlags (ArgCount 1 in bits 0-2, SerializeFlag 0, SyncLevel 0).
            assert_eq!(
                method(b"_EVT", 1, &[]),
                [0x14, 0x06, b'_', b'E', b'V', b'T', 0x01]
            );
            assert_eq!(method(b"_EVT", 1, &if_)[1], 0x06 + 13);
            assert_eq!(method(b"MTH7", 7, &[])[6], 0x07);
        }

        #[test]
        fn resource_descriptors_match_the_spec() {
            // Extended Interrupt Descriptor (ACPI 6.5, 6.4.3.6): large item name 0x09 (tag byte
            // 0x89), length 6, flags (bit 0 consumer, bit 1 edge, bit 2 active low = 0, bit 3
            // shared = 0, bit 4 wake = 0), table length 1, the interrupt number (DWord).
            assert_eq!(
                extended_irq(3),
                [0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0x00, 0x00, 0x00]
            );
            assert_eq!(&extended_irq(0x1234_5678)[5..], [0x78, 0x56, 0x34, 0x12]);
            // End Tag (6.4.2.9): small item name 0xF, length 1 (0x79), checksum 0.
            assert_eq!(end_tag(), [0x79, 0x00]);
            // ResourceTemplate () { Interrupt (...) { 3 } }: BufferOp 0x11, PkgLength 14,
            // BufferSize 11 (BytePrefix), the descriptor, the end tag.
            assert_eq!(
                resource_template(&[extended_irq(3)]),
                [
                    0x11, 0x0e, 0x0a, 0x0b, 0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0x00, 0x00, 0x00,
                    0x79, 0x00
                ]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base) as usize;
        let len = u32::from_le_bytes(t.bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        &t.bytes[off..off + len]
    }

    #[test]
    fn tables_link_up_and_checksum() {
        let t = build(
            0xe0000,
            3,
            &[VirtioSlot {
                base: 0xd000_0000,
                gsi: 5,
            }],
        );
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(checksum(&rsdp[..20]), 0);
        assert_eq!(checksum(rsdp), 0);
        let xsdt = table_at(&t, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(checksum(xsdt), 0);
        let fadt = table_at(&t, u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), 276);
        assert_eq!(checksum(fadt), 0);
        let madt = table_at(&t, u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(checksum(madt), 0);
        assert_eq!(madt.len(), 36 + 8 + 3 * 8 + 12);
        let dsdt = table_at(&t, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(checksum(dsdt), 0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
        let button = power_button(POWER_BUTTON_GSI);
        assert!(dsdt.windows(button.len()).any(|w| w == button));
    }

    #[test]
    fn the_power_button_is_a_ged_and_a_pnp0c0c_device() {
        // The AML of the ASL in `power_button`'s documentation for GSI 3, encoded by hand from
        // the spec (and the same bytes as `iasl` makes of that ASL).
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // Device (GED0): ExtOpPrefix DeviceOp, PkgLength 73 (two bytes), NameSeg.
            0x5b, 0x82, 0x49, 0x04, b'G', b'E', b'D', b'0',
            // Name (_HID, "ACPI0013")
            0x08, b'_', b'H', b'I', b'D', 0x0d, b'A', b'C', b'P', b'I', b'0', b'0', b'1', b'3', 0x00,
            // Name (_UID, Zero)
            0x08, b'_', b'U', b'I', b'D', 0x00,
            // Name (_CRS, ResourceTemplate () { Interrupt (...) { 3 } })
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x0e, 0x0a, 0x0b,
            0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0x00, 0x00, 0x00, 0x79, 0x00,
            // Method (_EVT, 1, NotSerialized)
            0x14, 0x19, b'_', b'E', b'V', b'T', 0x01,
            // If (LEqual (Arg0, 3))
            0xa0, 0x12, 0x93, 0x68, 0x0a, 0x03,
            // Notify (\_SB.PWRB, 0x80)
            0x86, 0x5c, 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80,
            // Device (PWRB), PkgLength 21
            0x5b, 0x82, 0x15, b'P', b'W', b'R', b'B',
            // Name (_HID, EisaId ("PNP0C0C"))
            0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c,
            // Name (_UID, Zero)
            0x08, b'_', b'U', b'I', b'D', 0x00,
        ];
        assert_eq!(power_button(3), expected);
    }
}
