//! Fuzzes virtio-net (`devices::virtio::net::Net`) from both ends: the guest's transmit ring
//! holds hostile chains (any mix of readable and writable buffers of any length, and with a
//! flag, raw descriptors written over the ring's), the host side hands it frames of any length
//! for the receive ring, and the backend accepts, holds off (`WouldBlock`) or refuses sends.
//!
//! Checked, besides no panic: every packet the backend gets is the bytes a transmit chain
//! carried, whole, in the order the guest queued them (some may be dropped, none changed or
//! reordered: a header asking for offloads the driver did not negotiate is dropped), with
//! `num_buffers` cleared, and its frame at most `MAX_FRAME` long; every receive buffer the
//! device returns holds a plain header and the next frame the host offered (or is returned
//! empty when that frame did not fit), or with mergeable buffers, the next frame spans as many
//! buffers as its header's `num_buffers` says; the counters agree with what the backend and the guest
//! saw. The host offers plain packets here; `net_offload` fuzzes the offload work itself.
//!
//! Input layout: byte 0 flags (bit 0: raw descriptors allowed); then operations, each a code
//! byte and its arguments:
//!
//! | code % 10 | operation |
//! |---|---|
//! | 0 | queue a transmit chain: count byte `k` (1..=4 buffers), then per buffer a kind byte (even: readable, odd: writable) and a u16 length; readable contents come from the input, cycled |
//! | 1 | the device serves the transmit queue |
//! | 2 | the host offers a frame: u16 length (the last byte picks what it is filled with) |
//! | 3 | the backend's descriptor is readable (the device takes frames in) |
//! | 4 | queue a receive chain: count byte `k` (1..=3 buffers), u16 length each |
//! | 5 | the device serves the receive queue |
//! | 6 | the backend's mood: byte % 3: accept, would block, refuse |
//! | 7 | the backend has room again (writable), then the transmit queue is served |
//! | 8 | a raw descriptor (index, addr u64, len u32, flags, next) over the transmit or receive ring, made available |
//! | 9 | the driver resets the device (and its queues), then negotiates features: a u64, of which the offload and `MRG_RXBUF` bits count |
#![no_main]

