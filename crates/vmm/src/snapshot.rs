//! A saved domain: the stream `vessel save` writes and `vessel restore` reads
//! (`docs/formats.md`, "Snapshot").
//!
//! A header (the magic `VSLSNAP\0` and the format's version, a little-endian u32), then
//! records. Every record is its kind (u32), its length (u32), its payload and a CRC-32 of the
//! three, so a damaged byte anywhere is found before anything is restored from it, and the
//! stream can be written and read front to back (a file, or later a migration's socket).
//! Every length is bounded by its kind before anything is allocated for it.
//!
//! Records, in this order:
//! - `Spec`: the domain's specification as the API's JSON ([`DomainSpec`]);
//! - `Cpuid`: the CPUID table the guest's vCPUs were built from (before each vCPU's topology
//!   fields), so a restore gives the guest the CPU it had, on a host that offers it;
//! - `Vm`: the in-kernel interrupt controllers, PIT and kvmclock ([`hv::state::VmState`]);
//! - `Vcpu`, one per vCPU in order: its index (u32), then its state
//!   ([`hv::state::VcpuState`]);
//! - `Serial`: the console UART's registers and receive FIFO;
//! - `Device`, one per virtio device in slot order: its slot (u32), then its transport's
//!   saved state (`devices::virtio::state`);
//! - `Memory`, any number: a guest-physical address (u64), then whole 4 KiB pages of RAM from
//!   there. Pages that hold only zeros (never touched, or given back through the balloon) are
//!   not written: a restored guest finds zeros there, as it left them. Records go up in
//!   address and never overlap; each lies inside the guest's RAM;
//! - `End`, empty.
//!
//! A migration stream (`docs/formats.md`, "Migration stream") is the same records behind the
//! magic `VSLMIGR\0`, in the order a running domain can send them: `Spec`, `Cpuid` and `Tsc`
//! (the frequency its vCPUs' TSCs run at, u32 kHz, 0 unknown: a receiver that cannot give it
//! refuses before any memory comes); then
//! memory, round after round while the guest runs: `Memory` records in any order, a later
//! one over an earlier one's pages, and `Zero` records (an address, u64, and a count of
//! pages, u64) for pages that became zeros; then, once the domain is paused, `Vm`, the
//! `Vcpu`s, `Serial`, the `Device`s and `End`. Its own version ([`MIGRATION_VERSION`]), and
//! one difference: a `Memory` record's checksum covers its header and address, not its pages
//! (see [`SnapshotWriter::pages`]).

use std::io::{self, Read, Write};

use hv::state::{VcpuState, VmState};
use hv::{GuestMemory, Piece};

use crate::spec::DomainSpec;

/// The first eight bytes of a snapshot.
pub const MAGIC: [u8; 8] = *b"VSLSNAP\0";
/// The first eight bytes of a migration stream.
pub const MIGRATION_MAGIC: [u8; 8] = *b"VSLMIGR\0";
/// The snapshot format's version. A reader refuses any other.
pub const VERSION: u32 = 1;
/// The migration stream's version. A reader refuses any other (version 1 had its memory
/// records' pages under their checksums; version 2 had no `Tsc` record).
pub const MIGRATION_VERSION: u32 = 3;
/// Bytes of guest RAM in one page of a memory record.
pub const PAGE: usize = 4096;
/// Most pages in one memory record (2 MiB).
pub const MAX_RECORD_PAGES: usize = 512;
/// The most vCPUs and virtio devices a snapshot may list.
const MAX_VCPUS: usize = crate::layout::MAX_VCPUS as usize;
const MAX_DEVICES: usize = 64;
/// The most CPUID entries a snapshot may list (KVM offers a few dozen).
const MAX_CPUID_ENTRIES: usize = 256;
/// Bytes of one CPUID entry: leaf, subleaf, flags (1: the subleaf matters), EAX to EDX.
const CPUID_ENTRY_LEN: usize = 28;

/// The kinds of record, with the most bytes each may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Spec = 1,
    Vm = 2,
    Vcpu = 3,
    Serial = 4,
    Device = 5,
    Memory = 6,
    End = 7,
    Cpuid = 8,
    Zero = 9,
    Sync = 10,
    Tsc = 11,
}

