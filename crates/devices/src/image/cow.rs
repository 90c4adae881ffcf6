//! Vessel's retired copy-on-write overlay format, `VSLCOW01` (layout in `docs/formats.md`),
//! read-only: disks no longer use it (it records no format for its backing file, so opening
//! one meant guessing), and `vessel image convert` reads it to write a qcow2 or raw image.
//!
//! A 4 KiB header, an allocation bitmap (one bit per 64 KiB cluster) and the data, cluster `c`
//! of the disk at `data_offset + c * 64 KiB` in a sparse file. A cluster whose bit is clear
//! reads from the backing image (zeros past the backing's size as recorded at creation, or
//! without a backing). A backing file is itself an overlay if it starts with the magic, else
//! raw: the one place Vessel still tells a format by its bytes, in a command the
//! administrator runs on files that no domain writes (an overlay's base was only ever opened
//! read-only).

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{check_range, open_locked, probe_file, DiskBackend, Format, ImageError, Raw};

/// The first 8 bytes of every overlay.
pub const MAGIC: &[u8; 8] = b"VSLCOW01";
/// The format version this code reads.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: u64 = 4096;
/// log2 of the cluster size.
pub const CLUSTER_BITS: u32 = 16;
/// Allocation unit: 64 KiB.
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// Largest virtual size (16 TiB: a 32 MiB bitmap).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 44;
/// Where the backing path starts in the header.
const PATH_AT: usize = 96;
/// Where the checksum sits (the header's last 8 bytes).
const CHECKSUM_AT: usize = HEADER_SIZE as usize - 8;
/// Longest backing path.
pub const MAX_BACKING_PATH: usize = CHECKSUM_AT - PATH_AT;

