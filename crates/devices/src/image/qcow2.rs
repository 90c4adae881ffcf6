//! qcow2 images (versions 2 and 3, as QEMU writes them), read and written through the `imago`
//! crate in its synchronous build (see `docs/design.md` for why that crate).
//!
//! Vessel opens every file of a chain itself, with its own checks and locks, and hands imago
//! the open descriptors; imago is never allowed to open anything on its own (its implicit
//! opens are denied). A qcow2 image's backing file is opened read-only, with the format the
//! image records for it (the backing-format header extension): a backing file whose format is
//! not recorded is refused, never probed. External data files and encryption are refused.
//!
//! Flush: data written since the last flush is made durable (`fdatasync`) before imago writes
//! back its cached L2 and refcount tables, which are then made durable in turn; only then does
//! the guest's FLUSH complete. A `kill -9` therefore loses at most writes the guest had not
//! flushed, and a clean stop flushes.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2 as ImagoQcow2;
use imago::raw::Raw as ImagoRaw;
use imago::{FormatAccess, FormatCreateBuilder, Mapping, StorageOpenOptions};

use super::{
    check_range, qcow2_check, sync_parent_dir, DiskBackend, Extent, Format, HostFiles, ImageError,
    Opener, MAX_CHAIN,
};

/// The first four bytes of every qcow2 image.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// One layer of a chain as imago reads it.
type Layer = FormatAccess<ImagoFile>;

/// An open qcow2 image (with its backing chain).
pub struct Qcow2 {
    image: Layer,
    len: u64,
    readonly: bool,
    /// A descriptor of each file of the chain, by the name its imago storage carries: where
    /// [`DiskBackend::extent`] points a device for clusters stored plainly.
    files: Vec<(PathBuf, File)>,
}

impl Qcow2 {
    /// Opens the qcow2 image at `path`, read-only or read-write, and its backing chain
    /// (read-only, each in the format its overlay records).
    pub fn open(path: &Path, readonly: bool) -> Result<Qcow2, ImageError> {
        Qcow2::open_with(&HostFiles, path, readonly)
    }

    /// [`Qcow2::open`], with the files of the chain coming from `opener`.
    pub fn open_with(
        opener: &dyn Opener,
        path: &Path,
        readonly: bool,
    ) -> Result<Qcow2, ImageError> {
        let mut files = Vec::new();
        let image = open_layer(opener, path, Format::Qcow2, !readonly, 0, &mut files)?;
        Ok(Qcow2 {
            len: image.size(),
            image,
            readonly,
            files,
        })
    }

    /// Our descriptor of the file behind one of the chain's imago storage objects.
    fn file_of(&self, storage: &ImagoFile) -> Option<&File> {
        let name = imago::Storage::get_filename(storage)?;
        self.files.iter().find(|(p, _)| *p == name).map(|(_, f)| f)
    }
}

/// The backing file a qcow2 image names, resolved against the image's directory, and the
/// format it records for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    /// The name as stored in the image.
    pub stored: String,
    /// The path Vessel opens: `stored` if absolute, else relative to the image's directory.
    pub path: PathBuf,
    /// The recorded format.
    pub format: Format,
}

/// Resolves a stored backing file name the way QEMU does: relative to the directory of the
/// image that names it.
pub fn resolve_backing(image: &Path, stored: &str) -> PathBuf {
    let stored = Path::new(stored);
    if stored.is_absolute() {
        stored.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(stored)
    }
}

/// The format a qcow2 image records for its backing file, refusing what Vessel does not open.
pub fn backing_format(image: &Path, recorded: Option<&str>) -> Result<Format, ImageError> {
    match recorded {
        Some("raw") | Some("file") => Ok(Format::Raw),
        Some("qcow2") => Ok(Format::Qcow2),
        Some(other) => Err(ImageError::invalid(
            image,
            format!("its backing file is in format '{other}', which Vessel does not open"),
        )),
        None => Err(ImageError::invalid(
            image,
            "it names a backing file but not its format, and Vessel never guesses a format \
             (record it: qemu-img rebase -u -b BACKING -F raw|qcow2 IMAGE)",
        )),
    }
}

