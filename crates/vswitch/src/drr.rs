//! Deficit round robin over ingress ports, by bytes: the order in which the switch takes frames
//! from the ports that have one waiting, so that a port flooding the switch gets no more than
//! its share and the others are never starved.
//!
//! Each port with a frame waiting is in a ring. The port at the front starts its turn by adding
//! a quantum of bytes to its deficit, then sends head frames while the deficit covers them;
//! when the head frame is larger than what is left, its turn ends and it moves to the back
//! (keeping the remainder for its next turn). A port with nothing waiting leaves the ring and
//! loses its deficit, so idle time earns no credit. Over time every busy port moves the same
//! number of bytes, whatever the sizes of its frames.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::port::PortId;

/// The default quantum: four full-size Ethernet frames.
pub const DEFAULT_QUANTUM: usize = 1514 * 4;

/// The scheduler. It knows only which ports have a head frame; the caller tells it the sizes.
#[derive(Debug)]
pub struct Drr {
    quantum: usize,
    ring: VecDeque<PortId>,
    deficit: HashMap<PortId, usize>,
    /// The front port has been given its quantum for the current turn.
    in_turn: bool,
}

impl Drr {
    /// An empty ring giving `quantum` bytes (at least 1) per turn.
    pub fn new(quantum: usize) -> Self {
        Drr {
            quantum: quantum.max(1),
            ring: VecDeque::new(),
            deficit: HashMap::new(),
            in_turn: false,
        }
    }

    /// `port` has a frame waiting: it joins the back of the ring (if not already in it).
    pub fn activate(&mut self, port: PortId) {
        if let Entry::Vacant(slot) = self.deficit.entry(port) {
            slot.insert(0);
            self.ring.push_back(port);
        }
    }

    /// `port` has nothing waiting any more (or is gone): it leaves the ring and its deficit.
    pub fn deactivate(&mut self, port: PortId) {
        if self.deficit.remove(&port).is_none() {
            return;
        }
        if self.ring.front() == Some(&port) {
            self.in_turn = false;
        }
        self.ring.retain(|p| *p != port);
    }

    /// Whether no port has a frame waiting.
    pub fn is_idle(&self) -> bool {
        self.ring.is_empty()
    }

    /// The port whose frame goes next, with that frame's length charged to its deficit.
    /// `ready_len` gives the length of each active port's next frame, or `None` for a port that
    /// may not send now (its frame waits for room at its destination): such a port is passed
    /// over, keeping its place and its deficit. `None` when no active port may send. The port
    /// stays in the ring: the caller deactivates it when it has no next frame.
    pub fn next(&mut self, ready_len: impl Fn(PortId) -> Option<usize>) -> Option<PortId> {
        // Ports passed over in a row: once every port has been, none may send.
        let mut passed = 0;
        loop {
            let port = *self.ring.front()?;
            let Some(len) = ready_len(port) else {
                if passed >= self.ring.len() {
                    return None;
                }
                passed += 1;
                self.in_turn = false;
                self.ring.rotate_left(1);
                continue;
            };
            passed = 0;
            let deficit = self.deficit.entry(port).or_default();
            if !self.in_turn {
                *deficit = deficit.saturating_add(self.quantum);
                self.in_turn = true;
            }
            if *deficit >= len {
                *deficit -= len;
                return Some(port);
            }
            self.in_turn = false;
            self.ring.rotate_left(1);
        }
    }

