//! virtio-balloon: the guest gives memory back to the host on request, hands back free pages as
//! it frees them, and says how it uses its memory.
//!
//! - **Target** ([`Action::SetBalloonTarget`]): the control plane sets how many 4 KiB pages it
//!   wants in the balloon (`num_pages` in the configuration space) and raises the
//!   configuration-change interrupt. The guest's driver inflates or deflates towards it and
//!   reports what it holds in `actual`.
//! - **Inflate** (queue 0): arrays of little-endian 32-bit page frame numbers (4 KiB pages)
//!   the guest no longer uses. Their host memory is discarded at once
//!   ([`vring::GuestMemory::discard`]): the domain's resident memory falls by as much.
//! - **Deflate** (queue 1): pages the guest takes back. Nothing to do: a discarded page reads
//!   as zeros when the guest touches it again, and only then costs host memory.
//! - **Statistics** (`STATS_VQ`): the driver posts one buffer of (tag, value) pairs (free,
//!   available and total memory, swap in and out, faults...). The device keeps the buffer and
//!   gives it back every [`STATS_INTERVAL`] to ask for fresh figures; the last ones are in the
//!   counters.
//! - **Free page reporting** (`REPORTING`, offered only when the domain asks for it, as QEMU's
//!   `free-page-reporting`): the driver sends ranges of free memory (each a device-writable
//!   buffer); their host memory is discarded and the buffers returned.
//! - `DEFLATE_ON_OOM` is offered: a guest short of memory deflates on its own rather than
//!   killing a process.
//!
//! Queues are numbered as drivers number them: inflate 0, deflate 1, then the statistics queue
//! and the reporting queue only if their features were negotiated, each taking the next index.
//!
//! Nothing a guest sends can reach host memory outside its own: every page frame is checked
//! against guest memory before anything is discarded, and a hostile guest that balloons pages
//! it still uses only loses their contents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Reader, StateError, Writer};
use super::{
    check_descriptors, copy_config, device_id, Action, Counters, DeviceError, Processed, Queue,
    QueueError, VirtioDevice, Wake,
};

/// `VIRTIO_BALLOON_F_STATS_VQ`.
pub const F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// `VIRTIO_BALLOON_F_REPORTING`.
pub const F_REPORTING: u64 = 1 << 5;
/// The size of a balloon page (`VIRTIO_BALLOON_PFN_SHIFT` is 12 whatever the guest's pages).
pub const PAGE_SIZE: u64 = 4096;
/// How often the device asks the guest for fresh statistics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Most bytes of page frame numbers read from one inflate or deflate buffer (Linux sends at
/// most 256 numbers, 1 KiB, at a time).
const MAX_PFN_BYTES: u64 = 64 * 1024;
/// Most (tag, value) pairs read from one statistics buffer.
const MAX_STATS: usize = 64;
/// The size of one statistics pair: `le16` tag, `le64` value.
const STAT_LEN: usize = 10;
const QUEUE_SIZE: u16 = 256;

/// The names of the balloon's counters, as the API and metrics show them. The first two and
/// the `guest_` ones are gauges; the rest count up.
pub const COUNTER_NAMES: &[&str] = &[
    "target_pages",
    "actual_pages",
    "inflated_pages",
    "deflated_pages",
    "reported_bytes",
    "errors",
    "stats_updates",
    "guest_swap_in_bytes",
    "guest_swap_out_bytes",
    "guest_major_faults",
    "guest_minor_faults",
    "guest_free_bytes",
    "guest_total_bytes",
    "guest_available_bytes",
    "guest_caches_bytes",
];
const TARGET_PAGES: usize = 0;
const ACTUAL_PAGES: usize = 1;
const INFLATED_PAGES: usize = 2;
const DEFLATED_PAGES: usize = 3;
const REPORTED_BYTES: usize = 4;
const ERRORS: usize = 5;
const STATS_UPDATES: usize = 6;
/// The counter of the first guest statistic; statistics tag `t` (0 to 7) goes to
/// `GUEST_STATS + t`.
const GUEST_STATS: usize = 7;
/// Statistics tags the counters keep (`VIRTIO_BALLOON_S_SWAP_IN` 0 to `_CACHES` 7).
const KNOWN_TAGS: u16 = 8;

