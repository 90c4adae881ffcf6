//! `vessel image check` and `info` for qcow2: Vessel's own reading of an image's header and
//! tables, independent of the library that serves the guest's I/O, in the manner of `qemu-img
//! check`. Every reference (L1 and L2 tables, data and compressed clusters, the refcount table
//! and its blocks, internal snapshots and their tables) is counted per host cluster and
//! compared with the refcount the image stores: a cluster referenced more often than its
//! refcount says is corruption (the next allocation would hand it out again); one referenced
//! less is a leak (space that is never reused, harmless). The `COPIED` flags of the active
//! tables are checked against the refcounts too.
//!
//! Everything in the file is hostile. All arithmetic is checked, tables are read a bounded
//! piece at a time, and the per-cluster counts take at most [`MAX_COUNTED_CLUSTERS`] two-byte
//! entries (32 MiB): a larger file is checked without comparing refcounts, and says so.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Where a checker reads an image from: a file, or bytes in memory (the fuzz target).
pub trait ReadAt {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error if that is not wholly inside.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Most host clusters whose references are counted (16 Mi: 32 MiB of counts).
pub const MAX_COUNTED_CLUSTERS: u64 = 16 << 20;
/// Most problems listed one by one (the rest are counted).
const MAX_LISTED: usize = 100;
/// Largest L1 table accepted (QEMU's limit): 32 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (QEMU's limit): 8 MiB.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots accepted (QEMU's limit).
const MAX_SNAPSHOTS: u32 = 65536;
/// Offset bits of L1, L2 and refcount table entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_ENCRYPTION: u32 = 0x0537_be77;

/// A qcow2 header, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9 to 21).
    pub cluster_bits: u32,
    /// The disk's size in bytes.
    pub size: u64,
    /// Entries of the active L1 table.
    pub l1_size: u32,
    /// Where the active L1 table is.
    pub l1_offset: u64,
    /// Where the refcount table is.
    pub refcount_table_offset: u64,
    /// Its size in clusters.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub snapshots: u32,
    /// Where the snapshot table is.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (version 3).
    pub incompatible: u64,
    /// log2 of the refcount width in bits (version 2: 4).
    pub refcount_order: u32,
    /// The backing file name as stored.
    pub backing_file: Option<String>,
    /// The backing file's format as recorded (the backing-format extension).
    pub backing_format: Option<String>,
    /// The image has persistent dirty bitmaps (their clusters are not counted here).
    pub has_bitmaps: bool,
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Entries per L2 table.
    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }
    /// Guest clusters of the disk.
    pub fn guest_clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn read(r: &(impl ReadAt + ?Sized), len: u64, offset: u64, what: &str) -> Result<Vec<u8>, String> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| format!("{what} at {offset} overflows"))?;
    if end > r.size() {
        return Err(format!(
            "{what} ({len} bytes at {offset}) lies past the end of the file ({} bytes)",
            r.size()
        ));
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| format!("{what} is too large"))?];
    r.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    Ok(buf)
}