impl Kind {
    fn from_u32(n: u32) -> Option<Kind> {
        [
            Kind::Spec,
            Kind::Vm,
            Kind::Vcpu,
            Kind::Serial,
            Kind::Device,
            Kind::Memory,
            Kind::End,
            Kind::Cpuid,
            Kind::Zero,
            Kind::Sync,
            Kind::Tsc,
        ]
        .into_iter()
        .find(|k| *k as u32 == n)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Spec => "specification",
            Kind::Vm => "VM state",
            Kind::Vcpu => "vCPU state",
            Kind::Serial => "console UART state",
            Kind::Device => "device state",
            Kind::Memory => "memory",
            Kind::End => "end",
            Kind::Cpuid => "CPUID table",
            Kind::Zero => "zero pages",
            Kind::Sync => "sync",
            Kind::Tsc => "TSC frequency",
        }
    }

    fn max_len(self) -> usize {
        match self {
            Kind::Spec => 1 << 20,
            Kind::Vm | Kind::Vcpu => 64 << 10,
            Kind::Serial => 4 << 10,
            Kind::Device => 4 + devices::virtio::state::MAX_STATE,
            Kind::Memory => 8 + MAX_RECORD_PAGES * PAGE,
            Kind::End => 0,
            Kind::Cpuid => 4 + MAX_CPUID_ENTRIES * CPUID_ENTRY_LEN,
            Kind::Zero => 16,
            Kind::Sync => 0,
            Kind::Tsc => 4,
        }
    }
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a snapshot.
    #[error("not a Vessel {0} (bad magic)")]
    BadMagic(&'static str),
    /// Written by a format this Vessel does not read.
    #[error("{what} format version {got} is not supported (this Vessel reads version {reads})")]
    Version {
        /// A snapshot or a migration stream.
        what: &'static str,
        /// The version it was written in.
        got: u32,
        /// The version this Vessel reads.
        reads: u32,
    },
    /// The stream ended early.
    #[error("the snapshot is truncated: it ends inside {0}")]
    Truncated(&'static str),
    /// A record's checksum does not match its bytes.
    #[error("the snapshot's {0} record is damaged (its checksum does not match)")]
    Checksum(&'static str),
    /// Anything else wrong with its contents.
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
}

fn malformed(why: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(why.into())
}

/// Everything of a saved domain but its memory.
#[derive(Debug)]
pub struct SavedMachine {
    /// What the domain is.
    pub spec: DomainSpec,
    /// The CPUID table its vCPUs were built from (`crate::cpuid::for_vcpu` gives each its
    /// own).
    pub cpuid: Vec<hv::CpuidEntry>,
    /// Its VM's interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// Its vCPUs, in order.
    pub vcpus: Vec<VcpuState>,
    /// Its console UART (`devices::serial::SerialConsole::save`).
    pub serial: Vec<u8>,
    /// Its virtio devices' transports, in slot order.
    pub devices: Vec<Vec<u8>>,
}

/// What saving memory wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryWritten {
    /// Pages written.
    pub pages: u64,
    /// Pages left out because they held only zeros.
    pub zero_pages: u64,
}

/// Writes a snapshot, record by record.
pub struct SnapshotWriter<W: Write> {
    out: W,
    /// Whether a memory record's checksum covers its pages (a snapshot's) or only its address
    /// (a migration's: see [`SnapshotWriter::pages`]).
    pages_checked: bool,
    /// Where pages are copied before they are written ([`MAX_RECORD_PAGES`] of them; kept,
    /// since a migration round may write thousands of short runs).
    chunk: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot on `out` (writes its header).
    pub fn new(out: W) -> io::Result<Self> {
        Self::with_magic(out, MAGIC, VERSION)
    }

    /// Starts a migration stream on `out` (writes its header).
    pub fn migration(out: W) -> io::Result<Self> {
        Self::with_magic(out, MIGRATION_MAGIC, MIGRATION_VERSION)
    }

    fn with_magic(mut out: W, magic: [u8; 8], version: u32) -> io::Result<Self> {
        out.write_all(&magic)?;
        out.write_all(&version.to_le_bytes())?;
        Ok(SnapshotWriter {
            out,
            pages_checked: magic == MAGIC,
            chunk: Vec::new(),
        })
    }

    /// The stream written to.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn record(&mut self, kind: Kind, parts: &[&[u8]]) -> io::Result<()> {
        self.record_checking(kind, parts, parts.len())
    }

    /// Writes a record of `parts` whose checksum covers its header and the first `checked`
    /// parts.
    fn record_checking(&mut self, kind: Kind, parts: &[&[u8]], checked: usize) -> io::Result<()> {
        let head = record_head(kind, parts.iter().map(|p| p.len()).sum())?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        self.out.write_all(&head)?;
        for (i, p) in parts.iter().enumerate() {
            if i < checked {
                crc.update(p);
            }
            self.out.write_all(p)?;
        }
        self.out.write_all(&crc.finalize().to_le_bytes())
    }

    /// Writes everything of the machine but its memory, which follows.
    pub fn machine(&mut self, saved: &SavedMachine) -> io::Result<()> {
        self.identity(&saved.spec, &saved.cpuid)?;
        self.state(saved)
    }

    /// Writes what the domain is: its specification and CPUID table.
    pub fn identity(&mut self, spec: &DomainSpec, cpuid: &[hv::CpuidEntry]) -> io::Result<()> {
        let spec = serde_json::to_vec(spec).map_err(io::Error::other)?;
        self.record(Kind::Spec, &[&spec])?;
        self.record(Kind::Cpuid, &[&encode_cpuid(cpuid)])
    }

    /// Writes the frequency the vCPUs' TSCs run at (a migration's, after the identity).
    pub fn tsc(&mut self, khz: Option<u32>) -> io::Result<()> {
        self.record(Kind::Tsc, &[&khz.unwrap_or(0).to_le_bytes()])
    }

    /// Writes the machine's state: its VM, vCPUs, UART and devices.
    pub fn state(&mut self, saved: &SavedMachine) -> io::Result<()> {
        self.record(Kind::Vm, &[&saved.vm.encode()])?;
        for (index, vcpu) in saved.vcpus.iter().enumerate() {
            self.record(Kind::Vcpu, &[&(index as u32).to_le_bytes(), &vcpu.encode()])?;
        }
        self.record(Kind::Serial, &[&saved.serial])?;
        for (slot, device) in saved.devices.iter().enumerate() {
            self.record(Kind::Device, &[&(slot as u32).to_le_bytes(), device])?;
        }
        Ok(())
    }

    /// Writes the guest RAM in `ram` (its regions, as `(guest address, size)`) of `memory`,
    /// leaving out pages of zeros.
    pub fn memory(
        &mut self,
        memory: &GuestMemory,
        ram: &[(u64, u64)],
    ) -> Result<MemoryWritten, SnapshotError> {
        let all = hv::dirty::DirtyPages::all(ram).runs(MAX_RECORD_PAGES as u64);
        self.pages(memory, &all, false)
    }

    /// Writes the pages of `runs` (guest address and pages, each run at most
    /// [`MAX_RECORD_PAGES`]), those of zeros as `Zero` records if `zeros_sent` (a migration's
    /// later rounds, whose receiver may hold older bytes there), else not at all.
    ///
    /// In a migration stream a memory record's checksum covers its header and address, not
    /// its pages: the pages are guest data the receiver does not interpret, TCP's checksum
    /// covers the link, and checksumming them on both sides took about a fifth of a
    /// migration's time in the box (whose CPU TCG emulates).
    pub fn pages(
        &mut self,
        memory: &GuestMemory,
        runs: &[(u64, u64)],
        zeros_sent: bool,
    ) -> Result<MemoryWritten, SnapshotError> {
        // The buffer is lent out so that records can be written from it.
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(MAX_RECORD_PAGES * PAGE, 0);
        let written = self.write_runs(memory, runs, zeros_sent, &mut chunk);
        self.chunk = chunk;
        written
    }

    /// [`SnapshotWriter::pages`], through `chunk`.
    fn write_runs(
        &mut self,
        memory: &GuestMemory,
        runs: &[(u64, u64)],
        zeros_sent: bool,
        chunk: &mut [u8],
    ) -> Result<MemoryWritten, SnapshotError> {
        let checked = if self.pages_checked { 2 } else { 1 };
        page_records(memory, runs, |gpa, pages, data| {
            let buf = &mut chunk[..pages * PAGE];
            if data {
                memory
                    .read(gpa, buf)
                    .map_err(|e| malformed(e.to_string()))?;
                self.record_checking(Kind::Memory, &[&gpa.to_le_bytes(), buf], checked)?;
            } else if zeros_sent {
                let n = pages as u64;
                self.record(Kind::Zero, &[&gpa.to_le_bytes(), &n.to_le_bytes()])?;
            }
            Ok(())
        })
    }

    /// Flushes what was written so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Writes a sync record (a migration's receiver answers it once it has read everything
    /// before it) and flushes.
    pub fn sync(&mut self) -> io::Result<()> {
        self.record(Kind::Sync, &[])?;
        self.out.flush()
    }

    /// Ends the snapshot and flushes it; returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.end()?;
        Ok(self.out)
    }

    /// Writes the end record and flushes the stream.
    pub fn end(&mut self) -> io::Result<()> {
        self.record(Kind::End, &[])?;
        self.out.flush()
    }
}

