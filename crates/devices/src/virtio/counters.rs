//! A device's counters, shared with readers without a lock.
//!
//! A device bumps its counters as it works, on the domain's I/O thread and while it holds its
//! own transport's lock; the control plane (`vessel info`, `/metrics`) reads them from another
//! thread. The counters are atomics behind an `Arc` the control plane takes once, when the
//! device is placed, so reading them never waits for the device: a guest that keeps its queue
//! full keeps the I/O thread busy in its device for as long as it likes, but cannot hold up a
//! reader. Each counter is exact; a reader's snapshot of several is not one instant (as with
//! any counters read while they move).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Named counters (names fixed when made), each an atomic.
#[derive(Debug)]
pub struct Counters {
    names: &'static [&'static str],
    values: Box<[AtomicU64]>,
}

impl Counters {
    /// Counters called `names`, all zero.
    pub fn new(names: &'static [&'static str]) -> Arc<Counters> {
        Arc::new(Counters {
            names,
            values: names.iter().map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// No counters (a device that keeps none).
    pub fn none() -> Arc<Counters> {
        Counters::new(&[])
    }

    /// Adds `n` to counter `index` (an index into the names; out of range does nothing).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets counter `index` (a gauge, such as a queue's length) to `value`.
    pub fn set(&self, index: usize, value: u64) {
        if let Some(v) = self.values.get(index) {
            v.store(value, Ordering::Relaxed);
        }
    }

    /// Counter `index` now (0 if out of range).
    pub fn get(&self, index: usize) -> u64 {
        self.values
            .get(index)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Every counter by name, in the order of the names.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(name, v)| (*name, v.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_added_set_and_read_from_other_threads() {
        let c = Counters::new(&["bytes", "queued"]);
        let reader = c.clone();
        let writer = std::thread::spawn(move || {
            for _ in 0..1000 {
                c.add(0, 3);
            }
            c.set(1, 7);
            c.add(9, 1); // out of range: ignored
        });
        writer.join().unwrap();
        assert_eq!(reader.snapshot(), vec![("bytes", 3000), ("queued", 7)]);
        assert_eq!(reader.get(1), 7);
        assert_eq!(reader.get(9), 0);
        assert!(Counters::none().snapshot().is_empty());
    }
}