/// Reads and validates the header of the qcow2 image `r`. The error says which field is wrong.
pub fn parse_header(r: &(impl ReadAt + ?Sized)) -> Result<Header, String> {
    let file_len = r.size();
    if file_len < 72 {
        return Err(format!(
            "too short for a qcow2 image ({file_len} bytes, a header takes at least 72)"
        ));
    }
    let b = read(r, 72, 0, "the header")?;
    if b[0..4] != super::qcow2::MAGIC[..] {
        return Err("not a qcow2 image (bad magic)".into());
    }
    let version = be32(&b, 4);
    if version != 2 && version != 3 {
        return Err(format!(
            "unsupported qcow2 version {version} (2 and 3 are read)"
        ));
    }
    let cluster_bits = be32(&b, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!(
            "cluster size 2^{cluster_bits} is outside 512 bytes to 2 MiB"
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    let size = be64(&b, 24);
    if size > 1 << 60 {
        return Err(format!("virtual size {size} is larger than 1 EiB"));
    }
    if be32(&b, 32) != 0 {
        return Err("the image is encrypted, which Vessel does not support".into());
    }
    let l1_size = be32(&b, 36);
    let l1_offset = be64(&b, 40);
    let refcount_table_offset = be64(&b, 48);
    let refcount_table_clusters = be32(&b, 56);
    let snapshots = be32(&b, 60);
    let snapshots_offset = be64(&b, 64);
    let (incompatible, refcount_order, header_length) = if version == 3 {
        if file_len < 104 {
            return Err(format!(
                "too short for a qcow2 version 3 header ({file_len} bytes)"
            ));
        }
        let v3 = read(r, 32, 72, "the version 3 header")?;
        let header_length = be32(&v3, 28);
        if header_length < 104 || u64::from(header_length) > cluster_size {
            return Err(format!(
                "header length {header_length} is outside 104 to the cluster size"
            ));
        }
        (be64(&v3, 0), be32(&v3, 24), header_length)
    } else {
        (0, 4, 72)
    };
    if refcount_order > 6 {
        return Err(format!(
            "refcount order {refcount_order} is above 6 (64-bit refcounts)"
        ));
    }
    for (bit, what) in [
        (
            INCOMPAT_DATA_FILE,
            "keeps its data in an external data file",
        ),
        (
            INCOMPAT_COMPRESSION,
            "uses a compression type other than zlib",
        ),
        (INCOMPAT_EXTL2, "uses extended L2 entries (subclusters)"),
    ] {
        if incompatible & bit != 0 {
            return Err(format!("the image {what}, which Vessel does not support"));
        }
    }
    let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
    if incompatible & !known != 0 {
        return Err(format!(
            "unknown incompatible feature bits {:#x}",
            incompatible & !known
        ));
    }
    // The active L1 table covers the disk, within QEMU's bound, inside the file.
    let l2_cover = cluster_size * (cluster_size / 8);
    let needed = size.div_ceil(l2_cover);
    if u64::from(l1_size) < needed {
        return Err(format!(
            "L1 table of {l1_size} entries cannot map {size} bytes (needs {needed})"
        ));
    }
    check_table(
        "L1 table",
        l1_offset,
        u64::from(l1_size) * 8,
        MAX_L1_BYTES,
        cluster_size,
        file_len,
    )?;
    if refcount_table_clusters == 0 {
        return Err("the refcount table has no clusters".into());
    }
    let reftable_bytes = u64::from(refcount_table_clusters) * cluster_size;
    check_table(
        "refcount table",
        refcount_table_offset,
        reftable_bytes,
        MAX_REFTABLE_BYTES,
        cluster_size,
        file_len,
    )?;
    if snapshots > MAX_SNAPSHOTS {
        return Err(format!("{snapshots} snapshots, more than {MAX_SNAPSHOTS}"));
    }
    if snapshots > 0 && !snapshots_offset.is_multiple_of(cluster_size) {
        return Err(format!(
            "snapshot table offset {snapshots_offset} is not cluster-aligned"
        ));
    }
    // The backing file name, and the header extensions between the header and it.
    let backing_offset = be64(&b, 8);
    let backing_len = be32(&b, 16);
    let backing_file = if backing_offset == 0 {
        None
    } else {
        if backing_len == 0 || backing_len > 1023 {
            return Err(format!(
                "backing file name length {backing_len} is outside 1 to 1023"
            ));
        }
        if backing_offset
            .checked_add(u64::from(backing_len))
            .is_none_or(|end| end > cluster_size)
        {
            return Err(format!(
                "backing file name at {backing_offset} lies outside the first cluster"
            ));
        }
        let name = read(
            r,
            u64::from(backing_len),
            backing_offset,
            "the backing file name",
        )?;
        Some(String::from_utf8(name).map_err(|_| "the backing file name is not UTF-8")?)
    };
    let ext_end = if backing_offset == 0 {
        cluster_size.min(file_len)
    } else {
        backing_offset
    };
    let mut backing_format = None;
    let mut has_bitmaps = false;
    let mut at = u64::from(header_length);
    while at.checked_add(8).is_some_and(|end| end <= ext_end) {
        let head = read(r, 8, at, "a header extension")?;
        let (kind, len) = (be32(&head, 0), u64::from(be32(&head, 4)));
        if kind == EXT_END {
            break;
        }
        let data_at = at + 8;
        let padded = len.div_ceil(8) * 8;
        if data_at + padded > ext_end {
            return Err(format!(
                "header extension {kind:#x} ({len} bytes at {at}) runs past the header"
            ));
        }
        match kind {
            EXT_BACKING_FORMAT => {
                let name = read(r, len, data_at, "the backing format")?;
                backing_format =
                    Some(String::from_utf8(name).map_err(|_| "the backing format is not UTF-8")?);
            }
            EXT_BITMAPS => has_bitmaps = true,
            EXT_DATA_FILE => {
                return Err(
                    "the image names an external data file, which Vessel does not support".into(),
                )
            }
            EXT_ENCRYPTION => {
                return Err("the image is encrypted, which Vessel does not support".into())
            }
            _ => {}
        }
        at = data_at + padded;
    }
    if backing_format.is_some() && backing_file.is_none() {
        return Err("a backing format is recorded without a backing file".into());
    }
    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_offset,
        refcount_table_offset,
        refcount_table_clusters,
        snapshots,
        snapshots_offset,
        incompatible,
        refcount_order,
        backing_file,
        backing_format,
        has_bitmaps,
    })
}