/// What a queue index is for, once the driver's features are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The balloon device.
pub struct Balloon {
    /// Pages the host wants in the balloon (`num_pages`).
    target_pages: u32,
    /// Pages the driver says the balloon holds (`actual`).
    actual_pages: u32,
    /// The features the driver acknowledged (none before activation).
    features: u64,
    /// The statistics buffer the device holds, and when to give it back for fresh figures.
    stats_held: Option<(u16, Instant)>,
    /// `REPORTING` is offered.
    free_page_reporting: bool,
    counters: Arc<Counters>,
}

impl Balloon {
    /// An empty balloon (target 0), offering free page reporting if `free_page_reporting`.
    pub fn new(free_page_reporting: bool) -> Self {
        Balloon {
            free_page_reporting,
            target_pages: 0,
            actual_pages: 0,
            features: 0,
            stats_held: None,
            counters: Counters::new(COUNTER_NAMES),
        }
    }

    /// The queue roles for `features`, by index.
    fn roles(features: u64) -> Vec<Role> {
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if features & F_STATS_VQ != 0 {
            roles.push(Role::Stats);
        }
        if features & F_REPORTING != 0 {
            roles.push(Role::Reporting);
        }
        roles
    }

    /// Sets the target to `bytes` (rounded down to whole pages, at most `u32::MAX` pages).
    fn set_target(&mut self, bytes: u64) -> bool {
        let pages = u32::try_from(bytes / PAGE_SIZE).unwrap_or(u32::MAX);
        let changed = pages != self.target_pages;
        self.target_pages = pages;
        self.counters.set(TARGET_PAGES, u64::from(pages));
        changed
    }

    /// Serves the inflate (`discard`) or deflate queue: reads each buffer's page numbers and,
    /// inflating, discards their host memory, runs of contiguous pages at a time.
    fn pages(
        &mut self,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
        discard: bool,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        let mut bytes = Vec::new();
        while let Some(chain) = queue.pop(mem)? {
            let len = chain.readable_len();
            if len > MAX_PFN_BYTES || !len.is_multiple_of(4) {
                self.counters.add(ERRORS, 1);
            } else {
                bytes.resize(len as usize, 0);
                let got = chain.read_at(mem, 0, &mut bytes)?;
                let pfns = bytes[..got]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let counter = if discard {
                    INFLATED_PAGES
                } else {
                    DEFLATED_PAGES
                };
                // The guest's pages, in address order: a driver hands them over as its
                // allocator gave them, and sorted they make long runs, each one call.
                let mut pages: Vec<u64> = pfns.map(|pfn| u64::from(pfn) * PAGE_SIZE).collect();
                let given = pages.len() as u64;
                pages.retain(|&addr| mem.contains(addr, PAGE_SIZE));
                let count = pages.len() as u64;
                let mut errors = given - count;
                if discard {
                    pages.sort_unstable();
                    pages.dedup();
                    let mut at = 0;
                    while at < pages.len() {
                        let start = pages[at];
                        let mut n = 1;
                        while at + n < pages.len() && pages[at + n] == start + n as u64 * PAGE_SIZE
                        {
                            n += 1;
                        }
                        errors += u64::from(mem.discard(start, n as u64 * PAGE_SIZE).is_err());
                        at += n;
                    }
                }
                self.counters.add(counter, count);
                self.counters.add(ERRORS, errors);
            }
            queue.add_used(mem, chain.head, 0)?;
            done.completed += 1;
        }
        Ok(done)
    }

    /// Serves the reporting queue: every device-writable buffer is a range of free guest
    /// memory, discarded on the host; the buffers go back unwritten.
    fn reported(
        &mut self,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        while let Some(chain) = queue.pop(mem)? {
            for d in chain.writable() {
                let len = u64::from(d.len);
                if mem.discard(d.addr, len).is_ok() {
                    self.counters.add(REPORTED_BYTES, len);
                } else {
                    self.counters.add(ERRORS, 1);
                }
            }
            queue.add_used(mem, chain.head, 0)?;
            done.completed += 1;
        }
        Ok(done)
    }

