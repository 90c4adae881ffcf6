//! Well-behaved drivers: the normal flow and notification suppression.

use super::*;
use crate::mock::{MockBuffer, MockDriver, RawDescriptor, UsedElement};
use crate::{Descriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

const MEM: usize = 0x10_0000;

fn setup(size: u16) -> (MockDriver, Queue) {
    let d = MockDriver::new(size, MEM);
    let q = d.queue();
    (d, q)
}

#[test]
fn normal_flow_across_descriptors() {
    let (mut d, mut q) = setup(16);
    let head = d.add_chain(&[
        MockBuffer::Readable(b"head"),
        MockBuffer::Readable(b"er-and-body"),
        MockBuffer::Writable(4),
        MockBuffer::Writable(8),
    ]);
    let c = q.pop(d.mem()).unwrap().expect("a chain");
    assert_eq!(c.head, head);
    assert_eq!(c.descriptors.len(), 4);
    assert_eq!(c.readable().count(), 2);
    assert_eq!(c.writable().count(), 2);
    assert_eq!(c.readable_len(), 15);
    assert_eq!(c.writable_len(), 12);

    let mut all = [0u8; 32];
    assert_eq!(c.read_at(d.mem(), 0, &mut all).unwrap(), 15);
    assert_eq!(&all[..15], b"header-and-body");
    let mut mid = [0u8; 6];
    assert_eq!(c.read_at(d.mem(), 2, &mut mid).unwrap(), 6);
    assert_eq!(&mid, b"ader-a");

    assert_eq!(c.write_at(d.mem(), 0, b"OK").unwrap(), 2);
    assert_eq!(c.write_at(d.mem(), 2, b"-response-and-more").unwrap(), 10);
    let w: Vec<&Descriptor> = c.writable().collect();
    assert_eq!(d.read(w[0].addr, 4), b"OK-r");
    assert_eq!(d.read(w[1].addr, 8), b"esponse-");

    assert_eq!(q.pop(d.mem()).unwrap(), None);
    q.add_used(d.mem(), head, 12).unwrap();
    assert_eq!(d.used_idx(), 1);
    assert_eq!(
        d.used(),
        [UsedElement {
            id: head.into(),
            len: 12
        }]
    );
    assert_eq!(q.next_avail(), 1);
    assert_eq!(q.next_used(), 1);
    let s = q.stats();
    assert_eq!((s.popped, s.used), (1, 1));
}

#[test]
fn chains_come_out_in_order_and_completions_in_any_order() {
    let (mut d, mut q) = setup(8);
    let heads: Vec<u16> = (0..3u8)
        .map(|i| d.add_chain(&[MockBuffer::Readable(&[i]), MockBuffer::Writable(1)]))
        .collect();
    let chains: Vec<DescriptorChain> = (0..3).map(|_| q.pop(d.mem()).unwrap().unwrap()).collect();
    for (c, (&h, i)) in chains.iter().zip(heads.iter().zip(0u8..)) {
        assert_eq!(c.head, h);
        let mut b = [0u8];
        c.read_at(d.mem(), 0, &mut b).unwrap();
        assert_eq!(b[0], i);
    }
    for c in chains.iter().rev() {
        q.add_used(d.mem(), c.head, 1).unwrap();
    }
    let ids: Vec<u32> = d.used().iter().map(|u| u.id).collect();
    let expect: Vec<u32> = heads.iter().rev().map(|&h| h.into()).collect();
    assert_eq!(ids, expect);
}

#[test]
fn indices_wrap_around_u16() {
    let (mut d, mut q) = setup(4);
    for i in 0..70_000u32 {
        let head = d.add_chain(&[MockBuffer::Writable(0)]);
        let c = q.pop(d.mem()).unwrap().unwrap();
        assert_eq!(c.head, head, "iteration {i}");
        q.add_used(d.mem(), c.head, 0).unwrap();
        assert_eq!(d.used().len(), 1);
    }
    assert_eq!(q.next_avail(), (70_000 % 65_536) as u16);
    assert_eq!(q.stats().used, 70_000);
}

#[test]
fn full_ring_is_accepted() {
    let (mut d, mut q) = setup(4);
    for _ in 0..4 {
        d.add_chain(&[MockBuffer::Writable(1)]);
    }
    for _ in 0..4 {
        assert!(q.pop(d.mem()).unwrap().is_some());
    }
    assert_eq!(q.pop(d.mem()).unwrap(), None);
}

#[test]
fn indirect_chain() {
    let (mut d, mut q) = setup(8);
    let head = d.add_indirect_chain(&[
        MockBuffer::Readable(b"abc"),
        MockBuffer::Readable(b"de"),
        MockBuffer::Writable(3),
    ]);
    let c = q.pop(d.mem()).unwrap().unwrap();
    assert_eq!(c.head, head);
    assert_eq!(c.descriptors.len(), 3);
    let mut b = [0u8; 5];
    assert_eq!(c.read_at(d.mem(), 0, &mut b).unwrap(), 5);
    assert_eq!(&b, b"abcde");
    assert_eq!(c.write_at(d.mem(), 0, b"xyz!").unwrap(), 3);
}

#[test]
fn direct_descriptors_before_an_indirect_table() {
    let (mut d, mut q) = setup(8);
    let buf = d.alloc(8);
    d.write(buf, b"12345678");
    let table = d.write_indirect_table(&[RawDescriptor {
        addr: buf + 4,
        len: 4,
        flags: VIRTQ_DESC_F_WRITE,
        next: 0,
    }]);
    d.write_descriptor(
        0,
        RawDescriptor {
            addr: buf,
            len: 4,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
    );
    // WRITE on the descriptor naming the table must be ignored.
    d.write_descriptor(
        1,
        RawDescriptor {
            addr: table,
            len: 16,
            flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
            next: 0,
        },
    );
    d.push_avail(0);
    let c = q.pop(d.mem()).unwrap().unwrap();
    assert_eq!(
        c.descriptors,
        [
            Descriptor {
                addr: buf,
                len: 4,
                writable: false
            },
            Descriptor {
                addr: buf + 4,
                len: 4,
                writable: true
            },
        ]
    );
}

#[test]
fn zero_length_descriptors_are_allowed() {
    let (mut d, mut q) = setup(8);
    d.add_chain(&[
        MockBuffer::Readable(b""),
        MockBuffer::Readable(b"x"),
        MockBuffer::Writable(0),
    ]);
    let c = q.pop(d.mem()).unwrap().unwrap();
    assert_eq!(c.descriptors.len(), 3);
    assert_eq!((c.readable_len(), c.writable_len()), (1, 0));
    assert_eq!(c.write_at(d.mem(), 0, b"y").unwrap(), 0);
}

/// The device side of a burst: pop everything, complete each, ask after each completion.
fn serve_burst(d: &MockDriver, q: &mut Queue) -> (u32, u32) {
    let (mut served, mut notified) = (0, 0);
    while let Some(c) = q.pop(d.mem()).unwrap() {
        q.add_used(d.mem(), c.head, 0).unwrap();
        served += 1;
        if q.needs_notification(d.mem()).unwrap() {
            notified += 1;
        }
    }
    (served, notified)
}

#[test]
fn event_idx_suppresses_interrupts_in_a_burst() {
    let (mut d, mut q) = setup(256);
    q.set_event_idx(true);
    let mut total_notified = 0;
    for _round in 0..4 {
        for _ in 0..64 {
            d.add_chain(&[MockBuffer::Writable(16)]);
        }
        // The driver asks for an interrupt at the first completion after what it has seen
        // (Linux's virtqueue_enable_cb), then does not look again until that interrupt.
        d.set_used_event(d.used_idx());
        let (served, notified) = serve_burst(&d, &mut q);
        assert_eq!(served, 64);
        assert_eq!(notified, 1);
        total_notified += notified;
        assert_eq!(d.used().len(), 64);
    }
    assert_eq!(total_notified, 4);
    let s = q.stats();
    assert_eq!((s.used, s.notifications, s.suppressed), (256, 4, 252));
}

#[test]
fn event_idx_interrupts_when_used_passes_used_event() {
    let (mut d, mut q) = setup(32);
    q.set_event_idx(true);
    // "Interrupt me once the tenth buffer is used" (used_event = 9).
    d.set_used_event(9);
    for _ in 0..16 {
        d.add_chain(&[MockBuffer::Writable(1)]);
    }
    let mut when = Vec::new();
    for i in 1..=16u16 {
        let c = q.pop(d.mem()).unwrap().unwrap();
        q.add_used(d.mem(), c.head, 1).unwrap();
        if q.needs_notification(d.mem()).unwrap() {
            when.push(i);
        }
    }
    assert_eq!(when, [10]);
}

#[test]
fn event_idx_batch_of_completions_gets_one_interrupt() {
    let (mut d, mut q) = setup(16);
    q.set_event_idx(true);
    for _ in 0..8 {
        d.add_chain(&[MockBuffer::Writable(1)]);
    }
    while let Some(c) = q.pop(d.mem()).unwrap() {
        q.add_used(d.mem(), c.head, 1).unwrap();
    }
    d.set_used_event(3);
    assert!(q.needs_notification(d.mem()).unwrap());
    assert!(!q.needs_notification(d.mem()).unwrap(), "nothing new");
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    let (mut d, mut q) = setup(8);
    for _ in 0..2 {
        d.add_chain(&[MockBuffer::Writable(1)]);
    }
    d.set_avail_flags(crate::VIRTQ_AVAIL_F_NO_INTERRUPT);
    let c = q.pop(d.mem()).unwrap().unwrap();
    q.add_used(d.mem(), c.head, 1).unwrap();
    assert!(!q.needs_notification(d.mem()).unwrap());
    d.set_avail_flags(0);
    let c = q.pop(d.mem()).unwrap().unwrap();
    q.add_used(d.mem(), c.head, 1).unwrap();
    assert!(q.needs_notification(d.mem()).unwrap());
    assert!(!q.needs_notification(d.mem()).unwrap(), "nothing new");
    let s = q.stats();
    assert_eq!((s.notifications, s.suppressed), (1, 1));
}

#[test]
fn enable_notification_reports_buffers_that_raced_in() {
    let (mut d, mut q) = setup(8);
    q.disable_notification(d.mem()).unwrap();
    assert_eq!(d.used_flags(), crate::VIRTQ_USED_F_NO_NOTIFY);
    assert!(!q.enable_notification(d.mem()).unwrap());
    assert_eq!(d.used_flags(), 0);

    // The device drains the queue and is about to sleep; the driver adds a buffer while
    // notifications are still off, so it does not notify.
    q.disable_notification(d.mem()).unwrap();
    d.add_chain(&[MockBuffer::Writable(1)]);
    assert!(
        q.enable_notification(d.mem()).unwrap(),
        "must loop, not sleep"
    );
    assert!(q.pop(d.mem()).unwrap().is_some());
    assert!(!q.enable_notification(d.mem()).unwrap());
}

#[test]
fn enable_notification_with_event_idx_writes_avail_event() {
    let (mut d, mut q) = setup(8);
    q.set_event_idx(true);
    d.add_chain(&[MockBuffer::Writable(1)]);
    d.add_chain(&[MockBuffer::Writable(1)]);
    assert!(q.pop(d.mem()).unwrap().is_some());
    assert!(q.enable_notification(d.mem()).unwrap());
    assert_eq!(d.avail_event(), 1);
    assert!(q.pop(d.mem()).unwrap().is_some());
    assert!(!q.enable_notification(d.mem()).unwrap());
    assert_eq!(d.avail_event(), 2);
    // With EVENT_IDX the flag is left alone.
    q.disable_notification(d.mem()).unwrap();
    assert_eq!(d.used_flags(), 0);
}

#[test]
fn need_event_rule_wraps() {
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(vring_need_event(5, 10, 0));
    assert!(!vring_need_event(10, 10, 0));
    assert!(vring_need_event(u16::MAX, 2, u16::MAX - 1));
    assert!(vring_need_event(0, 2, u16::MAX - 1));
    assert!(!vring_need_event(2, 2, u16::MAX - 1));
    assert!(!vring_need_event(7, 7, 7));
}

#[test]
fn reset_returns_to_new() {
    let (mut d, mut q) = setup(8);
    q.set_event_idx(true);
    d.add_chain(&[MockBuffer::Writable(1)]);
    let c = q.pop(d.mem()).unwrap().unwrap();
    q.add_used(d.mem(), c.head, 0).unwrap();
    q.reset();
    assert!(!q.ready() && !q.event_idx() && !q.is_broken());
    assert_eq!((q.size(), q.max_size()), (8, 8));
    assert_eq!((q.desc_table(), q.avail_ring(), q.used_ring()), (0, 0, 0));
    assert_eq!((q.next_avail(), q.next_used()), (0, 0));
    assert_eq!(q.stats(), QueueStats::default());
}

#[test]
#[should_panic(expected = "power of two")]
fn max_size_must_be_a_power_of_two() {
    let _ = Queue::new(3);
}

#[test]
fn works_through_dyn_memory() {
    let (mut d, mut q) = setup(8);
    let head = d.add_chain(&[MockBuffer::Readable(b"dyn"), MockBuffer::Writable(3)]);
    let mem: &(dyn GuestMemory + Send + Sync) = d.mem();
    let c = q.pop(mem).unwrap().unwrap();
    let mut b = [0u8; 3];
    assert_eq!(c.read_at(mem, 0, &mut b).unwrap(), 3);
    assert_eq!(c.write_at(mem, 0, &b).unwrap(), 3);
    q.add_used(mem, head, 3).unwrap();
    assert!(q.needs_notification(mem).unwrap());
}

#[test]
fn a_saved_state_restores_into_a_fresh_queue_that_carries_on_where_it_stopped() {
    let (mut d, mut q) = setup(8);
    let heads: Vec<u16> = (0..3)
        .map(|_| d.add_chain(&[MockBuffer::Writable(4)]))
        .collect();
    let first = q.pop(d.mem()).unwrap().unwrap();
    q.add_used(d.mem(), first.head, 4).unwrap();
    let second = q.pop(d.mem()).unwrap().unwrap(); // popped, not yet used
    let saved = q.state();
    assert_eq!((saved.next_avail, saved.next_used), (2, 1));
    let mut fresh = Queue::new(8);
    fresh.set_state(&saved, d.mem()).unwrap();
    assert_eq!(fresh.state(), saved);
    // The request held across the save is found again from its head, unchanged.
    assert_eq!(fresh.chain_at(d.mem(), second.head).unwrap(), second);
    fresh.add_used(d.mem(), second.head, 4).unwrap();
    let third = fresh.pop(d.mem()).unwrap().unwrap();
    assert_eq!(third.head, heads[2]);
    fresh.add_used(d.mem(), third.head, 4).unwrap();
    assert!(fresh.pop(d.mem()).unwrap().is_none());
    let used: Vec<u32> = d.used().iter().map(|u| u.id).collect();
    assert_eq!(
        used,
        heads.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
    );
}

#[test]
fn impossible_saved_states_are_refused_and_leave_the_queue_alone() {
    let (d, q) = setup(8);
    let good = q.state();
    let mut target = Queue::new(8);
    let before = target.state();
    let bad = [
        QueueState { size: 6, ..good },
        QueueState { size: 16, ..good },
        QueueState {
            desc_table: u64::MAX - 15,
            ..good
        },
        QueueState {
            used_ring: good.used_ring + 2,
            ..good
        },
        // Ten chains popped and not used in a queue of eight.
        QueueState {
            next_avail: 10,
            next_used: 0,
            ..good
        },
        QueueState {
            next_used: 3,
            signalled_used: 100,
            ..good
        },
    ];
    for state in bad {
        assert!(target.set_state(&state, d.mem()).is_err(), "{state:?}");
        assert_eq!(target.state(), before);
    }
    // A queue that is not ready may hold any addresses: the driver sets them before it
    // enables the queue.
    let idle = QueueState {
        ready: false,
        desc_table: u64::MAX - 15,
        ..good
    };
    target.set_state(&idle, d.mem()).unwrap();
    assert!(target.chain_at(d.mem(), 0).is_err());
}

#[test]
fn a_pop_budget_stops_pops_until_lifted() {
    let (mut d, mut q) = setup(8);
    for _ in 0..5 {
        d.add_chain(&[MockBuffer::Writable(4)]);
    }
    q.set_pop_budget(Some(2));
    assert!(q.pop(d.mem()).unwrap().is_some());
    assert!(!q.budget_spent());
    assert!(q.pop(d.mem()).unwrap().is_some());
    assert!(q.budget_spent());
    assert!(q.pop(d.mem()).unwrap().is_none(), "the budget is spent");
    q.set_pop_budget(None);
    assert_eq!(
        std::iter::from_fn(|| q.pop(d.mem()).unwrap()).count(),
        3,
        "the rest once it is lifted"
    );
}

#[test]
fn chains_given_back_come_out_again_and_a_batch_is_published_at_once() {
    let (mut d, mut q) = setup(16);
    q.set_event_idx(true);
    let heads: Vec<u16> = (0..3)
        .map(|_| d.add_chain(&[MockBuffer::Writable(100)]))
        .collect();
    let a = q.pop(d.mem()).unwrap().unwrap();
    let b = q.pop(d.mem()).unwrap().unwrap();
    assert_eq!((a.head, b.head), (heads[0], heads[1]));
    // Too few for what the device has: both go back, and the driver is asked to notify at
    // the next buffer it adds, not at the one it already added.
    q.undo_pop(2);
    assert_eq!(q.next_avail(), 0);
    assert!(!q.notify_on_new_buffers(d.mem()).unwrap());
    assert_eq!(d.avail_event(), 3);
    // Never more than was popped since the last used entry.
    q.undo_pop(5);
    assert_eq!(q.next_avail(), 0);
    let again: Vec<u16> = (0..3)
        .map(|_| q.pop(d.mem()).unwrap().unwrap().head)
        .collect();
    assert_eq!(again, heads);
    q.add_used_batch(d.mem(), &[(heads[0], 100), (heads[1], 100), (heads[2], 7)])
        .unwrap();
    assert_eq!(d.used_idx(), 3);
    let used: Vec<(u32, u32)> = d.used().iter().map(|u| (u.id, u.len)).collect();
    assert_eq!(
        used,
        [
            (heads[0].into(), 100),
            (heads[1].into(), 100),
            (heads[2].into(), 7)
        ]
    );
    assert_eq!(q.stats().used, 3);
    q.undo_pop(1);
    assert_eq!(q.next_avail(), 3, "used chains are not given back");
    assert_eq!(
        q.add_used_batch(d.mem(), &[(16, 1)]),
        Err(QueueError::UsedHeadOutOfRange { head: 16, size: 16 })
    );
}
