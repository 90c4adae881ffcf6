//! Hostile drivers: every protocol violation gets its specific error, breaks the queue, and
//! never panics.

use super::*;
use crate::mock::{MockBuffer, MockDriver, RawDescriptor};
use crate::{
    VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE,
};

const MEM: usize = 0x10_0000;

fn setup(size: u16) -> (MockDriver, Queue) {
    let d = MockDriver::new(size, MEM);
    let q = d.queue();
    (d, q)
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor {
        addr,
        len,
        flags,
        next,
    }
}

/// Makes `descs` descriptors 0.. of the table, publishes head 0, pops, and checks that the
/// error is `want`, that the queue is now broken, and that it stays broken.
fn expect_pop_error(size: u16, descs: &[RawDescriptor], want: QueueError) {
    let (mut d, mut q) = setup(size);
    for (i, &desc) in (0u16..).zip(descs) {
        d.write_descriptor(i, desc);
    }
    d.push_avail(0);
    assert_eq!(q.pop(d.mem()), Err(want));
    assert!(q.is_broken());
    assert_eq!(q.pop(d.mem()), Err(QueueError::Broken));
}

fn chain_err(e: ChainError) -> QueueError {
    QueueError::Chain(e)
}

#[test]
fn descriptor_outside_memory() {
    let addr = MEM as u64 - 4;
    expect_pop_error(
        8,
        &[raw(addr, 8, 0, 0)],
        chain_err(ChainError::OutOfMemory { addr, len: 8 }),
    );
    expect_pop_error(
        8,
        &[raw(0x2000, 1, NEXT, 1), raw(1 << 40, 1, WRITE, 0)],
        chain_err(ChainError::OutOfMemory {
            addr: 1 << 40,
            len: 1,
        }),
    );
}

#[test]
fn descriptor_address_plus_length_overflows() {
    let addr = u64::MAX - 2;
    expect_pop_error(
        8,
        &[raw(addr, 16, 0, 0)],
        chain_err(ChainError::AddressOverflow { addr, len: 16 }),
    );
}

#[test]
fn chain_loops() {
    // 0 -> 1 -> 2 -> 0 ...
    let descs = [
        raw(0x2000, 1, NEXT, 1),
        raw(0x2000, 1, NEXT, 2),
        raw(0x2000, 1, NEXT, 0),
    ];
    expect_pop_error(8, &descs, chain_err(ChainError::Loop { limit: 8 }));
    // A descriptor naming itself.
    expect_pop_error(
        4,
        &[raw(0x2000, 0, NEXT | WRITE, 0)],
        chain_err(ChainError::Loop { limit: 4 }),
    );
}

#[test]
fn chain_longer_than_queue_size() {
    // Two direct buffers, then an indirect table of 4 more: 6 buffers in a queue of 4.
    let (mut d, mut q) = setup(4);
    let table = d.write_indirect_table(&[
        raw(0x2000, 1, NEXT, 1),
        raw(0x2000, 1, NEXT, 2),
        raw(0x2000, 1, NEXT, 3),
        raw(0x2000, 1, 0, 0),
    ]);
    d.write_descriptor(0, raw(0x2000, 1, NEXT, 1));
    d.write_descriptor(1, raw(0x2000, 1, NEXT, 2));
    d.write_descriptor(2, raw(table, 64, INDIRECT, 0));
    d.push_avail(0);
    assert_eq!(
        q.pop(d.mem()),
        Err(chain_err(ChainError::TooLong { limit: 4 }))
    );
}

#[test]
fn head_out_of_range() {
    let (mut d, mut q) = setup(8);
    d.push_avail(8);
    assert_eq!(
        q.pop(d.mem()),
        Err(QueueError::HeadOutOfRange { head: 8, size: 8 })
    );
    assert!(q.is_broken());
}

#[test]
fn next_out_of_range() {
    expect_pop_error(
        8,
        &[raw(0x2000, 1, NEXT, 1), raw(0x2000, 1, NEXT, 0xffff)],
        chain_err(ChainError::NextOutOfRange {
            index: 1,
            next: 0xffff,
            size: 8,
        }),
    );
}

#[test]
fn avail_idx_jumps_by_more_than_size() {
    let (mut d, mut q) = setup(8);
    d.set_avail_idx(9);
    assert_eq!(
        q.pop(d.mem()),
        Err(QueueError::AvailIndexJump {
            last: 0,
            avail: 9,
            size: 8
        })
    );
    assert!(q.is_broken());

    // Going backwards is a jump of almost 2^16.
    let (mut d, mut q) = setup(8);
    d.add_chain(&[MockBuffer::Writable(1)]);
    assert!(q.pop(d.mem()).unwrap().is_some());
    d.set_avail_idx(0);
    assert!(matches!(
        q.pop(d.mem()),
        Err(QueueError::AvailIndexJump { .. })
    ));
}

