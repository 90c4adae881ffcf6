//! What a process's threads did, cheaply, for the scheduler's every interval: the kernel's
//! `/proc/PID/task/TID/schedstat` of each thread (time it ran, time it waited on a run queue, in
//! nanoseconds), read through descriptors kept open (one `pread` per thread per interval; the
//! thread list is read again every [`RESCAN`] samples, or when a thread has gone).
//!
//! A thread seen for the first time gives a baseline, not a difference, so a thread found late
//! is not charged its whole past at once.
//!
//! The kernel adds a wait to schedstat when it ends, as the thread gets a CPU: a thread that sat
//! on a run queue for a whole interval shows neither run nor wait, like a sleeping one. So a
//! thread that did nothing in an interval has its state read as well (`/proc/.../stat`, once
//! more per interval while it stays runnable, once when it falls asleep, then not again until
//! it runs): a runnable one makes the sample [`Usage::queued`].

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::bvt::Usage;

/// Samples between readings of the thread list.
const RESCAN: u32 = 50;

/// One thread followed.
struct Thread {
    schedstat: File,
    /// Its stat file (for its state), opened the first time it is needed.
    stat: Option<File>,
    /// Time it had run at the last sample.
    run: u64,
    /// Time it had waited at the last sample.
    wait: u64,
    /// Whether an interval without progress needs its state read: it ran (or has not been
    /// looked at) since it was last seen asleep.
    may_be_queued: bool,
}

impl Thread {
    /// Whether it is on a run queue now (`/proc/.../stat` state R), read through `task`'s
    /// stat file, kept open.
    fn runnable(&mut self, task: impl FnOnce() -> String) -> bool {
        if self.stat.is_none() {
            self.stat = File::open(task()).ok();
        }
        self.stat.as_ref().and_then(read_state) == Some(b'R')
    }
}

/// The clocks of one process's threads.
pub struct ThreadClocks {
    pid: u32,
    /// Each thread's files and its times at the last sample.
    threads: BTreeMap<u32, Thread>,
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
        let pid = self.pid;
        self.threads
            .retain(|tid, t| match read_times(&t.schedstat) {
                Some((run, wait)) => {
                    let (ran, waited) = (run.saturating_sub(t.run), wait.saturating_sub(t.wait));
                    used.run_ns += ran;
                    used.wait_ns += waited;
                    (t.run, t.wait) = (run, wait);
                    if ran > 0 || waited > 0 {
                        t.may_be_queued = true;
                    } else if t.may_be_queued {
                        let queued = t.runnable(|| format!("/proc/{pid}/task/{tid}/stat"));
                        used.queued |= queued;
                        t.may_be_queued = queued;
                    }
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
            let Ok(schedstat) = File::open(task.path().join("schedstat")) else {
                continue;
            };
            if let Some((run, wait)) = read_times(&schedstat) {
                let thread = Thread {
                    schedstat,
                    stat: None,
                    run,
                    wait,
                    may_be_queued: true,
                };
                self.threads.insert(tid, thread);
            }
        }
    }
}

/// A schedstat file's run and wait times.
fn read_times(file: &File) -> Option<(u64, u64)> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    match (fields.next(), fields.next()) {
        (Some(Some(run)), Some(Some(wait))) => Some((run, wait)),
        _ => None,
    }
}

/// A stat file's state letter (R, S, D...).
fn read_state(file: &File) -> Option<u8> {
    // "TID (COMM) S ...": the name (at most 16 bytes) may hold anything, spaces and parentheses
    // too; nothing after it holds a parenthesis.
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    state_of(&buf[..n])
}

/// The state letter of a stat line.
fn state_of(line: &[u8]) -> Option<u8> {
    let close = line.iter().rposition(|&b| b == b')')?;
    line.get(close + 2).copied()
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

    #[test]
    fn the_state_letter_follows_the_last_parenthesis() {
        assert_eq!(state_of(b"42 (vcpu 0) R 1 2 3"), Some(b'R'));
        assert_eq!(state_of(b"42 (a) (b)) S 1"), Some(b'S'));
        assert_eq!(state_of(b"42 (cut"), None);
    }

    /// A thread kept from every CPU for a whole interval shows neither run nor wait in
    /// schedstat; the sample says it was queued. (Pinned to CPU 0 at nice 19 beside a nice -20
    /// spinner there: the fair scheduler gives it about 1/6000 of the CPU.)
    #[test]
    fn a_thread_starved_for_a_whole_interval_is_queued() {
        use std::process::Command;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status.lines().any(|l| l.starts_with("Uid:\t0\t")),
            "this test needs root (a nice -20 spinner)"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let spinner = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                tx.send(me.file_name().unwrap().to_string_lossy().into_owned())
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        });
        let tid = rx.recv().unwrap();
        let run = |cmd: &str| {
            let status = Command::new("sh").args(["-c", cmd]).status().unwrap();
            assert!(status.success(), "{cmd}: {status} (the test needs root)");
        };
        run(&format!(
            "taskset -pc 0 {tid} >/dev/null && renice -n 19 -p {tid} >/dev/null"
        ));
        let mut hog = Command::new("nice")
            .args([
                "-n",
                "-20",
                "taskset",
                "-c",
                "0",
                "sh",
                "-c",
                "while :; do :; done",
            ])
            .spawn()
            .unwrap();
        let mut clocks = ThreadClocks::new(std::process::id());
        std::thread::sleep(Duration::from_millis(300));
        let before = clocks.sample();
        std::thread::sleep(Duration::from_millis(200));
        let starved = clocks.sample();
        let _ = hog.kill();
        let _ = hog.wait();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert!(starved.queued, "{starved:?} (before: {before:?})");
        // Asleep (this thread, the test harness's) is not queued.
        let mut idle = ThreadClocks::new(std::process::id());
        std::thread::sleep(Duration::from_millis(50));
        let _ = idle.sample();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!idle.sample().queued);
    }
}
