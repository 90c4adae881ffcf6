//! One split virtqueue, device side: configuration, popping chains, publishing used entries,
//! notification suppression, and the broken-queue policy (see the crate docs).

use std::sync::atomic::{fence, Ordering};

use crate::chain::{self, ChainError, DescriptorChain};
use crate::memory::{read_u16, write_u16, GuestMemory, MemoryError};
use crate::{
    DESCRIPTOR_SIZE, MAX_QUEUE_SIZE, USED_ELEMENT_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_USED_F_NO_NOTIFY,
};

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The driver has not set the queue ready.
    #[error("the queue is not ready")]
    NotReady,
    /// The configuration is unusable: see [`Queue::is_valid`].
    #[error("the queue's configuration is invalid (size, ring alignment, or rings outside guest memory)")]
    InvalidConfig,
    /// An earlier call found a protocol violation; the queue is unusable until reset.
    #[error("the queue is broken by an earlier protocol violation and must be reset")]
    Broken,
    /// `avail.idx` is more than the queue size ahead of the last index the device consumed
    /// (or went backwards).
    #[error("avail index moved from {last} to {avail}, more than the queue size {size} ahead")]
    AvailIndexJump {
        /// The next avail index the device would consume.
        last: u16,
        /// The driver's `avail.idx`.
        avail: u16,
        /// The queue size.
        size: u16,
    },
    /// The avail ring names a head descriptor outside the descriptor table.
    #[error("avail ring names head descriptor {head}, outside the table of {size}")]
    HeadOutOfRange {
        /// The bad head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// The device passed [`Queue::add_used`] a head outside the descriptor table (a device bug;
    /// it does not break the queue).
    #[error("used head {head} is outside the table of {size}")]
    UsedHeadOutOfRange {
        /// The bad head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// The chain at the head of the avail ring is malformed.
    #[error("malformed descriptor chain: {0}")]
    Chain(#[from] ChainError),
    /// A saved state ([`Queue::set_state`]) names indices no queue could have had.
    #[error("impossible saved indices: {0}")]
    ImpossibleState(&'static str),
    /// A ring access fell outside guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Counters for accounting and tests. Zeroed by [`Queue::reset`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains returned by [`Queue::pop`].
    pub popped: u64,
    /// Entries published by [`Queue::add_used`].
    pub used: u64,
    /// [`Queue::needs_notification`] answers of `true`.
    pub notifications: u64,
    /// [`Queue::needs_notification`] answers of `false` although new used entries were
    /// published since the previous check: interrupts the driver's suppression saved.
    pub suppressed: u64,
}

/// One split virtqueue, device side.
///
/// The transport writes the driver's configuration (`set_*`); the device then calls
/// [`pop`](Self::pop), [`add_used`](Self::add_used) and the notification methods, each of which
/// re-checks that the queue is ready, valid and not broken.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    ready: bool,
    event_idx: bool,
    /// The next avail ring index the device will consume (free-running, wraps).
    next_avail: u16,
    /// The next used ring index the device will fill; equals the published `used.idx`.
    next_used: u16,
    /// `next_used` at the last [`Queue::needs_notification`].
    signalled_used: u16,
    broken: bool,
    stats: QueueStats,
    /// Chains [`Queue::pop`] may still return before it answers "empty" (the transport's
    /// fairness budget; `None`: no budget). Not part of the queue's saved state.
    budget: Option<u32>,
}

/// What a queue is, for saving and restoring it ([`Queue::state`], [`Queue::set_state`]): the
/// driver's configuration and the device's position in the rings. Statistics are not part of
/// it, nor the notification budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// The size the driver chose.
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used ring.
    pub used_ring: u64,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// The next avail index the device will consume.
    pub next_avail: u16,
    /// The next used index the device will fill (the published `used.idx`).
    pub next_used: u16,
    /// `next_used` at the last interrupt decision.
    pub signalled_used: u16,
    /// Whether a protocol violation broke the queue.
    pub broken: bool,
}

impl Queue {
    /// A queue of at most `max_size` entries, not ready, with size `max_size` and rings at 0.
    ///
    /// # Panics
    ///
    /// If `max_size` is not a power of two in `1..=32768` (a device constant, not a guest value).
    pub fn new(max_size: u16) -> Self {
        assert!(
            max_size.is_power_of_two() && max_size <= MAX_QUEUE_SIZE,
            "virtqueue max size {max_size} is not a power of two <= 32768"
        );
        Queue {
            max_size,
            size: max_size,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            ready: false,
            event_idx: false,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            broken: false,
            stats: QueueStats::default(),
            budget: None,
        }
    }

    /// The queue's state, for saving (see [`QueueState`]).
    pub fn state(&self) -> QueueState {
        QueueState {
            size: self.size,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
            ready: self.ready,
            event_idx: self.event_idx,
            next_avail: self.next_avail,
            next_used: self.next_used,
            signalled_used: self.signalled_used,
            broken: self.broken,
        }
    }

    /// Restores a saved state into this queue (of the same `max_size`), checking what can be
    /// checked without the driver: a size that is a power of two of at most `max_size`, a
    /// ready queue's layout inside `mem` and aligned ([`Queue::is_valid`]), and at most `size`
    /// chains popped and not yet used (`next_avail - next_used`) and no interrupt decided for
    /// entries not yet published. On error the queue is left as it was.
    pub fn set_state(
        &mut self,
        state: &QueueState,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<(), QueueError> {
        let mut q = Queue::new(self.max_size);
        q.size = state.size;
        q.desc_table = state.desc_table;
        q.avail_ring = state.avail_ring;
        q.used_ring = state.used_ring;
        q.ready = state.ready;
        q.event_idx = state.event_idx;
        q.next_avail = state.next_avail;
        q.next_used = state.next_used;
        q.signalled_used = state.signalled_used;
        q.broken = state.broken;
        if !q.size.is_power_of_two() || q.size > q.max_size {
            return Err(QueueError::InvalidConfig);
        }
        if q.ready && !q.is_valid(mem) {
            return Err(QueueError::InvalidConfig);
        }
        if q.next_avail.wrapping_sub(q.next_used) > q.size {
            return Err(QueueError::ImpossibleState(
                "more chains taken and not used than the queue holds",
            ));
        }
        if q.next_used.wrapping_sub(q.signalled_used) > q.size {
            return Err(QueueError::ImpossibleState(
                "an interrupt decided for used entries never published",
            ));
        }
        *self = q;
        Ok(())
    }

    /// The chain starting at descriptor `head`, walked and validated as [`Queue::pop`] does,
    /// without touching the avail ring: for a device restoring a request it had popped and
    /// not yet used (whose descriptors the driver may not change meanwhile). Errors do not
    /// break the queue.
    pub fn chain_at(
        &self,
        mem: &(impl GuestMemory + ?Sized),
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        self.check_usable(mem)?;
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange {
                head,
                size: self.size,
            });
        }
        Ok(chain::walk(mem, self.desc_table, self.size, head)?)
    }

    /// Lets [`Queue::pop`] return at most `chains` more chains, then answer "nothing
    /// available" until the budget is lifted (`None`) or set again: how a transport bounds one
    /// device's turn on its thread while a driver keeps its ring full.
    pub fn set_pop_budget(&mut self, chains: Option<u32>) {
        self.budget = chains;
    }

    /// Whether the pop budget ran out (chains may be waiting that [`Queue::pop`] did not
    /// return).
    pub fn budget_spent(&self) -> bool {
        self.budget == Some(0)
    }

    /// The largest size the device offers.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Sets the queue size the driver chose (checked by [`is_valid`](Self::is_valid), not here).
    pub fn set_size(&mut self, n: u16) {
        self.size = n;
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the guest-physical address of the descriptor table.
    pub fn set_desc_table(&mut self, addr: u64) {
        self.desc_table = addr;
    }

    /// The guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Sets the guest-physical address of the available (driver) ring.
    pub fn set_avail_ring(&mut self, addr: u64) {
        self.avail_ring = addr;
    }

    /// The guest-physical address of the available ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Sets the guest-physical address of the used (device) ring.
    pub fn set_used_ring(&mut self, addr: u64) {
        self.used_ring = addr;
    }

    /// The guest-physical address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Sets whether the driver has enabled the queue.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Whether the driver has enabled the queue.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Sets whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The next avail ring index the device will consume (free-running).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used ring index the device will fill, i.e. the published `used.idx`.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Back to the state of [`Queue::new`]: not ready, size `max_size`, rings at 0, indices,
    /// broken flag and statistics cleared.
    pub fn reset(&mut self) {
        let budget = self.budget;
        *self = Queue::new(self.max_size);
        self.budget = budget;
    }

    /// Whether the queue was broken by a protocol violation (see the crate docs).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Counters for accounting and tests.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Whether the configuration is usable: size a power of two in 1..=max_size, rings aligned as
    /// the spec requires (desc 16, avail 2, used 4) and lying wholly inside guest memory
    /// (including `used_event` and `avail_event`, which are always part of the layout).
    pub fn is_valid(&self, mem: &(impl GuestMemory + ?Sized)) -> bool {
        let size = self.size;
        if !size.is_power_of_two() || size > self.max_size {
            return false;
        }
        if !self.desc_table.is_multiple_of(16)
            || !self.avail_ring.is_multiple_of(2)
            || !self.used_ring.is_multiple_of(4)
        {
            return false;
        }
        let n = u64::from(size);
        let inside =
            |addr: u64, len: u64| addr.checked_add(len).is_some() && mem.contains(addr, len);
        inside(self.desc_table, n * DESCRIPTOR_SIZE)
            && inside(self.avail_ring, 6 + 2 * n)
            && inside(self.used_ring, 6 + USED_ELEMENT_SIZE * n)
    }

    /// The next available chain, if any.
    ///
    /// Validates: the queue is ready, valid and not broken; `avail.idx` is at most `size` ahead
    /// of the last index consumed; the head and every `next` index are inside the table; the walk
    /// of the main table visits at most `size` descriptors and that of an indirect table at most
    /// its own count (loop detection); an indirect table (`VIRTQ_DESC_F_INDIRECT`) has a non-zero
    /// length that is a multiple of 16, at most `size` entries, lies inside guest memory, holds
    /// no indirect descriptor, and its descriptor does not also set `VIRTQ_DESC_F_NEXT`; the chain
    /// has at most `size` buffers in all; every buffer's `addr + len` does not wrap and lies in
    /// guest memory (zero-length buffers are allowed, and counted); readable buffers come first.
    ///
    /// A violation returns its specific error and marks the queue broken: every later call
    /// returns [`QueueError::Broken`] until [`reset`](Self::reset). `NotReady` and
    /// `InvalidConfig` do not break the queue.
    pub fn pop(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<Option<DescriptorChain>, QueueError> {
        self.check_usable(mem)?;
        let popped = self.pop_checked(mem);
        if popped.is_err() {
            self.broken = true;
        }
        popped
    }

    fn pop_checked(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let size = self.size;
        let avail_idx = read_u16(mem, at(self.avail_ring, 2)?)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > size {
            return Err(QueueError::AvailIndexJump {
                last: self.next_avail,
                avail: avail_idx,
                size,
            });
        }
        if pending == 0 || self.budget == Some(0) {
            return Ok(None);
        }
        // The ring entry must not be read before the index that published it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail & (size - 1));
        let head = read_u16(mem, at(self.avail_ring, 4 + 2 * slot)?)?;
        if head >= size {
            return Err(QueueError::HeadOutOfRange { head, size });
        }
        let chain = chain::walk(mem, self.desc_table, size, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.stats.popped += 1;
        if let Some(left) = self.budget.as_mut() {
            *left = left.saturating_sub(1);
        }
        Ok(Some(chain))
    }

    /// Gives back the last `chains` chains [`Queue::pop`] returned, unused: the next pops return
    /// them again (a device that needs several chains for one packet and found too few). At
    /// most what was popped since the last used entry is given back (more would hand the
    /// driver's buffers out twice). The pop budget does not get them back: a device that ran
    /// out of budget halfway through a packet tries again on its next turn, with a fresh one.
    pub fn undo_pop(&mut self, chains: u16) {
        let unused = self.next_avail.wrapping_sub(self.next_used);
        let chains = chains.min(unused);
        self.next_avail = self.next_avail.wrapping_sub(chains);
        self.stats.popped = self.stats.popped.saturating_sub(u64::from(chains));
    }

    /// Asks the driver to notify at the next buffer it makes available, even while buffers it
    /// made available earlier wait unused: for a device that found too few for what it has to
    /// deliver. (A plain [`Queue::enable_notification`] asks for a notification at the next
    /// entry the device will take, which the driver has already passed.) Returns whether
    /// buffers arrived meanwhile, so that the device tries again now.
    pub fn notify_on_new_buffers(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<bool, QueueError> {
        self.check_usable(mem)?;
        let avail_idx = read_u16(mem, at(self.avail_ring, 2)?)?;
        if self.event_idx {
            write_u16(mem, self.avail_event_addr()?, avail_idx)?;
        } else {
            write_u16(mem, self.used_ring, 0)?;
        }
        // The store above must be visible before avail.idx is read again (store-load order).
        fence(Ordering::SeqCst);
        Ok(read_u16(mem, at(self.avail_ring, 2)?)? != avail_idx)
    }

    /// Puts every `(head, written)` entry in the used ring in order and then publishes
    /// `used.idx` once, so the driver sees all of them or none: a packet spread over several
    /// buffers (mergeable receive buffers) is never seen in part.
    pub fn add_used_batch(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
        entries: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        self.check_usable(mem)?;
        let size = self.size;
        let mut next = self.next_used;
        for &(head, written) in entries {
            if head >= size {
                return Err(QueueError::UsedHeadOutOfRange { head, size });
            }
            let slot = u64::from(next & (size - 1));
            let mut elem = [0u8; 8];
            let (id, len) = elem.split_at_mut(4);
            id.copy_from_slice(&u32::from(head).to_le_bytes());
            len.copy_from_slice(&written.to_le_bytes());
            mem.write(at(self.used_ring, 4 + USED_ELEMENT_SIZE * slot)?, &elem)?;
            next = next.wrapping_add(1);
        }
        // The driver must see the entries before the index that publishes them.
        fence(Ordering::Release);
        write_u16(mem, at(self.used_ring, 2)?, next)?;
        self.next_used = next;
        self.stats.used += entries.len() as u64;
        Ok(())
    }

    /// Puts `head` with `written` bytes in the used ring and publishes `used.idx` (with a Release
    /// fence between the entry and the index).
    pub fn add_used(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        self.check_usable(mem)?;
        let size = self.size;
        if head >= size {
            return Err(QueueError::UsedHeadOutOfRange { head, size });
        }
        let slot = u64::from(self.next_used & (size - 1));
        let mut elem = [0u8; 8];
        let (id, len) = elem.split_at_mut(4);
        id.copy_from_slice(&u32::from(head).to_le_bytes());
        len.copy_from_slice(&written.to_le_bytes());
        mem.write(at(self.used_ring, 4 + USED_ELEMENT_SIZE * slot)?, &elem)?;
        // The driver must see the entry before the index that publishes it.
        fence(Ordering::Release);
        let next = self.next_used.wrapping_add(1);
        write_u16(mem, at(self.used_ring, 2)?, next)?;
        self.next_used = next;
        self.stats.used += 1;
        Ok(())
    }

    /// After one or more [`add_used`](Self::add_used): whether the driver wants an interrupt now.
    ///
    /// Nothing published since the previous check: `false`. Without `EVENT_IDX`: `true` unless
    /// `avail.flags` has `VIRTQ_AVAIL_F_NO_INTERRUPT`. With `EVENT_IDX`: `vring_need_event`, i.e.
    /// `true` when `used_event` (the u16 after the avail ring) lies in the used indices published
    /// since the previous check.
    pub fn needs_notification(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<bool, QueueError> {
        self.check_usable(mem)?;
        let old = self.signalled_used;
        let new = self.next_used;
        if old == new {
            return Ok(false);
        }
        // The published used.idx must be visible before the driver's suppression is read,
        // or an interrupt the driver asked for in between could be missed.
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            let event = read_u16(mem, self.used_event_addr()?)?;
            vring_need_event(event, new, old)
        } else {
            read_u16(mem, self.avail_ring)? & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled_used = new;
        if notify {
            self.stats.notifications += 1;
        } else {
            self.stats.suppressed += 1;
        }
        Ok(notify)
    }

    /// Asks the driver to notify on new buffers: with `EVENT_IDX` writes `avail_event` (the u16
    /// after the used ring) = the next avail index; otherwise clears `VIRTQ_USED_F_NO_NOTIFY`.
    /// Returns whether buffers arrived meanwhile, so the device pops again instead of sleeping
    /// (a buffer made available just before the driver saw the request would not be notified).
    pub fn enable_notification(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<bool, QueueError> {
        self.check_usable(mem)?;
        if self.event_idx {
            write_u16(mem, self.avail_event_addr()?, self.next_avail)?;
        } else {
            write_u16(mem, self.used_ring, 0)?;
        }
        // The store above must be visible before avail.idx is read again (store-load order).
        fence(Ordering::SeqCst);
        let avail_idx = read_u16(mem, at(self.avail_ring, 2)?)?;
        Ok(avail_idx != self.next_avail)
    }

    /// Asks the driver not to notify: sets `VIRTQ_USED_F_NO_NOTIFY` (with `EVENT_IDX` there is
    /// nothing to do: the driver notifies only when it passes `avail_event`).
    pub fn disable_notification(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
    ) -> Result<(), QueueError> {
        self.check_usable(mem)?;
        if !self.event_idx {
            write_u16(mem, self.used_ring, VIRTQ_USED_F_NO_NOTIFY)?;
        }
        Ok(())
    }

    /// The queue's indices as the device and the driver see them, for diagnostics: the
    /// device's next avail and used indices, the driver's published avail index, and both
    /// suppression fields (read from guest memory; `None` where unreadable).
    pub fn describe(&self, mem: &(impl GuestMemory + ?Sized)) -> String {
        let read = |addr: Result<u64, MemoryError>| addr.ok().and_then(|a| read_u16(mem, a).ok());
        format!(
            "ready={} broken={} event_idx={} next_avail={} avail.idx={:?} next_used={} signalled={} used_event={:?} avail_event={:?} popped={} used={} irqs={} suppressed={}",
            self.ready,
            self.broken,
            self.event_idx,
            self.next_avail,
            read(at(self.avail_ring, 2)),
            self.next_used,
            self.signalled_used,
            read(self.used_event_addr()),
            read(self.avail_event_addr()),
            self.stats.popped,
            self.stats.used,
            self.stats.notifications,
            self.stats.suppressed,
        )
    }

    fn check_usable(&self, mem: &(impl GuestMemory + ?Sized)) -> Result<(), QueueError> {
        if self.broken {
            Err(QueueError::Broken)
        } else if !self.ready {
            Err(QueueError::NotReady)
        } else if !self.is_valid(mem) {
            Err(QueueError::InvalidConfig)
        } else {
            Ok(())
        }
    }

    fn used_event_addr(&self) -> Result<u64, MemoryError> {
        at(self.avail_ring, 4 + 2 * u64::from(self.size))
    }

    fn avail_event_addr(&self) -> Result<u64, MemoryError> {
        at(self.used_ring, 4 + USED_ELEMENT_SIZE * u64::from(self.size))
    }
}

/// `base + off`, an error instead of wrapping (unreachable after `is_valid`, kept for safety).
fn at(base: u64, off: u64) -> Result<u64, MemoryError> {
    base.checked_add(off).ok_or(MemoryError {
        addr: base,
        len: off,
    })
}

/// The spec's `vring_need_event`: whether `event` is in the half-open window `[old, new)` of
/// used indices published since the last check (all modulo 2^16).
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