/// Hands the locked, checked descriptor `file` of `path` to imago, keeping a duplicate in
/// `files`.
fn storage(
    file: File,
    path: &Path,
    writable: bool,
    files: &mut Vec<(PathBuf, File)>,
) -> Result<ImagoFile, ImageError> {
    let dup = file
        .try_clone()
        .map_err(ImageError::io(path, "cannot duplicate"))?;
    files.push((path.to_path_buf(), dup));
    ImagoFile::from_open_file(
        file,
        StorageOpenOptions::new().write(writable).filename(path),
    )
    .map_err(ImageError::io(path, "cannot use"))
}

/// Opens one layer of a chain and, below it, its backing layers (read-only).
fn open_layer(
    opener: &dyn Opener,
    path: &Path,
    format: Format,
    writable: bool,
    depth: usize,
    files: &mut Vec<(PathBuf, File)>,
) -> Result<Layer, ImageError> {
    if depth > MAX_CHAIN {
        return Err(ImageError::invalid(
            path,
            format!("backing chain deeper than {MAX_CHAIN} images (a loop?)"),
        ));
    }
    let invalid = |e: io::Error| ImageError::invalid(path, e.to_string());
    match format {
        Format::Raw => {
            let file = opener.open(path, !writable)?;
            let raw = ImagoRaw::open_image(storage(file, path, writable, files)?, writable)
                .map_err(invalid)?;
            Ok(FormatAccess::new(raw))
        }
        Format::Qcow2 => {
            let file = opener.open(path, !writable)?;
            validate(&file, path, writable)?;
            let mut qcow2 = ImagoQcow2::<ImagoFile>::open_image(
                storage(file, path, writable, files)?,
                writable,
            )
            .map_err(invalid)?;
            if qcow2.requires_external_data_file() {
                return Err(ImageError::invalid(
                    path,
                    "it keeps its data in an external data file, which Vessel does not support",
                ));
            }
            qcow2.set_data_file(None);
            let backing = match qcow2.implicit_backing_file() {
                None => None,
                Some(stored) => {
                    let format =
                        backing_format(path, qcow2.implicit_backing_format().map(String::as_str))?;
                    let backing_path = resolve_backing(path, stored);
                    let layer = open_layer(opener, &backing_path, format, false, depth + 1, files)
                        .map_err(|e| {
                            ImageError::invalid(path, format!("its backing image is unusable: {e}"))
                        })?;
                    Some(layer)
                }
            };
            qcow2.set_backing(backing);
            Ok(FormatAccess::new(qcow2))
        }
        Format::VesselCow => Err(super::retired(path)),
    }
}

/// Vessel's own validation of a qcow2 image before imago sees it, the checks of `vessel image
/// check`: the header always (tables inside the file, no unsupported feature); for an image
/// opened read-write, every table and refcount too. imago allocates clusters by its refcounts
/// and trusts them: on an image whose refcounts do not cover what is in use, it would hand out
/// clusters in use (the header among them) or, as fuzzing found, recurse until its thread's
/// stack overflows. So an image with corrupt tables or refcounts is only ever read.
fn validate(file: &File, path: &Path, writable: bool) -> Result<(), ImageError> {
    if !writable {
        return qcow2_check::parse_header(file)
            .map(drop)
            .map_err(|why| ImageError::invalid(path, why));
    }
    let report = qcow2_check::check(file).map_err(|why| ImageError::invalid(path, why))?;
    match report.problems.first() {
        None => Ok(()),
        Some(first) => Err(ImageError::invalid(
            path,
            format!(
                "its tables or refcounts are inconsistent, so it is not opened for writing \
                 ({} problem(s), the first: {first}; `vessel image check` lists them, \
                 `qemu-img check -r all` repairs them)",
                report.problems.len()
            ),
        )),
    }
}

/// Opens the backing chain below a qcow2 image without opening the image itself, and returns
/// the backing's size: `vessel image check` validates a chain exactly as a domain opens it.
pub fn check_backing(image: &Path, backing: &Backing) -> Result<u64, ImageError> {
    let layer = open_layer(
        &HostFiles,
        &backing.path,
        backing.format,
        false,
        1,
        &mut Vec::new(),
    )
    .map_err(|e| ImageError::invalid(image, format!("its backing image is unusable: {e}")))?;
    Ok(layer.size())
}

