//! Starting domain processes and watching them: a child that gets one descriptor (its channel
//! listener, as descriptor 3) and a session of its own, and pidfds to learn when a process
//! ends, whether or not it is our child (a restarted daemon re-attaches to domain processes an
//! earlier daemon started). And `vessel run`'s way: a fork of the one-threaded process, whose
//! child confines itself and dies with its parent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

/// The descriptor a domain process finds its channel listener at.
pub const CHANNEL_FD: RawFd = 3;

/// Spawns `cmd` with `fd` as its descriptor [`CHANNEL_FD`] (all its other descriptors but
/// 0-2 are closed on exec, as `Command` leaves them), in a new session, so it outlives the
/// spawner and no terminal's signals reach it.
pub fn spawn_with_channel(mut cmd: Command, fd: OwnedFd) -> io::Result<Child> {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only dup2, fcntl and
    // setsid, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if raw == CHANNEL_FD {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CHANNEL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(fd);
    child
}

/// Takes the descriptor [`CHANNEL_FD`] this process was started with; `None` if it has none.
pub fn take_channel_fd() -> Option<OwnedFd> {
    // SAFETY: F_GETFD on a descriptor number only queries it.
    let open = unsafe { libc::fcntl(CHANNEL_FD, libc::F_GETFD) } >= 0;
    if !open {
        return None;
    }
    // SAFETY: descriptor 3 was handed to this process by its spawner for this purpose and
    // nothing else in the process has claimed it; this is called once, at start.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // SAFETY: F_SETFD with FD_CLOEXEC on a descriptor we own.
    unsafe { libc::fcntl(CHANNEL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// A descriptor that becomes readable when process `pid` ends (`pidfd_open`).
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`; an error if no such process exists.
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
        Ok(Pidfd { fd, pid })
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits at most `timeout` for the process to end; returns whether it has.
    pub fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; one entry.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(rc > 0);
        }
    }

    /// Kills the process (SIGKILL, through the pidfd, so never a recycled pid).
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Sends the process `signal` (through the pidfd, so never a recycled pid).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags touches no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// The two sides of [`fork_alone`].
#[derive(Debug)]
pub enum Forked {
    /// In the new process.
    Child,
    /// In the calling process: the child's pid.
    Parent(u32),
}

/// How many threads the calling process has (from `/proc/self/task`).
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks the calling process, which must have one thread (checked): the child is a copy that
/// may go on running any code, as no other thread held a lock at the fork.
pub fn fork_alone() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork a process of {threads} threads"
        )));
    }
    // SAFETY: the process has one thread (checked above), so the child inherits no lock held
    // by another thread and may run ordinary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw() as u32)),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// In a child: asks the kernel to kill it when the thread that forked it ends, then checks
/// that `parent` has not ended already. Call it after any change of user or group (which
/// clears the request).
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other("the parent process has ended"));
    }
    Ok(())
}

/// Whether the process runs as root (its effective uid is 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a process that ended with `status` was killed by a seccomp filter (SIGSYS).
pub fn killed_by_seccomp(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGSYS)
}

/// Waits for child `pid` to end and reaps it.
pub fn wait_child(pid: u32) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status`, valid for the call.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc >= 0 {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit (a daemon with a
/// hundred domains holds a few descriptors for each); returns the limit now.
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_sees_its_process_end() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let p = Pidfd::open(child.id()).unwrap();
        assert!(!p.wait_exit(Duration::from_millis(20)).unwrap());
        p.kill().unwrap();
        assert!(p.wait_exit(Duration::from_secs(5)).unwrap());
        let _ = child.wait();
    }

    #[test]
    fn the_channel_descriptor_reaches_the_child_as_3() {
        let (a, b) = crate::channel::Channel::pair().unwrap();
        let fd: OwnedFd = std::os::fd::AsFd::as_fd(&b).try_clone_to_owned().unwrap();
        drop(b);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello-from-3 >&3"]);
        let mut child = spawn_with_channel(cmd, fd).unwrap();
        assert!(child.wait().unwrap().success());
        let (msg, _) = a.recv().unwrap().unwrap();
        assert_eq!(msg, b"hello-from-3\n");
    }

    #[test]
    fn a_process_of_several_threads_is_not_forked() {
        // The test harness runs this in a thread of its own, besides the main one.
        let e = fork_alone().unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
    }
}
