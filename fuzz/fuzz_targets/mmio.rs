//! Fuzzes the virtio-mmio register interface (`devices::virtio::mmio::MmioTransport`): reads
//! and writes of any offset, size and value, with a real device behind it (the entropy device,
//! a block device on a raw image in a scratch file, or a network device on a backend that
//! records frames), guest memory a plain buffer the guest keeps changing, kicks, and the host
//! side of a network backend becoming ready.
//!
//! Checked: nothing panics; the identification registers never change; accesses other than an
//! aligned 4-byte one below the configuration space read as zeros; `DEVICE_NEEDS_RESET`, once
//! set, stays until the driver writes 0 to the status; acknowledging interrupts clears exactly
//! the bits written; a block device never changes its image's size (nor, read-only, a byte of
//! it); a network device only sends frames of at most `MAX_FRAME` bytes.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | device: 0 entropy, 1 block, 2 read-only block, 3 network, 4 balloon |
//! | 1 | number of operations `n` |
//! | 2..2+12n | operations, 12 bytes each: kind, size, offset (u16), value (u64) |
//! | the rest | guest memory contents from address 0 (at least 16 KiB, at most 64 KiB) |
#![no_main]

mod common;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};

use common::{Counter, Input, Scratch};
use devices::bus::BusDevice;
use devices::net_backend::NetBackend;
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mmio::{status, MmioTransport, QUEUE_NOTIFY};
use devices::virtio::net::{Net, MAX_FRAME};
use devices::virtio::rng::Rng;
use devices::virtio::{HostInterest, Memory, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vring::mock::MockMemory;
use vring::GuestMemory;

const MIN_MEM: usize = 16 * 1024;
const MAX_MEM: usize = 64 * 1024;
const DISK_LEN: usize = 16 * 1024;
/// The registers a driver writes, for operations that pick one rather than any offset.
const REGISTERS: [u64; 18] = [
    0x14, 0x20, 0x24, 0x30, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4,
    0x100, 0x104, 0x108,
];

/// A backend that records what the device sends and has frames for it to receive.
#[derive(Default)]
struct Wire {
    sent: Vec<Vec<u8>>,
    inbox: VecDeque<Vec<u8>>,
    refuse: Option<io::ErrorKind>,
}

struct Recorder(Arc<Mutex<Wire>>);

impl NetBackend for Recorder {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut w = self.0.lock().unwrap();
        if let Some(kind) = w.refuse {
            return Err(kind.into());
        }
        w.sent.push(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.0.lock().unwrap().inbox.pop_front() else {
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
        "recorder".into()
    }
}

fn disk() -> &'static Scratch {
    static DISK: OnceLock<Scratch> = OnceLock::new();
    DISK.get_or_init(|| Scratch::new("mmio-disk"))
}

fn read(t: &mut MmioTransport, offset: u64, size: usize) -> Vec<u8> {
    let mut b = vec![0xa5u8; size];
    t.read(offset, &mut b);
    b
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    u32::from_le_bytes(read(t, offset, 4).try_into().unwrap())
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let kind = input.u8() % 5;
    let n_ops = usize::from(input.u8());
    let ops = input.bytes(12 * n_ops);
    let image = input.rest();
    let mut bytes = image[..image.len().min(MAX_MEM)].to_vec();
    bytes.resize(bytes.len().max(MIN_MEM), 0);
    let guest = Arc::new(MockMemory::from_bytes(bytes));

    let wire = Arc::new(Mutex::new(Wire::default()));
    let pattern: Vec<u8> = (0..DISK_LEN).map(|i| (i * 7 % 251) as u8).collect();
    let (device, device_id): (Box<dyn VirtioDevice>, u32) = match kind {
        0 => (
            Box::new(Rng::new(
                std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            )),
            4,
        ),
        1 | 2 => {
            disk().fill(&pattern);
            let file = if kind == 2 {
                std::fs::File::open(&disk().path).expect("reopen the disk read-only")
            } else {
                disk().file.try_clone().expect("dup the disk")
            };
            (
                Box::new(Block::new(file, kind == 2, "fuzz").expect("a block device")),
                2,
            )
        }
        4 => (Box::new(Balloon::new(true)), 5),
        _ => (
            Box::new(Net::new(
                Box::new(Recorder(wire.clone())),
                [2, 0, 0, 0, 0, 1],
            )),
            1,
        ),
    };
    let irq = Arc::new(Counter::default());
    let mut t = MmioTransport::new(device, Memory(guest.clone()), irq);

    for op in ops.chunks(12) {
        let mut op = Input(op);
        let (code, size, offset, value) = (op.u8(), op.u8(), op.u16(), op.u64());
        let size = usize::from(size % 9);
        let offset = u64::from(offset);
        let needs_reset = t.status() & status::DEVICE_NEEDS_RESET != 0;
        match code % 10 {
            0 => {
                let got = read(&mut t, offset, size);
                if offset < 0x100 && (size != 4 || offset % 4 != 0) {
                    assert!(got.iter().all(|&b| b == 0), "odd read at {offset:#x}");
                }
            }
            1 => t.write(offset, &value.to_le_bytes()[..size]),
            2 | 3 => {
                // A register a driver writes, with a value it might write.
                let reg = REGISTERS[offset as usize % REGISTERS.len()];
                write32(&mut t, reg, value as u32);
            }
            4 => {
                // The guest changes its memory under the device.
                let _ = guest.write(offset, &value.to_le_bytes()[..size]);
            }
            5 => t.notified(),
            6 => {
                // A frame arrives from the host side, or the backend's room changes.
                let mut w = wire.lock().unwrap();
                match value % 4 {
                    0 => w.refuse = None,
                    1 => w.refuse = Some(io::ErrorKind::WouldBlock),
                    _ => {
                        let len = (value >> 8) as usize % (MAX_FRAME + 2);
                        w.inbox.push_back(vec![size as u8; len]);
                    }
                }
                drop(w);
                t.host_ready(0, HostInterest {
                    readable: offset & 1 != 0,
                    writable: offset & 2 != 0,
                });
            }
            7 => {
                // Acknowledging interrupts clears exactly the bits written.
                let before = read32(&mut t, 0x60);
                write32(&mut t, 0x64, value as u32);
                assert_eq!(read32(&mut t, 0x60), before & !(value as u32));
            }
            8 => {
                // The configuration space at any offset, even past the window.
                if value & 1 == 0 {
                    let _ = read(&mut t, value, size);
                } else {
                    t.write(value, &offset.to_le_bytes()[..size.min(8)]);
                }
            }
            _ => {
                let _ = t.describe();
                let _ = (t.wake_at(), t.host_interest(0), t.host_fd(0), t.failure());
                write32(&mut t, QUEUE_NOTIFY, value as u32);
            }
        }
        // Identification never changes.
        assert_eq!(read32(&mut t, 0), 0x7472_6976);
        assert_eq!(read32(&mut t, 4), 2);
        assert_eq!(read32(&mut t, 8), device_id);
        assert_eq!(read32(&mut t, 0xc), 0x4c53_5356);
        // Only a reset clears DEVICE_NEEDS_RESET.
        if needs_reset && t.status() & status::DEVICE_NEEDS_RESET == 0 {
            assert_eq!(t.status(), 0, "DEVICE_NEEDS_RESET cleared without a reset");
        }
    }
    for frame in &wire.lock().unwrap().sent {
        assert!(frame.len() <= MAX_FRAME);
    }
    if kind == 1 || kind == 2 {
        let after = disk().contents();
        assert_eq!(after.len(), DISK_LEN, "the image's size changed");
        if kind == 2 {
            assert!(after == pattern, "a read-only image was written");
        }
    }
});
