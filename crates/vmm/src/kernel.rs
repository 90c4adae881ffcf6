//! Recognising and loading a guest kernel: a bzImage (Linux x86 boot protocol) or an ELF image
//! with a Xen PVH entry note. Images are read straight into guest memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use devices::host_file::{self, Accept, Access};
use hv::GuestMemory;

use crate::layout::KERNEL_START;

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file cannot be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Neither a bzImage nor an ELF.
    #[error("{0} is not a kernel: neither a bzImage (no 'HdrS' boot header) nor an ELF image")]
    NotAKernel(String),
    /// An ELF, but without a PVH entry point.
    #[error("{0} is an ELF image without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): Vessel boots ELF kernels through PVH only")]
    NoPvhEntry(String),
    /// A malformed or unsupported image.
    #[error("kernel {path}: {what}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The image does not fit in guest memory.
    #[error("kernel {path} does not fit in guest memory ({need} bytes needed at {at:#x}); give the guest more --memory")]
    TooBig {
        /// The file.
        path: String,
        /// Bytes needed.
        need: u64,
        /// Where.
        at: u64,
    },
}

/// A loaded kernel: how to enter it.
#[derive(Clone, Debug)]
pub enum LoadedKernel {
    /// A bzImage: enter at the 64-bit entry with a zero page.
    BzImage {
        /// The setup header bytes (from offset 0x1f1), copied into the zero page.
        setup_header: Vec<u8>,
        /// 64-bit entry point.
        entry: u64,
        /// First byte after the loaded kernel and the memory it needs to decompress itself.
        end: u64,
        /// Highest address the initrd may end at (exclusive).
        initrd_max_end: u64,
    },
    /// A PVH ELF: enter in 32-bit protected mode at `entry`.
    Pvh {
        /// Entry point (physical).
        entry: u64,
        /// First byte after the loaded segments.
        end: u64,
        /// Whether the image says it is Linux (an ELF note named "Linux").
        is_linux: bool,
    },
}

impl LoadedKernel {
    /// Whether this kernel is Linux (which cannot boot on a `kvm_pvm` host).
    pub fn is_linux(&self) -> bool {
        match self {
            LoadedKernel::BzImage { .. } => true,
            LoadedKernel::Pvh { is_linux, .. } => *is_linux,
        }
    }

    /// First byte after the kernel's footprint.
    pub fn end(&self) -> u64 {
        match self {
            LoadedKernel::BzImage { end, .. } | LoadedKernel::Pvh { end, .. } => *end,
        }
    }
}

/// The kind of a kernel file, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// Linux x86 boot protocol image.
    BzImage,
    /// ELF (must carry a PVH note).
    Elf,
}

/// Opens a kernel and tells which kind it is. Only a regular file is accepted.
pub fn probe(path: &Path) -> Result<(File, KernelKind), KernelError> {
    let shown = path.display().to_string();
    let read_err = |source| KernelError::Read {
        path: shown.clone(),
        source,
    };
    // Non-blocking and regular files only: a FIFO or a device named as the kernel is refused
    // at once instead of hanging the caller (a daemon's API thread, say) in open or read.
    let file = host_file::open(path, Access::ReadOnly, Accept::Regular).map_err(read_err)?;
    let kind = kind_of(path, &file)?;
    Ok((file, kind))
}

/// Which kind of kernel `file` (opened from `path`) holds.
fn kind_of(path: &Path, file: &File) -> Result<KernelKind, KernelError> {
    let shown = path.display().to_string();
    let mut head = [0u8; 0x210];
    let n = read_up_to(file, &mut head, 0).map_err(|source| KernelError::Read {
        path: shown.clone(),
        source,
    })?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelKind::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" && head[0x1fe..0x200] == [0x55, 0xaa] {
        return Ok(KernelKind::BzImage);
    }
    Err(KernelError::NotAKernel(shown))
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Loads the kernel at `path` into `mem`.
pub fn load(path: &Path, mem: &GuestMemory) -> Result<LoadedKernel, KernelError> {
    let (file, _) = probe(path)?;
    load_file(path, &file, mem)
}

/// Loads the kernel in `file` (opened from `path`, which names it in messages) into `mem`.
pub fn load_file(path: &Path, file: &File, mem: &GuestMemory) -> Result<LoadedKernel, KernelError> {
    match kind_of(path, file)? {
        KernelKind::BzImage => load_bzimage(path, file, mem),
        KernelKind::Elf => load_elf(path, file, mem),
    }
}

fn malformed(path: &Path, what: impl Into<String>) -> KernelError {
    KernelError::Malformed {
        path: path.display().to_string(),
        what: what.into(),
    }
}

