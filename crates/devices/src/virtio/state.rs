//! The saved state of one virtio device on its transport: plain, versioned, checksummed,
//! size-capped and validated on load (`docs/formats.md`, "Device state").
//!
//! A saved state is a frame — magic, version, payload length, payload, CRC-32 — around a
//! payload the transport writes ([`super::mmio::MmioTransport::save`]): its registers, each
//! queue's state, then the device's own section ([`super::VirtioDevice::save_state`]), whose
//! layout belongs to the device type. Every number is little-endian and every read is
//! bounded: a hostile or damaged state is refused with an error that says what is wrong,
//! never a panic, and nothing is restored from it.
//!
//! This module holds the frame, the little-endian [`Writer`] and [`Reader`] that every
//! section is written and read with, and the queue record, so that a device's section is a few
//! lines of `put_*` and `get_*`.

use vring::{Queue, QueueError, QueueState};

/// The first eight bytes of a saved device state.
pub const MAGIC: [u8; 8] = *b"VSLDEVST";
/// The format's version. A reader refuses any other.
pub const VERSION: u32 = 1;
/// The largest saved state accepted, in bytes, frame included: room for a VIF's pending
/// frames (1 MiB at most) with plenty to spare, and a bound on what a load allocates.
pub const MAX_STATE: usize = 4 << 20;
/// Bytes before the payload: magic, version, payload length.
pub const HEADER_LEN: usize = 16;
/// Bytes after the payload: the CRC-32.
pub const TRAILER_LEN: usize = 4;

/// Why a saved state was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Shorter than its frame, or than a field it must hold.
    #[error("the saved state is truncated: it ends inside {0}")]
    Truncated(&'static str),
    /// Not a saved device state.
    #[error("not a saved device state (bad magic)")]
    BadMagic,
    /// Written by a format this Vessel does not read.
    #[error(
        "saved device state version {0} is not supported (this Vessel reads version {VERSION})"
    )]
    Version(u32),
    /// Larger than [`MAX_STATE`].
    #[error("the saved state is {0} bytes, more than the {MAX_STATE} allowed")]
    TooLarge(usize),
    /// The payload length disagrees with the bytes there are.
    #[error("the saved state's payload length {said} disagrees with the {actual} bytes present")]
    Length {
        /// What the header says.
        said: usize,
        /// What there is.
        actual: usize,
    },
    /// The checksum does not match: the bytes were damaged.
    #[error("the saved state's checksum does not match (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The stored CRC-32.
        stored: u32,
        /// The CRC-32 of the bytes.
        computed: u32,
    },
    /// Bytes left over after the last field.
    #[error("the saved state has {0} bytes after its last field")]
    Trailing(usize),
    /// The state is of another device than the one it is restored into.
    #[error("the saved state does not fit this device: {0}")]
    Mismatch(String),
    /// A transport register holds a value the transport could never have had.
    #[error("the saved transport state is impossible: {0}")]
    Transport(String),
    /// A queue's state is impossible, or does not fit guest memory.
    #[error("queue {index}: {source}")]
    Queue {
        /// Which queue.
        index: usize,
        /// What is wrong.
        source: QueueError,
    },
    /// The device's own section is impossible.
    #[error("the device's saved state is impossible: {0}")]
    Device(String),
}

/// CRC-32 (IEEE 802.3: reflected polynomial 0xEDB88320, initial value and final XOR all ones)
/// of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Frames `payload`: magic, version, length, payload, CRC-32 of all before it.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The payload of a framed state, once its size, magic, version, length and checksum are
/// right (in that order, so the error names the first thing wrong).
pub fn unseal(bytes: &[u8]) -> Result<&[u8], StateError> {
    if bytes.len() > MAX_STATE {
        return Err(StateError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(StateError::Truncated("the frame"));
    }
    let mut r = Reader::new(bytes);
    if r.bytes(8, "the magic")? != MAGIC {
        return Err(StateError::BadMagic);
    }
    let version = r.u32("the version")?;
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let said = r.u32("the length")? as usize;
    let actual = bytes.len() - HEADER_LEN - TRAILER_LEN;
    if said != actual {
        return Err(StateError::Length { said, actual });
    }
    let body = &bytes[..HEADER_LEN + actual];
    let stored = u32::from_le_bytes(
        bytes[HEADER_LEN + actual..]
            .try_into()
            .map_err(|_| StateError::Truncated("the checksum"))?,
    );
    let computed = crc32(body);
    if stored != computed {
        return Err(StateError::Checksum { stored, computed });
    }
    Ok(&bytes[HEADER_LEN..HEADER_LEN + actual])
}

/// Writes little-endian fields.
#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Raw bytes (the reader must know their length).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Bytes preceded by their length as a u32.
    pub fn blob(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.bytes(v)
    }
    /// What was written.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads little-endian fields, each bounded by what is left.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }
    /// The next `n` bytes; `what` names the field in the error.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        if n > self.bytes.len() {
            return Err(StateError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        self.bytes(N, what)?
            .try_into()
            .map_err(|_| StateError::Truncated(what))
    }
    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// A byte that must be 0 or 1.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, StateError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(StateError::Device(format!("{what} is {other}, not 0 or 1"))),
        }
    }
    /// A little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Bytes preceded by their length as a u32, at most `max` of them.
    pub fn blob(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(StateError::Device(format!(
                "{what} holds {n} bytes, more than {max}"
            )));
        }
        self.bytes(n, what)
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }
    /// Ends the reading: every byte must have been read.
    pub fn finish(self) -> Result<(), StateError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(StateError::Trailing(n)),
        }
    }
}