impl DiskBackend for Qcow2 {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.image.read(buf, offset)
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        check_range(offset, data.len(), self.len)?;
        self.image.write(data, offset)
    }
    fn extent(&self, offset: u64, len: u64, write: bool) -> io::Result<Extent<'_>> {
        if write && self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        check_range(offset, usize::try_from(len).unwrap_or(usize::MAX), self.len)?;
        let (mapping, n) = self.image.get_mapping(offset, len)?;
        let n = n.min(len);
        if n == 0 {
            return Ok(Extent::Format { len });
        }
        Ok(match mapping {
            // A cluster stored plainly; for a write, one this image owns alone (refcount 1),
            // which imago says may be written in place.
            Mapping::Raw {
                storage,
                offset,
                writable,
                ..
            } if writable || !write => match self.file_of(storage) {
                Some(file) => Extent::File {
                    file,
                    offset,
                    len: n,
                },
                None => Extent::Format { len: n },
            },
            Mapping::Zero { .. } if !write => Extent::Zero { len: n },
            _ => Extent::Format { len: n },
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        // 1. The data written since the last flush is durable; 2. only then the tables that
        // map it are written, 3. and made durable in turn.
        self.image.sync()?;
        self.image.flush()?;
        self.image.sync()
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        // A clean stop (power-off, reboot, destroy) keeps what the guest wrote.
        if !self.readonly {
            let _ = self.flush();
        }
    }
}

/// What [`create`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The virtual size.
    pub virtual_size: u64,
    /// The backing file as stored (absolute) and its format.
    pub backing: Option<(PathBuf, Format)>,
}