#[test]
fn indirect_table_with_bad_length() {
    for len in [0, 8, 17, 33] {
        expect_pop_error(
            8,
            &[raw(0x2000, len, INDIRECT, 0)],
            chain_err(ChainError::IndirectBadLength { len }),
        );
    }
    expect_pop_error(
        8,
        &[raw(0x2000, 9 * 16, INDIRECT, 0)],
        chain_err(ChainError::IndirectTooLarge { count: 9, limit: 8 }),
    );
    expect_pop_error(
        8,
        &[raw(0x2000, u32::MAX - 15, INDIRECT, 0)],
        chain_err(ChainError::IndirectTooLarge {
            count: (u32::MAX - 15) / 16,
            limit: 8,
        }),
    );
}

#[test]
fn indirect_table_outside_memory() {
    let addr = MEM as u64 - 16;
    expect_pop_error(
        8,
        &[raw(addr, 32, INDIRECT, 0)],
        chain_err(ChainError::IndirectOutOfMemory { addr, len: 32 }),
    );
    let addr = u64::MAX - 15;
    expect_pop_error(
        8,
        &[raw(addr, 32, INDIRECT, 0)],
        chain_err(ChainError::IndirectOutOfMemory { addr, len: 32 }),
    );
}

#[test]
fn nested_indirect() {
    let (mut d, mut q) = setup(8);
    let inner = d.write_indirect_table(&[raw(0x2000, 1, 0, 0)]);
    let outer = d.write_indirect_table(&[raw(0x2000, 1, NEXT, 1), raw(inner, 16, INDIRECT, 0)]);
    d.write_descriptor(0, raw(outer, 32, INDIRECT, 0));
    d.push_avail(0);
    assert_eq!(q.pop(d.mem()), Err(chain_err(ChainError::NestedIndirect)));
}

#[test]
fn indirect_together_with_next() {
    let (mut d, mut q) = setup(8);
    let table = d.write_indirect_table(&[raw(0x2000, 1, 0, 0)]);
    d.write_descriptor(0, raw(table, 16, INDIRECT | NEXT, 1));
    d.write_descriptor(1, raw(0x2000, 1, 0, 0));
    d.push_avail(0);
    assert_eq!(q.pop(d.mem()), Err(chain_err(ChainError::IndirectWithNext)));
}

#[test]
fn indirect_table_next_out_of_range_and_loop() {
    let (mut d, mut q) = setup(8);
    let table = d.write_indirect_table(&[raw(0x2000, 1, NEXT, 1), raw(0x2000, 1, NEXT, 2)]);
    d.write_descriptor(0, raw(table, 32, INDIRECT, 0));
    d.push_avail(0);
    assert_eq!(
        q.pop(d.mem()),
        Err(chain_err(ChainError::IndirectNextOutOfRange {
            next: 2,
            count: 2
        }))
    );

    let (mut d, mut q) = setup(8);
    let table = d.write_indirect_table(&[raw(0x2000, 1, NEXT, 1), raw(0x2000, 1, NEXT, 0)]);
    d.write_descriptor(0, raw(table, 32, INDIRECT, 0));
    d.push_avail(0);
    assert_eq!(
        q.pop(d.mem()),
        Err(chain_err(ChainError::Loop { limit: 2 }))
    );
}

#[test]
fn readable_after_writable() {
    let (mut d, mut q) = setup(8);
    d.add_chain(&[MockBuffer::Writable(4), MockBuffer::Readable(b"late")]);
    assert_eq!(
        q.pop(d.mem()),
        Err(chain_err(ChainError::ReadableAfterWritable))
    );

    let (mut d, mut q) = setup(8);
    d.add_indirect_chain(&[MockBuffer::Writable(4), MockBuffer::Readable(b"late")]);
    assert_eq!(
        q.pop(d.mem()),
        Err(chain_err(ChainError::ReadableAfterWritable))
    );
}

/// Every operation refuses with `want`.
fn all_ops_refuse(d: &MockDriver, q: &mut Queue, want: QueueError) {
    assert_eq!(q.pop(d.mem()), Err(want));
    assert_eq!(q.add_used(d.mem(), 0, 0), Err(want));
    assert_eq!(q.needs_notification(d.mem()), Err(want));
    assert_eq!(q.enable_notification(d.mem()), Err(want));
    assert_eq!(q.disable_notification(d.mem()), Err(want));
}

