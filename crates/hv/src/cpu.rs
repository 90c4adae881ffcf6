//! Plain descriptions of CPU state that Vessel hands to KVM: CPUID entries and the register
//! state a vCPU starts from.

use kvm_bindings::{kvm_cpuid_entry2, kvm_segment};

/// One CPUID leaf/subleaf as the guest will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidEntry {
    /// The leaf (EAX on input).
    pub function: u32,
    /// The subleaf (ECX on input), meaningful when `indexed`.
    pub index: u32,
    /// Whether the subleaf selects the entry (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
    pub indexed: bool,
    /// Output registers.
    pub eax: u32,
    /// Output registers.
    pub ebx: u32,
    /// Output registers.
    pub ecx: u32,
    /// Output registers.
    pub edx: u32,
}

impl CpuidEntry {
    pub(crate) fn from_kvm(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            indexed: e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }

    pub(crate) fn to_kvm(self) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: self.function,
            index: self.index,
            flags: if self.indexed {
                kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: self.eax,
            ebx: self.ebx,
            ecx: self.ecx,
            edx: self.edx,
            ..Default::default()
        }
    }
}

/// What kind of flat segment a descriptor describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// 64-bit code (L=1).
    Code64,
    /// 32-bit code (D=1).
    Code32,
    /// Read/write data, 32-bit (B=1).
    Data,
    /// A 64-bit available TSS.
    Tss,
}

/// A flat segment: base 0, 4 GiB limit (or the given limit for a TSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The selector (index * 8).
    pub selector: u16,
    /// Which kind.
    pub kind: SegmentKind,
}

impl Segment {
    /// The 8-byte GDT descriptor for this segment, to be written into guest memory.
    pub fn descriptor(&self) -> u64 {
        // access byte | flags nibble, then base 0 and limit 0xfffff (4 GiB with G=1).
        let (access, flags): (u64, u64) = match self.kind {
            SegmentKind::Code64 => (0x9b, 0xa),
            SegmentKind::Code32 => (0x9b, 0xc),
            SegmentKind::Data => (0x93, 0xc),
            SegmentKind::Tss => (0x8b, 0x8),
        };
        let limit: u64 = 0xfffff;
        (limit & 0xffff) | (access << 40) | (((limit >> 16) & 0xf) << 48) | (flags << 52)
    }

    fn to_kvm(self) -> kvm_segment {
        let (type_, s, l, db) = match self.kind {
            SegmentKind::Code64 => (0xb, 1, 1, 0),
            SegmentKind::Code32 => (0xb, 1, 0, 1),
            SegmentKind::Data => (0x3, 1, 0, 1),
            SegmentKind::Tss => (0xb, 0, 0, 0),
        };
        kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: self.selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }
}

/// The register state a vCPU starts from: enough for the 64-bit Linux boot protocol and for PVH
/// (32-bit protected mode, paging off).
#[derive(Clone, Copy, Debug, Default)]
pub struct BootCpuState {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// RSI (the Linux boot protocol's boot_params pointer).
    pub rsi: u64,
    /// RBX (PVH's start_info pointer).
    pub rbx: u64,
    /// Control registers.
    pub cr0: u64,
    /// Page-table root.
    pub cr3: u64,
    /// Control registers.
    pub cr4: u64,
    /// Extended feature enable register.
    pub efer: u64,
    /// GDT base and limit in guest memory.
    pub gdt: (u64, u16),
    /// The code segment.
    pub code: Option<Segment>,
    /// The data segment loaded into DS, ES, FS, GS and SS.
    pub data: Option<Segment>,
    /// The task register.
    pub tss: Option<Segment>,
}

impl BootCpuState {
    pub(crate) fn apply(
        &self,
        sregs: &mut kvm_bindings::kvm_sregs,
        regs: &mut kvm_bindings::kvm_regs,
    ) {
        if let Some(code) = self.code {
            sregs.cs = code.to_kvm();
        }
        if let Some(data) = self.data {
            let d = data.to_kvm();
            sregs.ds = d;
            sregs.es = d;
            sregs.fs = d;
            sregs.gs = d;
            sregs.ss = d;
        }
        if let Some(tss) = self.tss {
            let mut t = tss.to_kvm();
            t.limit = 0x67;
            t.g = 0;
            sregs.tr = t;
        }
        sregs.gdt.base = self.gdt.0;
        sregs.gdt.limit = self.gdt.1;
        sregs.cr0 = self.cr0;
        sregs.cr3 = self.cr3;
        sregs.cr4 = self.cr4;
        sregs.efer = self.efer;
        *regs = kvm_bindings::kvm_regs {
            rip: self.rip,
            rsp: self.rsp,
            rbp: self.rsp,
            rsi: self.rsi,
            rbx: self.rbx,
            rflags: 0x2,
            ..Default::default()
        };
    }
}
