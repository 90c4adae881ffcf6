//! The MAC learning table: which port each source address was last seen on, forgotten after
//! [`MacTable::age`] without traffic, or at once when its port goes away.
//!
//! Memory is bounded: each port holds at most [`MAX_MACS_PER_PORT`] addresses, so a domain
//! inventing source addresses cannot evict other ports' entries; past its limit the new
//! addresses are simply not learned (frames to them are flooded).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::mac::MacAddr;
use crate::port::PortId;

/// How long an address is remembered without a frame from it (as Linux bridges do).
pub const DEFAULT_AGE: Duration = Duration::from_secs(300);
/// Most addresses learned on one port.
pub const MAX_MACS_PER_PORT: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    seen: Instant,
}

/// Address to port, with aging.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry>,
    per_port: HashMap<PortId, usize>,
    age: Duration,
}

impl MacTable {
    /// An empty table forgetting addresses after `age`.
    pub fn new(age: Duration) -> Self {
        MacTable {
            entries: HashMap::new(),
            per_port: HashMap::new(),
            age,
        }
    }

    /// How long an address is remembered without traffic.
    pub fn age(&self) -> Duration {
        self.age
    }

    fn live(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.seen) < self.age
    }

    /// Records that `mac` sent a frame on `port` at `now` (moving it if it was elsewhere).
    /// Group and zero addresses are never learned.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: Instant) {
        if !mac.is_valid_source() {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&mac) {
            if entry.port == port {
                entry.seen = entry.seen.max(now);
                return;
            }
            let old = entry.port;
            self.entries.remove(&mac);
            self.uncount(old);
        }
        let count = self.per_port.entry(port).or_default();
        if *count >= MAX_MACS_PER_PORT {
            return;
        }
        *count += 1;
        self.entries.insert(mac, Entry { port, seen: now });
    }

    fn uncount(&mut self, port: PortId) {
        if let Some(count) = self.per_port.get_mut(&port) {
            *count -= 1;
            if *count == 0 {
                self.per_port.remove(&port);
            }
        }
    }

    /// The port `mac` was last seen on, unless it aged out.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.entries
            .get(&mac)
            .filter(|e| self.live(e, now))
            .map(|e| e.port)
    }

    /// Forgets every address learned on `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
        self.per_port.remove(&port);
    }

    /// Drops the entries that aged out by `now`.
    pub fn expire(&mut self, now: Instant) {
        let age = self.age;
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let keep = now.saturating_duration_since(e.seen) < age;
            if !keep {
                gone.push(e.port);
            }
            keep
        });
        for port in gone {
            self.uncount(port);
        }
    }

    /// The live addresses learned on `port`, sorted.
    pub fn macs_on(&self, port: PortId, now: Instant) -> Vec<MacAddr> {
        let mut macs: Vec<MacAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.port == port && self.live(e, now))
            .map(|(mac, _)| *mac)
            .collect();
        macs.sort();
        macs
    }

    /// Addresses in the table, live or not yet expired.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);

    #[test]
    fn learns_moves_and_ages() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(10));
        assert_eq!(t.lookup(A, t0), None);
        t.learn(A, P1, t0);
        t.learn(B, P2, t0);
        assert_eq!(t.lookup(A, t0), Some(P1));
        // A moves to port 2.
        t.learn(A, P2, t0 + Duration::from_secs(1));
        assert_eq!(t.lookup(A, t0 + Duration::from_secs(1)), Some(P2));
        assert_eq!(t.macs_on(P1, t0), vec![]);
        assert_eq!(t.macs_on(P2, t0), vec![A, B]);
        // B ages out; A, refreshed later, does not yet.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.lookup(B, later), None);
        assert_eq!(t.lookup(A, later), Some(P2));
        assert_eq!(t.macs_on(P2, later), vec![A]);
        t.expire(later);
        assert_eq!(t.len(), 1);
        t.expire(t0 + Duration::from_secs(11));
        assert!(t.is_empty());
    }

    #[test]
    fn never_learns_group_or_zero_sources() {
        let now = Instant::now();
        let mut t = MacTable::new(DEFAULT_AGE);
        t.learn(MacAddr::BROADCAST, P1, now);
        t.learn(MacAddr([1, 0, 0x5e, 0, 0, 1]), P1, now);
        t.learn(MacAddr([0; 6]), P1, now);
        assert!(t.is_empty());
    }

    #[test]
    fn forgetting_a_port_and_the_per_port_bound() {
        let now = Instant::now();
        let mut t = MacTable::new(DEFAULT_AGE);
        for i in 0..(MAX_MACS_PER_PORT as u32 + 50) {
            let b = i.to_be_bytes();
            t.learn(MacAddr([2, 1, b[0], b[1], b[2], b[3]]), P1, now);
        }
        assert_eq!(t.len(), MAX_MACS_PER_PORT, "port 1 is at its bound");
        t.learn(B, P2, now);
        assert_eq!(t.lookup(B, now), Some(P2), "other ports still learn");
        t.forget_port(P1);
        assert_eq!(t.len(), 1);
        t.learn(A, P1, now);
        assert_eq!(t.lookup(A, now), Some(P1), "the bound was reset");
    }
}