/// Bits of a queue record's flags byte.
const Q_READY: u8 = 1;
const Q_EVENT_IDX: u8 = 2;
const Q_BROKEN: u8 = 4;

/// Writes one queue's record (see `docs/formats.md`).
pub fn put_queue(w: &mut Writer, queue: &Queue) {
    let s = queue.state();
    let bit = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = bit(s.ready, Q_READY) | bit(s.event_idx, Q_EVENT_IDX) | bit(s.broken, Q_BROKEN);
    w.u16(queue.max_size())
        .u16(s.size)
        .u8(flags)
        .u64(s.desc_table)
        .u64(s.avail_ring)
        .u64(s.used_ring)
        .u16(s.next_avail)
        .u16(s.next_used)
        .u16(s.signalled_used);
}

/// Reads one queue's record: the queue's maximum size as saved, and its state (not yet
/// checked against a queue: [`Queue::set_state`] does that).
pub fn get_queue(r: &mut Reader<'_>) -> Result<(u16, QueueState), StateError> {
    let max_size = r.u16("a queue's maximum size")?;
    let size = r.u16("a queue's size")?;
    let flags = r.u8("a queue's flags")?;
    if flags & !(Q_READY | Q_EVENT_IDX | Q_BROKEN) != 0 {
        return Err(StateError::Transport(format!(
            "a queue's flags {flags:#x} hold unknown bits"
        )));
    }
    let state = QueueState {
        size,
        ready: flags & Q_READY != 0,
        event_idx: flags & Q_EVENT_IDX != 0,
        broken: flags & Q_BROKEN != 0,
        desc_table: r.u64("a queue's descriptor table")?,
        avail_ring: r.u64("a queue's available ring")?,
        used_ring: r.u64("a queue's used ring")?,
        next_avail: r.u16("a queue's next avail index")?,
        next_used: r.u16("a queue's next used index")?,
        signalled_used: r.u16("a queue's signalled used index")?,
    };
    Ok((max_size, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_crc32_ieee() {
        // The standard check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_frame_round_trips_and_each_damage_is_named() {
        let sealed = seal(b"payload");
        assert_eq!(unseal(&sealed).unwrap(), b"payload");
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + 2] ^= 1;
        assert!(matches!(unseal(&flipped), Err(StateError::Checksum { .. })));
        let mut magic = sealed.clone();
        magic[0] = b'X';
        assert_eq!(unseal(&magic), Err(StateError::BadMagic));
        let mut version = sealed.clone();
        version[8] = 2;
        assert_eq!(unseal(&version), Err(StateError::Version(2)));
        assert!(matches!(
            unseal(&sealed[..sealed.len() - 1]),
            Err(StateError::Length { .. })
        ));
        assert_eq!(
            unseal(&sealed[..10]),
            Err(StateError::Truncated("the frame"))
        );
        let huge = vec![0u8; MAX_STATE + 1];
        assert_eq!(unseal(&huge), Err(StateError::TooLarge(MAX_STATE + 1)));
    }

    #[test]
    fn reads_past_the_end_are_errors_not_panics() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert_eq!(r.u16("x").unwrap(), 1);
        assert_eq!(r.u16("y"), Err(StateError::Truncated("y")));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.blob(16, "z").is_err());
        let mut r = Reader::new(&[2]);
        assert!(r.bool("b").is_err());
        assert_eq!(Reader::new(&[0]).finish(), Err(StateError::Trailing(1)));
    }
}
