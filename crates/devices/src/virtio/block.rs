//! virtio-blk: a virtual block device (VBD) on a disk image (raw file or block device, or
//! qcow2, behind [`DiskBackend`]).
//!
//! Requests are served synchronously on the domain's I/O thread. Every guest-supplied number
//! (sector, lengths) is checked against the disk's size with overflow-safe arithmetic. On a raw
//! image, and on the clusters of a qcow2 image that are stored plainly, data moves between the
//! file and the guest's buffers in one vectored call per stretch ([`DiskBackend::extent`]:
//! `preadv`/`pwritev` on guest RAM, no copy in between); what only the format can produce
//! (copy on write, compressed clusters) goes through a bounded bounce buffer. A disk whose logical blocks are larger than 512
//! bytes (a block device) tells the guest so (`VIRTIO_BLK_F_BLK_SIZE`). Either way a guest cannot make the VMM allocate
//! without limit. A
//! read-only VBD advertises `VIRTIO_BLK_F_RO` and also refuses writes itself with an I/O error,
//! so the file's bytes stay identical whatever the guest's driver does. FLUSH reaches stable
//! storage (`fdatasync`) before it completes.
//!
//! Control ([`Action::SetRateLimit`]) changes the rate limits of a running disk. Activation
//! is refused if the driver did not enable the request queue. Saved state (`docs/formats.md`):
//! the capacity (checked on restore), the request held back by the rate limit (by its chain's
//! head) and the limiter's buckets.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::image::{DiskBackend, Extent, Raw};

use crate::rate_limit::{RateLimiter, TokenBucket};

use super::state::{Reader, StateError, Writer};
use super::{
    check_descriptors, device_id, Action, Counters, DescriptorChain, DeviceError, Processed, Queue,
    QueueError, VirtioDevice, Wake,
};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const MAX_BOUNCE: usize = 128 * 1024;
const QUEUE_SIZE: u16 = 256;
/// Largest number of data segments per request the device accepts (`seg_max`).
const SEG_MAX: u32 = 126;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// The names of a VBD's counters, as the API and metrics show them; the indices below follow.
pub const COUNTER_NAMES: &[&str] = &[
    "read_bytes",
    "write_bytes",
    "read_ops",
    "write_ops",
    "flush_ops",
    "errors",
    "throttled",
];
const READ_BYTES: usize = 0;
const WRITE_BYTES: usize = 1;
const READ_OPS: usize = 2;
const WRITE_OPS: usize = 3;
const FLUSH_OPS: usize = 4;
const ERRORS: usize = 5;
const THROTTLED: usize = 6;

/// Per-VBD counters, as a snapshot (see [`Block::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Bytes read by the guest.
    pub read_bytes: u64,
    /// Bytes written by the guest.
    pub write_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
    /// Flush requests.
    pub flush_ops: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Times a request had to wait for the rate limit.
    pub throttled: u64,
}

/// A block device backed by a disk image.
pub struct Block {
    disk: Box<dyn DiskBackend>,
    capacity: u64,
    block_size: u32,
    readonly: bool,
    id: [u8; 20],
    bounce: Vec<u8>,
    limiter: RateLimiter,
    /// A request popped but held back by the rate limit, served first next time.
    held: Option<DescriptorChain>,
    wake_at: Option<Instant>,
    /// Counters, shared with the control plane (see [`COUNTER_NAMES`]).
    counters: Arc<Counters>,
}

impl Block {
    /// A VBD on `file` (opened read-only or read-write by the caller to match `readonly`);
    /// `id` is what the guest reads as its serial (truncated to 20 bytes).
    pub fn new(file: File, readonly: bool, id: &str) -> std::io::Result<Self> {
        Ok(Block::with_backend(
            Box::new(Raw::new(file, readonly)?),
            readonly,
            id,
        ))
    }