fn check_table(
    what: &str,
    offset: u64,
    bytes: u64,
    max: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), String> {
    if bytes > max {
        return Err(format!("{what} of {bytes} bytes is larger than {max}"));
    }
    if bytes == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cluster_size) || offset == 0 {
        return Err(format!(
            "{what} offset {offset} is not a cluster-aligned offset past the header"
        ));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!(
            "{what} ({bytes} bytes at {offset}) lies past the end of the file ({file_len} bytes)"
        )),
    }
}

/// What `vessel image check` and `info` report about a qcow2 image.
#[derive(Clone, Debug)]
pub struct Report {
    /// The validated header.
    pub header: Header,
    /// The file's size.
    pub file_size: u64,
    /// Guest clusters whose data this image holds (the active table).
    pub allocated: u64,
    /// Host clusters with a refcount but no reference (harmless: space never reused).
    pub leaked: u64,
    /// Whether refcounts were compared (not for very large files, nor with persistent
    /// bitmaps, whose clusters are not counted).
    pub refcounts_checked: bool,
    /// Everything wrong (empty: consistent).
    pub problems: Vec<String>,
}

/// The walk's state: per-cluster reference counts and the problems found.
struct Walk<'a, R: ReadAt + ?Sized> {
    r: &'a R,
    h: &'a Header,
    file_len: u64,
    counts: Option<Vec<u16>>,
    problems: Vec<String>,
    unlisted: usize,
    allocated: u64,
}