/// Creates a qcow2 image at `path` (refusing to replace an existing file): `size` bytes or, by
/// default, its backing's size rounded up to 512 bytes; on `backing` (stored as an absolute
/// path, with its format recorded; the chain below is opened and checked first). The file and
/// its directory are synced before this returns.
pub fn create(
    path: &Path,
    size: Option<u64>,
    backing: Option<(&Path, Format)>,
) -> Result<Created, ImageError> {
    let backing = match backing {
        None => None,
        Some((base, format)) => {
            let abs = std::fs::canonicalize(base)
                .map_err(ImageError::io(base, "cannot find the backing image"))?;
            let len = open_layer(&HostFiles, &abs, format, false, 1, &mut Vec::new())?.size();
            let name = abs.to_str().map(str::to_string).ok_or_else(|| {
                ImageError::invalid(&abs, "a backing path must be valid UTF-8 to be stored")
            })?;
            Some((abs, name, format, len))
        }
    };
    let virtual_size = match (size, &backing) {
        (Some(s), _) => s,
        (None, Some((_, _, _, len))) => len.div_ceil(512) * 512,
        (None, None) => {
            return Err(ImageError::invalid(
                path,
                "a size is needed for an image without a backing image",
            ))
        }
    };
    if virtual_size == 0 || !virtual_size.is_multiple_of(512) {
        return Err(ImageError::invalid(
            path,
            format!("size {virtual_size} is not a positive multiple of 512 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ImageError::io(path, "cannot create"))?;
    let made = format_new(path, &file, virtual_size, &backing)
        .and_then(|()| file.sync_all().map_err(ImageError::io(path, "cannot sync")))
        .and_then(|()| sync_parent_dir(path));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(Created {
        virtual_size,
        backing: backing.map(|(abs, _, format, _)| (abs, format)),
    })
}

/// Writes a new qcow2 header and empty tables into the new, empty `file`.
fn format_new(
    path: &Path,
    file: &File,
    virtual_size: u64,
    backing: &Option<(PathBuf, String, Format, u64)>,
) -> Result<(), ImageError> {
    let dup = file
        .try_clone()
        .map_err(ImageError::io(path, "cannot duplicate"))?;
    let storage = ImagoFile::from_open_file(dup, StorageOpenOptions::new().write(true))
        .map_err(ImageError::io(path, "cannot use"))?;
    let mut builder = ImagoQcow2::<ImagoFile>::create_builder(storage).size(virtual_size);
    if let Some((_, name, format, _)) = backing {
        builder = builder.backing(name.clone(), format.to_string());
    }
    builder
        .create()
        .map_err(|e| ImageError::invalid(path, format!("cannot format as qcow2: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::super::{self as image};
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn read(d: &dyn DiskBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        d.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn a_new_image_reads_zeros_and_keeps_what_is_written_across_reopens() {
        let dir = TempDir::new();
        let path = dir.join("disk.qcow2");
        let made = create(&path, Some(8 << 20), None).unwrap();
        assert_eq!(made.virtual_size, 8 << 20);
        assert_eq!(image::probe(&path).unwrap(), Format::Qcow2);
        let data = pattern(200_000, 3);
        {
            let mut disk = Qcow2::open(&path, false).unwrap();
            assert_eq!(disk.len(), 8 << 20);
            assert_eq!(read(&disk, 1 << 20, 4096), vec![0; 4096]);
            disk.write_at(&data, 12_345 * 512).unwrap();
            disk.flush().unwrap();
        }
        let disk = Qcow2::open(&path, true).unwrap();
        assert_eq!(read(&disk, 12_345 * 512, data.len()), data);
        assert!(
            disk.read_at(&mut [0; 512], 8 << 20).is_err(),
            "past the end"
        );
    }

    #[test]
    fn an_overlay_reads_its_base_and_never_writes_it() {
        let dir = TempDir::new();
        let base = dir.join("base.img");
        let base_bytes = pattern(3 << 20, 7);
        std::fs::write(&base, &base_bytes).unwrap();
        let overlay = dir.join("overlay.qcow2");
        let made = create(&overlay, None, Some((&base, Format::Raw))).unwrap();
        assert_eq!(made.virtual_size, 3 << 20);
        let mut disk = image::open(&overlay, Format::Qcow2, false).unwrap();
        assert_eq!(read(&*disk, 0, base_bytes.len()), base_bytes);
        // A partial write into a cluster keeps the base's bytes around it.
        disk.write_at(&[0xee; 100], 70_000).unwrap();
        disk.flush().unwrap();
        let mut want = base_bytes.clone();
        want[70_000..70_100].fill(0xee);
        assert_eq!(read(&*disk, 0, want.len()), want);
        drop(disk);
        assert_eq!(
            std::fs::read(&base).unwrap(),
            base_bytes,
            "the base changed"
        );
    }

    #[test]
    fn chains_open_with_recorded_formats_and_loops_end() {
        let dir = TempDir::new();
        let base = dir.join("base.img");
        std::fs::write(&base, pattern(1 << 20, 1)).unwrap();
        let mid = dir.join("mid.qcow2");
        create(&mid, None, Some((&base, Format::Raw))).unwrap();
        {
            let mut d = Qcow2::open(&mid, false).unwrap();
            d.write_at(&[5; 512], 0).unwrap();
        }
        let top = dir.join("top.qcow2");
        create(&top, Some(2 << 20), Some((&mid, Format::Qcow2))).unwrap();
        let d = Qcow2::open(&top, true).unwrap();
        assert_eq!(d.len(), 2 << 20);
        assert_eq!(read(&d, 0, 512), vec![5; 512]);
        assert_eq!(read(&d, 512, 512), pattern(1 << 20, 1)[512..1024].to_vec());
        assert_eq!(
            read(&d, 1 << 20, 512),
            vec![0; 512],
            "beyond the base: zeros"
        );
        drop(d);
        // A base that names itself: the chain is refused, not followed forever.
        let looped = dir.join("loop.qcow2");
        let other = dir.join("other.qcow2");
        create(&other, Some(1 << 20), None).unwrap();
        create(&looped, None, Some((&other, Format::Qcow2))).unwrap();
        std::fs::remove_file(&other).unwrap();
        std::os::unix::fs::symlink(&looped, &other).unwrap();
        let err = Qcow2::open(&looped, true).err().unwrap().to_string();
        assert!(err.contains("deeper than"), "{err}");
    }

    #[test]
    fn a_raw_backing_recorded_as_raw_stays_raw_whatever_it_holds() {
        // A guest owning the base could write a qcow2 header naming a host file into it: the
        // overlay records "raw", so the header is data and the host file is never opened.
        let dir = TempDir::new();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"host secret").unwrap();
        let evil = dir.join("evil.qcow2");
        create(&evil, Some(1 << 20), None).unwrap();
        let base = dir.join("base.img");
        std::fs::copy(&evil, &base).unwrap();
        let overlay = dir.join("overlay.qcow2");
        create(&overlay, None, Some((&base, Format::Raw))).unwrap();
        let d = Qcow2::open(&overlay, true).unwrap();
        assert_eq!(
            read(&d, 0, 4),
            MAGIC.to_vec(),
            "the header bytes read as data"
        );
    }

    #[test]
    fn images_lock_and_bases_are_shared() {
        let dir = TempDir::new();
        let base = dir.join("base.img");
        std::fs::write(&base, vec![0; 1 << 20]).unwrap();
        let a = dir.join("a.qcow2");
        let b = dir.join("b.qcow2");
        create(&a, None, Some((&base, Format::Raw))).unwrap();
        create(&b, None, Some((&base, Format::Raw))).unwrap();
        let _a = Qcow2::open(&a, false).unwrap();
        let _b = Qcow2::open(&b, false).unwrap();
        let again = Qcow2::open(&a, false).err().unwrap();
        assert!(matches!(again, ImageError::Locked { .. }), "{again}");
        let base_rw = image::open(&base, Format::Raw, false).err().unwrap();
        assert!(
            base_rw.to_string().contains("in use"),
            "a base under overlays opened read-write: {base_rw}"
        );
    }

    #[test]
    fn an_image_whose_refcounts_miss_its_metadata_is_only_read() {
        // Found by fuzzing: with no refcount blocks at all, imago's allocator recursed until its
        // stack overflowed on the first write (and would have handed out cluster 0).
        use std::os::unix::fs::FileExt;
        let dir = TempDir::new();
        let path = dir.join("norefs.qcow2");
        create(&path, Some(1 << 20), None).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut rt = [0u8; 8];
        f.read_exact_at(&mut rt, 48).unwrap();
        f.write_all_at(&[0; 8], u64::from_be_bytes(rt)).unwrap();
        drop(f);
        let err = Qcow2::open(&path, false).err().unwrap().to_string();
        assert!(
            err.contains("not opened for writing") && err.contains("refcount"),
            "{err}"
        );
        let ro = Qcow2::open(&path, true).unwrap();
        assert_eq!(read(&ro, 0, 512), vec![0; 512]);
    }

    #[test]
    fn a_chain_opened_once_on_the_host_reopens_from_its_handed_descriptors_alone() {
        use super::super::{Handed, Recording};
        let dir = TempDir::new();
        let base = dir.join("base.img");
        std::fs::write(&base, pattern(1 << 20, 9)).unwrap();
        let top = dir.join("top.qcow2");
        create(&top, None, Some((&base, Format::Raw))).unwrap();
        let recording = Recording::default();
        drop(image::open_with(&recording, &top, Format::Qcow2, false).unwrap());
        let files = recording.into_files();
        let opened: Vec<_> = files.iter().map(|f| (f.path.clone(), f.readonly)).collect();
        assert_eq!(opened, vec![(top.clone(), false), (base.clone(), true)]);
        // The paths are gone; the descriptors are all a domain process has.
        std::fs::remove_file(&top).unwrap();
        std::fs::remove_file(&base).unwrap();
        let handed = Handed::new(files);
        for _boot in 0..2 {
            let mut d = image::open_with(&handed, &top, Format::Qcow2, false).unwrap();
            assert_eq!(read(&*d, 512, 512), pattern(1 << 20, 9)[512..1024].to_vec());
            d.write_at(&[4; 512], 0).unwrap();
            assert_eq!(read(&*d, 0, 512), vec![4; 512]);
        }
        let err = image::open_with(&handed, &top, Format::Qcow2, true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not handed"), "{err}");
    }

    #[test]
    fn create_refuses_to_replace_and_validates_its_backing() {
        let dir = TempDir::new();
        let path = dir.join("x.qcow2");
        create(&path, Some(1 << 20), None).unwrap();
        assert!(create(&path, Some(1 << 20), None).is_err(), "replaced");
        let err = create(
            &dir.join("y.qcow2"),
            None,
            Some((&dir.join("nope"), Format::Raw)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot find"), "{err}");
        assert!(!dir.join("y.qcow2").exists());
        let err = create(&dir.join("z.qcow2"), Some(1000), None).unwrap_err();
        assert!(err.to_string().contains("multiple of 512"), "{err}");
        assert!(!dir.join("z.qcow2").exists());
    }
}
