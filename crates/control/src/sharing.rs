//! Content-based page sharing, as ESX does it (Waldspurger, OSDI 2002): identical pages of the
//! domains' memory (across domains and within one) are kept once and copied when written. The
//! mechanism is the kernel's same-page merging (KSM): every domain process marks its guest RAM
//! mergeable (`hv::GuestMemory::share_identical_pages`) and the kernel's `ksmd` scans it. Vessel
//! is the policy: which domains' memory is mergeable (all of them while `vessel daemon
//! --page-sharing on`, the default), how fast the scanner runs, and what each domain shares.
//!
//! The scanner runs faster as free memory falls, as ESX's does: each pass over the domains'
//! memory should take [`FreeState::scan_pass`] (a minute while memory is plentiful, two
//! seconds when it is nearly gone), never slower than the kernel's own default rate. The free
//! state is the tighter of the host's (MemAvailable over MemTotal, `/proc/meminfo`, in four
//! bands named after ESX's: see [`FreeState::of`]) and the memory pool's (ESX's own
//! thresholds: [`crate::reclaim::pool_state`]).
//!
//! KSM's settings are the host's: the daemon remembers them when it starts and puts them back
//! when it stops (`run` too: a daemon that found KSM stopped leaves it stopped, with the pages
//! it merged still merged until they are written).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::allocation::MemoryPolicy;
use crate::registry::Registry;

/// Where the kernel's KSM settings and counters are.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";
/// The page size KSM merges.
const PAGE: u64 = 4096;
/// How long `ksmd` sleeps between batches (the kernel's default).
const SLEEP_MS: u64 = 20;
/// The fewest pages `ksmd` scans per batch (the kernel's default).
const MIN_PAGES_PER_BATCH: u64 = 100;
/// How often the policy looks at the host again.
const INTERVAL: Duration = Duration::from_secs(2);

/// Free memory in ESX's four states: high, soft, hard, low. The host's, for the scanner
/// (bands of its available memory: [`FreeState::of`]), and the memory pool's, for the memory
/// policy's means (ESX's thresholds with hysteresis: [`crate::reclaim::pool_state`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeState {
    /// Plenty free (the host: at least a fifth available).
    #[default]
    High,
    /// Getting short (the host: at least a tenth).
    Soft,
    /// Short (the host: at least a twentieth).
    Hard,
    /// Nearly none (the host: less).
    Low,
}

impl FreeState {
    /// The state of a host with `available` of `total` bytes available. (ESX's thresholds are
    /// 6, 4, 2 and 1% of memory *free*; Linux's MemAvailable also counts the caches it can
    /// drop, so the bands here are wider.)
    pub fn of(available: u64, total: u64) -> FreeState {
        let total = total.max(1);
        match available.saturating_mul(100) / total {
            20.. => FreeState::High,
            10..=19 => FreeState::Soft,
            5..=9 => FreeState::Hard,
            _ => FreeState::Low,
        }
    }

    /// Higher is freer.
    pub(crate) fn rank(self) -> u8 {
        match self {
            FreeState::Low => 0,
            FreeState::Hard => 1,
            FreeState::Soft => 2,
            FreeState::High => 3,
        }
    }

    /// The tighter of the two states.
    pub fn tighter(self, other: FreeState) -> FreeState {
        if other.rank() < self.rank() {
            other
        } else {
            self
        }
    }

    /// How long one pass of the scanner over the domains' memory should take in this state.
    pub fn scan_pass(self) -> Duration {
        Duration::from_secs(match self {
            FreeState::High => 60,
            FreeState::Soft => 20,
            FreeState::Hard => 5,
            FreeState::Low => 2,
        })
    }

    /// The host's state now, from `/proc/meminfo`.
    pub fn now() -> Option<(FreeState, u64, u64)> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let (total, available) = (
            kib_field(&meminfo, "MemTotal:")?,
            kib_field(&meminfo, "MemAvailable:")?,
        );
        Some((FreeState::of(available, total), available, total))
    }
}

/// The bytes of field `name` (with its colon) of a `/proc` text that gives it in kB
/// (`/proc/meminfo`, `/proc/PID/status`), if it is there.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
}

/// `ksmd`'s pages per batch for `pages` of domain memory to be scanned once per `pass`, at
/// least the kernel's default.
pub fn pages_per_batch(pages: u64, pass: Duration) -> u64 {
    let batches = (pass.as_millis() as u64 / SLEEP_MS).max(1);
    pages.div_ceil(batches).max(MIN_PAGES_PER_BATCH)
}