    /// A VBD on any disk image (see [`crate::image::open`]); a read-only VBD never writes it.
    pub fn with_backend(disk: Box<dyn DiskBackend>, readonly: bool, id: &str) -> Self {
        let len = disk.len();
        let mut serial = [0u8; 20];
        let n = id.len().min(20);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let block_size = disk.block_size();
        Block {
            disk,
            capacity: len / SECTOR_SIZE,
            block_size,
            readonly,
            id: serial,
            bounce: Vec::new(),
            limiter: RateLimiter::default(),
            held: None,
            wake_at: None,
            counters: Counters::new(COUNTER_NAMES),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> BlockStats {
        let c = &self.counters;
        BlockStats {
            read_bytes: c.get(READ_BYTES),
            write_bytes: c.get(WRITE_BYTES),
            read_ops: c.get(READ_OPS),
            write_ops: c.get(WRITE_OPS),
            flush_ops: c.get(FLUSH_OPS),
            errors: c.get(ERRORS),
            throttled: c.get(THROTTLED),
        }
    }

    /// Limits the device to `bytes_per_sec` of data and `ops_per_sec` requests (0: no limit).
    /// Requests over the limit wait in the ring; the guest sees them complete later.
    pub fn set_rate_limit(&mut self, bytes_per_sec: u64, ops_per_sec: u64) {
        self.limiter = RateLimiter::new(bytes_per_sec, ops_per_sec);
    }

    /// Serves one request; returns the status and the bytes written into the guest's buffers.
    fn serve(
        &mut self,
        chain: &DescriptorChain,
        mem: &dyn vring::GuestMemory,
    ) -> Result<(u8, u64), QueueError> {
        let mut header = [0u8; 16];
        if chain.read_at(mem, 0, &mut header)? < header.len() {
            return Ok((S_IOERR, 0));
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        // The last writable byte is the status; everything before it is data.
        let data_in = chain.writable_len().saturating_sub(1);
        let data_out = chain.readable_len().saturating_sub(16);
        match kind {
            T_IN => {
                let Some(offset) = self.range(sector, data_in) else {
                    return Ok((S_IOERR, 0));
                };
                let mut done = 0;
                while done < data_in {
                    let (pos, want) = (offset + done, data_in - done);
                    let Ok(extent) = self.disk.extent(pos, want, false) else {
                        return Ok((S_IOERR, done));
                    };
                    let n = match extent {
                        // Straight from the image into the guest's buffers, in one call.
                        Extent::File { file, offset, len } if (1..=want).contains(&len) => {
                            let pieces = chain.writable_segments(done, len as usize)?;
                            if mem.read_file(&pieces, file, offset).is_err() {
                                return Ok((S_IOERR, done));
                            }
                            len
                        }
                        Extent::Zero { len } if (1..=want).contains(&len) => {
                            let n = len.min(MAX_BOUNCE as u64) as usize;
                            self.bounce.clear();
                            self.bounce.resize(n, 0);
                            chain.write_at(mem, done, &self.bounce)?;
                            n as u64
                        }
                        Extent::Format { len } if (1..=want).contains(&len) => {
                            let n = len.min(MAX_BOUNCE as u64) as usize;
                            self.bounce.resize(n, 0);
                            if self.disk.read_at(&mut self.bounce, pos).is_err() {
                                return Ok((S_IOERR, done));
                            }
                            chain.write_at(mem, done, &self.bounce)?;
                            n as u64
                        }
                        _ => return Ok((S_IOERR, done)),
                    };
                    done += n;
                }
                self.counters.add(READ_OPS, 1);
                self.counters.add(READ_BYTES, data_in);
                Ok((S_OK, data_in))
            }
            T_OUT => {
                if self.readonly {
                    return Ok((S_IOERR, 0));
                }
                let Some(offset) = self.range(sector, data_out) else {
                    return Ok((S_IOERR, 0));
                };
                let mut done = 0;
                while done < data_out {
                    let (pos, want) = (offset + done, data_out - done);
                    let Ok(extent) = self.disk.extent(pos, want, true) else {
                        return Ok((S_IOERR, 0));
                    };
                    let n = match extent {
                        // Straight from the guest's buffers into the image, in one call.
                        Extent::File { file, offset, len } if (1..=want).contains(&len) => {
                            let pieces = chain.readable_segments(16 + done, len as usize)?;
                            if mem.write_file(&pieces, file, offset).is_err() {
                                return Ok((S_IOERR, 0));
                            }
                            len
                        }
                        Extent::Format { len } if (1..=want).contains(&len) => {
                            let n = len.min(MAX_BOUNCE as u64) as usize;
                            self.bounce.resize(n, 0);
                            chain.read_at(mem, 16 + done, &mut self.bounce)?;
                            if self.disk.write_at(&self.bounce, pos).is_err() {
                                return Ok((S_IOERR, 0));
                            }
                            n as u64
                        }
                        _ => return Ok((S_IOERR, 0)),
                    };
                    done += n;
                }
                self.counters.add(WRITE_OPS, 1);
                self.counters.add(WRITE_BYTES, data_out);
                Ok((S_OK, 0))
            }
            T_FLUSH => {
                self.counters.add(FLUSH_OPS, 1);
                if self.readonly {
                    return Ok((S_OK, 0));
                }
                match self.disk.flush() {
                    Ok(()) => Ok((S_OK, 0)),
                    Err(_) => Ok((S_IOERR, 0)),
                }
            }
            T_GET_ID => {
                let n = data_in.min(20) as usize;
                chain.write_at(mem, 0, &self.id[..n])?;
                Ok((S_OK, n as u64))
            }
            _ => Ok((S_UNSUPP, 0)),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if they lie inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(start)
    }
}

impl VirtioDevice for Block {
    fn label(&self) -> String {
        let end = self
            .id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.id.len());
        String::from_utf8_lossy(&self.id[..end]).into_owned()
    }
    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
    fn device_id(&self) -> u32 {
        device_id::BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        let blk_size = if self.block_size > SECTOR_SIZE as u32 {
            F_BLK_SIZE
        } else {
            0
        };
        F_SEG_MAX | F_FLUSH | blk_size | if self.readonly { F_RO } else { 0 }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (u64, sectors) at 0, size_max (u32) at 8, seg_max (u32) at 12, geometry
        // (4 bytes) at 16, blk_size (u32) at 20.
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        let start = offset as usize;
        match config.get(start..start.saturating_add(data.len())) {
            Some(bytes) if offset < 24 => data.copy_from_slice(bytes),
            _ => data.fill(0),
        }
    }
    fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }
    fn reset(&mut self) {
        self.held = None;
        self.wake_at = None;
    }
    fn activate(&mut self, _features: u64, queues: &[Queue]) -> Result<(), DeviceError> {
        if queues.first().is_some_and(Queue::ready) {
            Ok(())
        } else {
            Err(DeviceError::Refused(
                "the request queue is not ready".into(),
            ))
        }
    }
    fn control(&mut self, action: Action, fds: Vec<OwnedFd>) -> Result<Wake, DeviceError> {
        check_descriptors(&action, &fds)?;
        match action {
            Action::SetRateLimit { bps, iops } => {
                self.set_rate_limit(bps, iops);
                // A request held back is judged again under the new limits, at once.
                self.wake_at = None;
                Ok(Wake::queues(1))
            }
            other => Err(DeviceError::Unsupported {
                device: "block",
                action: other.name(),
            }),
        }
    }
    fn save_state(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.capacity)
            .u8(u8::from(self.held.is_some()))
            .u16(self.held.as_ref().map_or(0, |c| c.head));
        let mut limiter = self.limiter.clone();
        for bucket in limiter.buckets(Instant::now()) {
            let (rate, tokens) = bucket.unwrap_or((0, 0.0));
            w.u64(rate).u64(tokens.to_bits());
        }
        w.finish()
    }
    fn restore_state(
        &mut self,
        bytes: &[u8],
        queues: &[Queue],
        mem: &dyn vring::GuestMemory,
    ) -> Result<(), StateError> {
        let mut r = Reader::new(bytes);
        let capacity = r.u64("the disk's capacity")?;
        if capacity != self.capacity {
            return Err(StateError::Mismatch(format!(
                "the disk had {capacity} sectors, this one has {}",
                self.capacity
            )));
        }
        let held = r.bool("the held flag")?;
        let head = r.u16("the held request's head")?;
        let now = Instant::now();
        let mut buckets = [None, None];
        for (slot, what) in buckets.iter_mut().zip(["bytes", "requests"]) {
            let rate = r.u64("a bucket's rate")?;
            let tokens = f64::from_bits(r.u64("a bucket's tokens")?);
            if rate == 0 {
                continue;
            }
            *slot = Some(TokenBucket::with_tokens(rate, tokens, now).ok_or_else(|| {
                StateError::Device(format!(
                    "block: the {what} bucket holds {tokens} tokens at {rate} a second"
                ))
            })?);
        }
        r.finish()?;
        let held = if held {
            let queue = queues
                .first()
                .ok_or_else(|| StateError::Device("block: a held request, but no queue".into()))?;
            Some(
                queue
                    .chain_at(mem, head)
                    .map_err(|source| StateError::Queue { index: 0, source })?,
            )
        } else {
            None
        };
        let [bytes_bucket, ops_bucket] = buckets;
        self.limiter = RateLimiter::from_buckets(bytes_bucket, ops_bucket);
        // A held request is judged again as soon as the device is served.
        self.wake_at = held.as_ref().map(|_| now);
        self.held = held;
        Ok(())
    }
    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        loop {
            let chain = match self.held.take() {
                Some(chain) => chain,
                None => match queue.pop(mem)? {
                    Some(chain) => chain,
                    None => break,
                },
            };
            if self.limiter.is_limited() {
                // The data a request moves: what it carries after the header, or asks for
                // before the status byte.
                let bytes = chain.readable_len().saturating_sub(16)
                    + chain.writable_len().saturating_sub(1);
                let now = Instant::now();
                if let Err(wait) = self.limiter.admit(bytes, now) {
                    self.held = Some(chain);
                    self.wake_at = Some(now + wait);
                    self.counters.add(THROTTLED, 1);
                    done.throttled = true;
                    break;
                }
            }
            self.wake_at = None;
            let (status, written) = self.serve(&chain, mem)?;
            if status != S_OK {
                self.counters.add(ERRORS, 1);
            }
            let status_at = chain.writable_len().saturating_sub(1);
            let wrote_status =
                chain.writable_len() > 0 && chain.write_at(mem, status_at, &[status])? == 1;
            let used = written + u64::from(wrote_status);
            queue.add_used(mem, chain.head, u32::try_from(used).unwrap_or(u32::MAX))?;
            done.completed += 1;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vring::mock::{MockBuffer, MockDriver};

    /// The (addr, len) of each buffer of the chain at `head`, read back from the descriptor table.
    fn buffers(driver: &MockDriver, head: u16) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let mut i = head;
        loop {
            let d = driver.read(driver.desc_table() + 16 * u64::from(i), 16);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
            let flags = u16::from_le_bytes([d[12], d[13]]);
            out.push((addr, len));
            if flags & 1 == 0 {
                return out;
            }
            i = u16::from_le_bytes([d[14], d[15]]);
        }
    }

    fn header(kind: u32, sector: u64) -> Vec<u8> {
        [&kind.to_le_bytes()[..], &[0; 4], &sector.to_le_bytes()].concat()
    }

    fn disk(readonly: bool) -> (tempfile_like::TempFile, Block) {
        let tmp =
            tempfile_like::TempFile::with_bytes(&(0..8192u32).map(|i| i as u8).collect::<Vec<_>>());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&tmp.path)
            .unwrap();
        let block = Block::new(file, readonly, "disk-under-test-with-a-long-id").unwrap();
        (tmp, block)
    }