fn load_bzimage(path: &Path, file: &File, mem: &GuestMemory) -> Result<LoadedKernel, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut hdr = [0u8; 0x280];
    let n = read_up_to(file, &mut hdr, 0).map_err(read_err)?;
    if n < hdr.len() {
        return Err(malformed(path, "truncated boot header"));
    }
    let version = le16(&hdr, 0x206);
    if version < 0x20c {
        return Err(malformed(
            path,
            format!("boot protocol {version:#x} is too old (need 2.12 or later for 64-bit entry)"),
        ));
    }
    let xloadflags = le16(&hdr, 0x236);
    if xloadflags & 1 == 0 {
        return Err(malformed(
            path,
            "no 64-bit entry point (XLF_KERNEL_64 unset)",
        ));
    }
    let setup_sects = match hdr[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201.
    let header_end = (0x202 + usize::from(hdr[0x201])).min(hdr.len());
    let setup_header = hdr[0x1f1..header_end].to_vec();
    let kernel_offset = (setup_sects + 1) * 512;
    let file_len = file.metadata().map_err(read_err)?.len();
    let kernel_len = file_len
        .checked_sub(kernel_offset)
        .filter(|&l| l > 0)
        .ok_or_else(|| malformed(path, "file ends inside the setup code"))?;
    let init_size = u64::from(le32(&hdr, 0x260));
    let pref_address = le64(&hdr, 0x258);
    let too_big = || KernelError::TooBig {
        path: path.display().to_string(),
        need: kernel_len.max(init_size),
        at: KERNEL_START,
    };
    mem.load_from_file(KERNEL_START, file, kernel_offset, kernel_len)
        .map_err(|e| match e {
            hv::LoadError::Range(_) => too_big(),
            hv::LoadError::Io(source) => read_err(source),
        })?;
    // The kernel decompresses itself into [max(load, pref_address), +init_size). Both numbers
    // come from the file: their sum may not fit in 64 bits.
    let end = pref_address
        .max(KERNEL_START)
        .checked_add(init_size)
        .ok_or_else(|| {
            malformed(
                path,
                format!("pref_address {pref_address:#x} + init_size {init_size:#x} overflows"),
            )
        })?
        .max(KERNEL_START + kernel_len);
    if !mem.contains(KERNEL_START, end - KERNEL_START) {
        return Err(too_big());
    }
    let initrd_addr_max = u64::from(le32(&hdr, 0x22c));
    Ok(LoadedKernel::BzImage {
        setup_header,
        entry: KERNEL_START + 0x200,
        end,
        initrd_max_end: initrd_addr_max + 1,
    })
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const MAX_PHDRS: usize = 64;
const MAX_NOTES_BYTES: u64 = 1 << 16;

fn load_elf(path: &Path, file: &File, mem: &GuestMemory) -> Result<LoadedKernel, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut eh = [0u8; 64];
    if read_up_to(file, &mut eh, 0).map_err(read_err)? < 64 {
        return Err(malformed(path, "truncated ELF header"));
    }
    if eh[4] != 2 || eh[5] != 1 || le16(&eh, 18) != 62 {
        return Err(malformed(path, "not a little-endian 64-bit x86-64 ELF"));
    }
    let phoff = le64(&eh, 32);
    let phentsize = usize::from(le16(&eh, 54));
    let phnum = usize::from(le16(&eh, 56));
    if phentsize < 56 || phnum == 0 || phnum > MAX_PHDRS {
        return Err(malformed(path, "bad ELF program header table"));
    }
    let mut table = vec![0u8; phentsize * phnum];
    if read_up_to(file, &mut table, phoff).map_err(read_err)? < table.len() {
        return Err(malformed(path, "truncated ELF program header table"));
    }
    let mut entry = None;
    let mut is_linux = false;
    let mut end = 0u64;
    for ph in table.chunks_exact(phentsize) {
        let (p_type, offset, paddr) = (le32(ph, 0), le64(ph, 8), le64(ph, 24));
        let (filesz, memsz) = (le64(ph, 32), le64(ph, 40));
        match p_type {
            PT_LOAD => {
                let seg_end = paddr
                    .checked_add(memsz)
                    .filter(|_| filesz <= memsz)
                    .ok_or_else(|| malformed(path, "bad PT_LOAD segment sizes"))?;
                if !mem.contains(paddr, memsz) {
                    return Err(KernelError::TooBig {
                        path: path.display().to_string(),
                        need: memsz,
                        at: paddr,
                    });
                }
                mem.load_from_file(paddr, file, offset, filesz)
                    .map_err(|e| match e {
                        hv::LoadError::Io(s) => read_err(s),
                        hv::LoadError::Range(r) => malformed(path, r.to_string()),
                    })?;
                // Memory past filesz is already zero: guest RAM starts zero-filled.
                end = end.max(seg_end);
            }
            PT_NOTE if filesz <= MAX_NOTES_BYTES => {
                let mut notes = vec![0u8; filesz as usize];
                if read_up_to(file, &mut notes, offset).map_err(read_err)? < notes.len() {
                    return Err(malformed(path, "truncated ELF note segment"));
                }
                for (name, kind, desc) in parse_notes(&notes) {
                    if name == b"Xen" && kind == XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4 {
                        entry = Some(u64::from(le32(desc, 0)));
                    }
                    if name == b"Linux" {
                        is_linux = true;
                    }
                }
            }
            _ => {}
        }
    }
    let entry = entry.ok_or_else(|| KernelError::NoPvhEntry(path.display().to_string()))?;
    Ok(LoadedKernel::Pvh {
        entry,
        end,
        is_linux,
    })
}

