//! Working-set sampling, ESX's way (Waldspurger, OSDI 2002): at the start of a period a small
//! random sample of the guest's resident pages is taken away from it, and at the end the share
//! of them the guest touched again estimates the share of its memory it is actively using.
//!
//! "Taken away" is done with a userfaultfd, since neither idle page tracking nor DAMON exist in
//! the kernels Vessel runs on: each sampled page is write-protected, its bytes copied aside,
//! and its mapping dropped (`MADV_DONTNEED`); KVM's MMU notifier drops the guest's mapping with
//! it. The first touch of the page, by a vCPU through KVM or by the VMM itself, is a fault this
//! module's thread hears of: the page counts as touched, and its bytes go back
//! (`UFFDIO_COPY`) before the toucher goes on. Untouched pages get their bytes back at the end
//! of the period. The guest sees nothing but a slower first touch of a hundred pages.
//!
//! The write protection comes first so that no write can fall between the copy and the drop;
//! the bytes are copied before the range is armed for missing pages, so that the sampler never
//! faults on a page it armed itself. A page the balloon discards while sampled is forgotten
//! ([`GuestMemory::discard`] asks [`Sampled::discarding`]), so it reads as zeros, as the
//! balloon promises, and not as its old bytes.
//!
//! The userfaultfd ioctls are written here (five requests and one message): the `userfaultfd`
//! crate generates its bindings with bindgen at build time, which needs libclang on every
//! machine that builds Vessel.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

use crate::GuestMemory;

/// The size of a sampled page.
pub const PAGE: usize = 4096;