#[test]
fn rings_misaligned_or_outside_memory() {
    let (mut d, _) = setup(8);
    d.add_chain(&[MockBuffer::Writable(1)]);
    let end = MEM as u64;
    type Tweak = fn(&mut Queue, u64);
    let tweaks: [Tweak; 9] = [
        |q, _| q.set_desc_table(q.desc_table() + 8),
        |q, _| q.set_avail_ring(q.avail_ring() + 1),
        |q, _| q.set_used_ring(q.used_ring() + 2),
        |q, end| q.set_desc_table(end - 64),
        |q, end| q.set_avail_ring(end - 20),
        // avail_event (the last u16 of the used ring) just outside memory.
        |q, end| q.set_used_ring(end - 4 - 64),
        |q, _| q.set_used_ring(u64::MAX - 3),
        |q, _| q.set_size(0),
        |q, _| q.set_size(6),
    ];
    for (i, tweak) in tweaks.iter().enumerate() {
        let mut q = d.queue();
        tweak(&mut q, end);
        assert!(!q.is_valid(d.mem()), "tweak {i}");
        all_ops_refuse(&d, &mut q, QueueError::InvalidConfig);
        assert!(
            !q.is_broken(),
            "an invalid configuration does not break the queue"
        );
    }
    // A size above the maximum.
    let mut q = Queue::new(4);
    d.configure(&mut q);
    assert!(!q.is_valid(d.mem()));
    // Rings right up to the end of memory are fine.
    let mut q = d.queue();
    q.set_avail_ring(end - 6 - 16);
    assert!(q.is_valid(d.mem()));
    q.set_desc_table(end - 16 * 8);
    assert!(q.is_valid(d.mem()));
}

#[test]
fn queue_not_ready() {
    let (mut d, mut q) = setup(8);
    d.add_chain(&[MockBuffer::Writable(1)]);
    q.set_ready(false);
    all_ops_refuse(&d, &mut q, QueueError::NotReady);
    assert!(!q.is_broken());
    q.set_ready(true);
    assert!(q.pop(d.mem()).unwrap().is_some());
}

#[test]
fn broken_queue_stays_broken_until_reset() {
    let (mut d, mut q) = setup(8);
    d.push_avail(200);
    assert!(matches!(
        q.pop(d.mem()),
        Err(QueueError::HeadOutOfRange { .. })
    ));
    // Even once the driver puts things right, the queue stays broken.
    d.set_avail_idx(0);
    d.add_chain(&[MockBuffer::Writable(1)]);
    all_ops_refuse(&d, &mut q, QueueError::Broken);
    assert!(q.is_broken());

    q.reset();
    assert!(!q.is_broken());
    assert_eq!(q.pop(d.mem()), Err(QueueError::NotReady));
    d.configure(&mut q);
    let c = q.pop(d.mem()).unwrap().unwrap();
    q.add_used(d.mem(), c.head, 1).unwrap();
}

#[test]
fn used_head_out_of_range_is_refused_without_breaking() {
    let (d, mut q) = setup(8);
    assert_eq!(
        q.add_used(d.mem(), 8, 0),
        Err(QueueError::UsedHeadOutOfRange { head: 8, size: 8 })
    );
    assert!(!q.is_broken());
    assert_eq!(d.used_idx(), 0);
}

#[test]
fn errors_name_the_problem() {
    let e = chain_err(ChainError::OutOfMemory {
        addr: 0x1000,
        len: 4,
    });
    assert_eq!(
        e.to_string(),
        "malformed descriptor chain: buffer of 4 bytes at 0x1000 is outside guest memory"
    );
    assert!(QueueError::Broken.to_string().contains("reset"));
}

/// A tiny deterministic generator (xorshift64*), for the garbage test below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_rings_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = [0u32; 3];
    for _ in 0..2_000 {
        let d = MockDriver::new(16, 0x3000);
        // Fill the descriptor table and rings with garbage that mostly points into memory.
        for i in 0..16u16 {
            let r = rng.next();
            d.write_descriptor(
                i,
                raw(
                    r % 0x3100,
                    (r >> 16) as u32 % 0x400,
                    (r >> 48) as u16 & 7,
                    (r >> 32) as u16 % 20,
                ),
            );
        }
        let mut ring = [0u8; 38];
        for b in ring.iter_mut() {
            *b = rng.next() as u8 % 24;
        }
        d.write(d.avail_ring(), &ring);
        d.write(d.avail_ring() + 2, &(rng.next() as u16 % 18).to_le_bytes());
        let mut q = d.queue();
        q.set_event_idx(rng.next() & 1 == 1);
        for _ in 0..20 {
            match q.pop(d.mem()) {
                Ok(Some(c)) => {
                    outcomes[0] += 1;
                    assert!(c.descriptors.len() <= 16);
                    let mut buf = [0u8; 64];
                    let _ = c.read_at(d.mem(), rng.next() % 64, &mut buf);
                    let _ = c.write_at(d.mem(), rng.next() % 64, &buf);
                    let _ = q.add_used(d.mem(), c.head, 1);
                    let _ = q.needs_notification(d.mem());
                }
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
        }
    }
    // The generator reaches all three outcomes.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}
