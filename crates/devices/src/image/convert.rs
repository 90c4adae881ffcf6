//! `vessel image convert`: copies the disk an image holds into a new raw or qcow2 image, so
//! images of the retired `VSLCOW01` format (and qcow2 chains, which come out flattened) become
//! disks a domain can use. Zero stretches are not written, so the result stays sparse.

use std::path::Path;

use super::{cow::Cow, create_raw, open, qcow2, DiskBackend, Format, ImageError};

/// Bytes copied per step.
const CHUNK: usize = 1 << 20;

/// What a conversion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converted {
    /// The disk's size (the source's, rounded up to 512 bytes).
    pub virtual_size: u64,
    /// Bytes that were not zero and were written.
    pub data_bytes: u64,
}

/// Opens `path` read-only in `format` to read its disk (the retired format included).
pub fn open_source(path: &Path, format: Format) -> Result<Box<dyn DiskBackend>, ImageError> {
    match format {
        Format::VesselCow => Ok(Box::new(Cow::open(path)?)),
        _ => open(path, format, true),
    }
}

/// Copies the disk of `source` (in `source_format`) into a new image at `dest` in `format`
/// (raw or qcow2 without a backing file), which must not exist. On failure `dest` is removed.
pub fn convert(
    source: &Path,
    source_format: Format,
    dest: &Path,
    format: Format,
) -> Result<Converted, ImageError> {
    let src = open_source(source, source_format)?;
    let virtual_size = src.len().div_ceil(512) * 512;
    match format {
        Format::Raw => create_raw(dest, virtual_size)?,
        Format::Qcow2 => {
            qcow2::create(dest, Some(virtual_size), None)?;
        }
        Format::VesselCow => return Err(super::retired(dest)),
    }
    let copied = open(dest, format, false).and_then(|mut out| {
        let copied = copy(&*src, &mut *out, dest)?;
        out.flush().map_err(ImageError::io(dest, "cannot flush"))?;
        Ok(copied)
    });
    match copied {
        Ok(data_bytes) => Ok(Converted {
            virtual_size,
            data_bytes,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(dest);
            Err(e)
        }
    }
}

/// Copies every chunk of `src` that is not all zeros; returns the bytes written.
fn copy(src: &dyn DiskBackend, out: &mut dyn DiskBackend, dest: &Path) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    let mut at = 0;
    while at < src.len() {
        let n = (src.len() - at).min(CHUNK as u64) as usize;
        let piece = &mut buf[..n];
        src.read_at(piece, at).map_err(|e| ImageError::Io {
            path: dest.to_path_buf(),
            what: format!("cannot read the source at byte {at}"),
            source: e,
        })?;
        if piece.iter().any(|&b| b != 0) {
            out.write_at(piece, at)
                .map_err(ImageError::io(dest, "cannot write"))?;
            written += n as u64;
        }
        at += n as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    fn read_all(d: &dyn DiskBackend) -> Vec<u8> {
        let mut buf = vec![0; d.len() as usize];
        d.read_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn a_chain_converts_to_a_flat_image_in_either_format() {
        let dir = TempDir::new();
        let base = dir.join("base.img");
        let mut bytes = vec![0u8; 3 << 20];
        bytes[..1000].fill(3);
        bytes[2 << 20..(2 << 20) + 10].fill(4);
        std::fs::write(&base, &bytes).unwrap();
        let top = dir.join("top.qcow2");
        qcow2::create(&top, None, Some((&base, Format::Raw))).unwrap();
        {
            let mut d = open(&top, Format::Qcow2, false).unwrap();
            d.write_at(&[9; 512], 1 << 20).unwrap();
        }
        bytes[1 << 20..(1 << 20) + 512].fill(9);
        for format in [Format::Qcow2, Format::Raw] {
            let out = dir.join(&format!("flat.{format}"));
            let done = convert(&top, Format::Qcow2, &out, format).unwrap();
            assert_eq!(done.virtual_size, 3 << 20);
            assert_eq!(done.data_bytes, 3 << 20, "three non-zero chunks");
            let d = open(&out, format, true).unwrap();
            assert_eq!(read_all(&*d), bytes, "{format}");
            if format == Format::Qcow2 {
                let f = std::fs::File::open(&out).unwrap();
                let report = super::super::qcow2_check::check(&f).unwrap();
                assert!(report.header.backing_file.is_none());
                assert!(report.problems.is_empty(), "{:?}", report.problems);
            }
        }
        let err = convert(&top, Format::Qcow2, &dir.join("flat.raw"), Format::Raw).unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
        assert_eq!(
            std::fs::read(dir.join("flat.raw")).unwrap(),
            bytes,
            "replaced"
        );
    }
}