mod common;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use common::{chain_buffers, gather, Input};
use devices::net_backend::NetBackend;
use devices::net_offload::Offloads;
use devices::virtio::net::{Net, HEADER_LEN, MAX_FRAME, RX, TX};
use devices::virtio::{HostInterest, Queue, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vring::mock::{MockBuffer, MockDriver, RawDescriptor};

const QUEUE: u16 = 64;
const MEM: usize = 256 * 1024;
/// Buffer bytes the mock driver may still hand out (its bump allocator never frees).
const BUDGET: u64 = (MEM as u64) - 0x8000;
const MAX_OPS: usize = 128;
/// `VIRTIO_NET_F_MRG_RXBUF`.
const MRG_RXBUF: u64 = 1 << 15;

#[derive(Default)]
struct Wire {
    sent: Vec<Vec<u8>>,
    inbox: VecDeque<Vec<u8>>,
    refuse: Option<io::ErrorKind>,
}

struct Recorder(Arc<Mutex<Wire>>);

impl NetBackend for Recorder {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let mut w = self.0.lock().unwrap();
        if let Some(kind) = w.refuse {
            return Err(kind.into());
        }
        assert!(packet.len() >= HEADER_LEN, "a packet without its header");
        assert_eq!(packet[10..HEADER_LEN], [0, 0], "num_buffers not cleared");
        w.sent.push(packet[HEADER_LEN..].to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(frame) = self.0.lock().unwrap().inbox.pop_front() else {
            return Ok(None);
        };
        let f = [&[0u8; HEADER_LEN][..], &frame].concat();
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

/// One side's ring: the mock driver, the device's queue, and what the driver allocated.
struct Ring {
    driver: MockDriver,
    queue: Queue,
    spent: u64,
    /// A queue error stopped it (a real transport would set DEVICE_NEEDS_RESET).
    broken: bool,
}

impl Ring {
    fn new() -> Ring {
        let driver = MockDriver::new(QUEUE, MEM);
        let queue = driver.queue();
        Ring {
            driver,
            queue,
            spent: 0,
            broken: false,
        }
    }

    /// Whether `bufs` fit in the descriptors and buffer memory left.
    fn room_for(&self, lens: &[u64]) -> bool {
        let cost: u64 = lens.iter().map(|l| l.next_multiple_of(16)).sum();
        lens.len() <= self.driver.free_descriptors() && self.spent + cost <= BUDGET
    }

    fn add(&mut self, bufs: &[MockBuffer<'_>]) -> u16 {
        for b in bufs {
            self.spent += match b {
                MockBuffer::Readable(d) => d.len() as u64,
                MockBuffer::Writable(n) => u64::from(*n),
            }
            .next_multiple_of(16);
        }
        self.driver.add_chain(bufs)
    }

    fn serve(&mut self, net: &mut Net, index: usize) {
        if self.broken {
            return;
        }
        if net
            .process_queue(index, &mut self.queue, self.driver.mem())
            .is_err()
        {
            self.broken = true;
        }
    }
}

/// `len` bytes of `pattern` repeated (of 0, 1, 2... from `start` when it is empty).
fn repeat(pattern: &[u8], start: u8, len: usize) -> Vec<u8> {
    let ramp: Vec<u8> = (0..=255u8).map(|i| start.wrapping_add(i)).collect();
    let pattern = if pattern.is_empty() {
        &ramp[..]
    } else {
        pattern
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(pattern.len());
        out.extend_from_slice(&pattern[..n]);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let raw_allowed = input.u8() & 1 != 0;
    let wire = Arc::new(Mutex::new(Wire::default()));
    let mut net = Net::new(Box::new(Recorder(wire.clone())), [2, 0, 0, 0, 0, 1]);
    let (mut tx, mut rx) = (Ring::new(), Ring::new());
    // What the guest queued to send, in order (frames after their header), and what the host
    // offered to receive, in order (frames the device will deliver or drop, oldest first).
    let mut queued: VecDeque<Vec<u8>> = VecDeque::new();
    let mut offered: VecDeque<Vec<u8>> = VecDeque::new();
    // Raw descriptors can rewrite chains already queued: contents are then unknown.
    let mut exact = true;
    let mut checked_sent = 0;
    // The driver negotiated mergeable receive buffers (a frame may span several).
    let mut mergeable = false;

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            0 => {
                let k = usize::from(input.u8() % 4) + 1;
                let mut specs = Vec::new();
                for _ in 0..k {
                    let (kind, len) = (input.u8(), input.u16());
                    specs.push((kind % 2 == 1, usize::from(len)));
                }
                let seed = input.bytes(64);
                let contents: Vec<Vec<u8>> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, len))| repeat(seed, i as u8, len))
                    .collect();
                let bufs: Vec<MockBuffer> = specs
                    .iter()
                    .zip(&contents)
                    .map(|(&(writable, len), c)| {
                        if writable {
                            MockBuffer::Writable(len as u32)
                        } else {
                            MockBuffer::Readable(c)
                        }
                    })
                    .collect();
                let lens: Vec<u64> = specs.iter().map(|s| s.1 as u64).collect();
                if !tx.room_for(&lens) {
                    continue;
                }
                // A readable buffer after a writable one breaks the queue: nothing is sent.
                let well_formed = specs.windows(2).all(|w| !w[0].0 || w[1].0);
                let mut payload = Vec::new();
                for (_, c) in specs.iter().zip(&contents).filter(|(s, _)| !s.0) {
                    payload.extend_from_slice(c);
                }
                if !well_formed {
                    exact = false;
                } else if payload.len() >= HEADER_LEN && payload.len() - HEADER_LEN <= MAX_FRAME {
                    queued.push_back(payload[HEADER_LEN..].to_vec());
                }
                tx.add(&bufs);
            }
            1 => {
                tx.serve(&mut net, TX);
                tx.driver.used();
            }
            2 => {
                let len = usize::from(input.u16()) % (MAX_FRAME + 2);
                let fill = input.u8();
                let frame = repeat(&[], fill, len);
                if frame.len() <= MAX_FRAME {
                    offered.push_back(frame.clone());
                }
                wire.lock().unwrap().inbox.push_back(frame);
            }
            3 => {
                net.host_ready(0, HostInterest {
                    readable: true,
                    writable: false,
                });
            }
            4 => {
                let k = usize::from(input.u8() % 3) + 1;
                let lens: Vec<u64> = (0..k).map(|_| u64::from(input.u16())).collect();
                if !rx.room_for(&lens) {
                    continue;
                }
                let bufs: Vec<MockBuffer> = lens
                    .iter()
                    .map(|&l| MockBuffer::Writable(l as u32))
                    .collect();
                rx.add(&bufs);
            }
            5 => {
                rx.serve(&mut net, RX);
                let used_entries = rx.driver.used();
                if mergeable {
                    // Each frame offered fills one or more buffers in order, its header saying
                    // how many (or the first buffer comes back empty: buffers too small).
                    let mut entries = used_entries.iter();
                    while let Some(first) = entries.next() {
                        let Some(frame) = offered.pop_front() else {
                            assert!(!exact, "a receive buffer used with no frame offered");
                            break;
                        };
                        if !exact {
                            continue;
                        }
                        let buffers = |id: u32| {
                            chain_buffers(rx.driver.mem(), rx.driver.desc_table(), id as u16)
                        };
                        if first.len == 0 {
                            continue;
                        }
                        let mut got = gather(rx.driver.mem(), &buffers(first.id), true);
                        got.truncate(first.len as usize);
                        assert!(got.len() >= HEADER_LEN, "a header cut short");
                        let count = u16::from_le_bytes([got[10], got[11]]);
                        assert!(count >= 1, "num_buffers 0");
                        for _ in 1..count {
                            let next = entries.next().expect("num_buffers beyond what was used");
                            let mut more = gather(rx.driver.mem(), &buffers(next.id), true);
                            more.truncate(next.len as usize);
                            got.extend_from_slice(&more);
                        }
                        assert_eq!(got.len(), HEADER_LEN + frame.len());
                        assert_eq!(got[..10], [0; 10], "a plain frame's header");
                        assert!(got[HEADER_LEN..] == frame[..], "a received frame changed");
                    }
                    continue;
                }
                // Every buffer returned holds the next frame offered, or nothing.
                for used in used_entries {
                    let bufs =
                        chain_buffers(rx.driver.mem(), rx.driver.desc_table(), used.id as u16);
                    let Some(frame) = offered.pop_front() else {
                        assert!(!exact, "a receive buffer used with no frame offered");
                        continue;
                    };
                    if !exact {
                        continue;
                    }
                    let room: u64 = bufs.iter().map(|b| u64::from(b.1)).sum();
                    if used.len == 0 {
                        assert!(
                            room < (HEADER_LEN + frame.len()) as u64,
                            "a frame that fit was dropped"
                        );
                        continue;
                    }
                    assert_eq!(used.len as usize, HEADER_LEN + frame.len());
                    let got = gather(rx.driver.mem(), &bufs, true);
                    let mut header = [0u8; HEADER_LEN];
                    header[10] = 1;
                    assert_eq!(got[..HEADER_LEN], header);
                    assert!(
                        got[HEADER_LEN..HEADER_LEN + frame.len()] == frame[..],
                        "a received frame changed"
                    );
                }
            }
            6 => {
                wire.lock().unwrap().refuse = match input.u8() % 3 {
                    0 => None,
                    1 => Some(io::ErrorKind::WouldBlock),
                    _ => Some(io::ErrorKind::ConnectionRefused),
                };
            }
            7 => {
                net.host_ready(0, HostInterest {
                    readable: false,
                    writable: true,
                });
                tx.serve(&mut net, TX);
                tx.driver.used();
            }
            8 => {
                let ring = if input.u8() & 1 == 0 {
                    &mut tx
                } else {
                    &mut rx
                };
                let (index, addr, len, flags, next) = (
                    input.u16(),
                    input.u64(),
                    input.u32(),
                    input.u8(),
                    input.u16(),
                );
                if !raw_allowed {
                    continue;
                }
                exact = false;
                ring.driver.write_descriptor(
                    index % QUEUE,
                    RawDescriptor {
                        addr: addr % (MEM as u64 + 64),
                        len: len % (2 * MAX_FRAME as u32),
                        flags: u16::from(flags & 7),
                        next: next % (QUEUE + 2),
                    },
                );
                ring.driver.push_avail(index);
            }
            _ => {
                net.reset();
                let features = input.u64() & (Offloads::FEATURES | MRG_RXBUF);
                mergeable = net.activate(features, &[]).is_ok() && features & MRG_RXBUF != 0;
                for ring in [&mut tx, &mut rx] {
                    ring.queue.reset();
                    ring.driver.configure(&mut ring.queue);
                    ring.broken = false;
                }
                // Frames the device had taken in are gone; those still in the backend remain.
                offered = wire
                    .lock()
                    .unwrap()
                    .inbox
                    .iter()
                    .filter(|f| f.len() <= MAX_FRAME)
                    .cloned()
                    .collect();
                // The rings are new to the device but the driver's chains are still there,
                // served again from the start: contents no longer line up with `queued`.
                exact = false;
            }
        }
        // Sends: each one the next queued frame (some may have been dropped before it).
        let w = wire.lock().unwrap();
        for frame in &w.sent[checked_sent..] {
            assert!(frame.len() <= MAX_FRAME);
            if exact {
                loop {
                    let next = queued
                        .pop_front()
                        .expect("a frame sent that was never queued");
                    if next == *frame {
                        break;
                    }
                }
            }
        }
        checked_sent = w.sent.len();
        let s = net.stats();
        assert_eq!(s.tx_frames, w.sent.len() as u64);
        assert_eq!(
            s.tx_bytes,
            w.sent.iter().map(|f| f.len() as u64).sum::<u64>()
        );
    }
});