impl<R: ReadAt + ?Sized> Walk<'_, R> {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        } else {
            self.unlisted += 1;
        }
    }

    /// Counts one reference to each cluster of `len` bytes at `offset`; false (and a problem)
    /// if they are not inside the file.
    fn reference(&mut self, offset: u64, len: u64, what: &str) -> bool {
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.file_len);
        if !inside {
            self.problem(format!(
                "{what} at {offset} lies past the end of the file ({} bytes)",
                self.file_len
            ));
            return false;
        }
        if let Some(counts) = &mut self.counts {
            let cb = self.h.cluster_bits;
            let first = offset >> cb;
            let last = (offset + len.max(1) - 1) >> cb;
            for c in first..=last {
                if let Some(n) = counts.get_mut(c as usize) {
                    *n = n.saturating_add(1);
                }
            }
        }
        true
    }

    /// Walks an L1 table of `entries` entries at `offset` and every L2 table it names; `active`
    /// for the image's own table (whose allocation is counted).
    fn walk_l1(&mut self, offset: u64, entries: u64, active: bool) {
        let what = if active {
            "L1 table"
        } else {
            "snapshot L1 table"
        };
        if entries == 0 || !self.reference(offset, entries * 8, what) {
            return;
        }
        let cs = self.h.cluster_size();
        for_each_entry(self.r, offset, entries, |i, e| {
            if e & !(OFFSET_MASK | COPIED) != 0 {
                self.problem(format!("{what} entry {i} has reserved bits set ({e:#x})"));
            }
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                return;
            }
            if !l2.is_multiple_of(cs) {
                self.problem(format!(
                    "{what} entry {i}: L2 table offset {l2} is not cluster-aligned"
                ));
                return;
            }
            if !self.reference(l2, cs, "an L2 table") {
                return;
            }
            self.walk_l2(l2, active);
        });
    }

    fn walk_l2(&mut self, offset: u64, active: bool) {
        let cs = self.h.cluster_size();
        let cb = self.h.cluster_bits;
        for_each_entry(self.r, offset, self.h.l2_entries(), |i, e| {
            if e & COMPRESSED != 0 {
                // Compressed: the host offset in the low bits, then the sector count - 1.
                let x = 62 - (cb - 8);
                let host = e & ((1 << x) - 1);
                let sectors = ((e >> x) & ((1 << (cb - 8)) - 1)) + 1;
                let len = (sectors * 512).saturating_sub(host % 512).max(1);
                if self.reference(host, len, "compressed data") && active {
                    self.allocated += 1;
                }
                return;
            }
            if e & !(OFFSET_MASK | COPIED | ZERO) != 0 {
                self.problem(format!(
                    "L2 table at {offset} entry {i} has reserved bits set ({e:#x})"
                ));
            }
            let data = e & OFFSET_MASK;
            if data == 0 {
                return;
            }
            if !data.is_multiple_of(cs) {
                self.problem(format!(
                    "L2 table at {offset} entry {i}: data offset {data} is not cluster-aligned"
                ));
                return;
            }
            if self.reference(data, cs, "a data cluster") && active {
                self.allocated += 1;
            }
        });
    }

    /// Counts the snapshot table and each snapshot's tables.
    fn walk_snapshots(&mut self) {
        let mut at = self.h.snapshots_offset;
        let start = at;
        for n in 0..self.h.snapshots {
            let head = match read(self.r, 40, at, "a snapshot header") {
                Ok(b) => b,
                Err(e) => return self.problem(e),
            };
            let l1_offset = be64(&head, 0);
            let l1_size = u64::from(be32(&head, 8));
            let id_len = u64::from(u16::from_be_bytes([head[12], head[13]]));
            let name_len = u64::from(u16::from_be_bytes([head[14], head[15]]));
            let extra = u64::from(be32(&head, 36));
            let len = (40 + extra + id_len + name_len).div_ceil(8) * 8;
            if l1_size * 8 > MAX_L1_BYTES || !l1_offset.is_multiple_of(self.h.cluster_size()) {
                return self.problem(format!("snapshot {n} has an invalid L1 table"));
            }
            self.walk_l1(l1_offset, l1_size, false);
            let Some(next) = at.checked_add(len) else {
                return self.problem(format!("snapshot {n} overflows the file"));
            };
            at = next;
        }
        self.reference(start, at - start, "the snapshot table");
    }

    /// Counts the refcount table and its blocks.
    fn walk_refcounts(&mut self) {
        let h = self.h;
        let entries = u64::from(h.refcount_table_clusters) * h.cluster_size() / 8;
        self.reference(h.refcount_table_offset, entries * 8, "the refcount table");
        let cs = h.cluster_size();
        for_each_entry(self.r, h.refcount_table_offset, entries, |i, e| {
            let block = e & !0x1ff;
            if block == 0 {
                return;
            }
            if e & 0x1ff != 0 || !block.is_multiple_of(cs) {
                self.problem(format!(
                    "refcount table entry {i} ({e:#x}) is not a cluster-aligned offset"
                ));
                return;
            }
            self.reference(block, cs, "a refcount block");
        });
    }

    /// Compares the counted references with the stored refcounts; returns the leaks.
    fn compare(&mut self) -> u64 {
        let Some(counts) = self.counts.take() else {
            return 0;
        };
        let mut leaked = 0;
        let mut stored = Refcounts::new(self.r, self.h);
        for (cluster, &referenced) in counts.iter().enumerate() {
            let cluster = cluster as u64;
            let refcount = match stored.get(cluster) {
                Ok(n) => n,
                Err(e) => {
                    self.problem(e);
                    break;
                }
            };
            let referenced = u64::from(referenced);
            if referenced > refcount {
                self.problem(format!(
                    "cluster {cluster} is referenced {referenced} times but its refcount is {refcount}"
                ));
            } else if referenced < refcount {
                leaked += 1;
            }
        }
        self.counts = Some(counts);
        leaked
    }

    /// Checks the COPIED flags of the active tables against the stored refcounts.
    fn check_copied(&mut self) {
        let mut stored = Refcounts::new(self.r, self.h);
        let h = self.h;
        let cs = h.cluster_size();
        let mut bad = Vec::new();
        for_each_entry(self.r, h.l1_offset, u64::from(h.l1_size), |_, e| {
            let l2 = e & OFFSET_MASK;
            if l2 == 0 || !l2.is_multiple_of(cs) || l2 >= self.file_len {
                return;
            }
            if let Ok(n) = stored.get(l2 / cs) {
                if (n == 1) != (e & COPIED != 0) {
                    bad.push(format!(
                        "L2 table at {l2}: COPIED flag {} but refcount {n}",
                        e & COPIED != 0
                    ));
                }
            }
            for_each_entry(self.r, l2, h.l2_entries(), |_, e| {
                let data = e & OFFSET_MASK;
                if e & COMPRESSED != 0 || data == 0 || !data.is_multiple_of(cs) {
                    return;
                }
                if let Ok(n) = stored.get(data / cs) {
                    if (n == 1) != (e & COPIED != 0) {
                        bad.push(format!(
                            "data cluster at {data}: COPIED flag {} but refcount {n}",
                            e & COPIED != 0
                        ));
                    }
                }
            });
        });
        for p in bad {
            self.problem(p);
        }
    }
}