/// Bytes of process `pid`'s memory that KSM merged with another page (0 if the kernel does not
/// say: no KSM, or the process is gone).
pub fn merged_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/ksm_merging_pages"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

/// Memory page sharing saves now on this host ([`SharingStatus::saved_bytes`], read from
/// KSM's counters in [`KSM_DIR`]; 0 without KSM).
pub fn saved_bytes() -> u64 {
    Ksm {
        dir: PathBuf::from(KSM_DIR),
    }
    .saved_bytes()
}

/// What page sharing does now, for the host view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SharingStatus {
    /// Pages `ksmd` scans per batch.
    pub pages_per_batch: u64,
    /// Milliseconds it sleeps between batches.
    pub sleep_ms: u64,
    /// Distinct pages kept for several (KSM's `pages_shared`).
    pub shared_pages: u64,
    /// Memory saved: the pages that point at one of those instead of a copy of their own
    /// (`pages_sharing`), and zero-filled pages mapped to the kernel's zero page where KSM is
    /// set to (`ksm_zero_pages`), in bytes.
    pub saved_bytes: u64,
    /// Full passes of the scanner since KSM started.
    pub full_scans: u64,
}

/// The kernel's KSM settings and counters.
struct Ksm {
    dir: PathBuf,
}

impl Ksm {
    /// Memory saved now: [`SharingStatus::saved_bytes`].
    fn saved_bytes(&self) -> u64 {
        (self.read("pages_sharing").unwrap_or(0) + self.read("ksm_zero_pages").unwrap_or(0)) * PAGE
    }

