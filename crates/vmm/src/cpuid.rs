//! The CPUID table a guest sees: what KVM supports on this host, with a consistent topology
//! (one socket, one thread per core, `vcpus` cores) and the hypervisor bit set.

use hv::CpuidEntry;

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of a `vcpus`-CPU guest.
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
}
