//! Kicking a vCPU thread out of `KVM_RUN` with a signal.
//!
//! A handler that does nothing is installed for one real-time signal without `SA_RESTART`, so a
//! `KVM_RUN` in progress returns `EINTR`; the vCPU loop then checks why it was kicked.

use crate::HvError;

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the (empty) kick handler for the whole process. Idempotent.
pub fn install_kick_handler() -> Result<(), HvError> {
    // SAFETY: `sigaction` is zero-initialisable plain data.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_kick as *const () as usize;
    action.sa_flags = 0;
    // SAFETY: installs a handler that is async-signal-safe (it does nothing) for a real-time
    // signal Vessel reserves; `action` is fully initialised.
    let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(HvError::Ioctl {
            op: "sigaction",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A thread that can be kicked.
#[derive(Clone, Copy, Debug)]
pub struct ThreadHandle(libc::pthread_t);

/// The calling thread's handle.
pub fn current_thread_handle() -> ThreadHandle {
    // SAFETY: pthread_self has no preconditions.
    ThreadHandle(unsafe { libc::pthread_self() })
}

impl ThreadHandle {
    /// Sends the kick signal. The thread must still be alive (join it only after its last kick).
    pub fn kick(&self) {
        // SAFETY: the handle names a live thread of this process (the caller keeps the thread
        // joined-later), and the signal has a handler installed by `install_kick_handler`.
        unsafe {
            libc::pthread_kill(self.0, kick_signal());
        }
    }
}