/// A stream that takes guest pages straight from guest memory, with nothing copied in the VMM
/// ([`SnapshotWriter::pages_gathered`]): a migration's connection.
pub trait GatheredWrite: Write {
    /// Writes `pieces` after everything written before (any buffered bytes go first).
    fn write_gathered(&mut self, memory: &GuestMemory, pieces: &[Piece<'_>]) -> io::Result<()>;
}

impl<W: GatheredWrite> SnapshotWriter<W> {
    /// [`SnapshotWriter::pages`] with the pages written from where they lie in guest memory
    /// (one gathered `sendmsg`), as QEMU's `writev` does, not copied first: the stream's bytes are the same. Only a
    /// migration stream, whose checksums leave pages out; a snapshot's checksums read them, and
    /// it is written as [`SnapshotWriter::pages`] writes it.
    pub fn pages_gathered(
        &mut self,
        memory: &GuestMemory,
        runs: &[(u64, u64)],
        zeros_sent: bool,
    ) -> Result<MemoryWritten, SnapshotError> {
        if self.pages_checked {
            return self.pages(memory, runs, zeros_sent);
        }
        /// A piece of the write: bytes of `heads`, or of guest memory.
        enum Part {
            Heads(usize, usize),
            Guest(u64, usize),
        }
        // Each record's header, address (and count) and checksum, one after another.
        let mut heads = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        let head_bytes = |parts: &mut Vec<Part>, from: usize, to: usize| match parts.last_mut() {
            Some(Part::Heads(_, end)) if *end == from => *end = to,
            _ => parts.push(Part::Heads(from, to)),
        };
        let written = page_records(memory, runs, |gpa, pages, data| {
            let start = heads.len();
            if data {
                heads.extend(record_head(Kind::Memory, 8 + pages * PAGE)?);
                heads.extend(gpa.to_le_bytes());
                let crc = crc32fast::hash(&heads[start..]);
                head_bytes(&mut parts, start, heads.len());
                parts.push(Part::Guest(gpa, pages * PAGE));
                let at = heads.len();
                heads.extend(crc.to_le_bytes());
                head_bytes(&mut parts, at, heads.len());
            } else if zeros_sent {
                heads.extend(record_head(Kind::Zero, 16)?);
                heads.extend(gpa.to_le_bytes());
                heads.extend((pages as u64).to_le_bytes());
                let crc = crc32fast::hash(&heads[start..]);
                heads.extend(crc.to_le_bytes());
                head_bytes(&mut parts, start, heads.len());
            }
            Ok(())
        })?;
        let pieces: Vec<Piece<'_>> = parts
            .iter()
            .map(|p| match *p {
                Part::Heads(from, to) => Piece::Host(&heads[from..to]),
                Part::Guest(addr, len) => Piece::Guest { addr, len },
            })
            .collect();
        self.out.write_gathered(memory, &pieces)?;
        Ok(written)
    }
}

/// A record's header: its kind and payload length; an error if no snapshot holds that much.
fn record_head(kind: Kind, len: usize) -> io::Result<[u8; 8]> {
    if len > kind.max_len() {
        return Err(io::Error::other(format!(
            "the {} is {len} bytes, more than a snapshot holds ({})",
            kind.name(),
            kind.max_len()
        )));
    }
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(kind as u32).to_le_bytes());
    head[4..].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(head)
}

/// Splits `runs` (guest address and pages, at most [`MAX_RECORD_PAGES`] each) into the runs of
/// pages with data and of pages of zeros (found where they lie, [`GuestMemory::nonzero_pages`])
/// and gives each to `record` (address, pages, whether they hold data), in order.
fn page_records(
    memory: &GuestMemory,
    runs: &[(u64, u64)],
    mut record: impl FnMut(u64, usize, bool) -> Result<(), SnapshotError>,
) -> Result<MemoryWritten, SnapshotError> {
    let mut written = MemoryWritten::default();
    let mut nonzero = Vec::with_capacity(MAX_RECORD_PAGES);
    for &(base, count) in runs {
        let count = (count as usize).min(MAX_RECORD_PAGES);
        memory
            .nonzero_pages(base, count, &mut nonzero)
            .map_err(|e| malformed(e.to_string()))?;
        let mut i = 0;
        while i < count {
            let start = i;
            let data = nonzero[i];
            while i < count && nonzero[i] == data {
                i += 1;
            }
            record(base + (start * PAGE) as u64, i - start, data)?;
            if data {
                written.pages += (i - start) as u64;
            } else {
                written.zero_pages += (i - start) as u64;
            }
        }
    }
    Ok(written)
}

/// Reads a snapshot front to back: [`SnapshotReader::machine`], then
/// [`SnapshotReader::memory`].
pub struct SnapshotReader<R: Read> {
    input: R,
    /// A record read ahead (the first after the devices).
    next: Option<(Kind, Vec<u8>)>,
    /// Whether a memory record's checksum covers its pages (see [`SnapshotWriter::pages`]).
    pages_checked: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and checks the header of the snapshot on `input`.
    pub fn new(input: R) -> Result<Self, SnapshotError> {
        Self::with_magic(input, MAGIC, VERSION, "snapshot")
    }

    /// Reads and checks the header of the migration stream on `input`.
    pub fn migration(input: R) -> Result<Self, SnapshotError> {
        Self::with_magic(
            input,
            MIGRATION_MAGIC,
            MIGRATION_VERSION,
            "migration stream",
        )
    }