/// Calls `f(index, entry)` for each big-endian u64 of a table of `entries` at `offset`, read
/// 64 KiB at a time; stops at the first piece that cannot be read.
fn for_each_entry(
    r: &(impl ReadAt + ?Sized),
    offset: u64,
    entries: u64,
    mut f: impl FnMut(u64, u64),
) {
    const CHUNK: u64 = 8192;
    let mut i = 0;
    while i < entries {
        let n = (entries - i).min(CHUNK);
        let Some(at) = offset.checked_add(i * 8) else {
            return;
        };
        let Ok(buf) = read(r, n * 8, at, "a table") else {
            return;
        };
        for (k, e) in buf.chunks_exact(8).enumerate() {
            f(i + k as u64, be64(e, 0));
        }
        i += n;
    }
}

/// The stored refcounts, read one refcount block at a time.
struct Refcounts<'a, R: ReadAt + ?Sized> {
    r: &'a R,
    h: &'a Header,
    /// The block loaded: its index in the refcount table and its bytes.
    block: Option<(u64, Vec<u8>)>,
}

impl<'a, R: ReadAt + ?Sized> Refcounts<'a, R> {
    fn new(r: &'a R, h: &'a Header) -> Self {
        Refcounts { r, h, block: None }
    }

    fn get(&mut self, cluster: u64) -> Result<u64, String> {
        let bits = 1u64 << self.h.refcount_order;
        let per_block = self.h.cluster_size() * 8 / bits;
        let index = cluster / per_block;
        let table_entries = u64::from(self.h.refcount_table_clusters) * self.h.cluster_size() / 8;
        if index >= table_entries {
            return Ok(0);
        }
        if self.block.as_ref().map(|(i, _)| *i) != Some(index) {
            let entry = read(
                self.r,
                8,
                self.h.refcount_table_offset + index * 8,
                "the refcount table",
            )?;
            let offset = be64(&entry, 0) & !0x1ff;
            let bytes = if offset == 0 || !offset.is_multiple_of(self.h.cluster_size()) {
                Vec::new()
            } else {
                read(self.r, self.h.cluster_size(), offset, "a refcount block")?
            };
            self.block = Some((index, bytes));
        }
        let Some((_, bytes)) = &self.block else {
            return Ok(0);
        };
        if bytes.is_empty() {
            return Ok(0);
        }
        let i = cluster % per_block;
        Ok(if bits < 8 {
            let byte = bytes[(i * bits / 8) as usize];
            (u64::from(byte) >> (i * bits % 8)) & ((1 << bits) - 1)
        } else {
            let width = (bits / 8) as usize;
            let at = i as usize * width;
            bytes[at..at + width]
                .iter()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b))
        })
    }
}

/// Checks the qcow2 image `r`: an error if its header is unusable, else a report listing every
/// problem of its tables and refcounts. The backing chain is not opened here.
pub fn check(r: &(impl ReadAt + ?Sized)) -> Result<Report, String> {
    let h = parse_header(r)?;
    let file_len = r.size();
    let host_clusters = file_len.div_ceil(h.cluster_size());
    let count = host_clusters <= MAX_COUNTED_CLUSTERS && !h.has_bitmaps;
    let mut walk = Walk {
        r,
        h: &h,
        file_len,
        counts: count.then(|| vec![0u16; host_clusters as usize]),
        problems: Vec::new(),
        unlisted: 0,
        allocated: 0,
    };
    if h.incompatible & INCOMPAT_CORRUPT != 0 {
        walk.problem("the image is marked corrupt".into());
    }
    if h.incompatible & INCOMPAT_DIRTY != 0 {
        walk.problem(
            "the image is marked dirty (lazy refcounts not written back): repair it with qemu-img check -r all"
                .into(),
        );
    }
    walk.reference(0, h.cluster_size().min(file_len), "the header");
    walk.walk_l1(h.l1_offset, u64::from(h.l1_size), true);
    if h.snapshots > 0 {
        walk.walk_snapshots();
    }
    walk.walk_refcounts();
    let leaked = walk.compare();
    walk.check_copied();
    if walk.unlisted > 0 {
        let more = walk.unlisted;
        walk.problems.push(format!("... and {more} more problems"));
    }
    let (allocated, problems) = (walk.allocated, walk.problems);
    Ok(Report {
        file_size: file_len,
        allocated,
        leaked,
        refcounts_checked: count,
        problems,
        header: h,
    })
}
