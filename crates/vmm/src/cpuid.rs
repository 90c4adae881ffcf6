//! The CPUID table a guest sees: what KVM supports on this host without hardware
//! virtualization ([`offered`]: no VMX or SVM, so a guest cannot run guests of its own and no
//! domain holds nested virtualization state, which a save or a migration would otherwise have
//! to carry; KVM refuses EFER.SVME and CR4.VMXE to a guest whose CPUID lacks them), with a
//! consistent topology (one socket, one thread per core, `vcpus` cores) and the hypervisor bit
//! set ([`for_vcpu`]). A domain's table is [`offered`]'s at its boot, and a saved domain keeps
//! the one it was saved with.

use hv::CpuidEntry;

/// Leaf 1 ECX: Intel's VMX.
const VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: AMD's SVM.
const SVM: u32 = 1 << 2;

/// KVM's supported CPUID without hardware virtualization: VMX and SVM cleared, SVM's leaf
/// 0x8000_000A zeroed. The table a booting domain is given (and a save or migration records).
pub fn offered(supported: &[CpuidEntry]) -> Vec<CpuidEntry> {
    supported
        .iter()
        .map(|e| {
            let mut e = *e;
            match e.function {
                1 => e.ecx &= !VMX,
                0x8000_0001 => e.ecx &= !SVM,
                0x8000_000a => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
                _ => {}
            }
            e
        })
        .collect()
}