    /// Runs one request; returns (status byte, used length, data the device wrote).
    fn request(block: &mut Block, bufs: &[MockBuffer<'_>]) -> (u8, u32, Vec<u8>) {
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut queue = driver.queue();
        let head = driver.add_chain(bufs);
        let done = block.process_queue(0, &mut queue, driver.mem()).unwrap();
        assert_eq!(done.completed, 1);
        let used = driver.used();
        assert_eq!(used.len(), 1);
        let bufs = buffers(&driver, head);
        let (status_addr, status_len) = *bufs.last().unwrap();
        let status = driver.read(status_addr + status_len as u64 - 1, 1)[0];
        let data = if bufs.len() > 2 {
            let (a, l) = bufs[bufs.len() - 2];
            driver.read(a, l)
        } else {
            Vec::new()
        };
        (status, used[0].len, data)
    }

    #[test]
    fn reads_writes_flushes_and_identifies() {
        let (tmp, mut block) = disk(false);
        let payload = vec![0xabu8; 512];
        let (s, len, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_OUT, 3)),
                MockBuffer::Readable(&payload),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!((s, len), (S_OK, 1));
        assert_eq!(&std::fs::read(&tmp.path).unwrap()[1536..2048], &payload[..]);
        let (s, len, data) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_IN, 3)),
                MockBuffer::Writable(512),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!((s, len, data), (S_OK, 513, payload));
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_FLUSH, 0)),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        let (s, len, id) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_GET_ID, 0)),
                MockBuffer::Writable(20),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!((s, len), (S_OK, 21));
        assert_eq!(&id, b"disk-under-test-with");
        assert_eq!(block.stats().write_ops, 1);
        assert_eq!(block.stats().read_bytes, 512);
        // The control plane's copy of the counters, read without the device: the same values
        // under the names the API shows.
        let shared = block.counters().snapshot();
        assert_eq!(
            shared,
            vec![
                ("read_bytes", 512),
                ("write_bytes", 512),
                ("read_ops", 1),
                ("write_ops", 1),
                ("flush_ops", 1),
                ("errors", 0),
                ("throttled", 0),
            ]
        );
    }

    #[test]
    fn bad_requests_get_error_statuses() {
        let (tmp, mut block) = disk(false);
        let before = std::fs::read(&tmp.path).unwrap();
        // Past the end, straddling the end, and a sector whose byte offset overflows.
        for sector in [16, 15, u64::MAX / 2] {
            let (s, _, _) = request(
                &mut block,
                &[
                    MockBuffer::Readable(&header(T_IN, sector)),
                    MockBuffer::Writable(1024),
                    MockBuffer::Writable(1),
                ],
            );
            assert_eq!(s, S_IOERR, "read at sector {sector}");
            let (s, _, _) = request(
                &mut block,
                &[
                    MockBuffer::Readable(&header(T_OUT, sector)),
                    MockBuffer::Readable(&[1; 1024]),
                    MockBuffer::Writable(1),
                ],
            );
            assert_eq!(s, S_IOERR, "write at sector {sector}");
        }
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(99, 0)),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_UNSUPP);
        // A header shorter than 16 bytes.
        let (s, _, _) = request(
            &mut block,
            &[MockBuffer::Readable(&[0; 8]), MockBuffer::Writable(1)],
        );
        assert_eq!(s, S_IOERR);
        assert_eq!(std::fs::read(&tmp.path).unwrap(), before);
        assert_eq!(block.stats().errors, 8);
    }

    #[test]
    fn a_rate_limited_disk_holds_requests_back_until_their_time() {
        let (_tmp, mut block) = disk(false);
        block.set_rate_limit(0, 1);
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut queue = driver.queue();
        for _ in 0..3 {
            driver.add_chain(&[
                MockBuffer::Readable(&header(T_IN, 0)),
                MockBuffer::Writable(512),
                MockBuffer::Writable(1),
            ]);
        }
        let done = block.process_queue(0, &mut queue, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (1, true));
        let wake = block
            .wake_at()
            .expect("a throttled device names its wake time");
        assert!(wake > Instant::now() + std::time::Duration::from_millis(500));
        // Kicks before then complete nothing more; the held request is not lost.
        let again = block.process_queue(0, &mut queue, driver.mem()).unwrap();
        assert_eq!((again.completed, again.throttled), (0, true));
        assert_eq!(driver.used().len(), 1);
        assert_eq!(block.stats().throttled, 2);
        // A reset drops what was held.
        block.reset();
        assert!(block.wake_at().is_none());
    }

    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::test_support::{bring_up, Counter, DriverMemory};
    use crate::virtio::{feature, Memory};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A transport around `block`, brought up by the driver with EVENT_IDX.
    fn live(driver: &Arc<Mutex<MockDriver>>, block: Block) -> MmioTransport {
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::new(Box::new(block), mem, Arc::new(Counter::default()));
        bring_up(
            &mut t,
            driver,
            feature::VERSION_1 | feature::RING_EVENT_IDX,
            &[0],
        );
        t
    }

    /// Posts a 512-byte read of each of `sectors`; returns each chain's head with its sector.
    fn post_reads(
        driver: &Arc<Mutex<MockDriver>>,
        sectors: std::ops::Range<u64>,
    ) -> Vec<(u16, u64)> {
        let mut d = driver.lock().unwrap();
        sectors
            .map(|sector| {
                let head = d.add_chain(&[
                    MockBuffer::Readable(&header(T_IN, sector)),
                    MockBuffer::Writable(512),
                    MockBuffer::Writable(1),
                ]);
                (head, sector)
            })
            .collect()
    }

    /// The driver's view of the used entries since last asked: each head with its status and
    /// the data its buffer holds.
    fn completed(driver: &Arc<Mutex<MockDriver>>) -> Vec<(u16, u8, Vec<u8>)> {
        let mut d = driver.lock().unwrap();
        d.used()
            .into_iter()
            .map(|u| {
                let head = u16::try_from(u.id).unwrap();
                let bufs = buffers(&d, head);
                let status = d.read(bufs[2].0, 1)[0];
                (head, status, d.read(bufs[1].0, 512))
            })
            .collect()
    }

    /// Issue 11: a state saved while requests are in flight — some done, one held back by the
    /// rate limit, some still in the ring — restores into a fresh device (on the same disk and
    /// guest memory, with no rate limit of its own: the saved one comes back) that completes
    /// every request exactly once, with the right data.
    #[test]
    fn a_state_saved_mid_io_restores_and_every_request_completes_exactly_once() {
        let (tmp, mut block) = disk(false);
        block.set_rate_limit(0, 4);
        let driver = Arc::new(Mutex::new(MockDriver::new(32, 1 << 20)));
        let mut t = live(&driver, block);
        let posted = post_reads(&driver, 0..8);
        t.notified();
        let mut seen = completed(&driver);
        assert_eq!(
            seen.len(),
            4,
            "four pass the limit; one is held, three wait"
        );
        assert!(t.wake_at().is_some());
        t.set_quiesced(true);
        let saved = t.save();
        drop(t);

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp.path)
            .unwrap();
        let fresh = Block::new(file, false, "disk-under-test-with-a-long-id").unwrap();
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::restore(
            Box::new(fresh),
            mem,
            Arc::new(Counter::default()),
            &saved,
            false,
        )
        .unwrap();
        t.notified();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first_pass = None;
        while seen.len() < posted.len() && Instant::now() < deadline {
            seen.extend(completed(&driver));
            first_pass.get_or_insert(seen.len());
            if let Some(at) = t.wake_at() {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            t.notified();
        }
        seen.extend(completed(&driver));
        assert!(
            first_pass.unwrap() < posted.len(),
            "the saved rate limit came back: not everything went at once"
        );
        let mut heads: Vec<u16> = seen.iter().map(|(h, _, _)| *h).collect();
        heads.sort_unstable();
        let mut expected: Vec<u16> = posted.iter().map(|(h, _)| *h).collect();
        expected.sort_unstable();
        assert_eq!(heads, expected, "every request completed exactly once");
        let image = std::fs::read(&tmp.path).unwrap();
        for (head, status, data) in &seen {
            let sector = posted.iter().find(|(h, _)| h == head).unwrap().1 as usize;
            assert_eq!(*status, S_OK);
            assert_eq!(
                data[..],
                image[sector * 512..(sector + 1) * 512],
                "sector {sector}"
            );
        }
        // Nothing more comes: no request was completed twice.
        t.notified();
        assert!(completed(&driver).is_empty());
    }

    #[test]
    fn a_running_disk_takes_new_rate_limits_at_once() {
        let (_tmp, mut block) = disk(false);
        block.set_rate_limit(0, 1);
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let mut t = live(&driver, block);
        post_reads(&driver, 0..3);
        t.notified();
        assert_eq!(completed(&driver).len(), 1);
        // The limit lifted: the held request and the rest go now, not in two seconds.
        t.control(Action::SetRateLimit { bps: 0, iops: 0 }, Vec::new())
            .unwrap();
        assert_eq!(completed(&driver).len(), 2);
        assert!(t.wake_at().is_none());
        // And set again.
        t.control(Action::SetRateLimit { bps: 0, iops: 1 }, Vec::new())
            .unwrap();
        post_reads(&driver, 0..3);
        t.notified();
        assert_eq!(completed(&driver).len(), 1);
        assert!(matches!(
            t.control(Action::SetLink { up: false }, Vec::new()),
            Err(DeviceError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_driver_that_does_not_enable_the_request_queue_is_refused() {
        let (_tmp, block) = disk(false);
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::new(Box::new(block), mem, Arc::new(Counter::default()));
        bring_up(&mut t, &driver, feature::VERSION_1, &[]);
        assert_ne!(
            t.status() & crate::virtio::mmio::status::DEVICE_NEEDS_RESET,
            0
        );
        assert!(t.failure().unwrap().contains("request queue is not ready"));
    }

    #[test]
    fn hostile_block_sections_are_refused() {
        let (tmp, mut block) = disk(false);
        block.set_rate_limit(1000, 0);
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let t = live(&driver, block);
        let saved = t.save();
        drop(t);
        let fresh = || {
            let file = std::fs::File::open(&tmp.path).unwrap();
            Box::new(Block::new(file, false, "disk-under-test-with-a-long-id").unwrap())
        };
        let restore = |bytes: &[u8]| {
            let mem = Memory(Arc::new(DriverMemory(driver.clone())));
            MmioTransport::restore(fresh(), mem, Arc::new(Counter::default()), bytes, false)
        };
        assert!(restore(&saved).is_ok());
        // The device section is the payload's last 4 + 43 bytes: capacity, held flag and head,
        // then two buckets of rate and tokens.
        let edit = |at_from_end: usize, bytes: &[u8]| {
            let mut payload = crate::virtio::state::unseal(&saved).unwrap().to_vec();
            let at = payload.len() - at_from_end;
            payload[at..at + bytes.len()].copy_from_slice(bytes);
            crate::virtio::state::seal(&payload)
        };
        for (bytes, expected) in [
            (edit(43, &99u64.to_le_bytes()), "had 99 sectors"),
            (edit(35, &[2]), "not 0 or 1"),
            (edit(35, &[1, 16, 0]), "queue 0"),
            (edit(24, &f64::NAN.to_bits().to_le_bytes()), "bytes bucket"),
            (edit(24, &5000f64.to_bits().to_le_bytes()), "bytes bucket"),
        ] {
            let err = restore(&bytes)
                .err()
                .unwrap_or_else(|| panic!("restored: {expected}"));
            assert!(err.to_string().contains(expected), "{err}: {expected}");
        }
    }

    #[test]
    fn a_read_only_disk_refuses_writes_itself() {
        let (tmp, mut block) = disk(true);
        assert_ne!(block.device_features() & F_RO, 0);
        let before = std::fs::read(&tmp.path).unwrap();
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_OUT, 0)),
                MockBuffer::Readable(&[0xff; 512]),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_IOERR);
        assert_eq!(std::fs::read(&tmp.path).unwrap(), before);
        let (s, _, data) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_IN, 0)),
                MockBuffer::Writable(16),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!((s, &data[..]), (S_OK, &before[..16]));
    }

    #[test]
    fn config_space_reports_capacity_and_ignores_odd_reads() {
        let (_tmp, block) = disk(false);
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        let mut far = [0xffu8; 4];
        block.read_config(1 << 40, &mut far);
        assert_eq!(far, [0; 4]);
        let mut blk_size = [0u8; 4];
        block.read_config(20, &mut blk_size);
        assert_eq!(u32::from_le_bytes(blk_size), 512);
        assert_eq!(block.device_features() & F_BLK_SIZE, 0, "512: not offered");
        let mut straddle = [0xffu8; 8];
        block.read_config(20, &mut straddle);
        assert_eq!(straddle, [0; 8]);
    }

    #[test]
    fn a_vbd_on_a_qcow2_overlay_writes_the_overlay_and_never_the_base() {
        use crate::image::Format;
        let base = tempfile_like::TempFile::with_bytes(&[0x11; 128 * 1024]);
        let overlay = base.path.with_extension("qcow2");
        crate::image::qcow2::create(&overlay, None, Some((&base.path, Format::Raw))).unwrap();
        let _cleanup = tempfile_like::TempFile {
            path: overlay.clone(),
        };
        let disk = crate::image::open(&overlay, Format::Qcow2, false).unwrap();
        let mut block = Block::with_backend(disk, false, "cow");
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 256);
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_OUT, 1)),
                MockBuffer::Readable(&[0x22; 512]),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        let (s, _, data) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_IN, 0)),
                MockBuffer::Writable(1536),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        assert_eq!(&data[..512], &[0x11; 512]);
        assert_eq!(&data[512..1024], &[0x22; 512]);
        assert_eq!(&data[1024..], &[0x11; 512]);
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_FLUSH, 0)),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        assert_eq!(std::fs::read(&base.path).unwrap(), vec![0x11; 128 * 1024]);
    }

    #[test]
    fn qcow2_requests_mix_backing_copied_in_place_and_zero_clusters() {
        use crate::image::{qcow2, qcow2_check, Format};
        const K: usize = 1024;
        let base = tempfile_like::TempFile::with_bytes(&[0x33; 128 * K]);
        let path = base.path.with_extension("mix.qcow2");
        qcow2::create(&path, Some(512 * 1024), Some((&base.path, Format::Raw))).unwrap();
        let _cleanup = tempfile_like::TempFile { path: path.clone() };
        let disk = crate::image::open(&path, Format::Qcow2, false).unwrap();
        let mut block = Block::with_backend(disk, false, "mix");
        // The first write into cluster 1 copies it from the base (the format's path); the
        // second goes in place (straight from guest memory into the image).
        for (sector, fill) in [(144u64, 0xa1u8), (152, 0xb2)] {
            let (s, _, _) = request(
                &mut block,
                &[
                    MockBuffer::Readable(&header(T_OUT, sector)),
                    MockBuffer::Readable(&[fill; 4 * K]),
                    MockBuffer::Writable(1),
                ],
            );
            assert_eq!(s, S_OK);
        }
        // One read over the base's cluster 0, the image's cluster 1 and zero clusters 2-3.
        let (s, _, data) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_IN, 0)),
                MockBuffer::Writable(256 * 1024),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        let mut want = vec![0x33u8; 128 * K];
        want[72 * K..76 * K].fill(0xa1);
        want[76 * K..80 * K].fill(0xb2);
        want.resize(256 * K, 0);
        assert!(data == want, "the read differs from what was written");
        let (s, _, _) = request(
            &mut block,
            &[
                MockBuffer::Readable(&header(T_FLUSH, 0)),
                MockBuffer::Writable(1),
            ],
        );
        assert_eq!(s, S_OK);
        drop(block);
        let report = qcow2_check::check(&std::fs::File::open(&path).unwrap()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.allocated, 1);
        assert_eq!(std::fs::read(&base.path).unwrap(), vec![0x33; 128 * K]);
    }

    /// A temporary file removed on drop (std only).
    mod tempfile_like {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempFile {
            pub path: PathBuf,
        }

        impl TempFile {
            pub fn with_bytes(bytes: &[u8]) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "vessel-blk-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::write(&path, bytes).unwrap();
                TempFile { path }
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
