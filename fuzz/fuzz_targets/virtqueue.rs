//! Fuzzes `vring::Queue` as a hostile guest would drive it.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | flags: bit 0 `EVENT_IDX`, bit 1 raw queue size, bit 2 raw (possibly misaligned) ring addresses |
//! | 1..3 | queue size (raw u16, or `1 << (byte 1 % 9)`) |
//! | 3..9 | descriptor table, avail ring, used ring addresses (u16 each) |
//! | 9 | number of operations `n` |
//! | 10..10+4n | operations, 4 bytes each: opcode and three arguments |
//! | the rest | guest memory contents from address 0 (memory is at least 16 KiB, at most 64 KiB) |
//!
//! The device side runs the operations (pop, read_at, write_at, add_used, the notification
//! calls, reset) interleaved with guest writes to memory, and checks the invariants the queue
//! promises: it never panics, and every chain it hands out is within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vring::mock::MockMemory;
use vring::{DescriptorChain, GuestMemory, Queue, QueueError};

const MAX_SIZE: u16 = 256;
const MIN_MEM: usize = 16 * 1024;
const MAX_MEM: usize = 64 * 1024;
const MAX_PENDING: usize = 64;

struct Params {
    event_idx: bool,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Params {
    fn configure(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_desc_table(self.desc);
        q.set_avail_ring(self.avail);
        q.set_used_ring(self.used);
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
    }
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([
        data.get(i).copied().unwrap_or(0),
        data.get(i + 1).copied().unwrap_or(0),
    ])
}

/// Checks what `pop` promises about a chain it returned.
fn check_chain(c: &DescriptorChain, mem: &MockMemory, size: u16) {
    assert!(c.head < size);
    assert!(!c.descriptors.is_empty());
    assert!(c.descriptors.len() <= usize::from(size));
    let first_writable = c.descriptors.iter().position(|d| d.writable);
    if let Some(w) = first_writable {
        assert!(c.descriptors[w..].iter().all(|d| d.writable));
    }
    for d in &c.descriptors {
        assert!(d.addr.checked_add(u64::from(d.len)).is_some());
        assert!(mem.contains(d.addr, u64::from(d.len)));
    }
}

fn run(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let flags = data[0];
    let size = if flags & 2 != 0 {
        u16_at(data, 1)
    } else {
        1 << (data[1] % 9)
    };
    let (desc, avail, used) = (
        u64::from(u16_at(data, 3)),
        u64::from(u16_at(data, 5)),
        u64::from(u16_at(data, 7)),
    );
    let aligned = flags & 4 == 0;
    let p = Params {
        event_idx: flags & 1 != 0,
        size,
        desc: if aligned { desc & !15 } else { desc },
        avail: if aligned { avail & !1 } else { avail },
        used: if aligned { used & !3 } else { used },
    };
    let n_ops = usize::from(data[9]);
    let ops_end = (10 + 4 * n_ops).min(data.len());
    let ops = &data[10..ops_end];
    let image = &data[ops_end..];
    let mut bytes = image[..image.len().min(MAX_MEM)].to_vec();
    bytes.resize(bytes.len().max(MIN_MEM), 0);
    let mem = MockMemory::from_bytes(bytes);

    let mut q = Queue::new(MAX_SIZE);
    p.configure(&mut q);
    let mut pending: Vec<DescriptorChain> = Vec::new();
    let mut scratch = vec![0u8; 1024];

    for op in ops.chunks(4) {
        let [code, a, b, c] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        match code % 12 {
            1 if !pending.is_empty() => {
                let chain = &pending[usize::from(a) % pending.len()];
                let len = usize::from(c) * 4;
                let offset = u64::from(b) * 8;
                if let Ok(n) = chain.read_at(&mem, offset, &mut scratch[..len]) {
                    assert!(n <= len);
                    assert!(n as u64 <= chain.readable_len().saturating_sub(offset));
                }
            }
            2 if !pending.is_empty() => {
                let chain = &pending[usize::from(a) % pending.len()];
                let len = usize::from(c) * 4;
                let offset = u64::from(b) * 8;
                if let Ok(n) = chain.write_at(&mem, offset, &scratch[..len]) {
                    assert!(n <= len);
                    assert!(n as u64 <= chain.writable_len().saturating_sub(offset));
                }
            }
            3 if !pending.is_empty() => {
                let chain = pending.swap_remove(usize::from(a) % pending.len());
                let written = u32::from(u16::from_le_bytes([b, c]));
                if q.add_used(&mem, chain.head, written).is_ok() {
                    let mut idx = [0u8; 2];
                    mem.read(p.used + 2, &mut idx)
                        .expect("used ring inside memory");
                    assert_eq!(u16::from_le_bytes(idx), q.next_used());
                }
            }
            4 => {
                let _ = q.add_used(&mem, u16::from_le_bytes([a, b]), u32::from(c));
            }
            5 => {
                let _ = q.needs_notification(&mem);
            }
            6 => {
                let _ = q.enable_notification(&mem);
            }
            7 => {
                let _ = q.disable_notification(&mem);
            }
            8 => {
                // The guest changes memory under the device's feet.
                let _ = mem.write(u64::from(u16::from_le_bytes([a, b])), &[c]);
            }
            9 => {
                q.reset();
                pending.clear();
                if a & 1 == 0 {
                    p.configure(&mut q);
                }
            }
            10 => {
                // Serve everything available, as a device's queue handler would.
                for _ in 0..=u32::from(size) {
                    match pop(&mut q, &mem, size) {
                        Some(chain) => {
                            let _ = chain.write_at(&mem, 0, &scratch[..64]);
                            let _ = q.add_used(&mem, chain.head, 64);
                        }
                        None => break,
                    }
                }
                let _ = q.needs_notification(&mem);
            }
            _ => {
                if let Some(chain) = pop(&mut q, &mem, size) {
                    if pending.len() == MAX_PENDING {
                        pending.swap_remove(0);
                    }
                    pending.push(chain);
                }
            }
        }
    }
}

/// Pops one chain and checks the result against the queue's promises.
fn pop(q: &mut Queue, mem: &MockMemory, size: u16) -> Option<DescriptorChain> {
    let was_broken = q.is_broken();
    match q.pop(mem) {
        Ok(Some(chain)) => {
            assert!(!was_broken);
            check_chain(&chain, mem, size);
            let mut all = vec![0u8; chain.readable_len().min(4096) as usize];
            let n = chain
                .read_at(mem, 0, &mut all)
                .expect("validated chain is readable");
            assert_eq!(n, all.len());
            Some(chain)
        }
        Ok(None) => {
            assert!(!was_broken);
            None
        }
        Err(QueueError::NotReady | QueueError::InvalidConfig) => {
            assert!(!q.is_broken());
            None
        }
        Err(QueueError::Broken) => {
            assert!(was_broken);
            None
        }
        Err(_) => {
            assert!(q.is_broken());
            assert_eq!(q.pop(mem), Err(QueueError::Broken));
            None
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
