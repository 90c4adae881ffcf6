//! Process-wide switches of a confined domain process: whether its vCPU and I/O threads install
//! their seccomp filters as they start (on once the control thread has installed its own), and
//! the seccomp tests' hook, which makes a thread of a given kind call what its filter forbids.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

use hv::seccomp::ThreadKind;
use hv::EventFd;

use crate::error::DomainError;

static FILTERS: AtomicBool = AtomicBool::new(false);
/// The thread kind asked to make the forbidden call: 0 none, 1 vCPU, 2 I/O.
static FORBIDDEN: AtomicU8 = AtomicU8::new(0);
/// Wakes I/O threads for the hook.
static HOOK: OnceLock<Option<EventFd>> = OnceLock::new();

/// Installs the control thread's filter on the calling thread, and from now on every vCPU and
/// I/O thread installs its own as it starts.
pub fn confine_threads() -> Result<(), DomainError> {
    hook();
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
        ThreadKind::Vcpu => FORBIDDEN.store(1, Ordering::SeqCst),
        ThreadKind::Io => {
            FORBIDDEN.store(2, Ordering::SeqCst);
            if let Some(e) = hook() {
                let _ = e.write(1);
            }
        }
    }
}

/// Makes the forbidden call if a thread of `kind` was asked to (one load when not).
pub(crate) fn forbidden_call_due(kind: ThreadKind) {
    let wanted = match kind {
        ThreadKind::Vcpu => 1,
        ThreadKind::Io => 2,
        ThreadKind::Control => return,
    };
    if FORBIDDEN.load(Ordering::Relaxed) == wanted {
        hv::seccomp::forbidden_call();
    }
}