    /// Serves the statistics queue: takes a new buffer's figures and keeps the buffer; gives
    /// the held one back once [`STATS_INTERVAL`] has passed, which asks the driver for fresh
    /// figures.
    fn stats(
        &mut self,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        if let Some((head, due)) = self.stats_held {
            if Instant::now() < due {
                return Ok(done);
            }
            self.stats_held = None;
            queue.add_used(mem, head, 0)?;
            done.completed += 1;
        }
        if let Some(chain) = queue.pop(mem)? {
            let mut buf = vec![0u8; MAX_STATS * STAT_LEN];
            let got = chain.read_at(mem, 0, &mut buf)?;
            for pair in buf[..got].chunks_exact(STAT_LEN) {
                let tag = u16::from_le_bytes([pair[0], pair[1]]);
                let mut value = [0u8; 8];
                value.copy_from_slice(&pair[2..]);
                if tag < KNOWN_TAGS {
                    self.counters
                        .set(GUEST_STATS + usize::from(tag), u64::from_le_bytes(value));
                }
            }
            self.counters.add(STATS_UPDATES, 1);
            self.stats_held = Some((chain.head, Instant::now() + STATS_INTERVAL));
        }
        Ok(done)
    }
}

impl VirtioDevice for Balloon {
    fn label(&self) -> String {
        "balloon".into()
    }
    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
    fn device_id(&self) -> u32 {
        device_id::BALLOON
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 4]
    }
    fn device_features(&self) -> u64 {
        let reporting = if self.free_page_reporting {
            F_REPORTING
        } else {
            0
        };
        F_STATS_VQ | F_DEFLATE_ON_OOM | reporting
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // num_pages (le32) at 0, actual (le32) at 4; free_page_hint_cmd_id and poison_val,
        // whose features are not offered, read as zero.
        let mut config = [0u8; 16];
        config[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        copy_config(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write, as a whole le32.
        if offset == 4 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.actual_pages = u32::from_le_bytes(bytes);
                self.counters
                    .set(ACTUAL_PAGES, u64::from(self.actual_pages));
            }
        }
    }
    fn activate(&mut self, features: u64, _queues: &[Queue]) -> Result<(), DeviceError> {
        self.features = features;
        Ok(())
    }
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        match Self::roles(self.features).get(index) {
            Some(Role::Inflate) => self.pages(queue, mem, true),
            Some(Role::Deflate) => self.pages(queue, mem, false),
            Some(Role::Stats) => self.stats(queue, mem),
            Some(Role::Reporting) => self.reported(queue, mem),
            None => Ok(Processed::default()),
        }
    }
    fn wake_at(&self) -> Option<Instant> {
        self.stats_held.map(|(_, due)| due)
    }
    fn reset(&mut self) {
        self.features = 0;
        self.stats_held = None;
        self.actual_pages = 0;
        self.counters.set(ACTUAL_PAGES, 0);
    }
    fn control(
        &mut self,
        action: Action,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Wake, DeviceError> {
        check_descriptors(&action, &fds)?;
        match action {
            Action::SetBalloonTarget { bytes } => Ok(Wake {
                queues: 0,
                config_changed: self.set_target(bytes),
            }),
            other => Err(DeviceError::Unsupported {
                device: "balloon",
                action: other.name(),
            }),
        }
    }
    fn save_state(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.target_pages)
            .u32(self.actual_pages)
            .u8(u8::from(self.stats_held.is_some()))
            .u16(self.stats_held.map_or(0, |(head, _)| head));
        w.finish()
    }
    fn restore_state(
        &mut self,
        bytes: &[u8],
        queues: &[Queue],
        mem: &dyn vring::GuestMemory,
    ) -> Result<(), StateError> {
        let mut r = Reader::new(bytes);
        let target = r.u32("the balloon's target")?;
        let actual = r.u32("the balloon's size")?;
        let held = r.u8("the statistics flag")?;
        let head = r.u16("the statistics buffer")?;
        r.finish()?;
        if held > 1 {
            return Err(StateError::Device(format!(
                "balloon: statistics flag {held}"
            )));
        }
        self.stats_held = None;
        if held == 1 {
            let index = Self::roles(self.features)
                .iter()
                .position(|&r| r == Role::Stats)
                .ok_or_else(|| {
                    StateError::Device(
                        "balloon: a statistics buffer, but no statistics queue".into(),
                    )
                })?;
            let queue = queues.get(index).ok_or_else(|| {
                StateError::Device("balloon: the statistics queue is missing".into())
            })?;
            queue
                .chain_at(mem, head)
                .map_err(|source| StateError::Queue { index, source })?;
            self.stats_held = Some((head, Instant::now()));
        }
        self.target_pages = target;
        self.actual_pages = actual;
        self.counters.set(TARGET_PAGES, u64::from(target));
        self.counters.set(ACTUAL_PAGES, u64::from(actual));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use vring::mock::{MockBuffer, MockDriver, MockMemory};

    /// Guest memory that records what the device discards (and zeroes it, as the real one
    /// does).
    struct Recording<'a> {
        mem: &'a MockMemory,
        discards: RefCell<Vec<(u64, u64)>>,
    }

    impl vring::GuestMemory for Recording<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), vring::MemoryError> {
            self.mem.read(addr, buf)
        }
        fn write(&self, addr: u64, data: &[u8]) -> Result<(), vring::MemoryError> {
            self.mem.write(addr, data)
        }
        fn discard(&self, addr: u64, len: u64) -> Result<(), vring::MemoryError> {
            if !self.mem.contains(addr, len) {
                return Err(vring::MemoryError { addr, len });
            }
            self.discards.borrow_mut().push((addr, len));
            Ok(())
        }
    }

    fn recording(d: &MockDriver) -> Recording<'_> {
        Recording {
            mem: d.mem(),
            discards: RefCell::new(Vec::new()),
        }
    }

    fn pfns(list: &[u32]) -> Vec<u8> {
        list.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    fn counter(b: &Balloon, name: &str) -> u64 {
        let i = COUNTER_NAMES.iter().position(|&n| n == name).unwrap();
        b.counters.get(i)
    }

    const ALL: u64 = F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING;

    #[test]
    fn free_page_reporting_is_offered_only_when_asked_for() {
        assert_eq!(Balloon::new(true).device_features(), ALL);
        assert_eq!(
            Balloon::new(false).device_features(),
            F_STATS_VQ | F_DEFLATE_ON_OOM
        );
    }

    #[test]
    fn inflated_pages_are_discarded_in_runs_and_bad_ones_counted() {
        let mut d = MockDriver::new(16, 1 << 20);
        let mut b = Balloon::new(true);
        b.activate(ALL, &[]).unwrap();
        // Pages 10-12 and 20 are guest memory (1 MiB of it), given out of order; 1 << 20 is not.
        let list = pfns(&[12, 20, 10, 1 << 20, 11]);
        let head = d.add_chain(&[MockBuffer::Readable(&list)]);
        let mut q = d.queue();
        let mem = recording(&d);
        let done = b.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(done.completed, 1);
        assert_eq!(
            *mem.discards.borrow(),
            [(10 * PAGE_SIZE, 3 * PAGE_SIZE), (20 * PAGE_SIZE, PAGE_SIZE)]
        );
        assert_eq!(
            (counter(&b, "inflated_pages"), counter(&b, "errors")),
            (4, 1)
        );
        drop(mem);
        assert_eq!(d.used()[0].id, u32::from(head));

        // Deflating counts the pages and discards nothing; a buffer that is not whole page
        // numbers is an error, returned all the same.
        let list = pfns(&[10, 11]);
        d.add_chain(&[MockBuffer::Readable(&list)]);
        d.add_chain(&[MockBuffer::Readable(&[1, 2, 3])]);
        let mem = recording(&d);
        let done = b.process_queue(1, &mut q, &mem).unwrap();
        assert_eq!(done.completed, 2);
        assert!(mem.discards.borrow().is_empty());
        assert_eq!(
            (counter(&b, "deflated_pages"), counter(&b, "errors")),
            (2, 2)
        );
    }

    #[test]
    fn the_target_is_in_the_configuration_space_and_a_change_interrupts() {
        let mut b = Balloon::new(true);
        let wake = b
            .control(Action::SetBalloonTarget { bytes: 8 << 20 }, Vec::new())
            .unwrap();
        assert!(wake.config_changed);
        let mut word = [0u8; 4];
        b.read_config(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 2048);
        let again = b
            .control(Action::SetBalloonTarget { bytes: 8 << 20 }, Vec::new())
            .unwrap();
        assert!(!again.config_changed, "the same target is no change");
        // The driver reports what it holds in `actual`; other writes are ignored.
        b.write_config(4, &1000u32.to_le_bytes());
        b.write_config(0, &7u32.to_le_bytes());
        b.write_config(5, &[1]);
        b.read_config(4, &mut word);
        assert_eq!(u32::from_le_bytes(word), 1000);
        b.read_config(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 2048);
        assert_eq!(counter(&b, "actual_pages"), 1000);
        assert_eq!(counter(&b, "target_pages"), 2048);
        // Out of the configuration space: zeros, no panic.
        let mut far = [0xffu8; 8];
        b.read_config(12, &mut far);
        assert_eq!(far, [0; 8]);
        assert!(b.control(Action::SetLink { up: true }, Vec::new()).is_err());
    }

    #[test]
    fn statistics_are_kept_and_asked_for_again_when_due() {
        let mut d = MockDriver::new(16, 1 << 20);
        let mut b = Balloon::new(true);
        b.activate(ALL, &[]).unwrap();
        let mut stats = Vec::new();
        for (tag, value) in [
            (4u16, 100u64 << 20),
            (6, 150 << 20),
            (5, 200 << 20),
            (99, 1),
        ] {
            stats.extend_from_slice(&tag.to_le_bytes());
            stats.extend_from_slice(&value.to_le_bytes());
        }
        let head = d.add_chain(&[MockBuffer::Readable(&stats)]);
        let mut q = d.queue();
        let mem = recording(&d);
        let done = b.process_queue(2, &mut q, &mem).unwrap();
        assert_eq!(done.completed, 0, "the buffer is kept");
        assert_eq!(counter(&b, "guest_free_bytes"), 100 << 20);
        assert_eq!(counter(&b, "guest_available_bytes"), 150 << 20);
        assert_eq!(counter(&b, "guest_total_bytes"), 200 << 20);
        assert_eq!(counter(&b, "stats_updates"), 1);
        let due = b.wake_at().expect("a held buffer has a due time");
        assert!(due > Instant::now());
        // Not due yet: nothing happens.
        assert_eq!(b.process_queue(2, &mut q, &mem).unwrap().completed, 0);
        // Due: the buffer goes back, asking for fresh figures.
        b.stats_held = Some((head, Instant::now()));
        assert_eq!(b.process_queue(2, &mut q, &mem).unwrap().completed, 1);
        assert_eq!(b.wake_at(), None);
        drop(mem);
        assert_eq!(d.used()[0].id, u32::from(head));
        b.reset();
        assert_eq!(b.wake_at(), None);
    }

    #[test]
    fn reported_free_ranges_are_discarded_at_the_index_drivers_give_them() {
        let mut d = MockDriver::new(16, 1 << 20);
        let mut b = Balloon::new(true);
        // Without the statistics queue, reporting is queue 2.
        b.activate(F_REPORTING, &[]).unwrap();
        let head = d.add_chain(&[MockBuffer::Writable(8192), MockBuffer::Writable(4096)]);
        let mut q = d.queue();
        let mem = recording(&d);
        assert_eq!(b.process_queue(2, &mut q, &mem).unwrap().completed, 1);
        let lens: Vec<u64> = mem.discards.borrow().iter().map(|&(_, l)| l).collect();
        assert_eq!(lens, [8192, 4096]);
        assert_eq!(counter(&b, "reported_bytes"), 12288);
        assert_eq!(
            b.process_queue(3, &mut q, &mem).unwrap(),
            Processed::default()
        );
        drop(mem);
        assert_eq!(d.used()[0].id, u32::from(head));
    }

    #[test]
    fn saved_state_comes_back_and_hostile_state_is_refused() {
        let mut b = Balloon::new(true);
        b.control(Action::SetBalloonTarget { bytes: 1 << 30 }, Vec::new())
            .unwrap();
        b.write_config(4, &77u32.to_le_bytes());
        let saved = b.save_state();
        let d = MockDriver::new(16, 1 << 20);
        let q = d.queue();
        let mut fresh = Balloon::new(true);
        fresh.restore_state(&saved, &[q], d.mem()).unwrap();
        assert_eq!((fresh.target_pages, fresh.actual_pages), (262144, 77));
        assert_eq!(counter(&fresh, "target_pages"), 262144);
        let mut bad = saved.clone();
        bad[8] = 2;
        assert!(Balloon::new(true)
            .restore_state(&bad, &[], d.mem())
            .is_err());
        assert!(Balloon::new(true)
            .restore_state(&saved[..5], &[], d.mem())
            .is_err());
        // A held statistics buffer needs a statistics queue.
        let mut held = saved.clone();
        held[8] = 1;
        assert!(Balloon::new(true)
            .restore_state(&held, &[], d.mem())
            .is_err());
    }
}
