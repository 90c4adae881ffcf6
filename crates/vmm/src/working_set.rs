//! A running machine's working-set estimate: a thread of the domain process samples its memory
//! (`hv::sampling`) one period after another and keeps ESX's moving averages of the share it
//! touched, for the control plane's idle memory tax.
//!
//! The userfaultfd the sampler needs is made once per process ([`prepare`]) while it still may
//! (before the sandbox takes its privileges); a process that could not make one runs its
//! domains without an estimate and says why once in its log. Periods during which the domain
//! was paused (or saved, which reads every page) do not count, nor those during which a
//! migration copied its memory (which reads every page while the guest runs).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hv::sampling::{ActiveShare, Sampler};
use hv::GuestMemory;

use crate::control::Control;

/// Pages sampled per period (ESX's default: 100).
pub const SAMPLED_PAGES: usize = 100;

static USERFAULTFD: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Makes this process's userfaultfd, if it can; call before giving up privileges. Says once,
/// on standard error (the domain's log), why not.
pub fn prepare() {
    USERFAULTFD.get_or_init(|| match hv::sampling::open_userfaultfd() {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!(
                "vessel: no working-set sampling in this domain (cannot make a userfaultfd: {e})"
            );
            None
        }
    });
}

/// The estimate a machine's sampler keeps, shared with the control plane's view.
pub type SharedEstimate = Arc<Mutex<ActiveShare>>;

/// Reads an estimate.
pub fn read(estimate: &SharedEstimate) -> ActiveShare {
    *estimate.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sampling thread of one running machine; stops (every page given back) when dropped.
pub(crate) struct SamplerThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SamplerThread {
    /// Starts sampling `memory` every `period`, into `estimate`; `None` when the process has no
    /// userfaultfd or the period is zero.
    pub(crate) fn start(
        memory: Arc<GuestMemory>,
        control: Arc<Control>,
        period: Duration,
        estimate: SharedEstimate,
    ) -> Option<SamplerThread> {
        if period.is_zero() {
            return None;
        }
        USERFAULTFD.get()?.as_ref()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let c = control.clone();
                c.run_or_crash("the working-set sampler", || {
                    if let Err(e) =
                        crate::confinement::on_thread_start(hv::seccomp::ThreadKind::Sampler)
                    {
                        control.stop(crate::control::StopReason::Crash(e.to_string()));
                        return;
                    }
                    sample(&memory, &control, period, &estimate, &stopping);
                })
            })
            .ok()?;
        Some(SamplerThread {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for SamplerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How long one wait for faults lasts: how soon a stop or a pause is seen.
const SLICE: Duration = Duration::from_millis(100);

fn sample(
    memory: &Arc<GuestMemory>,
    control: &Control,
    period: Duration,
    estimate: &SharedEstimate,
    stop: &AtomicBool,
) {
    let Some(Some(fd)) = USERFAULTFD.get() else {
        return;
    };
    let mut sampler = Sampler::new(memory.clone(), fd);
    while !stop.load(Ordering::SeqCst) && !control.stopping() {
        if control.pause_wanted() {
            thread::sleep(SLICE);
            continue;
        }
        let started = Instant::now();
        let mut paused = false;
        let log_turns = memory.write_log_turns();
        let result = sampler.begin(SAMPLED_PAGES).and_then(|_| {
            while started.elapsed() < period && !stop.load(Ordering::SeqCst) && !control.stopping()
            {
                paused |= control.pause_wanted();
                sampler.serve(SLICE.min(period.saturating_sub(started.elapsed())))?;
            }
            sampler.end()
        });
        // A migration's copy ran during the period (or runs still): it touched every page.
        let copied = log_turns % 2 == 1 || memory.write_log_turns() != log_turns;
        match result {
            Ok(round) if !paused && !copied && started.elapsed() >= period => estimate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(round),
            Ok(_) => {}
            Err(e) => {
                // Every page is back: `end` gave them back (a page it cannot give back is a
                // panic, which crashes the domain), or the sampler's drop does as it returns
                // here. The domain runs on without an estimate.
                eprintln!("vessel: working-set sampling stopped: {e}");
                return;
            }
        }
    }
}