const UFFDIO: u32 = 0xAA;
const UFFD_API: u64 = 0xAA;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const MODE_MISSING: u64 = 1;
const MODE_WP: u64 = 2;
const WRITEPROTECT_MODE_WP: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` with the page-fault member of its union.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u64,
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_UNREGISTER, UFFDIO, 0x01, UffdioRange);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, UffdioRange);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);
ioctl_iowr_nr!(UFFDIO_WRITEPROTECT, UFFDIO, 0x06, UffdioWriteprotect);

/// The userfaultfd ioctl requests a sampling thread makes (for its seccomp filter).
pub fn ioctl_requests() -> [u64; 7] {
    [
        UFFDIO_API(),
        UFFDIO_REGISTER(),
        UFFDIO_UNREGISTER(),
        UFFDIO_WAKE(),
        UFFDIO_COPY(),
        UFFDIO_ZEROPAGE(),
        UFFDIO_WRITEPROTECT(),
    ]
}

/// Makes an ioctl on the userfaultfd with `arg`; the error is the OS's.
fn uffd_ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request here takes a pointer to the `repr(C)` struct its number was made
    // for (checked by the number's size field), which lives for the call.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A userfaultfd for this process, able to report missing and write-protect faults on
/// anonymous memory. Creating one with kernel faults reported (KVM's are) takes privilege
/// (`CAP_SYS_PTRACE`, or `vm.unprivileged_userfaultfd`): a domain process makes it before it
/// gives its privileges up.
pub fn open_userfaultfd() -> io::Result<OwnedFd> {
    // SAFETY: the system call takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    uffd_ioctl(fd.as_raw_fd(), UFFDIO_API(), &mut api)?;
    Ok(fd)
}

/// The pages sampled now: their bytes while taken away, by host address.
#[derive(Default)]
struct Round {
    /// Taken away and not touched since: their bytes.
    away: HashMap<usize, Box<[u8; PAGE]>>,
    /// Every page registered with the userfaultfd this round.
    registered: Vec<usize>,
    /// How many of them the guest (or the VMM) touched.
    touched: usize,
}

/// The sampling state guest memory shares with its sampler: the balloon's discards pass
/// through it ([`Sampled::discarding`]).
#[derive(Default)]
pub struct Sampled {
    round: Mutex<Round>,
}

impl Sampled {
    fn lock(&self) -> std::sync::MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the sampler held off (it takes no page away and gives none back
    /// meanwhile).
    pub(crate) fn held_off<R>(&self, f: impl FnOnce() -> R) -> R {
        let _round = self.lock();
        f()
    }

    /// Runs `drop_pages`, which drops the host pages of `[start, end)`, with the sampler held
    /// off: sampled pages in the range are forgotten, so they read as zeros like the rest.
    pub(crate) fn discarding<R>(
        &self,
        start: usize,
        end: usize,
        drop_pages: impl FnOnce() -> R,
    ) -> R {
        let mut round = self.lock();
        round
            .away
            .retain(|&page, _| page + PAGE <= start || page >= end);
        drop_pages()
    }
}

/// What one period's sample found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundResult {
    /// Pages taken away.
    pub sampled: usize,
    /// Pages touched again before the period ended.
    pub touched: usize,
}

/// Samples one guest memory's pages with a userfaultfd of this process. Only one thread may
/// run it: the faults of sampled pages wait for it.
pub struct Sampler {
    memory: Arc<GuestMemory>,
    uffd: RawFd,
    rng: Xorshift,
    active: bool,
}

/// Random numbers for choosing pages (xorshift64): sampling and paging need spread, not
/// secrecy.
pub(crate) struct Xorshift(u64);

impl Xorshift {
    /// Seeded from the clock and the process id.
    pub(crate) fn seeded() -> Xorshift {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Xorshift(seed | 1)
    }

    /// The next number.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Sampler {
    /// A sampler of `memory` through `uffd` ([`open_userfaultfd`], kept open by the caller
    /// for as long as the sampler lives).
    pub fn new(memory: Arc<GuestMemory>, uffd: &OwnedFd) -> Sampler {
        Sampler {
            memory,
            uffd: uffd.as_raw_fd(),
            rng: Xorshift::seeded(),
            active: false,
        }
    }

    /// Starts a period: takes up to `pages` resident pages, chosen at random, away from the
    /// guest. Returns how many it took (fewer when few pages are resident).
    pub fn begin(&mut self, pages: usize) -> io::Result<usize> {
        if self.active {
            self.end()?;
        }
        self.active = true;
        let regions: Vec<(usize, usize)> = self
            .memory
            .regions()
            .map(|(_, size, host)| (host as usize, size as usize / PAGE))
            .collect();
        let total: usize = regions.iter().map(|r| r.1).sum();
        if total == 0 {
            return Ok(0);
        }
        let mut taken = 0;
        // Random pages until enough are resident, or a page in twenty tried was.
        for _ in 0..pages * 20 {
            if taken == pages {
                break;
            }
            let mut index = (self.rng.next() % total as u64) as usize;
            let page = regions
                .iter()
                .find_map(|&(host, n)| {
                    if index < n {
                        Some(host + index * PAGE)
                    } else {
                        index -= n;
                        None
                    }
                })
                .expect("the index is below the pages' total");
            if self.take_away(page)? {
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Takes one page away if it is resident and not taken already; whether it did.
    fn take_away(&self, page: usize) -> io::Result<bool> {
        let resident = || {
            let mut resident = 0u8;
            // SAFETY: `page` is a page-aligned address inside a live guest mapping, and the
            // vector is one byte for its one page.
            let rc = unsafe { libc::mincore(page as *mut _, PAGE, &mut resident) };
            rc == 0 && resident & 1 == 1
        };
        if !resident() {
            return Ok(false);
        }
        let mut round = self.memory.sampled().lock();
        if round.registered.contains(&page) {
            return Ok(false);
        }
        let range = UffdioRange {
            start: page as u64,
            len: PAGE as u64,
        };
        // Write-protected first: a write from here on waits for this thread.
        uffd_ioctl(
            self.uffd,
            UFFDIO_REGISTER(),
            &mut UffdioRegister {
                range,
                mode: MODE_WP,
                ..Default::default()
            },
        )?;
        round.registered.push(page);
        uffd_ioctl(
            self.uffd,
            UFFDIO_WRITEPROTECT(),
            &mut UffdioWriteprotect {
                range,
                mode: WRITEPROTECT_MODE_WP,
            },
        )?;
        // From here on a failure must give the page its writes back, or a writer would wait
        // for good.
        let unprotect = || {
            let _ = uffd_ioctl(
                self.uffd,
                UFFDIO_WRITEPROTECT(),
                &mut UffdioWriteprotect { range, mode: 0 },
            );
        };
        // Resident still, now that no discard can come between (they take the lock): write
        // protection does nothing to a page that is not there, whose next write would land
        // in a page dropped below.
        if !resident() {
            unprotect();
            return Ok(false);
        }
        let mut bytes = Box::new([0u8; PAGE]);
        // SAFETY: the page lies in a live guest mapping; reading it cannot fault to this
        // thread (the range is not armed for missing pages yet). A vCPU cannot change it
        // meanwhile (write-protected), and the VMM's own writes wait as the guest's do.
        unsafe { std::ptr::copy_nonoverlapping(page as *const u8, bytes.as_mut_ptr(), PAGE) };
        // Armed for missing pages as well (the same context, so the registration is updated).
        uffd_ioctl(
            self.uffd,
            UFFDIO_REGISTER(),
            &mut UffdioRegister {
                range,
                mode: MODE_MISSING | MODE_WP,
                ..Default::default()
            },
        )
        .inspect_err(|_| unprotect())?;
        // SAFETY: one page of a live private anonymous guest mapping; its bytes are kept in
        // `bytes` and come back on the first touch (the range is armed), so the guest loses
        // nothing. KVM's MMU notifier drops the guest's mapping of it.
        if unsafe { libc::madvise(page as *mut _, PAGE, libc::MADV_DONTNEED) } != 0 {
            let e = io::Error::last_os_error();
            // Not taken away: its mapping stands.
            unprotect();
            return Err(e);
        }
        round.away.insert(page, bytes);
        Ok(true)
    }

    /// Serves the faults of sampled pages for up to `timeout` (at least one wait; returns
    /// early when interrupted by a signal).
    pub fn serve(&self, timeout: Duration) -> io::Result<()> {
        let mut poll = libc::pollfd {
            fd: self.uffd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd that lives for the call.
        let rc = unsafe { libc::poll(&mut poll, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        self.drain()
    }

    /// Serves every fault waiting now.
    fn drain(&self) -> io::Result<()> {
        loop {
            let mut msgs = [UffdMsg::default(); 16];
            // SAFETY: reads whole messages into a buffer of that many, which lives for the call.
            let n = unsafe {
                libc::read(
                    self.uffd,
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let count = n as usize / std::mem::size_of::<UffdMsg>();
            if count == 0 {
                return Ok(());
            }
            for m in &msgs[..count] {
                if m.event == UFFD_EVENT_PAGEFAULT {
                    self.fault(m.address as usize & !(PAGE - 1));
                }
            }
        }
    }

    /// A sampled page was touched: its bytes go back (or zeros, if the balloon discarded it
    /// meanwhile), and whoever waits on it goes on.
    fn fault(&self, page: usize) {
        let mut round = self.memory.sampled().lock();
        let range = UffdioRange {
            start: page as u64,
            len: PAGE as u64,
        };
        if let Some(bytes) = round.away.remove(&page) {
            round.touched += 1;
            match self.put_back_retrying(page, &bytes) {
                Ok(()) => return,
                // Present already: its waiters are woken below.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                // Its bytes cannot come back: the guest must not go on with a page of zeros
                // there. The domain crashes with the reason (`Control::run_or_crash`).
                Err(e) => panic!("a sampled page cannot be given back: {e}"),
            }
        } else if uffd_ioctl(
            self.uffd,
            UFFDIO_ZEROPAGE(),
            &mut UffdioZeropage {
                range,
                ..Default::default()
            },
        )
        .is_ok()
        {
            return;
        }
        // Present already: a late message, or a write fault on a page whose bytes came back.
        // No page that is not away stays write-protected (this also wakes its waiters); a
        // page no longer registered only needs its waiters woken.
        if uffd_ioctl(
            self.uffd,
            UFFDIO_WRITEPROTECT(),
            &mut UffdioWriteprotect { range, mode: 0 },
        )
        .is_err()
        {
            let mut r = range;
            let _ = uffd_ioctl(self.uffd, UFFDIO_WAKE(), &mut r);
        }
    }

    /// [`Self::put_back`], tried again for up to a second while the kernel says to try again
    /// or is short of memory for the moment.
    fn put_back_retrying(&self, page: usize, bytes: &[u8; PAGE]) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match self.put_back(page, bytes) {
                Err(e)
                    if tries < 1000
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EAGAIN | libc::ENOMEM | libc::EINTR)
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    /// Maps `bytes` at `page`, writable, and wakes its waiters. A page of zeros gets the
    /// kernel's shared zero page, so that sampling costs no host memory.
    fn put_back(&self, page: usize, bytes: &[u8; PAGE]) -> io::Result<()> {
        if bytes.iter().all(|&b| b == 0) {
            return uffd_ioctl(
                self.uffd,
                UFFDIO_ZEROPAGE(),
                &mut UffdioZeropage {
                    range: UffdioRange {
                        start: page as u64,
                        len: PAGE as u64,
                    },
                    ..Default::default()
                },
            );
        }
        uffd_ioctl(
            self.uffd,
            UFFDIO_COPY(),
            &mut UffdioCopy {
                dst: page as u64,
                src: bytes.as_ptr() as u64,
                len: PAGE as u64,
                ..Default::default()
            },
        )
    }

    /// Ends the period: every page still away gets its bytes back, every page is released,
    /// and the count of pages sampled and touched is returned.
    pub fn end(&mut self) -> io::Result<RoundResult> {
        // Faults already queued count for this period.
        self.drain()?;
        self.active = false;
        let mut round = self.memory.sampled().lock();
        let result = RoundResult {
            sampled: round.registered.len(),
            touched: round.touched,
        };
        let mut failed = None;
        for (page, bytes) in std::mem::take(&mut round.away) {
            match self.put_back_retrying(page, &bytes) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                // As in `fault`: never unregistered with its bytes lost.
                Err(e) => panic!("a sampled page cannot be given back: {e}"),
            }
        }
        for page in std::mem::take(&mut round.registered) {
            let mut range = UffdioRange {
                start: page as u64,
                len: PAGE as u64,
            };
            if let Err(e) = uffd_ioctl(self.uffd, UFFDIO_UNREGISTER(), &mut range) {
                failed.get_or_insert(e);
            }
            // Unregistering wakes the waiters of missing pages only; any other goes on too.
            let _ = uffd_ioctl(self.uffd, UFFDIO_WAKE(), &mut range);
        }
        round.touched = 0;
        match failed {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if self.active {
            // Every page back before the memory may be read without this thread.
            let _ = self.end();
        }
    }
}

/// A domain's active memory as a share of what it holds: ESX's fast and slow moving averages
/// of the periods' samples, and the larger of the two, so that the estimate rises at once
/// when a domain gets busy and falls slowly when it idles.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActiveShare {
    /// Periods sampled.
    pub periods: u64,
    /// The last period's sample.
    pub last: RoundResult,
    /// The fast average (gain 1/2).
    pub fast: f64,
    /// The slow average (gain 1/8).
    pub slow: f64,
}

impl ActiveShare {
    /// Adds one period's sample (a period that sampled no page changes nothing).
    pub fn add(&mut self, round: RoundResult) {
        if round.sampled == 0 {
            return;
        }
        let share = round.touched as f64 / round.sampled as f64;
        if self.periods == 0 {
            self.fast = share;
            self.slow = share;
        } else {
            self.fast += (share - self.fast) / 2.0;
            self.slow += (share - self.slow) / 8.0;
        }
        self.periods += 1;
        self.last = round;
    }

    /// The estimate: the share of its memory the domain uses, 0 to 1 (`None` before the first
    /// period).
    pub fn estimate(&self) -> Option<f64> {
        (self.periods > 0).then(|| self.fast.max(self.slow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const MIB: u64 = 1 << 20;

    fn memory_with_pattern(size: u64) -> Arc<GuestMemory> {
        let memory = Arc::new(GuestMemory::new(&[(0, size)]).unwrap());
        for page in 0..size / PAGE as u64 {
            memory
                .write(page * PAGE as u64, &page.to_le_bytes())
                .unwrap();
        }
        memory
    }

    fn uffd() -> OwnedFd {
        open_userfaultfd()
            .expect("a userfaultfd (the tests run as root, or with vm.unprivileged_userfaultfd=1)")
    }

    #[test]
    fn untouched_pages_come_back_whole_and_touched_ones_count() {
        let memory = memory_with_pattern(4 * MIB);
        let fd = uffd();
        let mut sampler = Sampler::new(memory.clone(), &fd);
        let taken = sampler.begin(64).unwrap();
        assert_eq!(taken, 64, "every page of the region is resident");
        // Touch the first half of guest memory from another thread (as a vCPU would), while
        // this one serves the faults.
        let done = Arc::new(AtomicBool::new(false));
        let toucher = {
            let (memory, done) = (memory.clone(), done.clone());
            std::thread::spawn(move || {
                let mut touched = Vec::new();
                for page in 0..(2 * MIB) / PAGE as u64 {
                    let mut b = [0u8; 8];
                    memory.read(page * PAGE as u64, &mut b).unwrap();
                    assert_eq!(u64::from_le_bytes(b), page, "page {page} read back wrong");
                    touched.push(page);
                }
                // A write to a page in the other half lands, and keeps its neighbours' bytes.
                memory.write(3 * MIB + 8, &[0xAB; 8]).unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        while !done.load(Ordering::SeqCst) {
            sampler.serve(Duration::from_millis(10)).unwrap();
        }
        toucher.join().unwrap();
        let sampled_low = {
            let round = memory.sampled().lock();
            round
                .registered
                .iter()
                .filter(|&&p| p < memory.regions().next().unwrap().2 as usize + 2 * MIB as usize)
                .count()
        };
        let result = sampler.end().unwrap();
        assert_eq!(result.sampled, 64);
        // Every sampled page in the first half was touched, and at most one more (the write).
        assert!(
            result.touched == sampled_low || result.touched == sampled_low + 1,
            "{result:?} with {sampled_low} sampled in the touched half"
        );
        for page in 0..4 * MIB / PAGE as u64 {
            let mut b = [0u8; 16];
            memory.read(page * PAGE as u64, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), page);
            let second = if page == 3 * MIB / PAGE as u64 {
                0xABABABABABABABAB
            } else {
                0
            };
            assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), second);
        }
    }

    #[test]
    fn an_idle_guest_touches_nothing_and_a_discarded_sampled_page_reads_zero() {
        let memory = memory_with_pattern(2 * MIB);
        let fd = uffd();
        let mut sampler = Sampler::new(memory.clone(), &fd);
        assert_eq!(sampler.begin(100).unwrap(), 100);
        sampler.serve(Duration::from_millis(20)).unwrap();
        // The balloon takes every page back while they are sampled.
        memory.discard(0, 2 * MIB).unwrap();
        let result = sampler.end().unwrap();
        assert_eq!(
            result,
            RoundResult {
                sampled: 100,
                touched: 0
            }
        );
        let mut b = [0xFFu8; PAGE];
        for page in 0..2 * MIB / PAGE as u64 {
            memory.read(page * PAGE as u64, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0), "page {page} was discarded");
        }
    }

    #[test]
    fn a_dropped_sampler_gives_every_page_back() {
        let memory = memory_with_pattern(MIB);
        let fd = uffd();
        {
            let mut sampler = Sampler::new(memory.clone(), &fd);
            sampler.begin(50).unwrap();
        }
        // No thread serves faults now: a page still away would hang this read.
        for page in 0..MIB / PAGE as u64 {
            let mut b = [0u8; 8];
            memory.read(page * PAGE as u64, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), page);
        }
    }

    #[test]
    fn the_estimate_rises_at_once_and_falls_slowly() {
        let mut share = ActiveShare::default();
        assert_eq!(share.estimate(), None);
        share.add(RoundResult {
            sampled: 100,
            touched: 10,
        });
        assert_eq!(share.estimate(), Some(0.1));
        share.add(RoundResult {
            sampled: 100,
            touched: 90,
        });
        assert!(
            (share.estimate().unwrap() - 0.5).abs() < 1e-9,
            "the fast average: {share:?}"
        );
        for _ in 0..3 {
            share.add(RoundResult {
                sampled: 100,
                touched: 0,
            });
        }
        // The fast average fell to 1/16; the slow one holds more.
        assert!(share.estimate().unwrap() > 0.1, "{share:?}");
        share.add(RoundResult {
            sampled: 0,
            touched: 0,
        });
        assert_eq!(share.periods, 5);
    }
}
