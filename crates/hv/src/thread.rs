//! The calling thread's kernel id, and any thread's CPU time, without `/proc` (which a confined
//! domain process does not have).

/// The calling thread's kernel thread id.
pub fn current_tid() -> u32 {
    nix::unistd::gettid().as_raw() as u32
}

/// CPU time thread `tid` of this process has used, in nanoseconds (`clock_gettime` on the
/// thread's CPU clock); `None` if the thread is gone.
pub fn thread_cpu_ns(tid: u32) -> Option<u64> {
    // The kernel's encoding of a thread's scheduler CPU clock (MAKE_THREAD_CPUCLOCK): the
    // complemented tid shifted by 3, CPUCLOCK_SCHED (2) and CPUCLOCK_PERTHREAD (4).
    let clock = ((!(tid as libc::clockid_t)) << 3) | 2 | 4;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill; the clock id is only a number.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_cpu_time_grows_and_another_threads_can_be_read() {
        let tid = current_tid();
        let before = thread_cpu_ns(tid).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i.wrapping_mul(i));
        }
        assert!(x > 0);
        assert!(thread_cpu_ns(tid).unwrap() > before);
        // Another thread's clock, read from here while it runs.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            let _ = done_rx.recv();
        });
        let other = rx.recv().unwrap();
        assert!(thread_cpu_ns(other).is_some());
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
