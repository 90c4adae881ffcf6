//! Fuzzes virtio-blk request parsing and serving (`devices::virtio::block::Block`) with
//! arbitrary requests from a well-formed ring: request types, sectors, lengths and buffer
//! layouts are all the guest's choice. Ring-level hostility is the `virtqueue` target's job.
//!
//! Input layout: byte 0 flags (bit 0 read-only disk); then chains, each: a count byte `k`
//! (1..=4 buffers after the 16-byte header), the 16-byte request header, then per buffer a
//! kind byte (even: device-readable, odd: device-writable) and a length byte (x 64 bytes),
//! readable buffers taking their contents from the input.
#![no_main]

use std::io;
use std::sync::Mutex;

use devices::image::DiskBackend;
use devices::virtio::block::Block;
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vring::mock::{MockBuffer, MockDriver};

/// A 64 KiB in-memory disk.
struct MemDisk(Mutex<Vec<u8>>);

impl DiskBackend for MemDisk {
    fn len(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let disk = self.0.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = disk
            .get(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.0.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let dst = disk
            .get_mut(start..start.saturating_add(data.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let readonly = flags & 1 != 0;
    let disk = MemDisk(Mutex::new(vec![0xa5; 64 * 1024]));
    let mut block = Block::with_backend(Box::new(disk), readonly, "fuzz");
    let mut driver = MockDriver::new(64, 1 << 20);
    let mut queue = driver.queue();
    let mut chains = 0;
    while rest.len() >= 17 && chains < 16 {
        let k = usize::from(rest[0] % 4) + 1;
        let header = &rest[1..17];
        rest = &rest[17..];
        let mut bufs = vec![MockBuffer::Readable(header)];
        for _ in 0..k {
            let [kind, len] = match rest {
                [a, b, ..] => [*a, *b],
                _ => break,
            };
            rest = &rest[2..];
            let len = usize::from(len) * 64;
            if kind % 2 == 0 {
                let n = len.min(rest.len());
                bufs.push(MockBuffer::Readable(&rest[..n]));
                rest = &rest[n..];
            } else {
                bufs.push(MockBuffer::Writable(len as u32));
            }
        }
        // Readable buffers must come first in a well-formed chain.
        bufs.sort_by_key(|b| matches!(b, MockBuffer::Writable(_)));
        if driver.free_descriptors() < bufs.len() {
            break;
        }
        driver.add_chain(&bufs);
        chains += 1;
    }
    let done = block
        .process_queue(0, &mut queue, driver.mem())
        .expect("a well-formed ring never errors");
    assert_eq!(done.completed, chains);
    assert_eq!(driver.used().len(), chains as usize);
    if readonly {
        // No write may succeed on a read-only disk.
        assert_eq!(block.stats().write_ops, 0);
    }
});