/// Adjusts a domain's CPUID table (see [`offered`]) for vCPU `apic_id` of a `vcpus`-CPU guest.
pub fn for_vcpu(supported: &[CpuidEntry], apic_id: u32, vcpus: u32) -> Vec<CpuidEntry> {
    // Bits needed to number the cores in an APIC ID.
    let core_bits = 32 - (vcpus.max(1) - 1).leading_zeros();
    let mut out = Vec::with_capacity(supported.len());
    for e in supported {
        let mut e = *e;
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (vcpus.min(255) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if vcpus > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical CPU per package
                }
            }
            4 => {
                // Deterministic cache parameters: cores per package, one thread per cache.
                e.eax = (e.eax & 0x3ff) | ((vcpus.min(64) - 1) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = cores.
                let (shift, count, level_type) = match e.index {
                    0 => (0, 1, 1),
                    1 => (core_bits, vcpus, 2),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = count;
                e.ecx = (level_type << 8) | e.index;
                e.edx = apic_id;
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 and the APIC ID bits that number them.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (vcpus - 1);
            }
            0x8000_001e => {
                // AMD extended APIC ID: one thread per core, one node.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
        out.push(e);
    }
    out
}

/// The feature registers a guest may rely on: (leaf, subleaf, register name). A saved guest
/// may have seen any feature these show, so a host restoring it must offer each of them.
const FEATURE_REGISTERS: &[(u32, u32, &str)] = &[
    (1, 0, "ecx"),
    (1, 0, "edx"),
    (7, 0, "ebx"),
    (7, 0, "ecx"),
    (7, 0, "edx"),
    (7, 1, "eax"),
    (0xd, 1, "eax"),
    (0x8000_0001, 0, "ecx"),
    (0x8000_0001, 0, "edx"),
    (0x8000_0008, 0, "ebx"),
    // The XSAVE features (XCR0) and KVM's paravirtual features (kvmclock, steal time...).
    (0xd, 0, "eax"),
    (0x4000_0001, 0, "eax"),
];

/// Bits of leaf 1 that Vessel sets itself (ECX: running under a hypervisor; EDX: more than one
/// logical CPU), not taken from the host, and so never missing.
const SET_BY_VESSEL: &[(u32, u32, &str, u32)] = &[(1, 0, "ecx", 1 << 31), (1, 0, "edx", 1 << 28)];

fn register(e: &CpuidEntry, name: &str) -> u32 {
    match name {
        "eax" => e.eax,
        "ebx" => e.ebx,
        "ecx" => e.ecx,
        _ => e.edx,
    }
}

fn find(table: &[CpuidEntry], function: u32, index: u32) -> Option<&CpuidEntry> {
    table
        .iter()
        .find(|e| e.function == function && (!e.indexed || e.index == index))
}

/// The CPU features a guest was given (`saved`, its CPUID table) that this host's KVM does not
/// offer (`supported`), each as "leaf L.S REG: bits B": empty when the guest can run here.
pub fn missing_features(saved: &[CpuidEntry], supported: &[CpuidEntry]) -> Vec<String> {
    let mut missing = Vec::new();
    for &(function, index, name) in FEATURE_REGISTERS {
        let Some(had) = find(saved, function, index).map(|e| register(e, name)) else {
            continue;
        };
        let ours: u32 = SET_BY_VESSEL
            .iter()
            .filter(|&&(f, i, r, _)| (f, i, r) == (function, index, name))
            .map(|&(.., bits)| bits)
            .sum();
        let here = find(supported, function, index).map_or(0, |e| register(e, name)) | ours;
        if had & !here != 0 {
            missing.push(format!(
                "leaf {function:#x}.{index} {name}: bits {:#010x}",
                had & !here
            ));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            indexed: true,
            eax: 0,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
        }
    }

    #[test]
    fn topology_is_consistent() {
        let sup = [leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0x8000_0008, 0)];
        let t = for_vcpu(&sup, 2, 3);
        assert_eq!(t[0].ebx >> 24, 2);
        assert_eq!((t[0].ebx >> 16) & 0xff, 3);
        assert_ne!(t[0].ecx & (1 << 31), 0);
        assert_eq!((t[1].ebx, t[1].edx), (1, 2));
        assert_eq!((t[2].eax, t[2].ebx, t[2].ecx >> 8), (2, 3, 2));
        assert_eq!(t[3].ecx & 0xff, 2);
        let one = for_vcpu(&sup, 0, 1);
        assert_eq!(one[2].eax, 0);
    }

    #[test]
    fn no_hardware_virtualization_is_offered() {
        let mut nested = vec![leaf(1, 0), leaf(0x8000_0001, 0), leaf(0x8000_000a, 0)];
        nested[0].ecx = VMX | 1;
        nested[1].ecx = SVM | 1;
        nested[2].eax = 1;
        nested[2].edx = 0xff;
        let given = offered(&nested);
        assert_eq!(given[0].ecx, 1);
        assert_eq!(given[1].ecx, 1);
        assert_eq!(
            (given[2].eax, given[2].ebx, given[2].ecx, given[2].edx),
            (0, 0, 0, 0)
        );
        let t = for_vcpu(&given, 0, 1);
        assert_eq!(t[0].ecx & VMX, 0);
        assert_eq!(t[1].ecx & SVM, 0);
        // A guest booted where KVM offers nesting moves to a host that does not.
        let mut flat = nested.clone();
        flat[0].ecx = 1;
        flat[1].ecx = 1;
        assert!(missing_features(&given, &flat).is_empty());
        // One saved before they were hidden keeps them, and needs them where it goes.
        assert_eq!(for_vcpu(&nested, 0, 1)[0].ecx & VMX, VMX);
        assert_eq!(
            missing_features(&nested, &flat),
            [
                "leaf 0x1.0 ecx: bits 0x00000020",
                "leaf 0x80000001.0 ecx: bits 0x00000004"
            ]
        );
    }

    #[test]
    fn a_guest_runs_only_where_every_feature_it_saw_is_offered() {
        let features = |ecx: u32, edx: u32| {
            vec![CpuidEntry {
                function: 1,
                index: 0,
                indexed: false,
                eax: 0,
                ebx: 0,
                ecx,
                edx,
            }]
        };
        let host = features(0b1011, 0xff);
        // What the guest saw on this host, topology and hypervisor bit included.
        let seen = for_vcpu(&host, 0, 2);
        assert!(missing_features(&seen, &host).is_empty());
        assert!(missing_features(&features(0b0011, 0x0f), &host).is_empty());
        assert_eq!(
            missing_features(&features(0b0111, 0x1ff), &host),
            [
                "leaf 0x1.0 ecx: bits 0x00000004",
                "leaf 0x1.0 edx: bits 0x00000100"
            ]
        );
        // A leaf the host lacks offers nothing.
        let leaf7 = vec![CpuidEntry {
            function: 7,
            index: 0,
            indexed: true,
            eax: 0,
            ebx: 1 << 5,
            ecx: 0,
            edx: 0,
        }];
        assert_eq!(
            missing_features(&leaf7, &host),
            ["leaf 0x7.0 ebx: bits 0x00000020"]
        );
    }
}