    /// A reader of the rest of a migration stream on `input`, whose header and specification
    /// were read already (by the daemon that took the connection).
    pub fn migration_after_spec(input: R) -> Self {
        SnapshotReader {
            input,
            next: None,
            pages_checked: false,
        }
    }

    fn with_magic(
        mut input: R,
        want: [u8; 8],
        want_version: u32,
        what: &'static str,
    ) -> Result<Self, SnapshotError> {
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < head.len() {
            match input.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::Io(e)),
            }
        }
        // A short file that is not the start of a snapshot is a stranger, not a truncated one.
        let magic = got.min(want.len());
        if head[..magic] != want[..magic] {
            return Err(SnapshotError::BadMagic(what));
        }
        if got < head.len() {
            return Err(SnapshotError::Truncated("the header"));
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != want_version {
            return Err(SnapshotError::Version {
                what,
                got: version,
                reads: want_version,
            });
        }
        Ok(SnapshotReader {
            input,
            next: None,
            pages_checked: want == MAGIC,
        })
    }

    /// The next record's header: its kind and length, checked against the kind's bound; and
    /// the checksum begun over it.
    fn head(&mut self) -> Result<(Kind, usize, crc32fast::Hasher), SnapshotError> {
        let mut head = [0u8; 8];
        read_exact(&mut self.input, &mut head, "a record's header")?;
        let kind_n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let kind = Kind::from_u32(kind_n)
            .ok_or_else(|| malformed(format!("a record of unknown kind {kind_n}")))?;
        if len > kind.max_len() {
            return Err(malformed(format!(
                "its {} record is {len} bytes, more than the {} allowed",
                kind.name(),
                kind.max_len()
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok((kind, len, crc))
    }

    /// Reads the record's stored checksum and compares it with `crc`, the one of its bytes.
    fn check(&mut self, kind: Kind, crc: crc32fast::Hasher) -> Result<(), SnapshotError> {
        let mut stored = [0u8; 4];
        read_exact(&mut self.input, &mut stored, kind.name())?;
        if crc.finalize() != u32::from_le_bytes(stored) {
            return Err(SnapshotError::Checksum(kind.name()));
        }
        Ok(())
    }

    /// The next record, its checksum checked.
    fn record(&mut self) -> Result<(Kind, Vec<u8>), SnapshotError> {
        if let Some(r) = self.next.take() {
            return Ok(r);
        }
        let (kind, len, crc) = self.head()?;
        let payload = self.payload(kind, len, crc)?;
        Ok((kind, payload))
    }

    /// The `len` bytes of payload of a record of `kind` whose header was read (`crc` begun
    /// over it), its checksum checked.
    fn payload(
        &mut self,
        kind: Kind,
        len: usize,
        mut crc: crc32fast::Hasher,
    ) -> Result<Vec<u8>, SnapshotError> {
        let mut payload = Vec::with_capacity(len);
        let got = (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(SnapshotError::Io)?;
        if got < len {
            return Err(SnapshotError::Truncated(kind.name()));
        }
        crc.update(&payload);
        self.check(kind, crc)?;
        Ok(payload)
    }

    /// Reads the `len` bytes of a memory record's pages straight into `memory` at `gpa`
    /// (checked to lie in its RAM), adding them to `crc` (in a snapshot), then checks the
    /// record's checksum.
    fn load_pages(
        &mut self,
        memory: &GuestMemory,
        gpa: u64,
        len: usize,
        mut crc: crc32fast::Hasher,
    ) -> Result<(), SnapshotError> {
        let kind = Kind::Memory;
        let checked = self.pages_checked;
        let seen = &mut |b: &[u8]| {
            if checked {
                crc.update(b)
            }
        };
        match memory.load_from_reader(gpa, len, &mut self.input, seen) {
            Ok(()) => {}
            Err(hv::LoadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(SnapshotError::Truncated(kind.name()))
            }
            Err(hv::LoadError::Io(e)) => return Err(SnapshotError::Io(e)),
            Err(hv::LoadError::Range(e)) => return Err(malformed(e.to_string())),
        }
        self.check(kind, crc)
    }

    fn expect(&mut self, want: Kind) -> Result<Vec<u8>, SnapshotError> {
        match self.record()? {
            (kind, payload) if kind == want => Ok(payload),
            (kind, _) => Err(malformed(format!(
                "a {} record where the {} belongs",
                kind.name(),
                want.name()
            ))),
        }
    }

    /// Only the domain's specification (the first record), checked as the API checks one.
    pub fn spec(&mut self) -> Result<DomainSpec, SnapshotError> {
        let bytes = self.expect(Kind::Spec)?;
        let spec: DomainSpec = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(format!("its specification: {e}")))?;
        spec.validate()
            .map_err(|e| malformed(format!("its specification: {e}")))?;
        Ok(spec)
    }

    /// Everything of the machine but its memory, which follows.
    pub fn machine(&mut self) -> Result<SavedMachine, SnapshotError> {
        let spec = self.spec()?;
        let cpuid = self.cpuid()?;
        self.state(spec, cpuid)
    }

    /// The CPUID table (the record after the specification).
    pub fn cpuid(&mut self) -> Result<Vec<hv::CpuidEntry>, SnapshotError> {
        decode_cpuid(&self.expect(Kind::Cpuid)?)
    }

    /// The frequency the sender's vCPUs' TSCs run at, in kHz (a migration's record after the
    /// CPUID table; `None`: the sender's KVM did not tell it).
    pub fn tsc_khz(&mut self) -> Result<Option<u32>, SnapshotError> {
        let bytes = self.expect(Kind::Tsc)?;
        let khz: [u8; 4] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| malformed(format!("a TSC frequency of {} bytes", bytes.len())))?;
        Ok(Some(u32::from_le_bytes(khz)).filter(|&k| k != 0))
    }

    /// The machine's state (the VM, vCPUs, UART and devices), of the domain `spec` whose
    /// CPUID table is `cpuid`.
    pub fn state(
        &mut self,
        spec: DomainSpec,
        cpuid: Vec<hv::CpuidEntry>,
    ) -> Result<SavedMachine, SnapshotError> {
        let vm = VmState::decode(&self.expect(Kind::Vm)?)
            .map_err(|e| malformed(format!("its VM state: {e}")))?;
        let count = spec.vcpus as usize;
        if count > MAX_VCPUS {
            return Err(malformed(format!("{count} vCPUs")));
        }
        let mut vcpus = Vec::with_capacity(count);
        for want in 0..count {
            let bytes = self.expect(Kind::Vcpu)?;
            let (index, state) = numbered(&bytes, "vCPU")?;
            if index != want {
                return Err(malformed(format!(
                    "vCPU {index}'s state where vCPU {want}'s belongs"
                )));
            }
            let state =
                VcpuState::decode(state).map_err(|e| malformed(format!("vCPU {index}: {e}")))?;
            vcpus.push(state);
        }
        let serial = self.expect(Kind::Serial)?;
        let mut devices = Vec::new();
        loop {
            let (kind, bytes) = self.record()?;
            if kind != Kind::Device {
                self.next = Some((kind, bytes));
                break;
            }
            let (slot, state) = numbered(&bytes, "device")?;
            if slot != devices.len() || slot >= MAX_DEVICES {
                return Err(malformed(format!(
                    "device {slot}'s state where device {}'s belongs",
                    devices.len()
                )));
            }
            devices.push(state.to_vec());
        }
        Ok(SavedMachine {
            spec,
            cpuid,
            vm,
            vcpus,
            serial,
            devices,
        })
    }

    /// Loads the memory records into `memory`, whose RAM is `ram` (its regions, as `(guest
    /// address, size)`), up to the end record; returns the pages loaded. A record outside the
    /// RAM, out of order, or overlapping another is refused; so is anything after the end.
    /// Pages go straight from the stream into guest RAM and are checksummed there: a damaged
    /// record is found after its pages were written, and the restore fails (the machine is
    /// never run).
    pub fn memory(
        &mut self,
        memory: &GuestMemory,
        ram: &[(u64, u64)],
    ) -> Result<u64, SnapshotError> {
        let mut pages = 0u64;
        let mut next_free = 0u64;
        loop {
            // The record read ahead after the devices, whole; the others head first.
            let (kind, len, mut from) = match self.next.take() {
                Some((kind, bytes)) => (kind, bytes.len(), Payload::Read(bytes)),
                None => {
                    let (kind, len, crc) = self.head()?;
                    (kind, len, Payload::Stream(crc))
                }
            };
            match kind {
                Kind::Memory => {}
                Kind::End => {
                    if let Payload::Stream(crc) = from {
                        self.check(kind, crc)?;
                    }
                    break;
                }
                other => {
                    return Err(malformed(format!(
                        "a {} record among the memory records",
                        other.name()
                    )))
                }
            }
            if len < 8 + PAGE || (len - 8) % PAGE != 0 {
                return Err(malformed(format!(
                    "a memory record of {len} bytes, not an address and whole pages"
                )));
            }
            let mut gpa = [0u8; 8];
            match &mut from {
                Payload::Read(bytes) => gpa.copy_from_slice(&bytes[..8]),
                Payload::Stream(crc) => {
                    read_exact(&mut self.input, &mut gpa, kind.name())?;
                    crc.update(&gpa);
                }
            }
            let gpa = u64::from_le_bytes(gpa);
            let data_len = (len - 8) as u64;
            let inside = ram.iter().any(|&(base, size)| {
                gpa >= base
                    && gpa
                        .checked_add(data_len)
                        .is_some_and(|end| end <= base + size)
            });
            if gpa % PAGE as u64 != 0 || !inside {
                return Err(malformed(format!(
                    "a memory record at {gpa:#x} of {data_len} bytes, not whole pages of the guest's RAM"
                )));
            }
            if gpa < next_free {
                return Err(malformed(format!(
                    "a memory record at {gpa:#x} below the one before (out of order or overlapping)"
                )));
            }
            match from {
                Payload::Read(bytes) => memory
                    .write(gpa, &bytes[8..])
                    .map_err(|e| malformed(e.to_string()))?,
                Payload::Stream(crc) => self.load_pages(memory, gpa, data_len as usize, crc)?,
            }
            next_free = gpa + data_len;
            pages += data_len / PAGE as u64;
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(pages),
            Ok(_) => Err(malformed("bytes follow its end record")),
            Err(e) => Err(SnapshotError::Io(e)),
        }
    }
}

impl<R: Read> SnapshotReader<R> {
    /// Loads a migration's memory records (pages, and runs of pages that became zeros) into
    /// `memory`, whose RAM is `ram`, up to the first record of the machine's state; returns
    /// the pages loaded (a page sent twice counts twice). `on_sync` is called at each sync
    /// record, once everything before it is in `memory`. Records may come in any order and
    /// overwrite one another (each round sends the pages dirtied since the one before); each
    /// must lie inside the RAM.
    pub fn migrated_memory(
        &mut self,
        memory: &GuestMemory,
        ram: &[(u64, u64)],
        on_sync: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<u64, SnapshotError> {
        let mut pages = 0u64;
        loop {
            let (kind, len, mut crc) = self.head()?;
            match kind {
                Kind::Memory | Kind::Zero => {}
                Kind::Sync => {
                    self.check(kind, crc)?;
                    on_sync()?;
                    continue;
                }
                _ => {
                    // The machine's state: read whole, for `state`.
                    let payload = self.payload(kind, len, crc)?;
                    self.next = Some((kind, payload));
                    return Ok(pages);
                }
            }
            let mut gpa = [0u8; 8];
            if len < 8 {
                return Err(malformed(format!(
                    "a {} record of {len} bytes",
                    kind.name()
                )));
            }
            read_exact(&mut self.input, &mut gpa, kind.name())?;
            crc.update(&gpa);
            let gpa = u64::from_le_bytes(gpa);
            let data_len = if kind == Kind::Zero {
                if len != 16 {
                    return Err(malformed(format!("a zero-pages record of {len} bytes")));
                }
                let mut n = [0u8; 8];
                read_exact(&mut self.input, &mut n, kind.name())?;
                crc.update(&n);
                u64::from_le_bytes(n).saturating_mul(PAGE as u64)
            } else {
                if len < 8 + PAGE || (len - 8) % PAGE != 0 {
                    return Err(malformed(format!(
                        "a memory record of {len} bytes, not an address and whole pages"
                    )));
                }
                (len - 8) as u64
            };
            let inside = ram.iter().any(|&(base, size)| {
                gpa >= base
                    && gpa
                        .checked_add(data_len)
                        .is_some_and(|end| end <= base + size)
            });
            if gpa % PAGE as u64 != 0 || data_len == 0 || !inside {
                return Err(malformed(format!(
                    "a {} record at {gpa:#x} of {data_len} bytes, not whole pages of the guest's RAM",
                    kind.name()
                )));
            }
            if kind == Kind::Zero {
                self.check(kind, crc)?;
                memory
                    .discard(gpa, data_len)
                    .map_err(|e| malformed(e.to_string()))?;
            } else {
                self.load_pages(memory, gpa, data_len as usize, crc)?;
                pages += data_len / PAGE as u64;
            }
        }
    }

    /// Reads the end record (a migration stream's last, after the machine's state).
    pub fn end(&mut self) -> Result<(), SnapshotError> {
        self.expect(Kind::End).map(|_| ())
    }

    /// The stream read from.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.input
    }
}

fn encode_cpuid(table: &[hv::CpuidEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + table.len() * CPUID_ENTRY_LEN);
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for e in table {
        for v in [
            e.function,
            e.index,
            u32::from(e.indexed),
            e.eax,
            e.ebx,
            e.ecx,
            e.edx,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn decode_cpuid(bytes: &[u8]) -> Result<Vec<hv::CpuidEntry>, SnapshotError> {
    let bad = |why: String| malformed(format!("its CPUID table: {why}"));
    let (count, rest) = numbered(bytes, "CPUID")?;
    if count > MAX_CPUID_ENTRIES || rest.len() != count * CPUID_ENTRY_LEN {
        return Err(bad(format!(
            "{count} entries in {} bytes (at most {MAX_CPUID_ENTRIES} of {CPUID_ENTRY_LEN})",
            rest.len()
        )));
    }
    rest.chunks_exact(CPUID_ENTRY_LEN)
        .map(|c| {
            let v: Vec<u32> = c
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            if v[2] > 1 {
                return Err(bad(format!("flags {} (0 or 1)", v[2])));
            }
            Ok(hv::CpuidEntry {
                function: v[0],
                index: v[1],
                indexed: v[2] == 1,
                eax: v[3],
                ebx: v[4],
                ecx: v[5],
                edx: v[6],
            })
        })
        .collect()
}

/// Reads a file from its start with positional reads, leaving the file's own offset alone: a
/// snapshot's definition is read this way before the same descriptor is handed to the domain
/// that reads it whole (one open, so the file read is the file restored).
pub struct ReadAt<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl<'a> ReadAt<'a> {
    /// A reader of `file` from its first byte.
    pub fn new(file: &'a std::fs::File) -> ReadAt<'a> {
        ReadAt { file, at: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Where a memory record's payload is: read whole already (the record read ahead), or still
/// in the stream, its checksum begun.
enum Payload {
    Read(Vec<u8>),
    Stream(crc32fast::Hasher),
}

/// A record's leading index (u32) and the bytes after it.
fn numbered<'a>(bytes: &'a [u8], what: &str) -> Result<(usize, &'a [u8]), SnapshotError> {
    if bytes.len() < 4 {
        return Err(malformed(format!("a {what} record without its number")));
    }
    let n = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    Ok((n, &bytes[4..]))
}

fn read_exact(
    input: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Truncated(what),
        _ => SnapshotError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 1 << 20;

    fn machine() -> SavedMachine {
        let mut spec = DomainSpec::new("/k");
        spec.name = Some("web".into());
        spec.memory = 16 << 20;
        spec.vcpus = 2;
        SavedMachine {
            spec,
            cpuid: vec![hv::CpuidEntry {
                function: 7,
                index: 0,
                indexed: true,
                eax: 0,
                ebx: 0x29c6fbf,
                ecx: 0,
                edx: 1 << 10,
            }],
            vm: VmState::zeroed(),
            vcpus: vec![VcpuState::zeroed(), VcpuState::zeroed()],
            serial: vec![1, 2, 3],
            devices: vec![vec![7; 100], vec![8; 10]],
        }
    }

    /// A snapshot of `machine()` with 1 MiB of RAM: zeros but for two runs of pages.
    fn snapshot() -> Vec<u8> {
        let ram = GuestMemory::new(&[(0, RAM)]).unwrap();
        ram.write(0x1000, &[0xaa; 2 * PAGE]).unwrap();
        ram.write(0x8_0000 + 17, b"x").unwrap();
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.machine(&machine()).unwrap();
        let written = w.memory(&ram, &[(0, RAM)]).unwrap();
        assert_eq!(
            written,
            MemoryWritten {
                pages: 3,
                zero_pages: RAM / PAGE as u64 - 3
            }
        );
        w.finish().unwrap()
    }

    fn restore(bytes: &[u8]) -> Result<(SavedMachine, GuestMemory), SnapshotError> {
        let mut r = SnapshotReader::new(bytes)?;
        let saved = r.machine()?;
        let ram = GuestMemory::new(&[(0, RAM)]).unwrap();
        r.memory(&ram, &[(0, RAM)])?;
        Ok((saved, ram))
    }

    #[test]
    fn a_snapshot_reads_back_as_it_was_written_zero_pages_left_out() {
        let bytes = snapshot();
        // Header, records of the machine, three pages in two records, the end.
        assert!(bytes.len() < 3 * PAGE + 16 * 1024, "{} bytes", bytes.len());
        let (saved, ram) = restore(&bytes).unwrap();
        assert_eq!(saved.spec, machine().spec);
        assert_eq!(saved.cpuid, machine().cpuid);
        assert_eq!(saved.vcpus.len(), 2);
        assert_eq!(saved.serial, [1, 2, 3]);
        assert_eq!(saved.devices, machine().devices);
        let mut page = vec![0u8; 2 * PAGE];
        ram.read(0x1000, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0xaa));
        let mut byte = [0u8; 2];
        ram.read(0x8_0000 + 17, &mut byte).unwrap();
        assert_eq!(&byte, b"x\0");
        // The daemon reads only the specification.
        let spec = SnapshotReader::new(&bytes[..]).unwrap().spec().unwrap();
        assert_eq!(spec.name.as_deref(), Some("web"));
    }

    #[test]
    fn every_damage_is_refused_by_what_is_wrong() {
        let bytes = snapshot();
        let err = |b: &[u8]| restore(b).err().expect("refused").to_string();
        assert!(err(b"VSLSNAP").contains("truncated"));
        assert!(err(b"QFI\xfb....").contains("not a Vessel snapshot"));
        let mut version = bytes.clone();
        version[8] = 2;
        assert!(err(&version).contains("version 2"));
        // Every cut short of the whole is truncated.
        for cut in (12..bytes.len()).step_by(997) {
            assert!(err(&bytes[..cut]).contains("truncated"), "cut at {cut}");
        }
        // Any flipped bit is found.
        for at in (12..bytes.len()).step_by(331) {
            let mut b = bytes.clone();
            b[at] ^= 1;
            let e = err(&b);
            // A flipped length may also make a record run past the end.
            assert!(
                e.contains("damaged") || e.contains("malformed") || e.contains("truncated"),
                "a flip at {at}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(err(&longer).contains("follow its end"));
    }

    /// A snapshot with the machine's records, then `records` of memory (address and pages).
    fn with_memory(records: &[(u64, usize)]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.machine(&machine()).unwrap();
        for &(gpa, pages) in records {
            w.record(
                Kind::Memory,
                &[&gpa.to_le_bytes(), &vec![1u8; pages * PAGE]],
            )
            .unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn memory_records_must_be_whole_pages_of_ram_in_order() {
        assert!(restore(&with_memory(&[(0, 1), (PAGE as u64, 2)])).is_ok());
        for (records, why) in [
            (vec![(RAM, 1)], "not whole pages of the guest's RAM"),
            (
                vec![(RAM - PAGE as u64, 2)],
                "not whole pages of the guest's RAM",
            ),
            (vec![(17, 1)], "not whole pages of the guest's RAM"),
            (
                vec![(u64::MAX - 4095, 1)],
                "not whole pages of the guest's RAM",
            ),
            (vec![(0x2000, 1), (0x1000, 1)], "out of order"),
            (vec![(0x1000, 2), (0x2000, 1)], "overlapping"),
        ] {
            let e = restore(&with_memory(&records)).err().unwrap().to_string();
            assert!(e.contains(why), "{records:?}: {e}");
        }
        // A record of an address and no whole page.
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.machine(&machine()).unwrap();
        w.record(Kind::Memory, &[&0u64.to_le_bytes(), &[1u8; 100]])
            .unwrap();
        let e = restore(&w.finish().unwrap()).err().unwrap().to_string();
        assert!(e.contains("not an address and whole pages"), "{e}");
    }

    #[test]
    fn records_out_of_place_or_oversized_are_refused() {
        // The vCPUs must follow in order.
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        let m = machine();
        let spec = serde_json::to_vec(&m.spec).unwrap();
        w.record(Kind::Spec, &[&spec]).unwrap();
        w.record(Kind::Cpuid, &[&encode_cpuid(&m.cpuid)]).unwrap();
        w.record(Kind::Vm, &[&m.vm.encode()]).unwrap();
        w.record(Kind::Vcpu, &[&1u32.to_le_bytes(), &m.vcpus[0].encode()])
            .unwrap();
        let e = restore(&w.finish().unwrap()).err().unwrap().to_string();
        assert!(e.contains("vCPU 1's state where vCPU 0's belongs"), "{e}");
        // A record larger than its kind allows is refused before it is read.
        let mut b = snapshot();
        let spec_len_at = 12 + 4;
        b[spec_len_at..spec_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = restore(&b).err().unwrap().to_string();
        assert!(e.contains("more than the"), "{e}");
        // An unknown kind of record.
        let mut b = snapshot();
        b[12..16].copy_from_slice(&99u32.to_le_bytes());
        let e = restore(&b).err().unwrap().to_string();
        assert!(e.contains("unknown kind 99"), "{e}");
        // A CPUID table whose count disagrees with its bytes.
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.record(Kind::Spec, &[&spec]).unwrap();
        w.record(Kind::Cpuid, &[&9u32.to_le_bytes(), &[0; 28]])
            .unwrap();
        let e = restore(&w.finish().unwrap()).err().unwrap().to_string();
        assert!(e.contains("its CPUID table: 9 entries"), "{e}");
        // A specification that is not valid JSON of a domain.
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.record(Kind::Spec, &[b"{\"kernel\":5}"]).unwrap();
        let e = restore(&w.finish().unwrap()).err().unwrap().to_string();
        assert!(e.contains("its specification"), "{e}");
    }

    /// A migration stream: the identity, `rounds` of runs (address, pages) sent from `ram` as
    /// it is before each, then the state and the end.
    /// Round `n`'s runs of pages (address, pages), or none after the last.
    type Rounds<'a> = dyn FnMut(usize, &GuestMemory) -> Option<Vec<(u64, u64)>> + 'a;

    fn migration(ram: &GuestMemory, rounds: &mut Rounds<'_>) -> Vec<u8> {
        let m = machine();
        let mut w = SnapshotWriter::migration(Gathering(Vec::new())).unwrap();
        w.identity(&m.spec, &m.cpuid).unwrap();
        let mut round = 0;
        while let Some(runs) = rounds(round, ram) {
            w.pages_gathered(ram, &runs, round > 0).unwrap();
            w.sync().unwrap();
            round += 1;
        }
        w.state(&m).unwrap();
        w.end().unwrap();
        w.finish().unwrap().0
    }

    /// A stream that takes gathered pieces by copying them, as the kernel does for `writev`.
    struct Gathering(Vec<u8>);

    impl Write for Gathering {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl GatheredWrite for Gathering {
        fn write_gathered(&mut self, memory: &GuestMemory, pieces: &[Piece<'_>]) -> io::Result<()> {
            for piece in pieces {
                match *piece {
                    Piece::Host(bytes) => self.0.extend_from_slice(bytes),
                    Piece::Guest { addr, len } => {
                        let mut b = vec![0; len];
                        memory.read(addr, &mut b).map_err(io::Error::other)?;
                        self.0.extend(b);
                    }
                }
            }
            Ok(())
        }
    }

    #[test]
    fn pages_written_from_guest_memory_make_the_stream_copied_pages_make() {
        let ram = GuestMemory::new(&[(0, RAM)]).unwrap();
        ram.write(0x1000, &[1; 3 * PAGE]).unwrap();
        ram.write(0x9000, &[2]).unwrap();
        ram.write(RAM - PAGE as u64, &[3; PAGE]).unwrap();
        let all = hv::dirty::DirtyPages::all(&[(0, RAM)]).runs(MAX_RECORD_PAGES as u64);
        // Runs that hold pages of zeros between and around pages of data.
        let some = vec![(0, 3), (0x8000, 4), (RAM - 2 * PAGE as u64, 2)];
        for zeros_sent in [false, true] {
            // A migration stream, and a snapshot (whose checksums read the pages, so it is
            // written the one way).
            for snapshot in [false, true] {
                let start = |out| match snapshot {
                    true => SnapshotWriter::new(out).unwrap(),
                    false => SnapshotWriter::migration(out).unwrap(),
                };
                let mut copied = start(Gathering(Vec::new()));
                let mut gathered = start(Gathering(Vec::new()));
                for runs in [&all, &some] {
                    let a = copied.pages(&ram, runs, zeros_sent).unwrap();
                    let b = gathered.pages_gathered(&ram, runs, zeros_sent).unwrap();
                    assert_eq!(a, b);
                }
                assert_eq!(copied.get_mut().0, gathered.get_mut().0);
            }
        }
    }

    fn receive(bytes: &[u8]) -> Result<(SavedMachine, GuestMemory), SnapshotError> {
        let mut r = SnapshotReader::migration(bytes)?;
        let spec = r.spec()?;
        let cpuid = r.cpuid()?;
        let ram = GuestMemory::new(&[(0, RAM)]).unwrap();
        let mut syncs = 0;
        r.migrated_memory(&ram, &[(0, RAM)], &mut || {
            syncs += 1;
            Ok(())
        })?;
        // One sync at the end of each round (the tests' streams have two rounds).
        if syncs != 2 {
            return Err(SnapshotError::Malformed(format!("{syncs} syncs")));
        }
        let saved = r.state(spec, cpuid)?;
        r.end()?;
        Ok((saved, ram))
    }

    #[test]
    fn a_migration_stream_carries_later_rounds_over_earlier_ones() {
        let ram = GuestMemory::new(&[(0, RAM)]).unwrap();
        let bytes = migration(&ram, &mut |round, ram| match round {
            0 => {
                ram.write(0x1000, &[1; 3 * PAGE]).unwrap();
                Some(hv::dirty::DirtyPages::all(&[(0, RAM)]).runs(MAX_RECORD_PAGES as u64))
            }
            // The guest wrote the second page again and zeroed the third meanwhile.
            1 => {
                ram.write(0x2000, &[2; PAGE]).unwrap();
                ram.write(0x3000, &[0; PAGE]).unwrap();
                Some(vec![(0x2000, 2)])
            }
            _ => None,
        });
        let (saved, got) = receive(&bytes).unwrap();
        assert_eq!(saved.spec, machine().spec);
        assert_eq!(saved.devices, machine().devices);
        for (page, want) in [(1u64, 1u8), (2, 2), (3, 0), (4, 0)] {
            let mut b = vec![0u8; PAGE];
            got.read(page * PAGE as u64, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == want), "page {page}");
        }
        // A migration stream is not a snapshot, nor the reverse.
        let e = restore(&bytes).err().unwrap().to_string();
        assert!(e.contains("not a Vessel snapshot"), "{e}");
        let e = receive(&snapshot()).err().unwrap().to_string();
        assert!(e.contains("not a Vessel migration stream"), "{e}");
        // Cut anywhere, it is truncated; flipped anywhere but in a page, damaged (or
        // malformed); a page's bytes are the guest's, not under the checksum, and arrive as
        // they were sent.
        for cut in (12..bytes.len()).step_by(1999) {
            let e = receive(&bytes[..cut]).err().unwrap().to_string();
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
        let mut page_bytes = Vec::new();
        let mut at = 12;
        while at < bytes.len() {
            let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            let (kind, len) = (word(at), word(at + 4) as usize);
            if kind == Kind::Memory as u32 {
                page_bytes.push(at + 16..at + 8 + len);
            }
            at += 8 + len + 4;
        }
        // Pages 1 to 3, then page 2 again (page 3 goes as zeros).
        assert_eq!(page_bytes.len(), 2, "the memory records: {page_bytes:?}");
        for at in (12..bytes.len()).step_by(577) {
            let mut b = bytes.clone();
            b[at] ^= 4;
            if page_bytes.iter().any(|r| r.contains(&at)) {
                assert!(receive(&b).is_ok(), "a flip in a page, at {at}");
                continue;
            }
            let e = receive(&b).err().unwrap().to_string();
            assert!(
                e.contains("damaged") || e.contains("malformed") || e.contains("truncated"),
                "a flip at {at}: {e}"
            );
        }
        // Its version is its own: version 1 checked pages.
        let mut old = bytes.clone();
        old[8] = 1;
        let e = receive(&old).err().unwrap().to_string();
        assert!(
            e.contains("migration stream format version 1 is not supported")
                && e.contains(&format!("reads version {MIGRATION_VERSION}")),
            "{e}"
        );
    }

    #[test]
    fn migrated_pages_outside_the_guest_ram_are_refused() {
        for (kind, payload) in [
            (Kind::Zero, [RAM.to_le_bytes(), 1u64.to_le_bytes()].concat()),
            (
                Kind::Zero,
                [0u64.to_le_bytes(), u64::MAX.to_le_bytes()].concat(),
            ),
            (
                Kind::Zero,
                [0u64.to_le_bytes(), 0u64.to_le_bytes()].concat(),
            ),
            (
                Kind::Memory,
                [(RAM - 4096).to_le_bytes().to_vec(), vec![0; 2 * PAGE]].concat(),
            ),
            (
                Kind::Memory,
                [17u64.to_le_bytes().to_vec(), vec![0; PAGE]].concat(),
            ),
        ] {
            let m = machine();
            let mut w = SnapshotWriter::migration(Vec::new()).unwrap();
            w.identity(&m.spec, &m.cpuid).unwrap();
            w.record(kind, &[&payload]).unwrap();
            let e = receive(&w.finish().unwrap()).err().unwrap().to_string();
            assert!(
                e.contains("not whole pages of the guest's RAM"),
                "{kind:?}: {e}"
            );
        }
    }
}