    fn read(&self, name: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write(&self, name: &str, value: u64) -> std::io::Result<()> {
        std::fs::write(self.dir.join(name), value.to_string())
    }
}

/// The settings KSM had when the daemon started.
struct Saved {
    run: u64,
    pages_to_scan: u64,
    sleep_millisecs: u64,
}

/// Page sharing while the daemon runs: KSM started, and its scan rate steered.
pub struct PageSharing {
    ksm: Arc<Ksm>,
    saved: Saved,
    status: Arc<Mutex<SharingStatus>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PageSharing {
    /// Starts KSM and a thread that steers it for the running domains of `registry`, by the
    /// host's free state and the memory pool's as `policy` last found it (the tighter of the
    /// two); `Err` says why there is no page sharing on this host (no KSM, or its settings
    /// cannot be written).
    pub(crate) fn start(
        dir: &Path,
        registry: Weak<Registry>,
        policy: Weak<MemoryPolicy>,
    ) -> Result<PageSharing, String> {
        let ksm = Arc::new(Ksm {
            dir: dir.to_path_buf(),
        });
        let saved = match (
            ksm.read("run"),
            ksm.read("pages_to_scan"),
            ksm.read("sleep_millisecs"),
        ) {
            (Some(run), Some(pages_to_scan), Some(sleep_millisecs)) => Saved {
                run,
                pages_to_scan,
                sleep_millisecs,
            },
            _ => {
                return Err(format!(
                    "the kernel has no KSM ({} cannot be read)",
                    dir.display()
                ))
            }
        };
        let put_back = |ksm: &Ksm| {
            let _ = ksm.write("sleep_millisecs", saved.sleep_millisecs);
            let _ = ksm.write("run", saved.run);
        };
        if let Err(e) = ksm
            .write("sleep_millisecs", SLEEP_MS)
            .and_then(|()| ksm.write("run", 1))
        {
            put_back(&ksm);
            return Err(format!("cannot start KSM in {}: {e}", dir.display()));
        }
        let status = Arc::new(Mutex::new(SharingStatus::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ksm, status, stop) = (ksm.clone(), status.clone(), stop.clone());
            std::thread::Builder::new()
                .name("page-sharing".into())
                .spawn(move || steer(&ksm, &registry, &policy, &status, &stop))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                put_back(&ksm);
                return Err(format!("cannot start the page-sharing thread: {e}"));
            }
        };
        Ok(PageSharing {
            ksm,
            saved,
            status,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// What page sharing does now.
    pub fn status(&self) -> SharingStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PageSharing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
        let s = &self.saved;
        let restored = self
            .ksm
            .write("pages_to_scan", s.pages_to_scan)
            .and_then(|()| self.ksm.write("sleep_millisecs", s.sleep_millisecs))
            .and_then(|()| self.ksm.write("run", s.run));
        if let Err(e) = restored {
            tracing::warn!("cannot put KSM's settings back: {e}");
        }
    }
}

/// The policy's thread: every [`INTERVAL`], sets `ksmd`'s rate for the running domains'
/// memory and the tighter of the host's free state and the memory pool's, and reads KSM's
/// counters.
fn steer(
    ksm: &Ksm,
    registry: &Weak<Registry>,
    policy: &Weak<MemoryPolicy>,
    status: &Mutex<SharingStatus>,
    stop: &AtomicBool,
) {
    let mut last_rate = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let pages: u64 = registry
            .views()
            .iter()
            .filter(|v| v.state().is_active())
            .map(|v| v.def.spec().memory / PAGE)
            .sum();
        drop(registry);
        let host = FreeState::now().map_or(FreeState::High, |(s, _, _)| s);
        let pool = policy
            .upgrade()
            .map_or(FreeState::High, |p| p.pool_status().state);
        let state = host.tighter(pool);
        let rate = pages_per_batch(pages, state.scan_pass());
        if last_rate != Some(rate) {
            match ksm.write("pages_to_scan", rate) {
                Ok(()) => {
                    tracing::info!(
                        "page sharing: scanning {rate} pages every {SLEEP_MS} ms ({} MiB of \
                         domain memory; free state {state:?}: the host {host:?}, the memory \
                         pool {pool:?})",
                        (pages * PAGE) >> 20
                    );
                    last_rate = Some(rate);
                }
                Err(e) => tracing::warn!("page sharing: cannot set KSM's scan rate: {e}"),
            }
        }
        *status.lock().unwrap_or_else(PoisonError::into_inner) = SharingStatus {
            pages_per_batch: rate,
            sleep_ms: SLEEP_MS,
            shared_pages: ksm.read("pages_shared").unwrap_or(0),
            saved_bytes: ksm.saved_bytes(),
            full_scans: ksm.read("full_scans").unwrap_or(0),
        };
        // Sleep in small steps so that a stopping daemon is not held up.
        for _ in 0..INTERVAL.as_millis() / 100 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_states_are_bands_of_available_memory() {
        let gib = 1 << 30;
        assert_eq!(FreeState::of(8 * gib, 16 * gib), FreeState::High);
        assert_eq!(FreeState::of(4 * gib, 20 * gib), FreeState::High);
        assert_eq!(FreeState::of(4 * gib - 1, 20 * gib), FreeState::Soft);
        assert_eq!(FreeState::of(2 * gib, 16 * gib), FreeState::Soft);
        assert_eq!(FreeState::of(gib, 16 * gib), FreeState::Hard);
        assert_eq!(FreeState::of(gib / 2, 16 * gib), FreeState::Low);
        assert_eq!(FreeState::of(0, 0), FreeState::Low);
        assert!(FreeState::Low.scan_pass() < FreeState::Hard.scan_pass());
        assert!(FreeState::Soft.scan_pass() < FreeState::High.scan_pass());
    }

    #[test]
    fn the_scanner_passes_over_the_domains_memory_in_the_time_the_state_wants() {
        // 4 GiB of domains (1 Mi pages) in a pass of 2 s: 100 batches of 20 ms.
        let pages = 1 << 20;
        let per_batch = pages_per_batch(pages, Duration::from_secs(2));
        assert_eq!(per_batch, 10_486);
        assert!(per_batch * 100 >= pages);
        // Little memory, or plenty of time: never slower than the kernel's default.
        assert_eq!(
            pages_per_batch(1000, Duration::from_secs(60)),
            MIN_PAGES_PER_BATCH
        );
        assert_eq!(
            pages_per_batch(0, Duration::from_secs(2)),
            MIN_PAGES_PER_BATCH
        );
    }

    #[test]
    fn ksm_settings_are_put_back_and_missing_ksm_is_said() {
        let dir = std::env::temp_dir().join(format!("vessel-ksm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = PageSharing::start(&dir, Weak::new(), Weak::new())
            .err()
            .unwrap();
        assert!(err.contains("no KSM"), "{err}");
        for (name, value) in [
            ("run", "0"),
            ("pages_to_scan", "100"),
            ("sleep_millisecs", "200"),
        ] {
            std::fs::write(dir.join(name), value).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let sharing = PageSharing::start(&dir, Weak::new(), Weak::new()).unwrap();
        assert_eq!(
            (read("run"), read("sleep_millisecs")),
            ("1".into(), "20".into())
        );
        drop(sharing);
        assert_eq!(
            (read("run"), read("pages_to_scan"), read("sleep_millisecs")),
            ("0".into(), "100".into(), "200".into())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
