//! Process-wide switches of a confined domain process: whether its vCPU and I/O threads install
//! their seccomp filters as they start (on once the control thread has installed its own), and
//! the seccomp tests' hook, which makes a thread of a given kind call what its filter forbids.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

use hv::seccomp::ThreadKind;
use hv::EventFd;

use crate::error::DomainError;

static FILTERS: AtomicBool = AtomicBool::new(false);
/// The fault a thread kind was asked for: 0 none; a forbidden call by a vCPU (1) or the I/O
/// thread (2); a panic of a vCPU (3) or the I/O thread (4).
static FORBIDDEN: AtomicU8 = AtomicU8::new(0);
/// Wakes I/O threads for the hook.
static HOOK: OnceLock<Option<EventFd>> = OnceLock::new();

/// Installs the control thread's filter on the calling thread, and from now on every vCPU and
/// I/O thread installs its own as it starts. A panic is reported from now on in one line
/// ([`report_panic`]).
pub fn confine_threads() -> Result<(), DomainError> {
    hook();
    std::panic::set_hook(Box::new(report_panic));
    hv::seccomp::apply(ThreadKind::Control).map_err(|e| DomainError::Config(e.to_string()))?;
    FILTERS.store(true, Ordering::SeqCst);
    Ok(())
}

/// Called by a vCPU or I/O thread as it starts: installs its filter if threads are confined.
pub(crate) fn on_thread_start(kind: ThreadKind) -> Result<(), DomainError> {
    if FILTERS.load(Ordering::SeqCst) {
        hv::seccomp::apply(kind).map_err(|e| DomainError::Config(e.to_string()))?;
    }
    Ok(())
}

/// A confined thread's panic, in one line on standard error (the domain's log): the thread,
/// where, and what. Not the default report, whose backtrace (with `RUST_BACKTRACE` set) reads
/// files and calls what the filters forbid, so that the kernel killed the process for it
/// before the panic could stop the domain with its reason.
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let what = crate::control::panic_message(info.payload());
    let place = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "an unknown place".into());
    // Not eprintln!, which would panic again (and abort) if standard error cannot be written.
    let _ = writeln!(
        std::io::stderr(),
        "vessel: thread '{}' panicked at {place}: {what}",
        thread.name().unwrap_or("unnamed")
    );
}

fn hook() -> Option<&'static EventFd> {
    HOOK.get_or_init(|| hv::new_eventfd().ok()).as_ref()
}

/// The descriptor I/O threads watch for the hook.
pub(crate) fn hook_fd() -> Option<i32> {
    hook().map(|e| e.as_raw_fd())
}

/// Asks a thread of `kind` to make a system call its filter forbids (the control thread does
/// at once; a vCPU at its next exit; an I/O thread when woken).
pub fn request_forbidden_call(kind: ThreadKind) {
    match kind {
        ThreadKind::Control => hv::seccomp::forbidden_call(),
        // Not asked of the sampler: its filter is tested in `hv::seccomp`.
        ThreadKind::Sampler => {}
        ThreadKind::Vcpu => FORBIDDEN.store(1, Ordering::SeqCst),
        ThreadKind::Io => {
            FORBIDDEN.store(2, Ordering::SeqCst);
            wake_io();
        }
    }
}

/// Asks a vCPU (at its next exit) or the I/O thread (when woken) to panic, as a bug would make
/// it: the tests' hook for what a thread that fails does to its domain. `false` for the
/// control thread, which is not asked.
pub fn request_panic(kind: ThreadKind) -> bool {
    match kind {
        ThreadKind::Control | ThreadKind::Sampler => return false,
        ThreadKind::Vcpu => FORBIDDEN.store(3, Ordering::SeqCst),
        ThreadKind::Io => {
            FORBIDDEN.store(4, Ordering::SeqCst);
            wake_io();
        }
    }
    true
}

fn wake_io() {
    if let Some(e) = hook() {
        let _ = e.write(1);
    }
}

/// Makes the forbidden call, or panics, if a thread of `kind` was asked to (one load when
/// not).
pub(crate) fn fault_due(kind: ThreadKind) {
    let (call, panic) = match kind {
        ThreadKind::Vcpu => (1, 3),
        ThreadKind::Io => (2, 4),
        ThreadKind::Control | ThreadKind::Sampler => return,
    };
    match FORBIDDEN.load(Ordering::Relaxed) {
        0 => {}
        f if f == call => hv::seccomp::forbidden_call(),
        f if f == panic => {
            FORBIDDEN.store(0, Ordering::SeqCst);
            panic!("the debug hook asked this thread to panic");
        }
        _ => {}
    }
}