    /// Gives back the `len` bytes charged to `port` for a frame that did not go (it waits for
    /// room at its destination), so that waiting costs the port nothing.
    pub fn refund(&mut self, port: PortId, len: usize) {
        if let Some(deficit) = self.deficit.get_mut(&port) {
            *deficit = deficit.saturating_add(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `total` bytes from always-backlogged ports with the given frame sizes; the bytes
    /// each got.
    fn serve_backlogged(sizes: &[usize], quantum: usize, total: usize) -> Vec<usize> {
        let mut drr = Drr::new(quantum);
        for i in 0..sizes.len() {
            drr.activate(PortId(i as u64));
        }
        let mut got = vec![0; sizes.len()];
        let mut served = 0;
        while served < total {
            let p = drr.next(|p| Some(sizes[p.0 as usize])).unwrap();
            got[p.0 as usize] += sizes[p.0 as usize];
            served += sizes[p.0 as usize];
        }
        got
    }

    #[test]
    fn byte_fair_between_backlogged_ports_of_any_frame_size() {
        for sizes in [
            vec![1514, 1514],
            vec![65550, 60],
            vec![9000, 200, 1514],
            vec![60, 65550, 1514, 1000],
        ] {
            let total = 50_000_000;
            let got = serve_backlogged(&sizes, DEFAULT_QUANTUM, total);
            let fair = total / sizes.len();
            for (i, g) in got.iter().enumerate() {
                assert!(
                    *g * 10 >= fair * 9 && *g * 10 <= fair * 11,
                    "sizes {sizes:?}: port {i} got {g} of a fair {fair}"
                );
            }
        }
    }

    #[test]
    fn victim_gets_its_share_against_a_flood_through_a_slow_destination() {
        // A flooder (1514-byte frames, always backlogged) and a victim (200-byte frames,
        // always backlogged) share a destination that accepts 1 MB per simulated second; the
        // switch takes frames in DRR order. The victim gets at least 80% of half.
        let sizes = [1514usize, 200];
        let mut drr = Drr::new(DEFAULT_QUANTUM);
        drr.activate(PortId(0));
        drr.activate(PortId(1));
        let mut delivered = [0usize; 2];
        let capacity = 1_000_000;
        let mut room = 0usize;
        // The frame chosen when the destination had no room: it goes first when room comes.
        let mut chosen = None;
        for _tick in 0..1000 {
            room += capacity / 1000;
            loop {
                let p = match chosen.take() {
                    Some(p) => p,
                    None => drr.next(|p| Some(sizes[p.0 as usize])).unwrap(),
                };
                let len = sizes[p.0 as usize];
                if len > room {
                    chosen = Some(p);
                    break;
                }
                room -= len;
                delivered[p.0 as usize] += len;
            }
        }
        let total = delivered[0] + delivered[1];
        assert!(
            delivered[1] * 10 >= total / 2 * 8,
            "victim got {} of {total}",
            delivered[1]
        );
    }

    #[test]
    fn a_light_port_gets_everything_it_offers() {
        // The victim has one 100-byte frame every 20 rounds of the flooder; it is served each
        // time in at most one turn of the flooder.
        let mut drr = Drr::new(DEFAULT_QUANTUM);
        let flood = PortId(0);
        let light = PortId(1);
        drr.activate(flood);
        let mut waited = 0;
        let mut max_wait = 0;
        let mut light_waiting = false;
        let mut light_sent = 0;
        for step in 0..100_000 {
            if step % 80 == 0 && !light_waiting {
                drr.activate(light);
                light_waiting = true;
                waited = 0;
            }
            let p = drr
                .next(|p| Some(if p == flood { 1514 } else { 100 }))
                .unwrap();
            if p == light {
                light_sent += 1;
                light_waiting = false;
                max_wait = max_wait.max(waited);
                drr.deactivate(light);
            } else if light_waiting {
                waited += 1;
            }
        }
        assert_eq!(light_sent, 100_000 / 80);
        assert!(
            max_wait <= DEFAULT_QUANTUM / 1514,
            "waited {max_wait} frames"
        );
    }

    #[test]
    fn deactivated_ports_leave_and_lose_credit() {
        let mut drr = Drr::new(1000);
        assert!(drr.is_idle());
        assert_eq!(drr.next(|_| Some(1)), None);
        drr.activate(PortId(7));
        drr.activate(PortId(7));
        assert_eq!(drr.next(|_| Some(600)), Some(PortId(7)));
        drr.deactivate(PortId(7));
        drr.deactivate(PortId(7));
        assert!(drr.is_idle());
        drr.activate(PortId(7));
        drr.activate(PortId(8));
        // Port 7 starts from zero again: a 1000-byte frame, then its turn is over.
        assert_eq!(drr.next(|_| Some(1000)), Some(PortId(7)));
        assert_eq!(drr.next(|_| Some(1000)), Some(PortId(8)));
        assert_eq!(drr.next(|_| Some(1000)), Some(PortId(7)));
        // A frame larger than a quantum waits a few turns, without looping forever.
        assert_eq!(
            drr.next(|p| Some(if p.0 == 8 { 3500 } else { 1000 })),
            Some(PortId(7))
        );
        let order: Vec<u64> = (0..4)
            .map(|_| {
                drr.next(|p| Some(if p.0 == 8 { 3500 } else { 1000 }))
                    .unwrap()
                    .0
            })
            .collect();
        assert!(order.contains(&8), "{order:?}");
    }

    #[test]
    fn ports_that_may_not_send_are_passed_over_and_keep_their_credit() {
        let mut drr = Drr::new(1000);
        drr.activate(PortId(1));
        drr.activate(PortId(2));
        // Nobody may send: no answer, and no endless loop.
        assert_eq!(drr.next(|_| None), None);
        // Port 1 waits: port 2 goes, turn after turn.
        for _ in 0..5 {
            assert_eq!(drr.next(|p| (p.0 == 2).then_some(1000)), Some(PortId(2)));
        }
        // Port 1 is charged for a frame that then waits: the refund keeps its credit, so once
        // it may send again it moves two 1000-byte frames in its next turn (1000 kept plus
        // its new quantum).
        assert_eq!(drr.next(|_| Some(600)), Some(PortId(1)));
        drr.refund(PortId(1), 600);
        assert_eq!(drr.next(|p| (p.0 == 2).then_some(600)), Some(PortId(2)));
        let order: Vec<u64> = (0..3)
            .map(|_| drr.next(|_| Some(1000)).unwrap().0)
            .collect();
        assert_eq!(order, [1, 1, 2]);
    }
}