/// Splits an ELF note segment into `(name without NUL, type, descriptor)`; stops at the first
/// malformed note.
fn parse_notes(mut bytes: &[u8]) -> Vec<(&[u8], u32, &[u8])> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let namesz = le32(bytes, 0) as usize;
        let descsz = le32(bytes, 4) as usize;
        let kind = le32(bytes, 8);
        let (Some(name_len), Some(desc_len)) = (align4(namesz), align4(descsz)) else {
            break;
        };
        let Some(total) = 12usize
            .checked_add(name_len)
            .and_then(|t| t.checked_add(desc_len))
        else {
            break;
        };
        if total > bytes.len() {
            break;
        }
        let name = &bytes[12..12 + namesz];
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        let desc = &bytes[12 + name_len..12 + name_len + descsz];
        out.push((name, kind, desc));
        bytes = &bytes[total..];
    }
    out
}

/// Where the initrd goes: as high as allowed, page aligned, above the kernel.
pub fn place_initrd(kernel: &LoadedKernel, low_ram_end: u64, size: u64) -> Option<u64> {
    let ceiling = match kernel {
        LoadedKernel::BzImage { initrd_max_end, .. } => low_ram_end.min(*initrd_max_end),
        LoadedKernel::Pvh { .. } => low_ram_end,
    };
    let addr = ceiling.checked_sub(size)? & !0xfff;
    (addr >= kernel.end()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn notes_parse_and_stop_at_garbage() {
        let mut seg = note(b"Xen", 18, &0x1000000u32.to_le_bytes());
        seg.extend(note(b"Linux", 6, b"x"));
        seg.extend_from_slice(&[0xff; 12]);
        let notes = parse_notes(&seg);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].0, b"Xen");
        assert_eq!(le32(notes[0].2, 0), 0x1000000);
        assert_eq!(notes[1].0, b"Linux");
    }

    /// A minimal bzImage header (boot protocol 2.15, 64-bit entry) with one setup sector and
    /// 512 bytes of kernel; `pref_address` and `init_size` as given.
    fn bzimage(pref_address: u64, init_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024 + 512];
        b[0x1f1] = 1;
        b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        b[0x201] = 0x6a;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        b[0x258..0x260].copy_from_slice(&pref_address.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        b
    }

    fn load_bytes(tag: &str, bytes: &[u8]) -> Result<LoadedKernel, KernelError> {
        let path = std::env::temp_dir().join(format!("vmm-kernel-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let mem = GuestMemory::new(&[(0, 4 << 20)]).unwrap();
        let loaded = load(&path, &mem);
        std::fs::remove_file(&path).unwrap();
        loaded
    }

    #[test]
    fn a_bzimage_loads_and_its_footprint_is_checked() {
        let k = load_bytes("ok", &bzimage(0x100000, 0x100000)).unwrap();
        assert_eq!(k.end(), 0x200000);
        assert!(matches!(
            load_bytes("big", &bzimage(0x100000, 0x400000)),
            Err(KernelError::TooBig { .. })
        ));
        // Found by the kernel_loader fuzz target: pref_address + init_size overflowed (a panic
        // in debug builds, a wrapped footprint that passed the size check in release ones).
        let err = load_bytes("overflow", &bzimage(u64::MAX - 0x1000, 0x100000)).unwrap_err();
        assert!(matches!(err, KernelError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("overflows"), "{err}");
    }

    #[test]
    fn initrd_goes_high_but_never_over_the_kernel() {
        let k = LoadedKernel::Pvh {
            entry: 0,
            end: 0x200_0000,
            is_linux: true,
        };
        assert_eq!(
            place_initrd(&k, 0x1000_0000, 0x1800),
            Some(0x1000_0000 - 0x2000)
        );
        assert_eq!(place_initrd(&k, 0x1000_0000, 0x0f00_0000), None);
        assert_eq!(place_initrd(&k, 0x1000_0000, u64::MAX), None);
    }
}
