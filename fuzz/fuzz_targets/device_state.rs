//! Fuzzes restoring a saved device state (`devices::virtio::state`, `MmioTransport::restore`):
//! bytes as a hostile or damaged file would hold them, restored into a fresh entropy, block,
//! network or balloon device over guest memory the input also gives.
//!
//! Checked: nothing panics, whatever the bytes (a frame with a wrong magic, version, length or
//! checksum, and any payload behind a right one); a state that restores saves a state that
//! restores again, to the same bytes (for the devices whose state does not age: the entropy,
//! network and balloon devices; a disk's rate-limit buckets refill with time); a restored device can
//! be resumed, kicked, fed host input and reset without panicking.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | bits 0-1: device (0 entropy, 1 block, 2 network, 3 balloon); bit 7: the state bytes are a payload, to be framed (magic, version, length, CRC-32) before the restore, so the fuzzer reaches past the checksum |
//! | 1..3 | length `n` of the state bytes (u16) |
//! | 3..3+n | the state bytes |
//! | the rest | guest memory contents from address 0 (at least 16 KiB, at most 64 KiB) |
#![no_main]

mod common;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use common::{Counter, Input, Scratch};
use devices::net_backend::NetBackend;
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::state;
use devices::virtio::{HostInterest, Memory, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vring::mock::MockMemory;

const MIN_MEM: usize = 16 * 1024;
const MAX_MEM: usize = 64 * 1024;
const DISK_LEN: usize = 16 * 1024;

/// A backend with frames waiting and room for what is sent.
struct Loopback(VecDeque<Vec<u8>>);

impl NetBackend for Loopback {
    fn send(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.0.pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }
    fn raw_fd(&self) -> RawFd {
        -1
    }
    fn describe(&self) -> String {
        "loopback".into()
    }
}

fn disk() -> &'static Scratch {
    static DISK: OnceLock<Scratch> = OnceLock::new();
    DISK.get_or_init(|| {
        let s = Scratch::new("device-state-disk");
        s.fill(&[0x5a; DISK_LEN]);
        s
    })
}

/// A fresh device of kind `kind`, as the domain would build it.
fn device(kind: u8) -> Box<dyn VirtioDevice> {
    match kind {
        0 => Box::new(Rng::new(
            std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        )),
        1 => {
            let file = disk().file.try_clone().expect("dup the disk");
            Box::new(Block::new(file, false, "fuzz").expect("a block device"))
        }
        3 => Box::new(Balloon::new(true)),
        _ => Box::new(Net::new(
            Box::new(Loopback(VecDeque::from([vec![1; 60], vec![2; 1514]]))),
            [2, 0, 0, 0, 0, 1],
        )),
    }
}

fn restore(
    kind: u8,
    guest: &Arc<MockMemory>,
    bytes: &[u8],
) -> Result<MmioTransport, state::StateError> {
    MmioTransport::restore(
        device(kind),
        Memory(guest.clone()),
        Arc::new(Counter::default()),
        bytes,
        true,
    )
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let kind = flags & 3;
    let n = usize::from(input.u16());
    let raw = input.bytes(n);
    let image = input.rest();
    let mut bytes = image[..image.len().min(MAX_MEM)].to_vec();
    bytes.resize(bytes.len().max(MIN_MEM), 0);
    let guest = Arc::new(MockMemory::from_bytes(bytes));
    let saved = if flags & 0x80 != 0 {
        state::seal(raw)
    } else {
        raw.to_vec()
    };
    let Ok(mut t) = restore(kind, &guest, &saved) else {
        return;
    };
    // What a restored transport saves restores again; for devices whose state does not age,
    // to the same bytes.
    let again = t.save();
    let t2 = restore(kind, &guest, &again).expect("a state saved by Vessel restores");
    if kind != 1 {
        assert!(t2.save() == again, "saving a restored state changed it");
    }
    drop(t2);
    // The restored device works on.
    t.set_quiesced(false);
    t.notified();
    for source in 0..t.host_count() {
        t.host_ready(
            source,
            HostInterest {
                readable: true,
                writable: true,
            },
        );
    }
    if t.has_backlog() {
        t.serve_backlog();
    }
    let _ = (t.describe(), t.wake_at(), t.save());
    devices::bus::BusDevice::write(&mut t, 0x70, &0u32.to_le_bytes());
    assert_eq!(t.status(), 0, "a reset clears the status");
});
