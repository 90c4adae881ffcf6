//! Termination signals taken synchronously: SIGTERM, SIGINT and SIGQUIT are blocked in every
//! thread and
//! one thread waits for them with `sigtimedwait`, so reacting to one is ordinary code (no
//! async-signal-safety rules) and none can be lost between two waits. Also SIGPIPE's default
//! action, for command-line clients.

use std::io;
use std::time::{Duration, Instant};

/// A termination signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminationSignal {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
}

impl std::fmt::Display for TerminationSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TerminationSignal::Term => "SIGTERM",
            TerminationSignal::Int => "SIGINT",
            TerminationSignal::Quit => "SIGQUIT",
        })
    }
}

/// SIGTERM, SIGINT and SIGQUIT, blocked so that [`TerminationSignals::wait`] takes them.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

impl TerminationSignals {
    /// Blocks SIGTERM, SIGINT and SIGQUIT in the calling thread. Threads inherit their creator's signal
    /// mask, so call this before the process starts any thread: then no thread has them
    /// unblocked, and each stays pending until [`TerminationSignals::wait`] takes it.
    pub fn block() -> io::Result<TerminationSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGQUIT);
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(TerminationSignals { set })
    }

    /// Waits for the next termination signal, at most `timeout` (`None`: without limit).
    /// Returns `None` when the time is up. Only meaningful in a thread that has them blocked.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<TerminationSignal>> {
        Ok(self.wait_received(timeout)?.map(|r| r.signal))
    }

    /// [`TerminationSignals::wait`], also telling where the signal came from.
    pub fn wait_received(&self, timeout: Option<Duration>) -> io::Result<Option<Received>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // SAFETY: siginfo_t is plain data, filled by the kernel on success.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let rc = match deadline {
                None => {
                    // SAFETY: `self.set` is initialised; `info` is a valid siginfo_t.
                    unsafe { libc::sigwaitinfo(&self.set, &mut info) }
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ts = libc::timespec {
                        tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                        tv_nsec: left.subsec_nanos().into(),
                    };
                    // SAFETY: `self.set`, `info` and `ts` are valid for the call.
                    unsafe { libc::sigtimedwait(&self.set, &mut info, &ts) }
                }
            };
            let signal = match rc {
                libc::SIGTERM => TerminationSignal::Term,
                libc::SIGINT => TerminationSignal::Int,
                libc::SIGQUIT => TerminationSignal::Quit,
                _ => {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) => return Ok(None),
                        // Another signal's handler ran (e.g. a kick): wait again.
                        Some(libc::EINTR) => continue,
                        _ => return Err(err),
                    }
                }
            };
            // The kernel's own (a terminal's Ctrl-C) are SI_KERNEL; kill(2), sigqueue(3),
            // tgkill(2) and pidfd_send_signal(2) give zero or less.
            let from_process = info.si_code <= 0;
            return Ok(Some(Received {
                signal,
                from_process,
                // SAFETY: for a signal a process sent, the kernel filled in the sender's pid
                // (the `_kill`/`_rt` members, which share its position).
                sender: from_process.then(|| unsafe { info.si_pid() } as u32),
            }));
        }
    }
}

/// A termination signal taken by [`TerminationSignals::wait_received`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Which.
    pub signal: TerminationSignal,
    /// Whether a process sent it (`kill`), rather than the kernel (a terminal's keys).
    pub from_process: bool,
    /// The process that sent it, if one did.
    pub sender: Option<u32>,
}

impl TerminationSignal {
    /// Its number.
    pub fn number(self) -> libc::c_int {
        match self {
            TerminationSignal::Term => libc::SIGTERM,
            TerminationSignal::Int => libc::SIGINT,
            TerminationSignal::Quit => libc::SIGQUIT,
        }
    }
}

/// Gives SIGPIPE its default action back (Rust's runtime ignores it), so that a command-line
/// client whose output goes to a pipe that closes early (`| head`, `| grep -q`) ends quietly,
/// as Unix tools do, instead of failing on its next write. Call it before starting threads,
/// and never in a process that writes to sockets whose peers may go away.
pub fn default_sigpipe() {
    // SAFETY: sets the disposition of one signal to its default; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_waits_for_the_waiter() {
        // Run in a fresh thread so the mask change stays there.
        std::thread::spawn(|| {
            let signals = TerminationSignals::block().unwrap();
            assert_eq!(signals.wait(Some(Duration::from_millis(20))).unwrap(), None);
            // SAFETY: directs SIGTERM at this very thread, which has it blocked: it stays
            // pending instead of ending the process.
            unsafe {
                libc::pthread_kill(libc::pthread_self(), libc::SIGTERM);
            }
            assert_eq!(
                signals.wait(Some(Duration::from_secs(5))).unwrap(),
                Some(TerminationSignal::Term)
            );
            // SAFETY: as above.
            unsafe {
                libc::pthread_kill(libc::pthread_self(), libc::SIGINT);
            }
            let got = signals.wait_received(None).unwrap().unwrap();
            assert_eq!(got.signal, TerminationSignal::Int);
            assert!(got.from_process, "pthread_kill is a process's signal");
            assert_eq!(got.sender, Some(std::process::id()));
        })
        .join()
        .unwrap();
    }
}
