//! What a process's threads did, cheaply, for the scheduler's every interval: the kernel's
//! `/proc/PID/task/TID/schedstat` of each thread (time it ran, time it waited on a run queue, in
//! nanoseconds), read through descriptors kept open (one `pread` per thread per interval; the
//! thread list is read again every [`RESCAN`] samples, or when a thread has gone).
//!
//! A thread seen for the first time gives a baseline, not a difference, so a thread found late
//! is not charged its whole past at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::bvt::Usage;

/// Samples between readings of the thread list.
const RESCAN: u32 = 50;

/// The clocks of one process's threads.
pub struct ThreadClocks {
    pid: u32,
    /// Each thread's schedstat file and its (run, wait) at the last sample.
    threads: BTreeMap<u32, (File, u64, u64)>,
    since_scan: u32,
}

impl ThreadClocks {
    /// The clocks of process `pid` (a baseline: the first [`ThreadClocks::sample`] counts from
    /// now).
    pub fn new(pid: u32) -> ThreadClocks {
        let mut clocks = ThreadClocks {
            pid,
            threads: BTreeMap::new(),
            since_scan: 0,
        };
        clocks.scan();
        clocks
    }

    /// The process these are of.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the threads did since the last sample.
    pub fn sample(&mut self) -> Usage {
        let mut used = Usage::default();
        let mut gone = false;
        self.threads
            .retain(|_, (file, run, wait)| match read(file) {
                Some((r, w)) => {
                    used.run_ns += r.saturating_sub(*run);
                    used.wait_ns += w.saturating_sub(*wait);
                    (*run, *wait) = (r, w);
                    true
                }
                None => {
                    gone = true;
                    false
                }
            });
        self.since_scan += 1;
        if gone || self.since_scan >= RESCAN {
            self.scan();
        }
        used
    }

    /// Opens the threads not yet followed (their times now are their baselines).
    fn scan(&mut self) {
        self.since_scan = 0;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if self.threads.contains_key(&tid) {
                continue;
            }
            let Ok(file) = File::open(task.path().join("schedstat")) else {
                continue;
            };
            if let Some((run, wait)) = read(&file) {
                self.threads.insert(tid, (file, run, wait));
            }
        }
    }
}

/// A schedstat file's run and wait times.
fn read(file: &File) -> Option<(u64, u64)> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    match (fields.next(), fields.next()) {
        (Some(Some(run)), Some(Some(wait))) => Some((run, wait)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_process_threads_are_measured_and_a_new_thread_starts_from_its_baseline() {
        let mut clocks = ThreadClocks::new(std::process::id());
        assert!(!clocks.threads.is_empty());
        let spin = std::thread::spawn(|| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(50) {
                std::hint::spin_loop();
            }
        });
        spin.join().unwrap();
        let mine = Instant::now();
        while mine.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let used = clocks.sample();
        // This thread's spin, less whatever the machine took from it meanwhile (the spinner
        // came and went between two scans, so it is not counted).
        assert!(
            used.run_ns >= 1_000_000 && used.run_ns < 10_000_000_000,
            "{used:?}"
        );
        let again = clocks.sample();
        assert!(again.run_ns < used.run_ns, "{again:?} after {used:?}");
        assert_eq!(clocks.pid(), std::process::id());
    }
}
