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
    /// Frames the front port has sent in the current turn (charged and not refunded).
    sent_in_turn: usize,
}

impl Drr {
    /// An empty ring giving `quantum` bytes (at least 1) per turn.
    pub fn new(quantum: usize) -> Self {
        Drr {
            quantum: quantum.max(1),
            ring: VecDeque::new(),
            deficit: HashMap::new(),
            in_turn: false,
            sent_in_turn: 0,
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
                self.sent_in_turn = 0;
            }
            if *deficit >= len {
                *deficit -= len;
                self.sent_in_turn += 1;
                return Some(port);
            }
            self.in_turn = false;
            self.ring.rotate_left(1);
        }
    }

    /// Gives back the `len` bytes charged to `port` by the last [`Drr::next`] for a frame that
    /// did not go (it waits for room at its destination), so that waiting costs nothing. It also
    /// ends the port's turn, and waiting earns nothing either (a port held back for long does
    /// not come back with a burst for other destinations): a port that sent frames in this turn
    /// goes to the back, keeping at most a quantum of credit; a port that sent nothing keeps its
    /// place at the front and gives back the quantum of the turn it could not use.
    pub fn refund(&mut self, port: PortId, len: usize) {
        let Some(deficit) = self.deficit.get_mut(&port) else {
            return;
        };
        *deficit = deficit.saturating_add(len);
        if self.ring.front() != Some(&port) || !self.in_turn {
            return;
        }
        self.in_turn = false;
        self.sent_in_turn = self.sent_in_turn.saturating_sub(1);
        if self.sent_in_turn > 0 {
            // What the turn left unused is kept up to one quantum, as when a turn ends on a
            // frame too large for it: a port held back turn after turn piles up nothing.
            *deficit = (*deficit).min(self.quantum);
            self.ring.rotate_left(1);
        } else {
            *deficit = deficit.saturating_sub(self.quantum);
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
        // Port 1 is charged for a frame that then waits: the refund gives back the charge and
        // the turn's quantum, so it neither pays nor earns for waiting: once it may send again,
        // the two alternate frame for frame.
        assert_eq!(drr.next(|_| Some(600)), Some(PortId(1)));
        drr.refund(PortId(1), 600);
        assert_eq!(drr.next(|p| (p.0 == 2).then_some(600)), Some(PortId(2)));
        let order: Vec<u64> = (0..4)
            .map(|_| drr.next(|_| Some(1000)).unwrap().0)
            .collect();
        assert_eq!(order, [1, 2, 1, 2]);
    }

    #[test]
    fn ports_sharing_a_destination_with_room_for_one_frame_at_a_time_alternate() {
        // Two backlogged ports wait for one destination that has room for one frame each time
        // it polls writable (or its rate allows one more). Each time, every port tries in DRR
        // order, the first one's frame goes and the rest wait again: the port that just sent
        // must not be first again next time, and the turns spent waiting must not pile up
        // credit.
        let mut drr = Drr::new(DEFAULT_QUANTUM);
        drr.activate(PortId(0));
        drr.activate(PortId(1));
        let mut sent = [0usize; 2];
        for _room in 0..1000 {
            // Both frames may try; after one goes, there is no room for the next try.
            let mut room = true;
            let mut tried = [false; 2];
            while let Some(p) = drr.next(|p| (!tried[p.0 as usize]).then_some(1514)) {
                if room {
                    room = false;
                    sent[p.0 as usize] += 1;
                } else {
                    tried[p.0 as usize] = true;
                    drr.refund(p, 1514);
                }
            }
        }
        assert!(
            sent[0].abs_diff(sent[1]) <= 2,
            "one frame per room should alternate: {sent:?}"
        );
        // Waiting earned no credit: neither port could now send a burst to another
        // destination.
        assert!(
            drr.deficit.values().all(|d| *d <= DEFAULT_QUANTUM),
            "deficits grew while waiting: {:?}",
            drr.deficit
        );
    }
}