/// FNV-1a (64-bit) of `bytes`: the header checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A validated overlay header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The disk's size in bytes (a multiple of 512).
    pub virtual_size: u64,
    /// Where the bitmap starts in the file.
    pub bitmap_offset: u64,
    /// The bitmap's length in bytes: one bit per cluster, rounded up to a byte.
    pub bitmap_len: u64,
    /// Where cluster 0's data starts in the file (a multiple of the cluster size).
    pub data_offset: u64,
    /// The backing image's size when the overlay was made: reads of unallocated clusters take
    /// at most this many bytes from it (zeros beyond).
    pub backing_size: u64,
    /// The backing image, as stored (relative paths are relative to the overlay's directory).
    pub backing: Option<PathBuf>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// A header for a new overlay of `virtual_size` bytes on `backing`.
    pub fn new(
        virtual_size: u64,
        backing: Option<PathBuf>,
        backing_size: u64,
    ) -> Result<Header, String> {
        check_virtual_size(virtual_size)?;
        let bitmap_len = clusters(virtual_size).div_ceil(8);
        let data_offset = (HEADER_SIZE + bitmap_len).div_ceil(CLUSTER_SIZE) * CLUSTER_SIZE;
        if let Some(p) = &backing {
            check_backing_path(p.as_os_str().as_bytes())?;
        }
        Ok(Header {
            virtual_size,
            bitmap_offset: HEADER_SIZE,
            bitmap_len,
            data_offset,
            backing_size: if backing.is_some() { backing_size } else { 0 },
            backing,
        })
    }

    /// Number of clusters.
    pub fn clusters(&self) -> u64 {
        clusters(self.virtual_size)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE as usize] {
        let mut b = [0u8; HEADER_SIZE as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..20].copy_from_slice(&CLUSTER_BITS.to_le_bytes());
        // 20..24: feature flags, none defined.
        b[24..32].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.bitmap_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.bitmap_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.data_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.backing_size.to_le_bytes());
        let path = self
            .backing
            .as_ref()
            .map(|p| p.as_os_str().as_bytes())
            .unwrap_or_default();
        let n = path.len().min(MAX_BACKING_PATH);
        b[64..68].copy_from_slice(&(n as u32).to_le_bytes());
        b[PATH_AT..PATH_AT + n].copy_from_slice(&path[..n]);
        let sum = fnv1a64(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and validates a header read from a file of `file_len` bytes. Every field is
    /// hostile; the error says which one is wrong.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Header, String> {
        if b.len() < HEADER_SIZE as usize || file_len < HEADER_SIZE {
            return Err(format!(
                "too short for a Vessel COW image ({file_len} bytes, the header alone is {HEADER_SIZE})"
            ));
        }
        if &b[0..8] != MAGIC {
            return Err("not a Vessel COW image (bad magic)".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!(
                "unsupported COW format version {version} (this Vessel reads {VERSION})"
            ));
        }
        let stored = u64_at(b, CHECKSUM_AT);
        let computed = fnv1a64(&b[..CHECKSUM_AT]);
        if stored != computed {
            return Err(format!(
                "header checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            ));
        }
        let header_size = u32_at(b, 12);
        if u64::from(header_size) != HEADER_SIZE {
            return Err(format!("header size {header_size}, expected {HEADER_SIZE}"));
        }
        let cluster_bits = u32_at(b, 16);
        if cluster_bits != CLUSTER_BITS {
            return Err(format!(
                "cluster size 2^{cluster_bits}, only 2^{CLUSTER_BITS} (64 KiB) is supported"
            ));
        }
        let flags = u32_at(b, 20);
        if flags != 0 {
            return Err(format!("unknown feature flags {flags:#x}"));
        }
        let virtual_size = u64_at(b, 24);
        check_virtual_size(virtual_size)?;
        let bitmap_offset = u64_at(b, 32);
        let bitmap_len = u64_at(b, 40);
        let data_offset = u64_at(b, 48);
        let backing_size = u64_at(b, 56);
        let expected_bitmap = clusters(virtual_size).div_ceil(8);
        if bitmap_len != expected_bitmap {
            return Err(format!(
                "bitmap length {bitmap_len} bytes, but {virtual_size} bytes in 64 KiB clusters need {expected_bitmap}"
            ));
        }
        if bitmap_offset < HEADER_SIZE {
            return Err(format!("bitmap offset {bitmap_offset} overlaps the header"));
        }
        let bitmap_end = bitmap_offset
            .checked_add(bitmap_len)
            .ok_or_else(|| format!("bitmap offset {bitmap_offset} overflows"))?;
        if bitmap_end > file_len {
            return Err(format!(
                "bitmap ({bitmap_len} bytes at {bitmap_offset}) lies outside the file ({file_len} bytes)"
            ));
        }
        if !data_offset.is_multiple_of(CLUSTER_SIZE) || data_offset < bitmap_end {
            return Err(format!(
                "data offset {data_offset} is not cluster-aligned after the bitmap (which ends at {bitmap_end})"
            ));
        }
        if data_offset.checked_add(virtual_size).is_none() {
            return Err(format!("data offset {data_offset} overflows"));
        }
        let path_len = u32_at(b, 64) as usize;
        if path_len > MAX_BACKING_PATH {
            return Err(format!(
                "backing path length {path_len} exceeds {MAX_BACKING_PATH}"
            ));
        }
        let backing = if path_len == 0 {
            None
        } else {
            let bytes = &b[PATH_AT..PATH_AT + path_len];
            check_backing_path(bytes)?;
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
        };
        if backing.is_none() && backing_size != 0 {
            return Err(format!(
                "backing size {backing_size} without a backing file"
            ));
        }
        Ok(Header {
            virtual_size,
            bitmap_offset,
            bitmap_len,
            data_offset,
            backing_size,
            backing,
        })
    }

    /// The backing path resolved against the overlay at `overlay`.
    pub fn backing_path(&self, overlay: &Path) -> Option<PathBuf> {
        let p = self.backing.as_ref()?;
        Some(if p.is_absolute() {
            p.clone()
        } else {
            overlay.parent().unwrap_or(Path::new("")).join(p)
        })
    }
}

fn clusters(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(CLUSTER_SIZE)
}

fn check_virtual_size(size: u64) -> Result<(), String> {
    if size == 0 || !size.is_multiple_of(512) || size > MAX_VIRTUAL_SIZE {
        return Err(format!(
            "virtual size {size} is not a multiple of 512 bytes between 512 and {MAX_VIRTUAL_SIZE}"
        ));
    }
    Ok(())
}

fn check_backing_path(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() || bytes.len() > MAX_BACKING_PATH || bytes.contains(&0) {
        return Err(format!(
            "backing path must be 1 to {MAX_BACKING_PATH} bytes without NUL"
        ));
    }
    Ok(())
}

/// Reads and validates the header and bitmap of the overlay `file`.
fn read_meta(file: &File, path: &Path) -> Result<(Header, Vec<u8>, u64), ImageError> {
    let file_len = file
        .metadata()
        .map_err(ImageError::io(path, "cannot read its size"))?
        .len();
    let mut raw = vec![0u8; HEADER_SIZE as usize];
    if file_len >= HEADER_SIZE {
        file.read_exact_at(&mut raw, 0)
            .map_err(ImageError::io(path, "cannot read the header"))?;
    }
    let header = Header::decode(&raw, file_len).map_err(|why| ImageError::invalid(path, why))?;
    // Bounded: the bitmap length was checked against the virtual size and the file size.
    let mut bitmap = vec![0u8; header.bitmap_len as usize];
    file.read_exact_at(&mut bitmap, header.bitmap_offset)
        .map_err(ImageError::io(path, "cannot read the bitmap"))?;
    Ok((header, bitmap, file_len))
}

/// Problems with a bitmap that passed header validation: bits past the last cluster, or
/// allocated clusters whose data lies past the end of the file.
fn bitmap_problems(header: &Header, bitmap: &[u8], file_len: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let clusters = header.clusters();
    let used_bits = clusters % 8;
    if used_bits != 0 {
        if let Some(&last) = bitmap.last() {
            if last >> used_bits != 0 {
                problems.push(format!(
                    "bitmap has bits set past the last cluster ({clusters} clusters)"
                ));
            }
        }
    }
    if let Some(c) = last_allocated(bitmap, clusters) {
        let end = ((c + 1) * CLUSTER_SIZE).min(header.virtual_size);
        let needed = header.data_offset + end;
        if needed > file_len {
            problems.push(format!(
                "cluster {c} is allocated but its data ends at byte {needed}, past the end of the file ({file_len} bytes)"
            ));
        }
    }
    problems
}

fn last_allocated(bitmap: &[u8], clusters: u64) -> Option<u64> {
    let byte = bitmap.iter().rposition(|&b| b != 0)?;
    let top = 7 - u64::from(bitmap[byte].leading_zeros());
    Some((byte as u64 * 8 + top).min(clusters.saturating_sub(1)))
}

fn bit(bitmap: &[u8], cluster: u64) -> bool {
    bitmap
        .get((cluster / 8) as usize)
        .is_some_and(|b| b & (1 << (cluster % 8)) != 0)
}

/// An open overlay (read-only).
pub struct Cow {
    file: File,
    header: Header,
    backing: Option<Box<dyn DiskBackend>>,
    bitmap: Vec<u8>,
}

/// Opens a legacy chain's backing image: an overlay if it has the magic, else raw.
fn open_backing(path: &Path, depth: usize) -> Result<Box<dyn DiskBackend>, ImageError> {
    if depth > super::MAX_CHAIN {
        return Err(ImageError::invalid(
            path,
            format!(
                "backing chain deeper than {} images (a loop?)",
                super::MAX_CHAIN
            ),
        ));
    }
    let file = open_locked(path, true)?;
    match probe_file(&file, path)? {
        Format::VesselCow => Ok(Box::new(Cow::from_file(file, path, depth)?)),
        _ => Ok(Box::new(
            Raw::new(file, true).map_err(ImageError::io(path, "cannot read its size"))?,
        )),
    }
}

impl Cow {
    /// Opens the overlay at `path` and its backing chain, read-only.
    pub fn open(path: &Path) -> Result<Cow, ImageError> {
        let file = open_locked(path, true)?;
        Cow::from_file(file, path, 0)
    }

    fn from_file(file: File, path: &Path, depth: usize) -> Result<Cow, ImageError> {
        let (header, bitmap, file_len) = read_meta(&file, path)?;
        if let Some(why) = bitmap_problems(&header, &bitmap, file_len)
            .into_iter()
            .next()
        {
            return Err(ImageError::invalid(path, why));
        }
        let backing = match header.backing_path(path) {
            None => None,
            Some(bp) => {
                let b = open_backing(&bp, depth + 1).map_err(|e| {
                    ImageError::invalid(path, format!("its backing image is unusable: {e}"))
                })?;
                if b.len() < header.backing_size {
                    return Err(ImageError::invalid(
                        path,
                        format!(
                            "backing image {} is {} bytes, shorter than the {} it had when this overlay was made",
                            bp.display(),
                            b.len(),
                            header.backing_size
                        ),
                    ));
                }
                Some(b)
            }
        };
        Ok(Cow {
            file,
            header,
            backing,
            bitmap,
        })
    }

    /// The overlay's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether `cluster` is allocated in the overlay.
    pub fn is_allocated(&self, cluster: u64) -> bool {
        bit(&self.bitmap, cluster)
    }

    /// Number of allocated clusters.
    pub fn allocated(&self) -> u64 {
        self.bitmap.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Reads `buf.len()` bytes at `pos` of the backing image: at most `backing_size` bytes of
    /// it count; zeros beyond, and everywhere without a backing image.
    fn read_backing(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let limit = backing.len().min(self.header.backing_size);
        let from_backing = limit.saturating_sub(pos).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(from_backing);
        if !head.is_empty() {
            backing.read_at(head, pos)?;
        }
        tail.fill(0);
        Ok(())
    }
}

impl DiskBackend for Cow {
    fn len(&self) -> u64 {
        self.header.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.header.virtual_size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let cluster = pos / CLUSTER_SIZE;
            let in_cluster = (CLUSTER_SIZE - pos % CLUSTER_SIZE) as usize;
            let n = in_cluster.min(buf.len() - done);
            let seg = &mut buf[done..done + n];
            if self.is_allocated(cluster) {
                self.file
                    .read_exact_at(seg, self.header.data_offset + pos)?;
            } else {
                self.read_backing(seg, pos)?;
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, _data: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the retired VSLCOW01 format is read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What `vessel image check` and `info` report about an overlay.
#[derive(Clone, Debug)]
pub struct Report {
    /// The validated header.
    pub header: Header,
    /// The file's size.
    pub file_size: u64,
    /// Allocated clusters on disk.
    pub allocated: u64,
    /// The backing path, resolved.
    pub backing_resolved: Option<PathBuf>,
    /// Everything wrong beyond the header (empty: consistent).
    pub problems: Vec<String>,
}

/// Inspects the overlay at `path` without opening it for use: a header that does not validate
/// is an error; a bitmap or backing image that is wrong is listed in `problems`.
pub fn inspect(path: &Path) -> Result<Report, ImageError> {
    inspect_chain(path, 0)
}

fn inspect_chain(path: &Path, depth: usize) -> Result<Report, ImageError> {
    if depth > super::MAX_CHAIN {
        return Err(ImageError::invalid(
            path,
            format!(
                "backing chain deeper than {} images (a loop?)",
                super::MAX_CHAIN
            ),
        ));
    }
    let file = open_locked(path, true)?;
    let (header, bitmap, file_len) = read_meta(&file, path)?;
    let mut problems = bitmap_problems(&header, &bitmap, file_len);
    let allocated = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
    // At most one bitmap (32 MiB for 16 TiB) is held at a time, however long the chain.
    drop(bitmap);
    let backing_resolved = header.backing_path(path);
    if let Some(bp) = &backing_resolved {
        match std::fs::metadata(bp) {
            Err(e) => problems.push(format!("backing image {} is missing: {e}", bp.display())),
            Ok(_) => match super::probe(bp).and_then(|f| {
                if f == Format::VesselCow {
                    // A chain: its own header must be valid (and its own backing).
                    let r = inspect_chain(bp, depth + 1)?;
                    if let Some(p) = r.problems.first() {
                        return Err(ImageError::invalid(bp, p.clone()));
                    }
                    Ok(r.header.virtual_size)
                } else {
                    Ok(std::fs::metadata(bp)
                        .map_err(ImageError::io(bp, "cannot read its size"))?
                        .len())
                }
            }) {
                Err(e) => problems.push(format!("backing image unusable: {e}")),
                Ok(len) if len < header.backing_size => problems.push(format!(
                    "backing image {} is {len} bytes, shorter than the {} it had when this overlay was made",
                    bp.display(),
                    header.backing_size
                )),
                Ok(_) => {}
            },
        }
    }
    Ok(Report {
        header,
        file_size: file_len,
        allocated,
        backing_resolved,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::super::{self as image, Format};
    use super::*;

    const C: usize = CLUSTER_SIZE as usize;

    /// A base of `len` bytes whose byte `i` is `(i * 7 + i / 65536) as u8`.
    fn base_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / C) as u8).collect()
    }

    /// Writes an overlay as Vessel used to: `backing` (stored as given) of `backing_size`
    /// bytes, `size` bytes of disk, and `clusters` allocated with the given contents.
    fn write_overlay(
        path: &Path,
        backing: Option<&Path>,
        backing_size: u64,
        size: u64,
        clusters: &[(u64, u8)],
    ) {
        let h = Header::new(size, backing.map(Path::to_path_buf), backing_size).unwrap();
        let mut b = h.encode().to_vec();
        b.resize((h.data_offset + h.virtual_size) as usize, 0);
        for &(c, fill) in clusters {
            b[h.bitmap_offset as usize + (c / 8) as usize] |= 1 << (c % 8);
            let at = (h.data_offset + c * CLUSTER_SIZE) as usize;
            let end = (at + C).min(b.len());
            b[at..end].fill(fill);
        }
        std::fs::write(path, b).unwrap();
    }

    fn setup(base_len: usize) -> (TempDir, PathBuf, PathBuf, Vec<u8>) {
        let dir = TempDir::new();
        let base = dir.join("base.img");
        let bytes = base_bytes(base_len);
        std::fs::write(&base, &bytes).unwrap();
        let overlay = dir.join("over.cow");
        let size = (base_len as u64).div_ceil(512) * 512;
        write_overlay(&overlay, Some(&base), base_len as u64, size, &[(1, 0xaa)]);
        (dir, base, overlay, bytes)
    }

    fn read(d: &dyn DiskBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        d.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn header_round_trips_and_layout_is_as_documented() {
        let h = Header::new(10 << 30, Some("/srv/base.img".into()), 12345).unwrap();
        let b = h.encode();
        assert_eq!(&b[..8], b"VSLCOW01");
        assert_eq!(h.bitmap_offset, 4096);
        assert_eq!(h.bitmap_len, (10u64 << 30) / CLUSTER_SIZE / 8);
        assert_eq!(h.data_offset % CLUSTER_SIZE, 0);
        assert!(h.data_offset >= 4096 + h.bitmap_len);
        let file_len = h.data_offset + h.virtual_size;
        assert_eq!(Header::decode(&b, file_len).unwrap(), h);
        let none = Header::new(512, None, 99).unwrap();
        assert_eq!(none.backing_size, 0);
        assert_eq!(none.bitmap_len, 1);
        assert_eq!(Header::decode(&none.encode(), 1 << 20).unwrap(), none);
    }

    #[test]
    fn an_overlay_reads_its_clusters_over_its_base_and_is_read_only() {
        let (_dir, _base, overlay, bytes) = setup(3 * C + 1000);
        assert_eq!(image::probe(&overlay).unwrap(), Format::VesselCow);
        let mut d = Cow::open(&overlay).unwrap();
        // Base size rounded up to 512; the tail past the base reads as zeros.
        assert_eq!(d.len(), (3 * C + 1024) as u64);
        let mut expect = bytes.clone();
        expect.resize(3 * C + 1024, 0);
        expect[C..2 * C].fill(0xaa);
        assert_eq!(read(&d, 0, expect.len()), expect);
        assert_eq!(read(&d, C as u64 - 7, 200), &expect[C - 7..C + 193]);
        assert_eq!(d.allocated(), 1);
        assert_eq!(
            d.write_at(&[1], 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        for (offset, len) in [(d.len(), 1), (d.len() - 1, 2), (u64::MAX, 1)] {
            assert!(d.read_at(&mut vec![0; len], offset).is_err());
        }
        let r = inspect(&overlay).unwrap();
        assert_eq!(r.allocated, 1);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn a_retired_overlay_is_no_disk() {
        let (_dir, _base, overlay, _) = setup(C);
        for format in [Format::VesselCow, Format::Raw] {
            let opened = image::open(&overlay, format, true);
            match format {
                Format::VesselCow => {
                    let e = opened.err().unwrap().to_string();
                    assert!(e.contains("retired") && e.contains("convert"), "{e}");
                }
                // Named raw, it is a raw disk: its header is data.
                _ => assert_eq!(read(&*opened.unwrap(), 0, 8), MAGIC.to_vec()),
            }
        }
    }

    #[test]
    fn chains_and_relative_backing_paths_work() {
        let dir = TempDir::new();
        let lone = dir.join("lone.cow");
        write_overlay(&lone, None, 0, C as u64, &[(0, 7)]);
        let top = dir.join("top.cow");
        write_overlay(
            &top,
            Some(Path::new("lone.cow")),
            C as u64,
            2 * C as u64,
            &[],
        );
        let d = Cow::open(&top).unwrap();
        assert_eq!(read(&d, 99, 5), [7; 5]);
        assert_eq!(read(&d, C as u64, 5), [0; 5], "past the backing's size");
    }

    #[test]
    fn a_missing_or_shrunken_backing_is_refused() {
        let (_dir, base, overlay, _) = setup(2 * C);
        std::fs::write(&base, [0u8; 100]).unwrap();
        let e = Cow::open(&overlay).err().unwrap().to_string();
        assert!(e.contains("over.cow") && e.contains("shorter"), "{e}");
        assert!(!inspect(&overlay).unwrap().problems.is_empty());
        std::fs::remove_file(&base).unwrap();
        let e = Cow::open(&overlay).err().unwrap().to_string();
        assert!(e.contains("over.cow") && e.contains("base.img"), "{e}");
        let r = inspect(&overlay).unwrap();
        assert!(r.problems[0].contains("missing"), "{:?}", r.problems);
    }

    #[test]
    fn a_backing_loop_is_refused() {
        let dir = TempDir::new();
        let a = dir.join("a.cow");
        write_overlay(&a, Some(Path::new("a.cow")), C as u64, C as u64, &[]);
        assert!(Cow::open(&a).is_err());
        assert!(inspect(&a).unwrap().problems[0].contains("loop"));
    }

    /// Writes a header with `edit` applied (checksum recomputed unless `edit` breaks it).
    fn corrupt(path: &Path, fix_checksum: bool, edit: impl Fn(&mut Vec<u8>)) {
        let h = Header::new(4 * CLUSTER_SIZE, None, 0).unwrap();
        let mut b = h.encode().to_vec();
        b.resize((h.data_offset + h.virtual_size) as usize, 0);
        edit(&mut b);
        if fix_checksum {
            let sum = fnv1a64(&b[..CHECKSUM_AT]);
            b[CHECKSUM_AT..HEADER_SIZE as usize].copy_from_slice(&sum.to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn corrupt_headers_are_refused_without_panics() {
        let dir = TempDir::new();
        let p = dir.join("bad.cow");
        let set64 = |at: usize, v: u64| {
            move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        let set32 = |at: usize, v: u32| {
            move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, bool, Edit)> = vec![
            ("version", true, Box::new(set32(8, 2))),
            ("header size", true, Box::new(set32(12, 512))),
            ("cluster size", true, Box::new(set32(16, 12))),
            ("cluster size", true, Box::new(set32(16, u32::MAX))),
            ("feature flags", true, Box::new(set32(20, 1))),
            ("virtual size", true, Box::new(set64(24, 0))),
            ("virtual size", true, Box::new(set64(24, 1000))),
            ("virtual size", true, Box::new(set64(24, u64::MAX))),
            ("bitmap length", true, Box::new(set64(24, 1 << 40))),
            ("bitmap length", true, Box::new(set64(40, 0))),
            ("bitmap length", true, Box::new(set64(40, u64::MAX))),
            ("overlaps the header", true, Box::new(set64(32, 0))),
            ("overflows", true, Box::new(set64(32, u64::MAX))),
            ("outside the file", true, Box::new(set64(32, 1 << 40))),
            ("data offset", true, Box::new(set64(48, 4097))),
            ("data offset", true, Box::new(set64(48, 0))),
            ("data offset", true, Box::new(set64(48, u64::MAX - 0xffff))),
            ("backing path length", true, Box::new(set32(64, u32::MAX))),
            (
                "backing path",
                true,
                Box::new(|b: &mut Vec<u8>| {
                    b[64..68].copy_from_slice(&3u32.to_le_bytes());
                    b[96..99].copy_from_slice(b"a\0b");
                }),
            ),
            ("without a backing", true, Box::new(set64(56, 5))),
            ("checksum", false, Box::new(set64(24, 8 * CLUSTER_SIZE))),
            ("checksum", false, Box::new(|b: &mut Vec<u8>| b[4095] ^= 1)),
            ("magic", true, Box::new(|b: &mut Vec<u8>| b[7] = b'2')),
            (
                "too short",
                false,
                Box::new(|b: &mut Vec<u8>| b.truncate(4000)),
            ),
            (
                "too short",
                false,
                Box::new(|b: &mut Vec<u8>| b.truncate(8)),
            ),
            (
                "past the last cluster",
                true,
                Box::new(|b: &mut Vec<u8>| b[4096] = 0x10),
            ),
            (
                "past the end of the file",
                true,
                Box::new(|b: &mut Vec<u8>| {
                    b[4096] = 0x08;
                    b.truncate(2 * C);
                }),
            ),
        ];
        for (want, fix, edit) in &cases {
            corrupt(&p, *fix, edit);
            let e = match Cow::open(&p) {
                Ok(_) => panic!("accepted a header with a bad {want}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("bad.cow") && e.contains(want), "{want}: {e}");
            let ok = match inspect(&p) {
                Err(_) => false,
                Ok(r) => r.problems.is_empty(),
            };
            assert!(!ok, "check passed a bad {want}");
        }
        // Fuzz-ish: every single-byte change of the header fields either fails or stays valid.
        let good = dir.join("good.cow");
        write_overlay(&good, None, 0, 4 * CLUSTER_SIZE, &[(2, 9)]);
        let orig = std::fs::read(&good).unwrap();
        for at in 0..100 {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = orig.clone();
                b[at] = v;
                let sum = fnv1a64(&b[..CHECKSUM_AT]);
                b[CHECKSUM_AT..HEADER_SIZE as usize].copy_from_slice(&sum.to_le_bytes());
                std::fs::write(&p, b).unwrap();
                if let Ok(d) = Cow::open(&p) {
                    let len = d.len();
                    let _ = d.read_at(&mut [0; 512], len.saturating_sub(512));
                }
                let _ = inspect(&p);
            }
        }
    }
}
